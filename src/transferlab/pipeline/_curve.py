"""`run_curve`: learning curves of transfer against from-scratch baselines."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferlab._internal.rundir import prepare_out
from transferlab.data import load_dataset
from transferlab.pipeline._results import FLATTEN, Metrics, RunResult, config_alias
from transferlab.pipeline._shared import ExtractorSettings, extract_splits

__all__ = ["CurveConfig", "CurveMetrics", "curve_run", "run_curve"]


@dataclass(frozen=True)
class CurveConfig(ExtractorSettings):
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
    fx = cfg.extractor()
    res, X, kept = extract_splits(fx, {"train": ds.train, "val": ds.val}, on_error="skip")
    curve = learning_curve(
        X["train"],
        [s.label for s in kept["train"]],
        X["val"],
        [s.label for s in kept["val"]],
        train_paths=[s.path for s in kept["train"]],
        val_paths=[s.path for s in kept["val"]],
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
    return RunResult.written(metrics, out, report=report)


curve_run = config_alias("curve_run", run_curve, CurveConfig)
