"""Plots as Display objects (scikit-learn style): `from_*` builds, `.plot(ax=None)` draws and
keeps `figure_`/`ax_`. Nothing here calls `plt.show()`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["AccuracyCoverageDisplay", "ImageGridDisplay", "ReliabilityDisplay"]


def _plt() -> Any:
    from transferlab._internal.plotting import pyplot as _pyplot

    return _pyplot()


class ReliabilityDisplay:
    """Reliability diagram: accuracy against confidence per bin, before and after calibration."""

    def __init__(
        self,
        bins: dict[str, np.ndarray],
        ece: float,
        bins_after: dict[str, np.ndarray] | None = None,
        ece_after: float | None = None,
    ) -> None:
        self.bins, self.ece, self.bins_after, self.ece_after = bins, ece, bins_after, ece_after

    @classmethod
    def from_predictions(
        cls,
        proba: np.ndarray,
        y_true_idx: np.ndarray,
        proba_after: np.ndarray | None = None,
        n_bins: int = 10,
    ) -> ReliabilityDisplay:
        from transferlab.evaluate._calibration import expected_calibration_error, reliability_bins

        after = (
            reliability_bins(proba_after, y_true_idx, n_bins) if proba_after is not None else None
        )
        ece_after = (
            expected_calibration_error(proba_after, y_true_idx, n_bins)
            if proba_after is not None
            else None
        )
        return cls(
            reliability_bins(proba, y_true_idx, n_bins),
            expected_calibration_error(proba, y_true_idx, n_bins),
            after,
            ece_after,
        )

    def plot(self, ax: Any = None) -> ReliabilityDisplay:
        plt = _plt()
        if ax is None:
            _, ax = plt.subplots(figsize=(5.5, 5), constrained_layout=True)
        ax.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
        series = [(self.bins, f"as trained (ECE {self.ece:.3f})", "C0")]
        if self.bins_after is not None:
            series.append((self.bins_after, f"temperature-scaled (ECE {self.ece_after:.3f})", "C3"))
        for b, label, colour in series:
            keep = b["count"] > 0
            ax.plot(b["confidence"][keep], b["accuracy"][keep], "o-", color=colour, label=label)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("confidence (top probability)")
        ax.set_ylabel("accuracy")
        ax.set_title("reliability")
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
        self.ax_, self.figure_ = ax, ax.figure
        return self


class AccuracyCoverageDisplay:
    """Accuracy of the predictions kept against the share kept, as the confidence threshold rises."""

    def __init__(self, curve: dict[str, np.ndarray], threshold: float | None = None) -> None:
        self.curve, self.threshold = curve, threshold

    @classmethod
    def from_predictions(
        cls, proba: np.ndarray, y_true_idx: np.ndarray, threshold: float | None = None
    ) -> AccuracyCoverageDisplay:
        from transferlab.evaluate._calibration import accuracy_coverage

        return cls(accuracy_coverage(proba, y_true_idx), threshold)

    def plot(self, ax: Any = None) -> AccuracyCoverageDisplay:
        plt = _plt()
        if ax is None:
            _, ax = plt.subplots(figsize=(5.5, 5), constrained_layout=True)
        c = self.curve
        ax.plot(c["coverage"], c["accuracy"], "-", color="C0")
        for t in (0.5, 0.8, 0.9, 0.95):
            i = int(np.argmin(np.abs(c["threshold"] - t)))
            if np.isfinite(c["accuracy"][i]):
                ax.annotate(
                    f"t={t}",
                    (c["coverage"][i], c["accuracy"][i]),
                    textcoords="offset points",
                    xytext=(5, -12),
                    fontsize=8,
                )
                ax.plot(c["coverage"][i], c["accuracy"][i], "o", color="C0", ms=4)
        if self.threshold is not None:
            i = int(np.argmin(np.abs(c["threshold"] - self.threshold)))
            ax.plot(
                c["coverage"][i],
                c["accuracy"][i],
                "o",
                color="C3",
                ms=8,
                label=f"--threshold {self.threshold}: keeps {c['coverage'][i]:.0%}, accuracy {c['accuracy'][i]:.3f}",
            )
            ax.legend(loc="lower left")
        ax.set_xlabel("coverage (share of images given a label)")
        ax.set_ylabel("accuracy of those labels")
        ax.set_xlim(0, 1.02)
        ax.set_title("accuracy vs coverage")
        ax.grid(alpha=0.3)
        self.ax_, self.figure_ = ax, ax.figure
        return self


class ImageGridDisplay:
    """A grid of thumbnails with captions (true / predicted / probability), red when wrong."""

    def __init__(self, rows: Sequence[dict[str, Any]], title: str = "") -> None:
        self.rows, self.title = list(rows), title

    def plot(self, ncols: int = 4, thumb: int = 160) -> ImageGridDisplay:
        from transferlab.data import load_image
        from transferlab.exceptions import ImageLoadError

        plt = _plt()
        n = max(1, len(self.rows))
        ncols = min(ncols, n)
        nrows = int(np.ceil(n / ncols))
        fig, axes = plt.subplots(
            nrows,
            ncols,
            figsize=(2.6 * ncols, 2.9 * nrows + 0.4),
            squeeze=False,
            constrained_layout=True,
        )
        for ax in axes.ravel():
            ax.axis("off")
        for ax, row in zip(axes.ravel(), self.rows, strict=False):
            try:
                img = load_image(row["path"], draft_size=thumb)
                img.thumbnail((thumb, thumb))
                ax.imshow(np.asarray(img))
            except ImageLoadError:
                ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
            wrong = row["true"] != row["predicted"]
            caption = f"true: {row['true']}\npred: {row['predicted']} ({row['p_predicted']:.2f})"
            if wrong:
                caption += f"\np(true) = {row['p_true']:.2f}"
            ax.set_title(caption, fontsize=8, color="C3" if wrong else "black")
        if self.title:
            fig.suptitle(self.title)
        self.figure_, self.axes_ = fig, axes
        return self
