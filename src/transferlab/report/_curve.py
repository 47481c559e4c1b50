"""The `curve` run's page: accuracy per images-per-class for each method, and its reading."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from transferlab._internal.plotting import pyplot as _pyplot
from transferlab.report._html import html_table, write_html_report

__all__ = ["write_curve_report"]


def write_curve_report(
    out: Path, dataset: str, curve: Any, *, repeats: int, backbone: str, layer: str
) -> Path:
    """learning_curve.png and report.html of a `LearningCurve`."""
    plt = _pyplot()
    ax = curve.plot()
    ax.figure.savefig(out / "learning_curve.png", dpi=100)
    plt.close(ax.figure)
    header = ["images per class", *curve.scores]
    rows = [
        [
            f"{s} ({n:.0f})" if s == "all" else str(s),
            *[
                f"{np.mean(curve.scores[m][i]):.3f} ± {np.std(curve.scores[m][i]):.3f}"
                for m in curve.scores
            ],
        ]
        for i, (s, n) in enumerate(zip(curve.shots, curve.n_per_class, strict=True))
    ]
    return write_html_report(
        out / "report.html",
        title=f"transferlab curve — {Path(dataset).name}",
        summary={
            "verdict": " ".join(curve.summary[:1]) or "-",
            "repeats": repeats,
            "validation images": curve.n_val,
            "backbone / layer": f"{backbone} / {layer}",
        },
        sections=[
            ("Accuracy (mean ± std over draws)", html_table(header, rows)),
            ("Reading", "".join(f"<p>{html.escape(s)}</p>" for s in curve.summary)),
        ],
        images=[("Learning curves", out / "learning_curve.png")],
    )
