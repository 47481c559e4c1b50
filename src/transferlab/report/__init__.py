"""Plots and the self-contained HTML report (images embedded, opens offline).

Plotting never calls `plt.show()`; figures are drawn on the Agg backend and saved.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferlab._internal.plotting import pyplot as _pyplot

__all__ = ["html_table", "plot_confusion_matrix", "plot_training_curves", "write_html_report"]




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


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0} td,th{padding:.25em .7em;border-bottom:1px solid #eee;text-align:left}
th{background:#f6f6f6} .num{text-align:right;font-variant-numeric:tabular-nums}
.big{font-size:2em;font-weight:600} .muted{color:#666} img{max-width:100%;height:auto}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.5em 1em}
code{background:#f3f3f3;padding:0 .3em}
"""


def write_html_report(
    path: str | os.PathLike[str],
    *,
    title: str,
    summary: dict[str, Any],
    sections: Sequence[tuple[str, str]] = (),
    images: Sequence[tuple[str, str | os.PathLike[str]]] = (),
) -> Path:
    """Write one self-contained HTML page: key figures first, then tables, then plots.

    Args:
        path: the .html file to write.
        title: page heading.
        summary: label -> value shown as the headline table (first value large).
        sections: (heading, trusted HTML) blocks, in order.
        images: (caption, PNG path) pairs embedded as data URIs.
    """
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
    ]
    parts.append(
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{_CSS}</style></head><body>"
    )
    parts.append(f"<h1>{html.escape(title)}</h1>")
    items = list(summary.items())
    if items:
        k0, v0 = items[0]
        parts.append(
            f"<p><span class='big'>{html.escape(_fmt(v0))}</span> <span class='muted'>{html.escape(k0)}</span></p>"
        )
        parts.append(
            "<table>"
            + "".join(
                f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>"
                for k, v in items[1:]
            )
            + "</table>"
        )
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    for caption, img in images:
        parts.append(f"<h2>{html.escape(caption)}</h2>{_img_tag(Path(img), caption)}")
    parts.append("</body></html>")
    out = Path(path)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A small HTML table; numbers right-aligned, everything escaped."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='num'>{html.escape(_fmt(c))}</td>"
            if isinstance(c, (int, float))
            else f"<td>{html.escape(str(c))}</td>"
            for c in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"
