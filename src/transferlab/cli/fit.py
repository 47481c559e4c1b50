"""`transferlab fit`: extract features, fit a linear probe, evaluate, save model + report."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from transferlab.cli._common import (
    BackboneOpt,
    BatchOpt,
    CacheDirOpt,
    DeviceOpt,
    LayerOpt,
    MaxPixelsOpt,
    NoCacheOpt,
    PoolOpt,
    SeedOpt,
    StrictOpt,
    ValFractionOpt,
    WeightsOpt,
    WorkersOpt,
    app,
    err,
    handle_errors,
    out,
    print_json,
)


def default_run_dir(data: Path, command: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{command}-{data.resolve().name or 'data'}-{stamp}"


@app.command("fit")
@handle_errors
def fit_cmd(
    data: Path = typer.Argument(
        ..., help="Folder with train/ and val/, a folder of class folders, or a CSV (path,label)."
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", help="Run directory (default: runs/fit-<data>-<time>)."
    ),
    backbone: str = BackboneOpt,
    layer: str = LayerOpt,
    pool: str = PoolOpt,
    weights: str = WeightsOpt,
    classifier: str = typer.Option("logreg", "--classifier", help="logreg, svm or centroid."),
    c: str = typer.Option(
        "1.0", "--C", help="Inverse regularisation, or 'auto' (cross-validated)."
    ),
    balanced: bool = typer.Option(
        False, "--balanced", help="Weight classes inversely to their frequency."
    ),
    val_fraction: float = ValFractionOpt,
    seed: int = SeedOpt,
    strict: bool = StrictOpt,
    batch_size: int = BatchOpt,
    workers: int | None = WorkersOpt,
    device: str = DeviceOpt,
    cache_dir: Path | None = CacheDirOpt,
    no_cache: bool = NoCacheOpt,
    max_pixels: int = MaxPixelsOpt,
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the files of an earlier run in --out."
    ),
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
    as_json: bool = typer.Option(
        False, "--json", help="Print metrics.json instead of the summary."
    ),
) -> None:
    """Fit a linear probe on pretrained features and report held-out accuracy.

    Writes OUT/metrics.json, OUT/report.html, OUT/confusion_matrix.png and OUT/model/.

    Examples:
      transferlab fit ../shared/datasets/hymenoptera --out runs/hymenoptera
      transferlab fit labels.csv --backbone efficientnet_lite2 --layer stage6 --C auto
    """
    from transferlab.exceptions import InvalidParameterError
    from transferlab.pipeline import FitConfig, fit

    try:
        c_value: float | str = "auto" if c == "auto" else float(c)
    except ValueError:
        raise InvalidParameterError(f"--C must be a positive number or 'auto', got {c!r}") from None
    config = FitConfig(
        data=str(data),
        out=str(out_dir or default_run_dir(data, "fit")),
        backbone=backbone,
        layer=layer,
        pool=pool,
        weights=weights,
        classifier=classifier,
        C=c_value,
        class_weight="balanced" if balanced else None,
        val_fraction=val_fraction,
        seed=seed,
        strict=strict,
        batch_size=batch_size,
        num_workers=workers,
        device=device,
        cache_dir=str(cache_dir) if cache_dir else None,
        no_cache=no_cache,
        max_pixels=max_pixels,
        overwrite=overwrite,
        multi_label=multi_label,
        adapt_bn=adapt_bn,
    )
    result = fit(config)
    if as_json:
        print_json(result.metrics)
        return
    print_fit_summary(result)


def print_fit_summary(result: object) -> None:
    """The short summary `fit`, `finetune` and `demo` end with (skipped files on stderr)."""
    from rich.markup import escape

    m = result.metrics  # type: ignore[attr-defined]
    for s in m["skipped"]:
        err.print(f"[yellow]skipped[/] {escape(s['path'])}: {escape(s['reason'])}")
    if m.get("multi_label"):
        out.print(
            f"[bold]{m['backbone']} / {m['layer']}[/] multi-label probe on {len(m['classes'])} labels"
        )
        out.print(f"  train {m['n_train']}  val {m['n_val']}  skipped {m['n_skipped']}")
        out.print(
            f"  [bold green]val mAP {m['mAP']:.4f}[/]  micro F1 {m['f1_micro']:.4f}  macro F1 {m['f1_macro']:.4f}"
            f"  (thresholds tuned on val; micro F1 at 0.5: {m['at_threshold_0.5']['f1_micro']:.4f})"
        )
        out.print(f"  model:  {result.model_dir}")  # type: ignore[attr-defined]
        out.print(f"  report: {result.report}")  # type: ignore[attr-defined]
        return
    if m.get("method") == "finetune":
        head = f"[bold]{m['backbone']}[/] fine-tuned on {len(m['classes'])} classes"
    else:
        head = f"[bold]{m['backbone']} / {m['layer']}[/] + {m['classifier']} probe on {len(m['classes'])} classes"
    out.print(head)
    counts = f"  train {m['n_train']}  val {m['n_val']}"
    counts += f"  test {m['n_test']}" if m.get("n_test") else ""
    out.print(counts + f"  skipped {m['n_skipped']}")
    out.print(
        f"  [bold green]val accuracy {m['accuracy']:.4f}[/]  balanced {m['balanced_accuracy']:.4f}  "
        f"log loss {m['log_loss']:.4f}"
    )
    if m.get("probe_val_accuracy") is not None:
        out.print(f"  linear probe on the same validation images: {m['probe_val_accuracy']:.4f}")
    if "test" in m:
        out.print(f"  test accuracy {m['test']['accuracy']:.4f}")
    if "stage_seconds" in m:
        st = m["stage_seconds"]
        out.print(
            f"  time {m['seconds']:.1f} s: extraction {st['extract']:.1f} s ({m['n_cached']} cached), "
            f"probe {st['probe']:.2f} s"
        )
    else:
        out.print(
            f"  time {m['seconds']:.1f} s, {m['epochs_run']} epochs, best epoch {m['best_epoch']}"
        )
    out.print(f"  model:  {result.model_dir}")  # type: ignore[attr-defined]
    out.print(f"  report: {result.report}")  # type: ignore[attr-defined]
