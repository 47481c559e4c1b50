"""`run_embed`: a 2-D map (t-SNE / UMAP / PCA) of any layer's features."""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferlab._internal.rundir import prepare_out
from transferlab.data import Sample, collect_images, list_images
from transferlab.exceptions import DatasetError, DatasetNotFoundError
from transferlab.pipeline._results import Metrics, RunResult, config_alias
from transferlab.pipeline._shared import ExtractorSettings, check_choice

__all__ = ["EmbedConfig", "EmbedMetrics", "embed_run", "run_embed"]


@dataclass(frozen=True)
class EmbedConfig(ExtractorSettings):
    """Everything `run_embed` needs.

    Attributes:
        method: tsne, umap or pca.
        colour: colour the points by class, split or domain.
        domains: other image folders mapped with `data`, each labelled by its folder name.
        thumbnails: draw the images instead of dots.
        max_points: a random draw of at most this many images (t-SNE is O(n^2)).
    """

    data: str | os.PathLike[str]
    out: str | os.PathLike[str]
    method: str = "tsne"
    colour: str = "class"
    domains: Sequence[str | os.PathLike[str]] = ()
    thumbnails: bool = False
    max_points: int = 3000
    backbone: str = "efficientnet_lite0"
    layer: str = "pre_logits"
    weights: str = "default"
    seed: int = 0
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        check_choice(
            "--colour",
            self.colour,
            ("class", "split", "domain"),
            wording="'class', 'split' or 'domain'",
        )


@dataclass(kw_only=True)
class EmbedMetrics(Metrics):
    """metrics.json of `embed`."""

    method: str
    colour: str
    n: int
    domains: dict[str, int]
    backbone: str
    layer: str
    n_skipped: int
    classes: list[str]


def run_embed(config: EmbedConfig) -> RunResult:
    """A 2-D map of features coloured by class, split or domain: embedding.png, embedding.csv
    (path, label, split, domain, x, y), metrics.json and report.html.

    `domains` are other image folders mapped with `data` (e.g. photos beside cartoons); each
    one's points are labelled by its folder name, and ``colour="domain"`` colours by source.
    """
    from transferlab.evaluate import embed_2d
    from transferlab.report import write_embed_report

    cfg = config
    samples, splits = collect_images(cfg.data, seed=cfg.seed)
    sources = [Path(str(cfg.data)).name] * len(samples)
    for d in cfg.domains:
        dp = Path(d)
        if not dp.exists():
            raise DatasetNotFoundError(f"--domain {dp}: no such file or folder")
        paths = [str(dp)] if dp.is_file() else list_images(dp)[0]
        if not paths:
            raise DatasetError(f"--domain {dp}: no image files in it")
        name = dp.name if dp.name not in sources else f"{dp.parent.name}/{dp.name}"
        samples += [Sample(p) for p in paths]
        splits += [""] * len(paths)
        sources += [name] * len(paths)
    if len(samples) > cfg.max_points:  # a map of thousands of points says no more
        rng = np.random.default_rng(cfg.seed)
        keep = np.sort(rng.choice(len(samples), size=cfg.max_points, replace=False))
        samples, splits = [samples[i] for i in keep], [splits[i] for i in keep]
        sources = [sources[i] for i in keep]
    out = Path(cfg.out)
    prepare_out(out, cfg.overwrite)
    fx = cfg.extractor()
    res = fx.extract([s.path for s in samples], on_error="skip")
    kept = res.select(samples)
    kept_splits = [sp or "-" for sp in res.select(splits)]
    kept_sources = res.select(sources)
    points = embed_2d(res.features[cfg.layer], cfg.method, seed=cfg.seed)
    labels = [s.label or "(unlabelled)" for s in kept]
    by = {"class": labels, "split": kept_splits, "domain": kept_sources}[cfg.colour]
    report = write_embed_report(
        out,
        Path(str(cfg.data)).name,
        points,
        by,
        [s.path for s in kept],
        title=f"{cfg.method.upper()} of {cfg.backbone} / {cfg.layer} ({len(kept)} images)",
        map_name=f"{cfg.method} of {cfg.backbone} / {cfg.layer}",
        thumbnails=cfg.thumbnails,
    )
    with open(out / "embedding.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split", "domain", "x", "y"])
        for s, sp, dom, (x, y) in zip(kept, kept_splits, kept_sources, points, strict=True):
            w.writerow([s.path, s.label or "", sp, dom, f"{x:.5f}", f"{y:.5f}"])
    metrics = EmbedMetrics(
        method=cfg.method,
        colour=cfg.colour,
        n=len(kept),
        domains=dict(Counter(kept_sources)),
        backbone=cfg.backbone,
        layer=cfg.layer,
        n_skipped=len(res.failures),
        classes=sorted(set(labels)),
    )
    return RunResult.written(metrics, out, report=report)


embed_run = config_alias("embed_run", run_embed, EmbedConfig)
