"""The `transferlab` command line: one module per command, each a thin layer over the library."""

from __future__ import annotations

from transferlab.cli import (  # noqa: F401 - importing registers the commands
    audit,
    auto,
    backbones,
    cache,
    curve,
    demo,
    diagnose,
    embed,
    evaluate,
    export,
    extract,
    finetune,
    fit,
    lr_find,
    predict,
    serve,
    suggest,
)
from transferlab.cli._common import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
