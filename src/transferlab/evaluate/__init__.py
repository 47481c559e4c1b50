"""Evaluation: metrics, calibration, interpretation (top losses, most confused) and plots.

Public names are re-exported here; the implementation lives in the private modules.
"""

from __future__ import annotations

from transferlab.evaluate._calibration import Calibration as Calibration
from transferlab.evaluate._calibration import CalibrationScores as CalibrationScores
from transferlab.evaluate._calibration import TemperatureScaler as TemperatureScaler
from transferlab.evaluate._calibration import accuracy_coverage as accuracy_coverage
from transferlab.evaluate._calibration import calibrate as calibrate
from transferlab.evaluate._calibration import (
    expected_calibration_error as expected_calibration_error,
)
from transferlab.evaluate._calibration import reliability_bins as reliability_bins
from transferlab.evaluate._curves import LearningCurve as LearningCurve
from transferlab.evaluate._curves import learning_curve as learning_curve
from transferlab.evaluate._curves import parse_shots as parse_shots
from transferlab.evaluate._embed import EmbeddingDisplay as EmbeddingDisplay
from transferlab.evaluate._embed import embed_2d as embed_2d
from transferlab.evaluate._embed import nearest_neighbours as nearest_neighbours
from transferlab.evaluate._interpret import Interpretation as Interpretation
from transferlab.evaluate._metrics import EvalReport as EvalReport
from transferlab.evaluate._metrics import MultiLabelReport as MultiLabelReport
from transferlab.evaluate._metrics import evaluate_multilabel as evaluate_multilabel
from transferlab.evaluate._metrics import evaluate_predictions as evaluate_predictions
from transferlab.evaluate._metrics import top_k_accuracy as top_k_accuracy
from transferlab.evaluate._metrics import tune_thresholds as tune_thresholds

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
