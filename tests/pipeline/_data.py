"""Data the fit/CLI/saved-model tests share: a two-class stripes folder and broken files.

(Candidates for tests/_helpers.py; kept here so these tests need nothing outside their areas.)
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

from tests._helpers import build_image_folder


def make_data(root: Path) -> Path:
    """train/ (8 per class) and val/ (4 per class) of horizontal vs vertical stripes."""
    build_image_folder(root / "train", n_per_class=8, seed=1)
    build_image_folder(root / "val", n_per_class=4, seed=2)
    return root


def add_broken_files(folder: Path) -> dict[str, Path]:
    """One file of each broken kind, named so that sorting puts 'a_zero' first.

    ('Unreadable' is the dangling link: tests run as root, who can read a chmod-000 file.)
    """
    good = next(folder.glob("*.png"))
    buf = io.BytesIO()
    Image.open(good).convert("RGB").save(buf, "JPEG")
    jpeg = buf.getvalue()
    files = {
        "zero": folder / "a_zero.jpg",
        "truncated": folder / "b_truncated.jpg",
        "not_image": folder / "c_notes.png",
        "corrupt": folder / "d_corrupt.png",
        "bomb": folder / "e_bomb.png",
        "broken_link": folder / "g_link.jpg",
    }
    files["zero"].write_bytes(b"")
    files["truncated"].write_bytes(jpeg[: len(jpeg) // 2])
    files["not_image"].write_text("these are my notes, not a picture")
    files["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    Image.new("L", (3000, 3000)).save(files["bomb"])  # over the --max-pixels used below
    files["broken_link"].symlink_to(folder / "does_not_exist.jpg")
    return files
