"""Renamed public names keep working: an alias forwards to the new home and warns once."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["moved_module", "warn_once"]

_warned: set[str] = set()


def warn_once(old: str, new: str) -> None:
    """One `DeprecationWarning` per process for `old`, naming `new`."""
    if old in _warned:
        return
    _warned.add(old)
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)


def moved_module(old: str, new: str) -> Callable[[str], Any]:
    """A module `__getattr__` for `old` that serves every name from module `new`, warning once."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = getattr(importlib.import_module(new), name)  # AttributeError: not there either
        warn_once(f"{old}.{name}", f"{new}.{name}")
        return value

    return __getattr__
