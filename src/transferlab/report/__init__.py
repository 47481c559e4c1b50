"""Plots and self-contained HTML reports (images embedded, open offline): the generic helpers
(`write_html_report`, `html_table`, the training plots) and one page builder per run.

Plotting never calls `plt.show()`; figures are drawn on the Agg backend and saved. Only the
runs (`transferlab.pipeline`) import this package.
"""

from __future__ import annotations

from transferlab.report._curve import write_curve_report as write_curve_report
from transferlab.report._diagnose import diagnosis_plots as diagnosis_plots
from transferlab.report._diagnose import findings_html as findings_html
from transferlab.report._diagnose import write_diagnosis_report as write_diagnosis_report
from transferlab.report._embed import write_embed_report as write_embed_report
from transferlab.report._evaluate import evaluation_plots as evaluation_plots
from transferlab.report._evaluate import plot_error_neighbours as plot_error_neighbours
from transferlab.report._evaluate import plot_feature_map as plot_feature_map
from transferlab.report._evaluate import (
    write_evaluate_multilabel_report as write_evaluate_multilabel_report,
)
from transferlab.report._evaluate import write_evaluate_report as write_evaluate_report
from transferlab.report._finetune import (
    write_finetune_multilabel_report as write_finetune_multilabel_report,
)
from transferlab.report._finetune import write_finetune_report as write_finetune_report
from transferlab.report._fit import write_fit_multilabel_report as write_fit_multilabel_report
from transferlab.report._fit import write_fit_report as write_fit_report
from transferlab.report._html import html_table as html_table
from transferlab.report._html import per_class_table as per_class_table
from transferlab.report._html import per_label_table as per_label_table
from transferlab.report._html import write_html_report as write_html_report
from transferlab.report._plots import plot_confusion_matrix as plot_confusion_matrix
from transferlab.report._plots import plot_report_confusion as plot_report_confusion
from transferlab.report._plots import plot_training_curves as plot_training_curves
from transferlab.report._rank import SCORE_COLUMNS as SCORE_COLUMNS
from transferlab.report._rank import rank_table as rank_table
from transferlab.report._rank import write_rank_report as write_rank_report

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
