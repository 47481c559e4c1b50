"""`transferlab suggest`: which unlabelled images to label next."""

from __future__ import annotations

from pathlib import Path

import typer

from transferlab.cli import _options as opt
from transferlab.cli._common import command, config_from, out, print_json


@command("suggest")
def suggest_cmd(
    data: Path = typer.Argument(
        ..., help="The labelled images so far (class folders or CSV; one per class is enough)."
    ),
    unlabelled: Path = typer.Option(
        ..., "--pool", help="Folder of unlabelled images to choose from."
    ),
    out_file: Path = typer.Option(
        Path("suggestions.csv"), "--out", "-o", help="CSV to write (rank, path, score, predicted)."
    ),
    n: int = typer.Option(20, "--n", min=1, help="How many images to suggest."),
    strategy: str = typer.Option(
        "auto",
        "--strategy",
        help="auto (measured default), random, margin, typical or margin-diverse.",
    ),
    backbone: opt.Backbone = "efficientnet_lite0",
    layer: opt.Layer = "pre_logits",
    weights: opt.Weights = "default",
    device: opt.Device = "auto",
    cache_dir: opt.CacheDir = None,
    no_cache: opt.NoCache = False,
    seed: opt.Seed = 0,
    overwrite: opt.Overwrite = False,
    as_json: bool = typer.Option(False, "--json", help="Print suggestions.json to stdout."),
) -> None:
    """Rank unlabelled images by how much labelling them should help: typical, spread-out
    images while there are few labels per class, then the probe's least sure ones spread over
    the pool. Label the top of the list first, add them to DATA, run again.

    Examples:
      transferlab suggest labelled/ --pool unlabelled/ --n 20 --out suggestions.csv
    """
    params = dict(locals())  # the parameters, before anything else is bound
    from transferlab.pipeline import SuggestConfig, run_suggest

    cfg = config_from(
        SuggestConfig,
        params,
        data=str(data),
        unlabelled=str(unlabelled),
        out=out_file,
        progress=not as_json,
    )
    res = run_suggest(cfg)
    m = res.metrics
    if as_json:
        print_json(m)
        return
    out.print(f"{m['strategy']}: {m['why']}", markup=False)
    out.print(
        f"{m['n_labelled']} labelled, {m['n_pool']} in the pool; the {len(m['suggestions'])} "
        "to label first:",
        markup=False,
    )
    for r in m["suggestions"][:10]:
        guess = f"  (probe guesses {r['predicted']})" if r["predicted"] else ""
        out.print(f"  {r['rank']:3d}. {r['path']}{guess}", markup=False)
    out.print(f"suggestions: {out_file}", markup=False)
