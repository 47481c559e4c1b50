"""The plots every training run draws: confusion matrix, training curves (Agg backend, saved)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferlab._internal.plotting import pyplot as _pyplot

__all__ = ["plot_confusion_matrix", "plot_report_confusion", "plot_training_curves"]


def plot_confusion_matrix(
    confusion: Sequence[Sequence[int]],
    classes: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str = "",
) -> Path:
    """Counts and row-normalised confusion matrices side by side, saved as PNG at `path`."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    cm = np.asarray(confusion, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(classes)
    size = max(4.0, 0.55 * n + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size), constrained_layout=True)
    rot = 45 if max((len(c) for c in classes), default=0) > 6 else 0
    ConfusionMatrixDisplay(cm.astype(int), display_labels=list(classes)).plot(
        ax=axes[0], cmap="Blues", colorbar=False, values_format="d", xticks_rotation=rot
    )
    axes[0].set_title("counts")
    ConfusionMatrixDisplay(norm, display_labels=list(classes)).plot(
        ax=axes[1],
        cmap="Blues",
        colorbar=False,
        values_format=".2f",
        xticks_rotation=rot,
        im_kw={"vmin": 0, "vmax": 1},
    )
    axes[1].set_title("row-normalised (recall on the diagonal)")
    if title:
        fig.suptitle(title)
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_report_confusion(rep: Any, out: str | os.PathLike[str], *, split: str = "") -> Path:
    """``out/confusion_matrix.png`` of an `EvalReport`, titled with its accuracy and size (and
    `split`, when the page shows several): the one confusion plot of fit, finetune and evaluate."""
    return plot_confusion_matrix(
        rep.confusion,
        rep.classes,
        Path(out) / "confusion_matrix.png",
        title=f"{split + ': ' if split else ''}accuracy {rep.accuracy:.3f} (n={rep.n})",
    )


def plot_training_curves(
    history: Sequence[dict[str, Any]],
    path: str | os.PathLike[str],
    *,
    baseline: float | None = None,
) -> Path:
    """Train/validation loss and validation accuracy per epoch (phases shaded), saved as PNG.

    `baseline` draws the linear probe's validation accuracy as the line to beat.
    """
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation loss")
    ax_acc.plot(
        epochs, [h["val_accuracy"] for h in history], "o-", color="C2", label="validation accuracy"
    )
    if baseline is not None:
        ax_acc.axhline(baseline, color="grey", ls="--", label=f"linear probe ({baseline:.3f})")
    frozen = [h["epoch"] for h in history if h.get("phase") == "frozen"]
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if frozen:
            ax.axvspan(min(frozen) - 0.5, max(frozen) + 0.5, color="0.92", label="body frozen")
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    ax_loss.set_title("loss")
    ax_acc.set_title("validation accuracy")
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
