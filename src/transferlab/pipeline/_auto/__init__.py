"""`run_auto`: the transfer decision made for the user (issue 18). Modules: `_config`
(AutoConfig, Candidate, AutoMetrics, parse_budget), `_probe` (data check, ranking, probes),
`_run` (the shift, the fine-tunes within budget, the decision, the final model)."""

from transferlab.pipeline._auto._config import AutoConfig as AutoConfig
from transferlab.pipeline._auto._config import AutoMetrics as AutoMetrics
from transferlab.pipeline._auto._config import Candidate as Candidate
from transferlab.pipeline._auto._config import parse_budget as parse_budget
from transferlab.pipeline._auto._run import run_auto as run_auto

__all__ = ["AutoConfig", "AutoMetrics", "Candidate", "parse_budget", "run_auto"]
