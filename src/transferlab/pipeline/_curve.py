"""`run_curve`: learning curves of transfer against from-scratch baselines."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferlab._internal.deprecation import warn_once
from transferlab._internal.rundir import prepare_out
from transferlab.data import load_dataset
from transferlab.features import FeatureExtractor
from transferlab.pipeline._results import FLATTEN, Metrics, RunResult

__all__ = ["CurveConfig", "CurveMetrics", "curve_run", "run_curve"]


@dataclass(frozen=True)
class CurveConfig:
    """Everything `run_curve` needs: images per class to try (`shots`), draws per point
    (`repeats`), the methods compared, and the feature extractor of the transfer method."""

    data: str | os.PathLike[str]
    out: str | os.PathLike[str]
    shots: Sequence[int | str] = (1, 2, 5, 10, 20, "all")
    repeats: int = 5
    methods: Sequence[str] = ("transfer", "pixels", "scratch_cnn")
    cnn_epochs: int = 30
    backbone: str = "efficientnet_lite0"
    layer: str = "pre_logits"
    weights: str = "default"
    seed: int = 0
    val_fraction: float = 0.2
    overwrite: bool = False
    progress: bool = True


@dataclass(kw_only=True)
class CurveMetrics(Metrics):
    """metrics.json of `curve`: the `LearningCurve`'s keys, then the run's."""

    curve: Any = field(metadata=FLATTEN)
    dataset: str
    backbone: str
    layer: str
    n_skipped: int
    seconds: float


def run_curve(config: CurveConfig) -> RunResult:
    """Learning curves of transfer vs from-scratch baselines: curve.png, metrics.json, report.html."""
    from transferlab.evaluate import learning_curve
    from transferlab.report import write_curve_report

    cfg = config
    t0 = time.perf_counter()
    ds = load_dataset(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    out = Path(cfg.out)
    prepare_out(out, cfg.overwrite)
    fx = FeatureExtractor(cfg.backbone, layer=cfg.layer, weights=cfg.weights, progress=cfg.progress)
    samples = [*ds.train, *ds.val]
    res = fx.extract([s.path for s in samples], on_error="skip")
    X = res.features[cfg.layer]
    rows = res.rows_of(["train"] * len(ds.train) + ["val"] * len(ds.val), ("train", "val"))
    of_row = res.select(samples)
    tr_s = [of_row[r] for r in rows["train"]]
    va_s = [of_row[r] for r in rows["val"]]
    curve = learning_curve(
        X[rows["train"]],
        [s.label for s in tr_s],
        X[rows["val"]],
        [s.label for s in va_s],
        train_paths=[s.path for s in tr_s],
        val_paths=[s.path for s in va_s],
        shots=cfg.shots,
        repeats=cfg.repeats,
        methods=cfg.methods,
        cnn_epochs=cfg.cnn_epochs,
        seed=cfg.seed,
        progress=cfg.progress,
    )
    report = write_curve_report(
        out, ds.root, curve, repeats=cfg.repeats, backbone=cfg.backbone, layer=cfg.layer
    )
    metrics = CurveMetrics(
        curve=curve,
        dataset=ds.root,
        backbone=cfg.backbone,
        layer=cfg.layer,
        n_skipped=len(res.failures),
        seconds=round(time.perf_counter() - t0, 2),
    )
    metrics_file = metrics.write(out)
    return RunResult(metrics=metrics, out=out, report=report, metrics_file=metrics_file)


def curve_run(
    data: str | os.PathLike[str], out: str | os.PathLike[str], **kwargs: Any
) -> RunResult:
    """Deprecated: `run_curve(CurveConfig(...))` (same keyword arguments)."""
    warn_once("transferlab.pipeline.curve_run", "transferlab.pipeline.run_curve")
    return run_curve(CurveConfig(data=data, out=out, **kwargs))
