"""Progress bars for long work: a tqdm bar on stderr when it is a terminal, silent otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["progress"]


@contextmanager
def progress(total: int, desc: str, enabled: bool, unit: str = "img") -> Iterator[Any]:
    """A tqdm bar on stderr when it is a terminal (and `enabled`); silent otherwise."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, disable=None if enabled else True, leave=False)
    try:
        yield bar
    finally:
        bar.close()
