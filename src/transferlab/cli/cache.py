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


#: what the cache folder holds besides the vectors: ONNX exports (and their int8 quantisations),
#: backbone cards, and the memos of finished runs (a repeated `fit` restores its outputs)
_PARTS = {"onnx": "ONNX exports", "cards": "backbone cards", "runs": "run memos"}


def _part_sizes(folder: Path) -> dict[str, dict[str, int]]:
    sizes = {}
    for name in _PARTS:
        files = (
            [p for p in (folder / name).rglob("*") if p.is_file()]
            if (folder / name).is_dir()
            else []
        )
        sizes[name] = {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}
    return sizes


@command("info", group=cache_app)
def info_cmd(cache_dir: CacheDir = None, as_json: opt.Json = False) -> None:
    """Where the cache is, its size, and entries per backbone/layer."""
    from transferlab.features import FeatureCache

    cache = FeatureCache(cache_dir)
    info = {**cache.info(), "parts": _part_sizes(cache.directory)}
    if as_json:
        print_json(info)
        return
    out.print(f"cache: {info['path']}")
    out.print(f"size: {info['bytes'] / 1e6:.1f} MB, {info['entries']} vectors")
    for ns in info["namespaces"]:
        out.print(f"  {ns['backbone']} / {ns['layer']} ({ns['pool']}): {ns['entries']} vectors")
    for name, label in _PARTS.items():
        part = info["parts"][name]
        out.print(f"{label}: {part['files']} files, {part['bytes'] / 1e6:.1f} MB ({name}/)")


@command("clear", group=cache_app)
def clear_cmd(
    cache_dir: CacheDir = None,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    everything: bool = typer.Option(
        False, "--all", help="Also delete the ONNX exports and backbone cards (remade on use)."
    ),
) -> None:
    """Delete every cached feature vector and run memo (they are recomputed when needed);
    with --all also the ONNX exports and backbone cards."""
    import shutil

    from transferlab.features import FeatureCache

    cache = FeatureCache(cache_dir)
    if not yes:
        typer.confirm(f"delete all cached features in {cache.path}?", abort=True)
    n = cache.clear()
    out.print(f"removed {n} cached vectors from {cache.path}")
    for name in ("runs", "onnx", "cards") if everything else ("runs",):
        if (cache.directory / name).is_dir():
            shutil.rmtree(cache.directory / name)
            out.print(f"removed the {_PARTS[name]} in {cache.directory / name}")
