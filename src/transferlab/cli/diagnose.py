"""`transferlab diagnose`, `rank` and `adapt-bn`: will transfer work, with which backbone and
layer, and why not when it does not."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import typer

from transferlab.cli import _options as opt
from transferlab.cli._common import (
    command,
    config_from,
    default_run_dir,
    out,
    print_json,
    print_step,
)

_COLOURS = {"problem": "red", "warning": "yellow", "info": "cyan", "ok": "green"}


def _split(value: str | None) -> tuple[str, ...] | None:
    if not value:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())


@command("diagnose")
def diagnose_cmd(
    data: opt.LabelledData,
    out_dir: Path | None = opt.run_out("diagnose", "Report directory"),
    reference: Path | None = typer.Option(
        None,
        "--reference",
        help="Folder of reference images (default: built-in natural photos shipped with the "
        "dependencies).",
    ),
    target: Path | None = typer.Option(
        None,
        "--target",
        help="Folder of the (unlabelled) images the model will be asked about: are they another "
        "domain than the training images? (The data's own val split is checked too.)",
    ),
    layers: str | None = typer.Option(
        None, "--layers", help="Comma-separated taps to probe (default: all but logits)."
    ),
    max_images: opt.MaxImages = 2000,
    bn_images: int = typer.Option(
        256, "--bn-images", min=8, help="Images for the BatchNorm statistics."
    ),
    adabn: str = typer.Option(
        "auto", "--adabn", help="Measure AdaBN's effect: auto (when shifted), on, off."
    ),
    compare: str | None = typer.Option(
        None,
        "--compare",
        help="Other backbones to score against --backbone (comma-separated), for a backbone "
        "recommendation.",
    ),
    backbone: opt.Backbone = "efficientnet_lite0",
    weights: opt.Weights = "default",
    batch_size: opt.BatchSize = 32,
    device: opt.Device = "auto",
    precision: opt.Precision = "auto",
    cache_dir: opt.CacheDir = None,
    no_cache: opt.NoCache = False,
    val_fraction: opt.ValFraction = 0.2,
    seed: opt.Seed = 0,
    overwrite: opt.Overwrite = False,
    as_json: bool = typer.Option(False, "--json", help="Print diagnosis.json to stdout."),
) -> None:
    """Diagnose transfer before training: probe accuracy per layer, domain gap and BatchNorm shift
    against natural photos, AdaBN, and plain-language findings with the commands to act on them.

    Example:
      transferlab diagnose ../shared/datasets/pneumoniamnist --out runs/diag-pneumonia
    """
    params = dict(locals())  # the parameters, before anything else is bound
    from transferlab.pipeline import DiagnoseConfig, run_diagnose

    cfg = config_from(
        DiagnoseConfig,
        params,
        data=str(data),
        out=str(out_dir or default_run_dir(data, "diagnose")),
        reference=str(reference) if reference else None,
        target=str(target) if target else None,
        layers=_split(layers),
        compare=_split(compare) or (),
        cache_dir=str(cache_dir) if cache_dir else None,
        on_step=print_step,
    )
    res = run_diagnose(cfg)
    if as_json:
        print_json(res.metrics)
        return
    for f in res.metrics["findings"]:
        colour = _COLOURS.get(f["severity"], "white")
        out.print(f"[bold {colour}]{f['severity'].upper():8}[/] {f['title']}")
        out.print(f"         {f['recommendation']}", markup=False)
        for c in f.get("commands", []):
            out.print(f"         $ {c}", markup=False)
    for line in res.metrics.get("skipped") or []:
        out.print(f"SKIPPED  {line}", markup=False)
    out.print(f"report: {res.report}", markup=False)


@command("rank")
def rank_cmd(
    data: opt.LabelledData,
    backbones: str = typer.Option(
        "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2",
        "--backbones",
        help="Comma-separated backbones to score.",
    ),
    weights: str = typer.Option(
        "default",
        "--weights",
        help="'default' (packaged or hub), 'hub', 'random' or a weights file, for every "
        "backbone; or one per backbone, comma-separated in the --backbones order.",
    ),
    layers: str | None = typer.Option(
        None, "--layers", help="Comma-separated taps (default: all but logits)."
    ),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Also measure the cross-validated probe accuracy of each row and each score's "
        "Kendall tau against it.",
    ),
    max_images: opt.MaxImages = 2000,
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", help="Also write rank.json and report.html here."
    ),
    batch_size: opt.BatchSize = 32,
    device: opt.Device = "auto",
    cache_dir: opt.CacheDir = None,
    val_fraction: opt.ValFraction = 0.2,
    seed: opt.Seed = 0,
    overwrite: opt.Overwrite = False,
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON."),
) -> None:
    """Rank backbones x layers by transferability scores (LogME, LEEP, NCE, H-score, kNN),
    computed from features alone, before any training.

    Example:
      transferlab rank ../shared/datasets/hymenoptera --verify --out runs/rank-hym
    """
    params = dict(locals())  # the parameters, before anything else is bound
    from rich.table import Table

    from transferlab.pipeline import RankConfig, RankResult, run_rank
    from transferlab.report import SCORE_COLUMNS, rank_table

    cfg = config_from(
        RankConfig,
        params,
        out=out_dir,
        backbones=_split(backbones) or (),
        weights=_split(weights) or "default",
        layers=_split(layers),
        cache_dir=str(cache_dir) if cache_dir else None,
        on_step=print_step,
    )
    res = cast(RankResult, run_rank(cfg).metrics)  # rank's metrics are the ranked table
    if as_json:
        print_json(res.to_dict())
        return
    header, rows = rank_table(res)
    table = Table(
        title=f"transferability on {data} ({res.n_images} images; value and rank, higher is better)"
    )
    for h in header:
        if h in ("backbone", "layer"):
            table.add_column(h, justify="left", no_wrap=True)
        else:
            table.add_column(h, justify="right")
    for r in rows:
        table.add_row(*[str(c) for c in r])
    out.print(table)
    best = res.best("logme")
    out.print(f"LogME's pick: {best['backbone']} / {best['layer']}", markup=False)
    if res.tau:
        measured = max(res.rows, key=lambda r: r["probe_accuracy"])
        out.print(
            f"measured best: {measured['backbone']} / {measured['layer']} "
            f"(probe {measured['probe_accuracy']:.3f})",
            markup=False,
        )
        out.print(
            "Kendall tau vs probe accuracy: "
            + ", ".join(f"{s} {res.tau[s]:.2f}" for s in SCORE_COLUMNS),
            markup=False,
        )
    out.print("next: " + "\n      ".join(res.next_steps()), markup=False)
    if res.report:
        out.print(f"report: {res.report}", markup=False)


@command("adapt-bn")
def adapt_bn_cmd(
    data: Path = typer.Argument(..., help="Target images (labels are not needed)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for weights.safetensors."),
    max_images: int = typer.Option(
        2000, "--max-images", min=2, help="Images used at most (a random draw)."
    ),
    backbone: opt.Backbone = "efficientnet_lite0",
    weights: opt.Weights = "default",
    batch_size: opt.BatchSize = 32,
    device: opt.Device = "auto",
    seed: opt.Seed = 0,
    overwrite: opt.Overwrite = False,
) -> None:
    """AdaBN: re-estimate the backbone's BatchNorm statistics on your images, without labels,
    and save the weights for `--weights` in fit, extract and finetune.

    Example:
      transferlab adapt-bn ../shared/datasets/pneumoniamnist/train --out adapted/
      transferlab fit ../shared/datasets/pneumoniamnist --weights adapted/weights.safetensors
    """
    params = dict(locals())  # the parameters, before anything else is bound
    from transferlab.pipeline import AdaptBNConfig, run_adapt_bn

    res = run_adapt_bn(config_from(AdaptBNConfig, params, out=out_dir))
    m = res.metrics
    out.print(f"re-estimated BatchNorm statistics on {m['n_images']} images", markup=False)
    out.print("BN shift (W2) before -> after, by depth:", markup=False)
    for tap, before in m["bn_shift_before"].items():
        out.print(f"  {tap:>10}: {before:.3f} -> {m['bn_shift_after'][tap]:.3f}", markup=False)
    out.print(f"weights: {m['weights']}", markup=False)
    out.print(f"use: {m['use']}", markup=False)
