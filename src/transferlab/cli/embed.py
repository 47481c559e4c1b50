"""`transferlab embed`: a 2-D map of any layer's features (t-SNE, UMAP or PCA)."""

from __future__ import annotations

from pathlib import Path

import typer

from transferlab.cli import _options as opt
from transferlab.cli._common import command, config_from, default_run_dir, out


@command("embed")
def embed_cmd(
    data: Path = typer.Argument(
        ..., help="Images: a dataset folder/CSV or a folder of unlabelled images."
    ),
    out_dir: Path | None = opt.run_out("embed", "Output directory"),
    method: str = typer.Option("tsne", "--method", help="tsne, umap or pca."),
    colour: str = typer.Option(
        "class", "--colour", "--color", help="Colour points by 'class', 'split' or 'domain'."
    ),
    domains: list[Path] = typer.Option(
        [],
        "--domain",
        help="Another image folder to map alongside (repeatable); --colour domain tells them apart.",
    ),
    thumbnails: bool = typer.Option(
        False, "--thumbnails", help="Draw image thumbnails on the map."
    ),
    max_points: int = typer.Option(
        3000, "--max-points", min=3, help="Random sample size for large sets."
    ),
    backbone: opt.Backbone = "efficientnet_lite0",
    layer: opt.Layer = "pre_logits",
    weights: opt.Weights = "default",
    seed: opt.Seed = 0,
    overwrite: opt.Overwrite = False,
) -> None:
    """Map images by their features: do classes separate at this layer? Does a split or domain
    sit apart?

    Examples:
      transferlab embed ../shared/datasets/trashnet --method umap --out runs/trash-map
      transferlab embed photos/ --layer stage4 --thumbnails
      transferlab embed cartoons/ --domain photos/ --colour domain --layer stage2
    """
    params = dict(locals())  # the parameters, before anything else is bound
    from transferlab.pipeline import EmbedConfig, run_embed

    res = run_embed(config_from(EmbedConfig, params, out=out_dir or default_run_dir(data, "embed")))
    out.print(
        f"{res.metrics['method']} map of {res.metrics['n']} images: {res.out / 'embedding.png'}",
        markup=False,
    )
    out.print(f"report: {res.report}", markup=False)
