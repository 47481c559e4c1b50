"""`transferlab demo`: the whole fit pipeline on built-in sample images (no download)."""

from __future__ import annotations

from pathlib import Path

import typer

from transferlab.cli import _options as opt
from transferlab.cli._common import command, out, print_fit_summary


@command("demo")
def demo_cmd(
    out_dir: Path = typer.Option(
        Path("runs/demo"), "--out", "-o", help="Where the sample data and the run go."
    ),
    backbone: opt.Backbone = "efficientnet_lite0",
    overwrite: bool = typer.Option(
        True, "--overwrite/--no-overwrite", help="Replace an earlier demo run."
    ),
) -> None:
    """Fit a linear probe on a built-in texture dataset (brick / grass / gravel crops from
    scikit-image's sample photos): extraction, probe, evaluation, saved model and report.

    Example:
      transferlab demo --out runs/demo
    """
    from transferlab.data import make_texture_dataset
    from transferlab.pipeline import FitConfig, run_fit

    data = out_dir / "data"
    if not (data / "train").is_dir():
        make_texture_dataset(data)
    out.print(
        f"sample data: {data} (3 texture classes, greyscale crops; train from the top half of each photo, val from the bottom)"
    )
    result = run_fit(
        FitConfig(data=str(data), out=str(out_dir / "run"), backbone=backbone, overwrite=overwrite)
    )
    print_fit_summary(result)
    model = result.model_dir
    sample = sorted((data / "val" / "gravel").iterdir())[0]
    out.print(f"next: transferlab predict {model} {sample} --top-k 3")
