"""Runs: the library's end-to-end jobs, one module each. Every run is
``run_<verb>(config) -> RunResult``: it reads data, calls the library, and writes its typed
metrics (metrics.json, or diagnosis.json / rank.json / adapt_bn.json), plots and report.html to
an output folder; nothing here prints. The CLI and the service are thin layers over these.

The older names (`fit`, `finetune`, `evaluate_run`, `curve_run`, `embed_run`, `diagnose_run`,
`rank_run`, `adapt_bn_run`, `FitResult`) still work and warn once.
"""

from __future__ import annotations

from typing import Any

from transferlab._internal.deprecation import warn_once
from transferlab.pipeline._adapt_bn import AdaptBNConfig as AdaptBNConfig
from transferlab.pipeline._adapt_bn import AdaptBNMetrics as AdaptBNMetrics
from transferlab.pipeline._adapt_bn import adapt_bn_run as adapt_bn_run
from transferlab.pipeline._adapt_bn import run_adapt_bn as run_adapt_bn
from transferlab.pipeline._curve import CurveConfig as CurveConfig
from transferlab.pipeline._curve import CurveMetrics as CurveMetrics
from transferlab.pipeline._curve import curve_run as curve_run
from transferlab.pipeline._curve import run_curve as run_curve
from transferlab.pipeline._diagnose import DiagnoseConfig as DiagnoseConfig
from transferlab.pipeline._diagnose import DiagnoseMetrics as DiagnoseMetrics
from transferlab.pipeline._diagnose import diagnose_run as diagnose_run
from transferlab.pipeline._diagnose import run_diagnose as run_diagnose
from transferlab.pipeline._embed import EmbedConfig as EmbedConfig
from transferlab.pipeline._embed import EmbedMetrics as EmbedMetrics
from transferlab.pipeline._embed import embed_run as embed_run
from transferlab.pipeline._embed import run_embed as run_embed
from transferlab.pipeline._evaluate import EvaluateConfig as EvaluateConfig
from transferlab.pipeline._evaluate import EvaluateMetrics as EvaluateMetrics
from transferlab.pipeline._evaluate import MultiLabelEvaluateMetrics as MultiLabelEvaluateMetrics
from transferlab.pipeline._evaluate import evaluate_run as evaluate_run
from transferlab.pipeline._evaluate import run_evaluate as run_evaluate
from transferlab.pipeline._finetune import FinetuneMetrics as FinetuneMetrics
from transferlab.pipeline._finetune import FinetuneRunConfig as FinetuneRunConfig
from transferlab.pipeline._finetune import FinishedFinetune as FinishedFinetune
from transferlab.pipeline._finetune import MultiLabelFinetuneMetrics as MultiLabelFinetuneMetrics
from transferlab.pipeline._finetune import advice_probe_vs_finetune as advice_probe_vs_finetune
from transferlab.pipeline._finetune import finetune as finetune
from transferlab.pipeline._finetune import finish_finetune as finish_finetune
from transferlab.pipeline._finetune import run_finetune as run_finetune
from transferlab.pipeline._fit import FitConfig as FitConfig
from transferlab.pipeline._fit import FitMetrics as FitMetrics
from transferlab.pipeline._fit import MultiLabelFitMetrics as MultiLabelFitMetrics
from transferlab.pipeline._fit import fit as fit
from transferlab.pipeline._fit import run_fit as run_fit
from transferlab.pipeline._launch import launch_finetune as launch_finetune
from transferlab.pipeline._launch import run_finetune_nproc as run_finetune_nproc
from transferlab.pipeline._rank import RankConfig as RankConfig
from transferlab.pipeline._rank import RankResult as RankResult
from transferlab.pipeline._rank import rank_run as rank_run
from transferlab.pipeline._rank import run_rank as run_rank
from transferlab.pipeline._results import Metrics as Metrics
from transferlab.pipeline._results import RunResult as RunResult
from transferlab.pipeline._shared import calibrate as calibrate

__all__ = [
    "AdaptBNConfig",
    "AdaptBNMetrics",
    "CurveConfig",
    "CurveMetrics",
    "DiagnoseConfig",
    "DiagnoseMetrics",
    "EmbedConfig",
    "EmbedMetrics",
    "EvaluateConfig",
    "EvaluateMetrics",
    "FinetuneMetrics",
    "FinetuneRunConfig",
    "FinishedFinetune",
    "FitConfig",
    "FitMetrics",
    "FitResult",
    "Metrics",
    "MultiLabelEvaluateMetrics",
    "MultiLabelFinetuneMetrics",
    "MultiLabelFitMetrics",
    "RankConfig",
    "RankResult",
    "RunResult",
    "adapt_bn_run",
    "advice_probe_vs_finetune",
    "calibrate",
    "curve_run",
    "diagnose_run",
    "embed_run",
    "evaluate_run",
    "finetune",
    "finish_finetune",
    "fit",
    "launch_finetune",
    "rank_run",
    "run_adapt_bn",
    "run_curve",
    "run_diagnose",
    "run_embed",
    "run_evaluate",
    "run_finetune",
    "run_finetune_nproc",
    "run_fit",
    "run_rank",
]


def __getattr__(name: str) -> Any:
    if name == "FitResult":  # the one result type of all runs is RunResult now
        warn_once("transferlab.pipeline.FitResult", "transferlab.pipeline.RunResult")
        return RunResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
