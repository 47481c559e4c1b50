"""Metrics on held-out predictions, as a typed report (`EvalReport.to_dict()` for metrics.json)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
)

__all__ = ["EvalReport", "evaluate_predictions"]


@dataclass
class EvalReport:
    """Classification metrics for one split.

    Attributes:
        accuracy: fraction correct.
        balanced_accuracy: mean per-class recall (robust to class imbalance).
        log_loss: cross-entropy of the predicted probabilities (lower is better).
        n: number of images scored.
        classes: class names, the order of `confusion` rows/columns.
        per_class: class -> precision, recall, f1, support.
        confusion: counts, rows = true class, columns = predicted.
        macro: unweighted means of precision, recall, f1.
    """

    accuracy: float
    balanced_accuracy: float
    log_loss: float
    n: int
    classes: list[str]
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]
    macro: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_predictions(
    y_true: Sequence[str] | np.ndarray, proba: np.ndarray, classes: Sequence[str]
) -> EvalReport:
    """Score probabilities `proba` (n, n_classes; columns follow `classes`) against `y_true`.

    Example:
        >>> import numpy as np
        >>> r = evaluate_predictions(["a", "b", "b"], np.array([[.9, .1], [.2, .8], [.6, .4]]), ["a", "b"])
        >>> round(r.accuracy, 3), r.confusion
        (0.667, [[1, 0], [1, 1]])
    """
    classes = [str(c) for c in classes]
    y_true = np.asarray([str(y) for y in y_true])
    proba = np.asarray(proba, dtype=np.float64)
    if len(proba):  # float32 softmax rows sum to 1 only within ~1e-7
        proba = proba / np.clip(proba.sum(axis=1, keepdims=True), 1e-12, None)
    y_pred = (
        np.asarray(classes)[np.argmax(proba, axis=1)] if len(proba) else np.asarray([], dtype=str)
    )
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    per_class = {
        c: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
        }
        for i, c in enumerate(classes)
    }
    cm = confusion_matrix(y_true, y_pred, labels=classes)
    present = [i for i, c in enumerate(classes) if s[i] > 0]
    try:
        ll = float(log_loss(y_true, np.clip(proba, 1e-15, 1), labels=classes))
    except ValueError:
        ll = float("nan")
    return EvalReport(
        accuracy=float(accuracy_score(y_true, y_pred)),
        balanced_accuracy=float(balanced_accuracy_score(y_true, y_pred))
        if len(y_true)
        else float("nan"),
        log_loss=ll,
        n=len(y_true),
        classes=classes,
        per_class=per_class,
        confusion=cm.astype(int).tolist(),
        macro={
            "precision": float(np.mean(p[present])) if present else float("nan"),
            "recall": float(np.mean(r[present])) if present else float("nan"),
            "f1": float(np.mean(f[present])) if present else float("nan"),
        },
    )
