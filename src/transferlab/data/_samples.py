"""Built-in demo data, made from photos that ship inside scikit-image (no download).

`make_texture_dataset` cuts random crops from three greyscale texture photographs (brick, grass,
gravel). Training crops come from the top half of each photo and validation crops from the bottom
half, so no validation pixel was seen in training. It is the data behind `transferlab demo`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["TEXTURE_CLASSES", "make_texture_dataset"]

TEXTURE_CLASSES = ("brick", "grass", "gravel")


def make_texture_dataset(
    root: str | os.PathLike[str], *, n_train: int = 20, n_val: int = 10, seed: int = 0
) -> Path:
    """Write ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``; returns `root`.

    Crops are 96-224 px squares, randomly flipped and rotated by multiples of 90 degrees.

    Example:
        >>> import tempfile
        >>> root = make_texture_dataset(tempfile.mkdtemp(), n_train=2, n_val=1)
        >>> sorted(p.name for p in (root / "train").iterdir())
        ['brick', 'grass', 'gravel']
    """
    from skimage import data as skdata

    root = Path(root)
    rng = np.random.default_rng(seed)
    for cls in TEXTURE_CLASSES:
        photo = getattr(skdata, cls)()  # 512x512 uint8 greyscale
        half = photo.shape[0] // 2
        for split, n, rows in (
            ("train", n_train, (0, half)),
            ("val", n_val, (half, photo.shape[0])),
        ):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                size = int(rng.integers(96, 225))
                size = min(size, rows[1] - rows[0])
                y = int(rng.integers(rows[0], rows[1] - size + 1))
                x = int(rng.integers(0, photo.shape[1] - size + 1))
                crop = photo[y : y + size, x : x + size]
                crop = np.rot90(crop, int(rng.integers(0, 4)))
                if rng.random() < 0.5:
                    crop = crop[:, ::-1]
                Image.fromarray(np.ascontiguousarray(crop)).save(
                    folder / f"{cls}_{i:03d}.jpg", quality=92
                )
    return root
