"""The `transferlab` command line: one module per command, each a thin layer over the library."""

from __future__ import annotations

from transferlab.cli import backbones, cache, demo, extract, fit, predict  # noqa: F401 - registers commands
from transferlab.cli._common import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
