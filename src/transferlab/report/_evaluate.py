"""The `evaluate` run's plots and page: confusion, calibration, top losses, feature map."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferlab._internal.plotting import pyplot as _pyplot
from transferlab.report._html import html_table, per_class_table, write_html_report
from transferlab.report._plots import plot_report_confusion

__all__ = [
    "evaluation_plots",
    "plot_error_neighbours",
    "plot_feature_map",
    "write_evaluate_multilabel_report",
    "write_evaluate_report",
]


def evaluation_plots(
    out: Path,
    interp: Any,
    proba: np.ndarray,
    raw: np.ndarray,
    y: np.ndarray,
    rep: Any,
    threshold: float | None,
    grid_size: int,
    *,
    split: str = "",
    examples: bool = True,
) -> list[tuple[str, Path]]:
    """Confusion matrix, reliability and accuracy-coverage, top losses and (with `examples`) a
    grid of correct and incorrect predictions; `split` names the images in the confusion plot's
    title. Training runs draw these too (`transferlab.pipeline._views`), without the grid."""
    from transferlab.evaluate._plots import (
        AccuracyCoverageDisplay,
        ImageGridDisplay,
        ReliabilityDisplay,
    )

    plt = _pyplot()
    images = [
        (
            "Confusion matrix",
            plot_report_confusion(rep, out, split=split),
        )
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), constrained_layout=True)
    ReliabilityDisplay.from_predictions(raw.astype(np.float64), y, proba).plot(ax=axes[0])
    AccuracyCoverageDisplay.from_predictions(proba, y, threshold).plot(ax=axes[1])
    fig.savefig(out / "calibration.png", dpi=100)
    plt.close(fig)
    images.append(("Calibration and confidence", out / "calibration.png"))
    top = interp.top_losses(grid_size)
    if top:
        g = ImageGridDisplay(top, "top losses: the images the model got most wrong").plot()
        g.figure_.savefig(out / "top_losses.png", dpi=90)
        plt.close(g.figure_)
        images.append(("Top losses", out / "top_losses.png"))
    if not examples:
        return images
    rows = interp.examples(grid_size // 2, correct=True) + interp.examples(
        grid_size // 2, correct=False
    )
    if rows:
        g = ImageGridDisplay(rows, "predictions: correct (black) and incorrect (red)").plot()
        g.figure_.savefig(out / "predictions_grid.png", dpi=90)
        plt.close(g.figure_)
        images.append(("Correct and incorrect predictions", out / "predictions_grid.png"))
    return images


def plot_feature_map(
    path: Path, points: np.ndarray, labels: Sequence[str], wrong: np.ndarray, layer: str
) -> Path:
    """t-SNE map of the evaluated images coloured by true class, misclassified ones ringed."""
    from transferlab.evaluate import EmbeddingDisplay

    plt = _pyplot()
    d = EmbeddingDisplay(
        points,
        list(labels),
        wrong=wrong,
        title=f"t-SNE of {layer} features (colour: true class)",
    ).plot()
    d.figure_.savefig(path, dpi=100)
    plt.close(d.figure_)
    return path


def plot_error_neighbours(
    path: Path,
    errors: Sequence[Mapping[str, Any]],
    neighbours: Sequence[Sequence[Mapping[str, Any]]],
    k: int,
) -> Path:
    """Each error (a top-losses row) beside its `k` nearest training images (path, label,
    cosine): what the model compared it with."""
    from transferlab.data import load_image

    plt = _pyplot()
    fig, axes = plt.subplots(
        len(errors),
        k + 1,
        figsize=(2.4 * (k + 1), 2.6 * len(errors)),
        squeeze=False,
        constrained_layout=True,
    )
    for r, (e, near) in enumerate(zip(errors, neighbours, strict=True)):
        cells = [
            (
                e["path"],
                f"ERROR true {e['true']}\npred {e['predicted']} ({e['p_predicted']:.2f})",
                "C3",
            )
        ]
        cells += [
            (n["path"], f"train: {n['label']}\ncosine {n['cosine']:.2f}", "black") for n in near
        ]
        for ax, (p, caption, colour) in zip(axes[r], cells, strict=True):
            ax.axis("off")
            try:
                img = load_image(p, draft_size=128)
                img.thumbnail((128, 128))
                ax.imshow(np.asarray(img))
            except Exception:  # a moved training image: leave the cell blank, keep the caption
                pass
            ax.set_title(caption, fontsize=8, color=colour)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_evaluate_report(
    out: Path, m: Mapping[str, Any], images: Sequence[tuple[str, Path]]
) -> Path:
    """report.html of a single-label `evaluate` from its metrics."""
    summary = {
        "accuracy": m["accuracy"],
        "balanced accuracy": m["balanced_accuracy"],
        **{f"top-{k} accuracy": v for k, v in m["top_k_accuracy"].items() if k != "1"},
        "log loss": m["log_loss"],
        "expected calibration error": f"{m['calibration']['ece_calibrated']:.4f} with temperature "
        f"{m['calibration']['temperature']:.3g} ({m['calibration']['ece_uncalibrated']:.4f} without)",
        "images": f"{m['n']} ({m['split']} split of {m['data']}), {m['n_skipped']} skipped",
        "model": m["model"],
    }
    if "threshold" in m:
        t = m["threshold"]
        summary["confidence threshold"] = (
            f"{t['threshold']}: keeps {t['kept']} of {m['n']} ({t['coverage']:.0%}), "
            f"accuracy {t['accuracy_kept']:.4f}; {t['uncertain']} marked uncertain"
        )
    sections = [
        ("Per-class metrics", per_class_table(m["per_class"])),
        (
            "Most confused",
            html_table(
                ["true", "predicted as", "count"],
                [[d["true"], d["predicted"], d["count"]] for d in m["most_confused"][:15]],
            )
            if m["most_confused"]
            else "<p>No confusions.</p>",
        ),
    ]
    return write_html_report(
        out / "report.html",
        title="transferlab evaluate",
        summary=summary,
        sections=sections,
        images=images,
    )


def write_evaluate_multilabel_report(out: Path, m: Mapping[str, Any]) -> Path:
    """report.html of a multi-label `evaluate`: per-label metrics and confusion counts."""
    confusion = m["per_label_confusion"]
    table = html_table(
        ["label", "AP", "precision", "recall", "f1", "TP", "FP", "FN", "TN"],
        [
            [
                c,
                v["average_precision"],
                v["precision"],
                v["recall"],
                v["f1"],
                *confusion[c].values(),
            ]
            for c, v in m["per_label"].items()
        ],
    )
    return write_html_report(
        out / "report.html",
        title="transferlab evaluate (multi-label)",
        summary={
            "mAP": m["mAP"],
            "micro F1": m["f1_micro"],
            "macro F1": m["f1_macro"],
            "subset accuracy": m["accuracy"],
            "images": m["n"],
        },
        sections=[("Per-label metrics and confusion", table)],
    )
