"""Runs: the library's end-to-end jobs (`fit`, `finetune`, `evaluate_run`, `curve_run`, `embed_run`,
`diagnose_run`, `rank_run`, `adapt_bn_run`). Each reads data, calls the library, and writes
`metrics.json` (or `diagnosis.json`), plots and `report.html` to an output folder; nothing here
prints. The CLI and the service are thin layers over these.
"""

from __future__ import annotations

from transferlab.pipeline._core import FitConfig as FitConfig
from transferlab.pipeline._core import FitResult as FitResult
from transferlab.pipeline._core import advice_probe_vs_finetune as advice_probe_vs_finetune
from transferlab.pipeline._core import calibrate as calibrate
from transferlab.pipeline._core import curve_run as curve_run
from transferlab.pipeline._core import embed_run as embed_run
from transferlab.pipeline._core import evaluate_run as evaluate_run
from transferlab.pipeline._core import finetune as finetune
from transferlab.pipeline._core import fit as fit
from transferlab.pipeline._diagnose import DiagnoseConfig as DiagnoseConfig
from transferlab.pipeline._diagnose import adapt_bn_run as adapt_bn_run
from transferlab.pipeline._diagnose import diagnose_run as diagnose_run
from transferlab.pipeline._diagnose import rank_run as rank_run
from transferlab.pipeline._launch import launch_finetune as launch_finetune

__all__ = [
    "DiagnoseConfig",
    "FitConfig",
    "FitResult",
    "adapt_bn_run",
    "advice_probe_vs_finetune",
    "calibrate",
    "curve_run",
    "diagnose_run",
    "embed_run",
    "evaluate_run",
    "finetune",
    "fit",
    "launch_finetune",
    "rank_run",
]
