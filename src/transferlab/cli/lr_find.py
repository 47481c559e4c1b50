"""`transferlab lr-find`: an exponential learning-rate sweep with a plot and a suggestion."""

from __future__ import annotations

from pathlib import Path

import typer

from transferlab.cli import _options as opt
from transferlab.cli._common import command, config_from, out


@command("lr-find")
def lr_find_cmd(
    data: Path = typer.Argument(..., help="The training data (same forms as `fit`)."),
    out_dir: Path = typer.Option(
        Path("runs/lr-find"), "--out", "-o", help="Where lr_find.png and lr_find.json go."
    ),
    backbone: opt.Backbone = "efficientnet_lite0",
    weights: opt.Weights = "default",
    batch_size: opt.TrainBatchSize = 16,
    start_lr: float = typer.Option(1e-7, "--start-lr"),
    end_lr: float = typer.Option(1.0, "--end-lr"),
    num_it: int = typer.Option(60, "--num-it", min=5, help="Steps in the sweep."),
    unfrozen: bool = typer.Option(
        False, "--unfrozen", help="Sweep with the whole network trainable (default: head only)."
    ),
    image_size: int | None = typer.Option(None, "--image-size", min=32),
    val_fraction: opt.ValFraction = 0.2,
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
) -> None:
    """Find a learning rate: train briefly with an exponentially growing LR and plot the loss.

    Example:
      transferlab lr-find ../shared/datasets/hymenoptera --out runs/lr
    """
    params = dict(locals())  # the parameters, before anything else is bound
    from transferlab._internal.json import write_json
    from transferlab.data import load_dataset
    from transferlab.finetune import FinetuneConfig, FineTuner

    ds = load_dataset(data, val_fraction=val_fraction, seed=seed)
    cfg = config_from(FinetuneConfig, params, head_init="random")
    res = FineTuner(cfg).lr_find(
        ds.train, ds.classes, start_lr=start_lr, end_lr=end_lr, num_it=num_it, frozen=not unfrozen
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    png = res.plot(out_dir / "lr_find.png")
    write_json(out_dir / "lr_find.json", res.to_dict())
    out.print(
        f"suggested lr: [bold]{res.suggestion:.2g}[/] ({res.rule}); steepest descent at {res.steepest:.2g}"
    )
    out.print(f"plot: {png}")
    out.print(f"next: transferlab finetune {data} --lr {res.suggestion:.2g}")
