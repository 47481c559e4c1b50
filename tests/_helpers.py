"""Helpers the tests share: generated image folders of learnable patterns, the real datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def shared_dataset(name: str) -> Path:
    """Path to ../shared/datasets/<name>, or skip the test with the reason."""
    path = SHARED_DATASETS / name
    if not path.is_dir():
        pytest.skip(
            f"real dataset {name!r} not found at {path} (needs ../shared/datasets beside the repo)"
        )
    return path


def make_pattern_image(kind: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """Simple, learnable classes: horizontal stripes, vertical stripes, or a checkerboard."""
    period = int(rng.integers(6, 12))
    phase = int(rng.integers(0, period))
    yy, xx = np.mgrid[0:size, 0:size]
    if kind == "hstripes":
        m = ((yy + phase) // (period // 2)) % 2
    elif kind == "vstripes":
        m = ((xx + phase) // (period // 2)) % 2
    else:
        m = (((yy + phase) // (period // 2)) + ((xx + phase) // (period // 2))) % 2
    colour = rng.integers(80, 255, size=3)
    arr = (m[..., None] * colour[None, None, :]).astype(np.uint8)
    noise = rng.integers(0, 30, size=arr.shape, dtype=np.uint8)
    return Image.fromarray(np.clip(arr.astype(int) + noise, 0, 255).astype(np.uint8), "RGB")


def build_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("hstripes", "vstripes"),
    n_per_class: int = 6,
    seed: int = 0,
    ext: str = ".png",
) -> Path:
    """root/<class>/<i><ext>, small generated images of distinguishable patterns."""
    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            make_pattern_image(cls, rng).save(root / cls / f"{cls}_{i}{ext}")
    return root


def build_photos_vs_edges(
    root: Path, n_train: int, n_val: int, *, val_as_edges: bool = True, autocontrast: bool = True
) -> Path:
    """A two-class split from hymenoptera: train/ the photos, val/ edge maps of the val photos
    (dark lines on white; `autocontrast` stretches them) or, without `val_as_edges`, the photos.
    Thumbnails of 256 px keep the features quick."""
    from PIL import ImageFilter, ImageOps

    shared = SHARED_DATASETS / "hymenoptera"
    for split, n in (("train", n_train), ("val", n_val)):
        for c in ("ants", "bees"):
            out = root / split / c
            out.mkdir(parents=True, exist_ok=True)
            for p in sorted((shared / split / c).glob("*.jpg"))[:n]:
                im = Image.open(p).convert("RGB")
                im.thumbnail((256, 256))
                if split == "val" and val_as_edges:
                    im = ImageOps.invert(im.convert("L").filter(ImageFilter.FIND_EDGES))
                    im = (ImageOps.autocontrast(im) if autocontrast else im).convert("RGB")
                im.save(out / p.name, quality=90)
    return root
