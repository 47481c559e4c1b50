"""Evaluation: metrics, calibration, interpretation (top losses, most confused) and plots.

Public names are re-exported here; the implementation lives in the private modules.
"""

from __future__ import annotations

from transferlab._internal.lazy import lazy_namespace

# name -> the private module that defines it (imported on first use: see _internal.lazy)
_NAMES = {
    "Calibration": "_calibration",
    "CalibrationScores": "_calibration",
    "TemperatureScaler": "_calibration",
    "accuracy_coverage": "_calibration",
    "calibrate": "_calibration",
    "expected_calibration_error": "_calibration",
    "reliability_bins": "_calibration",
    "LearningCurve": "_curves",
    "learning_curve": "_curves",
    "parse_shots": "_curves",
    "EmbeddingDisplay": "_embed",
    "embed_2d": "_embed",
    "nearest_neighbours": "_embed",
    "Interpretation": "_interpret",
    "EvalReport": "_metrics",
    "MultiLabelReport": "_metrics",
    "evaluate_multilabel": "_metrics",
    "evaluate_predictions": "_metrics",
    "top_k_accuracy": "_metrics",
    "tune_thresholds": "_metrics",
}

__all__ = [
    "Calibration",
    "CalibrationScores",
    "EmbeddingDisplay",
    "EvalReport",
    "Interpretation",
    "LearningCurve",
    "MultiLabelReport",
    "TemperatureScaler",
    "accuracy_coverage",
    "calibrate",
    "embed_2d",
    "evaluate_multilabel",
    "evaluate_predictions",
    "expected_calibration_error",
    "learning_curve",
    "nearest_neighbours",
    "parse_shots",
    "reliability_bins",
    "top_k_accuracy",
    "tune_thresholds",
]

__getattr__, __dir__ = lazy_namespace(__name__, _NAMES)
