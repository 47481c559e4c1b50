"""The `embed` run's picture and page: a 2-D map of features, coloured by class, split or domain."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transferlab._internal.plotting import pyplot as _pyplot
from transferlab.report._html import write_html_report

__all__ = ["write_embed_report"]


def write_embed_report(
    out: Path,
    name: str,
    points: np.ndarray,
    colour_by: Sequence[str],
    paths: Sequence[str],
    *,
    title: str,
    map_name: str,
    thumbnails: bool,
) -> Path:
    """embedding.png (`title` above it) and report.html (`map_name` in its summary)."""
    from transferlab.evaluate import EmbeddingDisplay

    plt = _pyplot()
    d = EmbeddingDisplay(points, list(colour_by), title=title, paths=list(paths)).plot(
        thumbnails=thumbnails
    )
    d.figure_.savefig(out / "embedding.png", dpi=100)
    plt.close(d.figure_)
    return write_html_report(
        out / "report.html",
        title=f"transferlab embed — {name}",
        summary={"images": len(paths), "map": map_name},
        images=[("Feature map", out / "embedding.png")],
    )
