"""The output-folder guard every run uses: never write into a folder holding someone's results."""

from __future__ import annotations

from pathlib import Path

from transferlab.exceptions import InvalidParameterError

__all__ = ["prepare_out"]


def prepare_out(out: Path, overwrite: bool) -> None:
    """Create `out`; refuse a file, or a non-empty folder unless `overwrite`."""
    if out.exists() and not out.is_dir():
        raise InvalidParameterError(f"--out {out} is a file; give a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InvalidParameterError(
            f"--out {out} already holds files (a previous run?); choose another directory or pass "
            "--overwrite to replace them"
        )
    out.mkdir(parents=True, exist_ok=True)
