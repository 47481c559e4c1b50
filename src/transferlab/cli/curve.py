"""`transferlab curve`: few-shot learning curves, transfer against learning from scratch."""

from __future__ import annotations

from pathlib import Path

import typer

from transferlab.cli import _options as opt
from transferlab.cli._common import command, config_from, default_run_dir, out


@command("curve")
def curve_cmd(
    data: opt.LabelledData,
    out_dir: Path | None = opt.run_out("curve", "Report directory"),
    shots: str = typer.Option(
        "1,2,5,10,20,all", "--shots", help="Images per class to train on; 'all' for all."
    ),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Random draws per shot count."),
    baselines: str = typer.Option(
        "pixels,scratch_cnn",
        "--baselines",
        help="From-scratch baselines: pixels, scratch_cnn (or 'none').",
    ),
    cnn_epochs: int = typer.Option(
        30, "--cnn-epochs", min=1, help="Training epochs of the from-scratch CNN."
    ),
    backbone: opt.Backbone = "efficientnet_lite0",
    layer: opt.Layer = "pre_logits",
    weights: opt.Weights = "default",
    val_fraction: opt.ValFraction = 0.2,
    seed: opt.Seed = 0,
    overwrite: opt.Overwrite = False,
) -> None:
    """For 1, 2, 5 ... images per class: the linear probe on pretrained features against a
    logistic regression on raw pixels and a small CNN trained from scratch, on the same draws.

    Example:
      transferlab curve ../shared/datasets/hymenoptera --shots 1,2,5,10,20,all --repeats 5
    """
    params = dict(locals())  # the parameters, before anything else is bound
    from transferlab.evaluate import parse_shots
    from transferlab.pipeline import CurveConfig, run_curve

    methods = ["transfer"] + [
        b.strip() for b in baselines.split(",") if b.strip() and b.strip() != "none"
    ]
    res = run_curve(
        config_from(
            CurveConfig,
            params,
            out=out_dir or default_run_dir(data, "curve"),
            shots=parse_shots(shots),
            methods=methods,
        )
    )
    m = res.metrics
    for i, s in enumerate(m["shots"]):
        row = "  ".join(f"{k} {v[i]:.3f}±{m['std'][k][i]:.3f}" for k, v in m["mean"].items())
        out.print(f"{s!s:>4} per class: {row}", markup=False)
    for line in m["summary"]:
        out.print(line, markup=False)
    out.print(f"report: {res.report}", markup=False)
