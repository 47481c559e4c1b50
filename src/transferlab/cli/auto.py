"""`transferlab auto`: the transfer decision made for you, within a time budget."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from transferlab.cli import _options as opt
from transferlab.cli._common import (
    command,
    config_from,
    default_run_dir,
    err,
    out,
    print_domain,
    print_json,
    print_step,
)


@command("auto")
def auto_cmd(
    data: opt.LabelledData,
    out_dir: Path | None = opt.run_out("auto", "Run directory"),
    budget: str = typer.Option(
        "20m",
        "--budget",
        help="Wall-clock budget for the whole run: 20m, 90s, 1h30m or seconds. A fine-tune "
        "whose measured cost does not fit the time left is not started; the probe always runs.",
    ),
    backbones: str = typer.Option(
        "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2",
        "--backbones",
        help="Comma-separated backbones to rank (features, LogME, cross-validated probes).",
    ),
    metric: str = typer.Option(
        "accuracy",
        "--metric",
        help="What candidates are compared by: accuracy or balanced_accuracy.",
    ),
    no_finetune: bool = typer.Option(
        False, "--no-finetune", help="Probes only (no fine-tuning candidates)."
    ),
    target: opt.Target = None,
    remedy: opt.Remedy = "auto",
    weights: opt.Weights = "default",
    device: opt.Device = "auto",
    cache_dir: opt.CacheDir = None,
    no_cache: opt.NoCache = False,
    val_fraction: opt.ValFraction = 0.2,
    seed: opt.Seed = 0,
    overwrite: opt.Overwrite = False,
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json to stdout."),
) -> None:
    """Choose and train the model for you: check the data, rank backbones x layers, measure
    the domain shift, fine-tune with the recipe it calls for where the budget allows, keep the
    best on images held out of the training split, and write one report with every choice
    and its numbers. The validation split is scored once, at the end.

    Example:
      transferlab auto ../shared/datasets/hymenoptera --budget 20m --out runs/auto-hymenoptera
      transferlab auto photos/ --target sketches/   # + the measured-best remedy for that shift
    """
    params = dict(locals())  # the parameters, before anything else is bound
    from transferlab.pipeline import AutoConfig, run_auto
    from transferlab.pipeline._auto import parse_budget

    cfg = config_from(
        AutoConfig,
        params,
        data=str(data),
        out=str(out_dir or default_run_dir(data, "auto")),
        budget_s=parse_budget(budget),
        backbones=tuple(b.strip() for b in backbones.split(",") if b.strip()),
        finetune=not no_finetune,
        cache_dir=str(cache_dir) if cache_dir else None,
        target=str(target) if target else None,
        on_step=print_step,
    )
    res = run_auto(cfg)
    m = res.metrics
    if as_json:
        print_json(m)
        return
    out.print(f"[bold]chosen:[/] {m['chosen']['name']}", highlight=False)
    for c in m["candidates"]:
        if c["status"] in ("chosen", "kept") or c["kind"] == "finetune":
            out.print(f"  {c['status']:8} {c['name']}: {c.get('why', '')}", markup=False)
    line = f"validation accuracy {m['accuracy']:.4f} (scored once, {m['n_val']} images)"
    if m.get("test"):
        line += f"; test accuracy {m['test']['accuracy']:.4f} ({m['n_test']} images)"
    out.print(line, markup=False)
    print_domain(m)
    out.print(f"time: {m['seconds']:.0f} s of {m['budget']['budget_s']:.0f} s", markup=False)
    if m.get("leakage"):
        err.print(f"[yellow]leakage:[/] {escape(m['leakage'])}")
    out.print(f"model: {res.model_dir}", markup=False)
    out.print(f"report: {res.report}", markup=False)
