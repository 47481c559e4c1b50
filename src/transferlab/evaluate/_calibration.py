"""Calibration and confidence: ECE, reliability bins, temperature scaling, accuracy-coverage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from transferlab.exceptions import InvalidParameterError

__all__ = [
    "TemperatureScaler",
    "accuracy_coverage",
    "expected_calibration_error",
    "reliability_bins",
]


def reliability_bins(
    proba: np.ndarray, y_true_idx: np.ndarray, n_bins: int = 15
) -> dict[str, np.ndarray]:
    """Per confidence bin: mean confidence, accuracy and count (equal-width bins on [0, 1])."""
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true_idx).astype(float)
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return {"edges": edges, "confidence": mean_conf, "accuracy": acc, "count": count}


def expected_calibration_error(
    proba: np.ndarray, y_true_idx: np.ndarray, n_bins: int = 15
) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over confidence bins (Guo et al. 2017).

    Example:
        >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
        >>> round(expected_calibration_error(p, np.array([0, 0, 1, 1]), n_bins=10), 3)
        0.3
    """
    if len(proba) == 0:
        return float("nan")
    b = reliability_bins(proba, y_true_idx, n_bins)
    keep = b["count"] > 0
    return float(
        np.sum(b["count"][keep] * np.abs(b["accuracy"][keep] - b["confidence"][keep])) / len(proba)
    )


def accuracy_coverage(
    proba: np.ndarray, y_true_idx: np.ndarray, thresholds: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """For each confidence threshold: the share of predictions kept (coverage) and their accuracy.

    Predictions whose top probability is below the threshold are set aside as "uncertain".
    """
    thresholds = (
        np.linspace(0, 0.99, 100) if thresholds is None else np.asarray(thresholds, dtype=float)
    )
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true_idx
    coverage, accuracy, kept = [], [], []
    for t in thresholds:
        mask = conf >= t
        kept.append(int(mask.sum()))
        coverage.append(float(mask.mean()) if len(mask) else float("nan"))
        accuracy.append(float(correct[mask].mean()) if mask.any() else float("nan"))
    return {
        "threshold": thresholds,
        "coverage": np.asarray(coverage),
        "accuracy": np.asarray(accuracy),
        "kept": np.asarray(kept),
    }


def _log_proba(proba: np.ndarray) -> np.ndarray:
    """log p in float64, clipped only at the smallest positive float: saturated probabilities
    (1e-20 and below, common for confident linear models) keep their real log-odds, so
    rescaling them by a temperature gives the same result as rescaling the logits."""
    p = np.asarray(proba, dtype=np.float64)
    return np.log(np.clip(p, np.finfo(np.float64).tiny, None))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class TemperatureScaler:
    """Temperature scaling (Guo et al. 2017): one scalar T dividing the log-probabilities,
    fitted on held-out data by minimising the negative log-likelihood. Keeps the argmax.
    When every held-out prediction is right, T stays 1 (the likelihood would push it to 0).

    Attributes:
        temperature_: the fitted T (> 1 softens overconfident models, < 1 sharpens).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 2, 200)
        >>> logits = np.c_[np.zeros(200), np.where(y == 1, 1.0, -1.0) * 8 + rng.normal(0, 6, 200)]
        >>> ts = TemperatureScaler().fit(_softmax(logits), y)
        >>> ts.temperature_ > 1
        True
    """

    temperature_: float = 1.0

    def fit(self, proba: np.ndarray, y_true_idx: np.ndarray) -> TemperatureScaler:
        from scipy.optimize import minimize_scalar

        if len(proba) == 0:
            raise InvalidParameterError(
                "temperature scaling needs at least one held-out prediction"
            )
        logp = _log_proba(proba)
        y = np.asarray(y_true_idx)
        if (proba.argmax(axis=1) == y).all():
            # No held-out error: the likelihood only rewards ever sharper probabilities (T -> 0),
            # which the data cannot justify. Keep the model's own probabilities.
            self.temperature_ = 1.0
            return self

        def nll(log_t: float) -> float:
            p = _softmax(logp / np.exp(log_t))
            return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))

        res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
        self.temperature_ = float(np.exp(res.x))
        return self

    def transform(self, proba: np.ndarray) -> np.ndarray:
        """Rescaled probabilities (rows still sum to 1, argmax unchanged)."""
        if self.temperature_ == 1.0:
            return proba
        return _softmax(_log_proba(proba) / self.temperature_)

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature_}
