"""Calibration and confidence: ECE, reliability bins, temperature scaling, accuracy-coverage."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from transferlab._internal.numeric import softmax
from transferlab.exceptions import InvalidParameterError

__all__ = [
    "Calibration",
    "CalibrationScores",
    "TemperatureScaler",
    "accuracy_coverage",
    "calibrate",
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
        >>> ts = TemperatureScaler().fit(softmax(logits), y)
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
            p = softmax(logp / np.exp(log_t))
            return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))

        res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
        self.temperature_ = float(np.exp(res.x))
        return self

    def transform(self, proba: np.ndarray) -> np.ndarray:
        """Rescaled probabilities (rows still sum to 1, argmax unchanged)."""
        if self.temperature_ == 1.0:
            return proba
        return softmax(_log_proba(proba) / self.temperature_)

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature_}


def _log_loss(proba: np.ndarray, y_idx: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    return float(log_loss(y_idx, np.clip(proba, 1e-15, 1), labels=range(proba.shape[1])))


@dataclass(frozen=True)
class CalibrationScores:
    """ECE and log loss of one split's probabilities before and after temperature scaling."""

    ece_before: float
    ece_after: float
    log_loss_before: float
    log_loss_after: float


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and how it changed ECE / log loss on each scored split.

    Attributes:
        temperature: the fitted T (1.0 when every held-out prediction was right).
        fitted_on: what T was fitted on ("validation", "out-of-fold"), as metrics.json says it.
        n: how many predictions T was fitted on.
        scores: split name -> `CalibrationScores`; the fitted split first (optimistic: T was
            chosen on it), then any further ones passed as `also` (honest).
    """

    temperature: float
    fitted_on: str
    n: int
    scores: dict[str, CalibrationScores] = field(default_factory=dict)

    @property
    def scaler(self) -> TemperatureScaler:
        return TemperatureScaler(self.temperature)

    def transform(self, proba: np.ndarray) -> np.ndarray:
        """The probabilities rescaled by the fitted temperature."""
        return self.scaler.transform(proba)

    def to_dict(self) -> dict[str, Any]:
        """The `metrics.json` "calibration" block: temperature, fitted_on and one entry of
        scores per split (keys as written before this type existed; `n` is not included)."""
        out: dict[str, Any] = {"temperature": self.temperature, "fitted_on": self.fitted_on}
        out.update({name: asdict(s) for name, s in self.scores.items()})
        return out


def calibrate(
    proba: np.ndarray,
    y_idx: np.ndarray,
    *,
    fitted_on: str = "validation",
    name: str = "val",
    also: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> Calibration:
    """Fit temperature scaling on held-out `proba` (true class indices `y_idx`) and score it.

    The one temperature fit every run and the service use, so the same predictions give the
    same T everywhere. ECE and log loss before/after are scored on the fitted split (under
    `name`) and on each split of `also` (name -> (proba, y_idx)), e.g. a test set.

    Example:
        >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
        >>> cal = calibrate(p, np.array([0, 1, 1, 1]))
        >>> cal.temperature > 1, cal.scores["val"].ece_after < cal.scores["val"].ece_before
        (True, True)
    """
    proba = np.asarray(proba)
    y = np.asarray(y_idx)
    ts = TemperatureScaler().fit(proba, y)
    scores = {}
    for split, (p, yy) in {name: (proba, y), **(also or {})}.items():
        p, yy = np.asarray(p), np.asarray(yy)
        after = ts.transform(p)
        scores[split] = CalibrationScores(
            ece_before=expected_calibration_error(p, yy),
            ece_after=expected_calibration_error(after, yy),
            log_loss_before=_log_loss(p, yy),
            log_loss_after=_log_loss(after, yy),
        )
    return Calibration(ts.temperature_, fitted_on, len(y), scores)
