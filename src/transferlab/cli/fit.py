"""`transferlab fit`: extract features, fit a linear probe, evaluate, save model + report."""

from __future__ import annotations

from pathlib import Path

import typer

from transferlab.cli import _options as opt
from transferlab.cli._common import (
    command,
    config_from,
    default_run_dir,
    print_fit_summary,
    print_json,
)

__all__ = ["default_run_dir", "fit_cmd", "print_fit_summary"]


@command("fit")
def fit_cmd(
    data: opt.TrainData,
    out_dir: Path | None = opt.run_out("fit"),
    backbone: opt.Backbone = "efficientnet_lite0",
    layer: opt.Layer = "pre_logits",
    pool: opt.Pool = "avg",
    weights: opt.Weights = "default",
    classifier: str = typer.Option("logreg", "--classifier", help="logreg, svm or centroid."),
    c: str = typer.Option(
        "1.0", "--C", help="Inverse regularisation, or 'auto' (cross-validated)."
    ),
    balanced: bool = typer.Option(
        False, "--balanced", help="Weight classes inversely to their frequency."
    ),
    val_fraction: opt.ValFraction = 0.2,
    seed: opt.Seed = 0,
    strict: opt.Strict = False,
    batch_size: opt.BatchSize = 32,
    workers: opt.Workers = None,
    device: opt.Device = "auto",
    precision: opt.Precision = "auto",
    cache_dir: opt.CacheDir = None,
    no_cache: opt.NoCache = False,
    max_pixels: opt.MaxPixels = 89_478_485,
    overwrite: opt.OverwriteRun = False,
    multi_label: bool = typer.Option(
        False,
        "--multi-label",
        help="CSV labels hold several ';'-separated labels per image (one-vs-rest probe).",
    ),
    adapt_bn: bool = typer.Option(
        False,
        "--adapt-bn",
        help="Re-estimate BatchNorm statistics on the training images first (AdaBN); the "
        "model keeps the adapted backbone. See `transferlab diagnose`.",
    ),
    target: opt.Target = None,
    remedy: opt.Remedy = "auto",
    as_json: opt.MetricsJson = False,
) -> None:
    """Fit a linear probe on pretrained features and report held-out accuracy.

    Writes OUT/metrics.json, OUT/report.html, OUT/confusion_matrix.png and OUT/model/.

    Examples:
      transferlab fit ../shared/datasets/hymenoptera --out runs/hymenoptera
      transferlab fit labels.csv --backbone efficientnet_lite2 --layer stage6 --C auto
      transferlab fit photos/ --target sketches/   # the measured-best remedy for that shift
    """
    params = dict(locals())  # the parameters, before anything else is bound
    from transferlab.exceptions import InvalidParameterError
    from transferlab.pipeline import FitConfig, run_fit

    try:
        c_value: float | str = "auto" if c == "auto" else float(c)
    except ValueError:
        raise InvalidParameterError(f"--C must be a positive number or 'auto', got {c!r}") from None
    config = config_from(
        FitConfig,
        params,
        data=str(data),
        out=str(out_dir or default_run_dir(data, "fit")),
        C=c_value,
        class_weight="balanced" if balanced else None,
        num_workers=workers,
        cache_dir=str(cache_dir) if cache_dir else None,
        target=str(target) if target else None,
    )
    result = run_fit(config)
    if as_json:
        print_json(result.metrics)
        return
    print_fit_summary(result)
