"""Shared CLI plumbing: the typer app, error handling, output helpers.

Library errors (`TransferlabError`) print as one red line on stderr and exit with code 2; no
traceback. Ctrl-C exits with 130. Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="transferlab",
    help="Transfer learning on images: pretrained backbones, cached features, linear probes.\n\n"
    "Start with `transferlab demo`, then `transferlab fit DATA --out DIR`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_USER_ERROR = 2


def handle_errors(func: F) -> F:
    """Turn library errors into a clear message and a non-zero exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from transferlab.exceptions import TransferlabError

        _configure_logging()
        try:
            return func(*args, **kwargs)
        except TransferlabError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            err.print(
                "[yellow]interrupted[/]: finished work (cached features, saved files) is kept"
            )
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _configure_logging() -> None:
    level = os.environ.get("TRANSFERLAB_LOG", "WARNING").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.WARNING), format="%(levelname)s %(name)s: %(message)s"
    )


def print_json(data: Any) -> None:
    import json

    from transferlab._internal.json import json_default as _json_default

    typer.echo(json.dumps(data, indent=2, default=_json_default))


# Options shared by the commands that extract features (one definition, same help everywhere).
BackboneOpt = typer.Option(
    "efficientnet_lite0", "--backbone", "-b", help="Backbone name (see `transferlab backbones`)."
)
LayerOpt = typer.Option(
    "pre_logits", "--layer", "-l", help="Layer tap: stem, stageN, pre_logits or logits."
)
PoolOpt = typer.Option("avg", "--pool", help="Pooling of spatial layers: avg, max or avgmax.")
WeightsOpt = typer.Option(
    "default",
    "--weights",
    help="'default' (packaged or hub), 'hub', 'random', or a .pth/.safetensors file.",
)
BatchOpt = typer.Option(32, "--batch-size", min=1, help="Images per forward pass.")
WorkersOpt = typer.Option(
    None, "--workers", min=0, help="Decoding processes (default: chosen from cores and input size)."
)
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu or cuda.")
CacheDirOpt = typer.Option(
    None,
    "--cache-dir",
    help="Feature cache folder (default: $TRANSFERLAB_CACHE_DIR or the user cache dir).",
)
NoCacheOpt = typer.Option(False, "--no-cache", help="Do not read or write the feature cache.")
MaxPixelsOpt = typer.Option(
    89_478_485, "--max-pixels", min=1, help="Refuse larger images (decompression bombs)."
)
StrictOpt = typer.Option(
    False, "--strict", help="Fail on the first broken image instead of skipping it."
)
ValFractionOpt = typer.Option(
    0.2, "--val-fraction", help="Validation share when the data has no val/ split."
)
SeedOpt = typer.Option(0, "--seed", help="Seed for the split and the solvers.")
