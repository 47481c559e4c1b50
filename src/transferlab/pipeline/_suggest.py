"""`run_suggest`: which unlabelled images to label next (issue 19), ranked by how much their
labels should help the probe (`diagnose.suggest_labels`)."""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.exceptions import DatasetError, DatasetNotFoundError, InvalidParameterError
from transferlab.pipeline._results import Metrics, RunResult
from transferlab.pipeline._shared import ExtractorSettings, check_choice, check_min

__all__ = ["SuggestConfig", "SuggestMetrics", "run_suggest"]


@dataclass(frozen=True)
class SuggestConfig(ExtractorSettings):
    """Everything `run_suggest` needs.

    Attributes:
        data: the labelled images so far (a dataset folder or CSV; one image per class is enough).
        unlabelled: a folder of unlabelled images, the pool (searched recursively).
        out: the CSV to write (rank, path, score, predicted, strategy).
        n: how many images to suggest.
        strategy: see `diagnose.STRATEGIES`; ``auto`` is the measured default.
    """

    data: str | os.PathLike[str]
    unlabelled: str | os.PathLike[str]
    out: str | os.PathLike[str] = "suggestions.csv"
    n: int = 20
    strategy: str = "auto"
    backbone: str = "efficientnet_lite0"
    layer: str = "pre_logits"
    weights: str = "default"
    batch_size: int | None = None
    device: str = "auto"
    cache_dir: str | None = None
    no_cache: bool = False
    seed: int = 0
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        from transferlab.diagnose import STRATEGIES

        check_min("--n", self.n, 1)
        check_choice("--strategy", self.strategy, STRATEGIES)


@dataclass(kw_only=True)
class SuggestMetrics(Metrics):
    """What `suggest` chose and why."""

    FILE = "suggestions.json"

    suggestions: list[dict[str, Any]]
    strategy: str
    why: str
    n_labelled: int
    labels_per_class: dict[str, int]
    n_pool: int
    n_pool_already_labelled: int
    skipped: list[dict[str, str]]
    backbone: str
    layer: str
    seconds: float


def run_suggest(config: SuggestConfig) -> RunResult:
    """Rank the pool's images and write the top `n` to `out` (CSV) and suggestions.json beside
    it. Files of the pool (`unlabelled`) identical to a labelled file are left out; broken images are skipped.

    Raises:
        DatasetNotFoundError: `data` or `unlabelled` does not exist.
        DatasetError: no labelled image, or no usable pool image.
        InvalidParameterError: `out` exists (without ``overwrite``) or is a folder.
    """
    from collections import Counter

    from transferlab.data import labelled_images, list_images
    from transferlab.diagnose import suggest_labels
    from transferlab.features import file_digest

    cfg = config
    t0 = time.perf_counter()
    out = Path(cfg.out)
    if out.is_dir():
        raise InvalidParameterError(f"--out {out} is a folder; give the CSV file to write")
    if out.exists() and not cfg.overwrite:
        raise InvalidParameterError(f"--out {out} exists; choose another file or pass --overwrite")
    labelled = labelled_images(cfg.data)
    if not labelled:
        raise DatasetError(f"{cfg.data}: no labelled image")
    pool_dir = Path(cfg.unlabelled)
    if not pool_dir.is_dir():
        raise DatasetNotFoundError(f"--pool {pool_dir}: no such folder")
    pool_all = list_images(pool_dir)[0]

    def digest(path: str) -> str | None:
        try:
            return file_digest(path)
        except Exception:  # unreadable: the extraction below reports it
            return None

    known = {digest(s.path) for s in labelled} - {None}
    pool = [p for p in pool_all if digest(p) not in known]
    if not pool:
        raise DatasetError(
            f"--pool {pool_dir}: no image to suggest ({len(pool_all)} image files, all already "
            "labelled)"
            if pool_all
            else f"--pool {pool_dir}: no image files in it"
        )
    fx = cfg.extractor()
    lab = fx.extract([s.path for s in labelled], on_error="skip")
    unl = fx.extract(pool, on_error="skip")
    if len(unl.paths) == 0:
        raise DatasetError(f"--pool {pool_dir}: none of its {len(pool)} images could be read")
    y = [str(s.label) for s in lab.select(labelled)]
    X_lab = lab.features[cfg.layer] if len(y) else np.zeros((0, unl.features[cfg.layer].shape[1]))
    s = suggest_labels(
        X_lab, y, unl.features[cfg.layer], cfg.n, strategy=cfg.strategy, seed=cfg.seed
    )
    rows = [
        {"rank": r + 1, "path": unl.paths[i], "score": sc, "predicted": pr or ""}
        for r, (i, sc, pr) in enumerate(zip(s.order, s.scores, s.predicted, strict=True))
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["rank", "path", "score", "predicted", "strategy"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "strategy": s.strategy})
    metrics = SuggestMetrics(
        suggestions=rows,
        strategy=s.strategy,
        why=s.why,
        n_labelled=len(y),
        labels_per_class=dict(sorted(Counter(y).items())),
        n_pool=len(unl.paths),
        n_pool_already_labelled=len(pool_all) - len(pool),
        skipped=[{"path": e.path, "reason": e.reason} for e in lab.failures + unl.failures],
        backbone=fx.card_.name,
        layer=cfg.layer,
        seconds=round(time.perf_counter() - t0, 3),
    )
    path = out.with_suffix(".json") if out.suffix.lower() == ".csv" else out.parent / metrics.FILE
    from transferlab._internal.json import write_json

    write_json(path, metrics.to_dict())
    return RunResult(metrics=metrics, out=out.parent, metrics_file=path)
