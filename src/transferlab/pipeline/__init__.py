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
from transferlab._internal.lazy import lazy_namespace

# name -> the private module that defines it (imported on first use: see _internal.lazy), so
# `run_fit` does not import the fine-tuning stack with torch and timm (issue 17)
_NAMES = {
    "AdaptBNConfig": "_adapt_bn",
    "AdaptBNMetrics": "_adapt_bn",
    "AuditConfig": "_audit",
    "AuditMetrics": "_audit",
    "run_audit": "_audit",
    "AutoConfig": "_auto",
    "AutoMetrics": "_auto",
    "run_auto": "_auto",
    "adapt_bn_run": "_adapt_bn",
    "run_adapt_bn": "_adapt_bn",
    "CurveConfig": "_curve",
    "CurveMetrics": "_curve",
    "curve_run": "_curve",
    "run_curve": "_curve",
    "DiagnoseConfig": "_diagnose",
    "DiagnoseMetrics": "_diagnose",
    "diagnose_run": "_diagnose",
    "run_diagnose": "_diagnose",
    "EmbedConfig": "_embed",
    "EmbedMetrics": "_embed",
    "embed_run": "_embed",
    "run_embed": "_embed",
    "EvaluateConfig": "_evaluate",
    "EvaluateMetrics": "_evaluate",
    "MultiLabelEvaluateMetrics": "_evaluate",
    "evaluate_run": "_evaluate",
    "run_evaluate": "_evaluate",
    "FinetuneMetrics": "_finetune",
    "FinetuneRunConfig": "_finetune",
    "FinishedFinetune": "_finetune",
    "MultiLabelFinetuneMetrics": "_finetune",
    "advice_probe_vs_finetune": "_finetune",
    "finetune": "_finetune",
    "finish_finetune": "_finetune",
    "run_finetune": "_finetune",
    "FitConfig": "_fit",
    "FitMetrics": "_fit",
    "MultiLabelFitMetrics": "_fit",
    "fit": "_fit",
    "run_fit": "_fit",
    "launch_finetune": "_launch",
    "run_finetune_nproc": "_launch",
    "RankConfig": "_rank",
    "RankResult": "_rank",
    "rank_run": "_rank",
    "run_rank": "_rank",
    "Metrics": "_results",
    "SuggestConfig": "_suggest",
    "SuggestMetrics": "_suggest",
    "run_suggest": "_suggest",
    "RunResult": "_results",
    "calibrate": "_shared",
}

__all__ = [
    "AdaptBNConfig",
    "AdaptBNMetrics",
    "AuditConfig",
    "AuditMetrics",
    "AutoConfig",
    "AutoMetrics",
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
    "SuggestConfig",
    "SuggestMetrics",
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
    "run_audit",
    "run_auto",
    "run_curve",
    "run_diagnose",
    "run_embed",
    "run_evaluate",
    "run_finetune",
    "run_finetune_nproc",
    "run_fit",
    "run_rank",
    "run_suggest",
]


_lazy_getattr, __dir__ = lazy_namespace(__name__, _NAMES)


def __getattr__(name: str) -> Any:
    if name == "FitResult":  # the one result type of all runs is RunResult now
        warn_once("transferlab.pipeline.FitResult", "transferlab.pipeline.RunResult")
        return _lazy_getattr("RunResult")
    return _lazy_getattr(name)
