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

__all__ = [
    "EvalReport",
    "MultiLabelReport",
    "evaluate_multilabel",
    "evaluate_predictions",
    "top_k_accuracy",
    "tune_thresholds",
]


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


@dataclass
class MultiLabelReport:
    """Multi-label metrics for one split.

    Attributes:
        mAP: mean over labels of average precision (threshold-free).
        f1_micro, f1_macro: F1 at `thresholds`, pooled over all decisions / averaged over labels.
        subset_accuracy: fraction of images whose whole label set is right.
        per_label: label -> precision, recall, f1, average_precision, support, threshold.
        thresholds: per-label decision thresholds used.
        at_half: the same F1s and subset accuracy with every threshold at 0.5 (not tuned).
        n: number of images.
        classes: the labels.
    """

    mAP: float
    f1_micro: float
    f1_macro: float
    subset_accuracy: float
    per_label: dict[str, dict[str, float]]
    thresholds: list[float]
    at_half: dict[str, float]
    n: int
    classes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tune_thresholds(
    y_true: np.ndarray, proba: np.ndarray, grid: np.ndarray | None = None
) -> np.ndarray:
    """Per-label threshold maximising that label's F1 (0.5 where a label has no positive).

    Example:
        >>> y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
        >>> p = np.array([[0.4, 0.2], [0.35, 0.9], [0.1, 0.7], [0.05, 0.6]])
        >>> tune_thresholds(y, p).round(2).tolist()
        [0.25, 0.68]
    """
    grid = np.linspace(0.05, 0.95, 19) if grid is None else grid
    y_true = np.asarray(y_true)
    out = np.full(y_true.shape[1], 0.5)
    for j in range(y_true.shape[1]):
        if y_true[:, j].sum() == 0:
            continue
        scores = []
        for t in grid:
            pred = proba[:, j] >= t
            tp = float(np.sum(pred & (y_true[:, j] == 1)))
            denom = float(pred.sum() + y_true[:, j].sum())
            scores.append(2 * tp / denom if denom else 0.0)
        best = np.flatnonzero(np.isclose(scores, max(scores)))
        out[j] = float(
            np.mean(grid[best])
        )  # middle of the best plateau: less overfit than its edge
    return out


def evaluate_multilabel(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
    thresholds: Sequence[float] | None = None,
) -> MultiLabelReport:
    """Score per-label probabilities `proba` (n, n_labels) against a 0/1 matrix `y_true`."""
    from sklearn.metrics import average_precision_score, f1_score

    y_true = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=float)
    th = (
        np.full(y_true.shape[1], 0.5) if thresholds is None else np.asarray(thresholds, dtype=float)
    )
    pred = (proba >= th[None, :]).astype(int)
    half = (proba >= 0.5).astype(int)
    p, r, f, s = precision_recall_fscore_support(y_true, pred, average=None, zero_division=0)
    aps = [
        float(average_precision_score(y_true[:, j], proba[:, j]))
        if y_true[:, j].any()
        else float("nan")
        for j in range(y_true.shape[1])
    ]
    per_label = {
        c: {
            "precision": float(p[j]),
            "recall": float(r[j]),
            "f1": float(f[j]),
            "average_precision": aps[j],
            "support": int(s[j]),
            "threshold": float(th[j]),
        }
        for j, c in enumerate(classes)
    }
    valid = [a for a in aps if not np.isnan(a)]
    return MultiLabelReport(
        mAP=float(np.mean(valid)) if valid else float("nan"),
        f1_micro=float(f1_score(y_true, pred, average="micro", zero_division=0)),
        f1_macro=float(f1_score(y_true, pred, average="macro", zero_division=0)),
        subset_accuracy=float(np.mean((pred == y_true).all(axis=1))),
        per_label=per_label,
        thresholds=th.tolist(),
        at_half={
            "f1_micro": float(f1_score(y_true, half, average="micro", zero_division=0)),
            "f1_macro": float(f1_score(y_true, half, average="macro", zero_division=0)),
            "subset_accuracy": float(np.mean((half == y_true).all(axis=1))),
        },
        n=len(y_true),
        classes=[str(c) for c in classes],
    )


def top_k_accuracy(y_true_idx: np.ndarray, proba: np.ndarray, k: int) -> float:
    """Fraction of rows whose true class is among the k most probable."""
    if len(proba) == 0:
        return float("nan")
    k = min(k, proba.shape[1])
    top = np.argsort(-proba, axis=1)[:, :k]
    return float(np.mean((top == np.asarray(y_true_idx)[:, None]).any(axis=1)))
