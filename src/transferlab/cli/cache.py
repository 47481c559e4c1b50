"""`transferlab cache info|clear`: how big the feature cache is, and emptying it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from transferlab.cli import _options as opt
from transferlab.cli._common import app, command, out, print_json

cache_app = typer.Typer(help="Inspect or clear the on-disk feature cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir", help="Cache folder (default: $TRANSFERLAB_CACHE_DIR or the user cache dir)."
    ),
]


@command("info", group=cache_app)
def info_cmd(cache_dir: CacheDir = None, as_json: opt.Json = False) -> None:
    """Where the cache is, its size, and entries per backbone/layer."""
    from transferlab.features import FeatureCache

    info = FeatureCache(cache_dir).info()
    if as_json:
        print_json(info)
        return
    out.print(f"cache: {info['path']}")
    out.print(f"size: {info['bytes'] / 1e6:.1f} MB, {info['entries']} vectors")
    for ns in info["namespaces"]:
        out.print(f"  {ns['backbone']} / {ns['layer']} ({ns['pool']}): {ns['entries']} vectors")


@command("clear", group=cache_app)
def clear_cmd(
    cache_dir: CacheDir = None,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete every cached feature vector (they are recomputed when needed)."""
    from transferlab.features import FeatureCache

    cache = FeatureCache(cache_dir)
    if not yes:
        typer.confirm(f"delete all cached features in {cache.path}?", abort=True)
    n = cache.clear()
    out.print(f"removed {n} cached vectors from {cache.path}")
