"""Small files the data tests write (all generated in tmp_path)."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _close(actual: tuple[int, ...], expected: tuple[int, ...], tol: int = 0) -> bool:
    return len(actual) == len(expected) and all(
        abs(a - e) <= tol for a, e in zip(actual, expected, strict=True)
    )


def _save_png(path: Path, colour: tuple[int, int, int] = (10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def _make_tree(root: Path, counts: dict[str, int], *, reverse: bool = False) -> Path:
    """root/<class>/<class>_<i>.png with counts[class] tiny images, optionally created backwards."""
    jobs = [(cls, i) for cls, n in counts.items() for i in range(n)]
    for cls, i in reversed(jobs) if reverse else jobs:
        _save_png(root / cls / f"{cls}_{i:03d}.png", (i * 7 % 256, len(cls) * 20, 100))
    return root


def _write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _rel(samples: list, root: Path) -> list[tuple[str, str | None]]:
    return sorted((os.path.relpath(s.path, root), s.label) for s in samples)


def _csv_images(folder: Path, counts: dict[str, int]) -> list[tuple[str, str]]:
    rows = []
    for cls, n in counts.items():
        for i in range(n):
            rel = f"imgs/{cls}_{i:02d}.png"
            _save_png(folder / rel)
            rows.append((rel, cls))
    return rows
