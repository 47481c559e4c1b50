"""Plots and self-contained HTML reports (images embedded, open offline): the generic helpers
(`write_html_report`, `html_table`, the training plots) and one page builder per run.

Plotting never calls `plt.show()`; figures are drawn on the Agg backend and saved. Only the
runs (`transferlab.pipeline`) import this package.
"""

from __future__ import annotations

from transferlab._internal.lazy import lazy_namespace

# name -> the private module that defines it (imported on first use: see _internal.lazy)
_NAMES = {
    "write_audit_report": "_audit",
    "write_auto_report": "_auto",
    "write_curve_report": "_curve",
    "diagnosis_plots": "_diagnose",
    "findings_html": "_diagnose",
    "write_diagnosis_report": "_diagnose",
    "write_embed_report": "_embed",
    "evaluation_plots": "_evaluate",
    "plot_error_neighbours": "_evaluate",
    "plot_feature_map": "_evaluate",
    "write_evaluate_multilabel_report": "_evaluate",
    "write_evaluate_report": "_evaluate",
    "write_finetune_multilabel_report": "_finetune",
    "write_finetune_report": "_finetune",
    "write_fit_multilabel_report": "_fit",
    "write_fit_report": "_fit",
    "html_table": "_html",
    "per_class_table": "_html",
    "per_label_table": "_html",
    "thumbnail_html": "_html",
    "thumbnail_row": "_html",
    "write_html_report": "_html",
    "plot_confusion_matrix": "_plots",
    "plot_report_confusion": "_plots",
    "plot_training_curves": "_plots",
    "SCORE_COLUMNS": "_rank",
    "rank_table": "_rank",
    "write_rank_report": "_rank",
}

__all__ = [
    "SCORE_COLUMNS",
    "diagnosis_plots",
    "evaluation_plots",
    "findings_html",
    "html_table",
    "per_class_table",
    "per_label_table",
    "plot_confusion_matrix",
    "plot_error_neighbours",
    "plot_feature_map",
    "plot_report_confusion",
    "plot_training_curves",
    "rank_table",
    "thumbnail_html",
    "thumbnail_row",
    "write_audit_report",
    "write_auto_report",
    "write_curve_report",
    "write_diagnosis_report",
    "write_embed_report",
    "write_evaluate_multilabel_report",
    "write_evaluate_report",
    "write_finetune_multilabel_report",
    "write_finetune_report",
    "write_fit_multilabel_report",
    "write_fit_report",
    "write_html_report",
    "write_rank_report",
]

__getattr__, __dir__ = lazy_namespace(__name__, _NAMES)
