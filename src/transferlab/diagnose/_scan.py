"""One decode of every image for the audit (issue 19): its pixel digest (exact duplicates), a
16 x 16 greyscale thumbnail vector (near-duplicates), its size and file mode (image problems),
or why it would not decode. Reading each file once keeps an audit of thousands of images in
seconds."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from transferlab.data import load_image
from transferlab.exceptions import ImageLoadError

__all__ = [
    "EXTREME_ASPECT",
    "TINY_SIDE",
    "ImageScan",
    "image_problems",
    "scan_images",
]

#: the shorter side (pixels) under which an image counts as tiny: below the 32 px that
#: CIFAR-sized images have, a backbone's 224 px input is mostly interpolation
TINY_SIDE = 32
#: longer / shorter side at or above which an image counts as an extreme aspect ratio: the
#: centre crop of a 3:1 strip throws away two thirds of it
EXTREME_ASPECT = 3.0


@dataclass
class ImageScan:
    """What one pass over the files found.

    Attributes:
        paths: every input path, in order.
        ok: positions of `paths` that decoded (the rows of `thumbnails`).
        digests: per decoded image, a digest of its RGB pixels and size.
        thumbnails: per decoded image, the thumbnail vector (mean removed, unit length).
        sizes: per decoded image, (width, height).
        modes: per decoded image, the PIL mode of the file (before conversion to RGB).
        broken: (path, reason) of each image that would not decode.
    """

    paths: list[str]
    ok: list[int] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    thumbnails: np.ndarray = field(default_factory=lambda: np.zeros((0, 256)))
    sizes: list[tuple[int, int]] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    broken: list[tuple[str, str]] = field(default_factory=list)


def scan_images(
    paths: Sequence[str | os.PathLike[str]],
    *,
    side: int = 16,
    progress: Callable[[int], Any] | None = None,
) -> ImageScan:
    """Decode each image once; `progress` is called with 1 per file (e.g. a tqdm's update)."""
    from PIL import Image

    scan = ImageScan([os.fspath(p) for p in paths])
    rows = []
    for k, p in enumerate(scan.paths):
        try:
            with Image.open(p) as raw:
                mode = raw.mode
            img = load_image(p)
        except ImageLoadError as e:
            scan.broken.append((p, e.reason))
        except OSError as e:  # PIL could not even read the header: load_image says why
            scan.broken.append((p, f"not a readable image ({e.__class__.__name__})"))
        else:
            h = hashlib.blake2b(digest_size=20)
            h.update(f"{img.size[0]}x{img.size[1]}".encode())
            h.update(img.tobytes())
            g = np.asarray(
                img.convert("L").resize((side, side), Image.Resampling.BILINEAR), dtype=np.float64
            ).ravel()
            rows.append(g - g.mean())
            scan.ok.append(k)
            scan.digests.append(h.hexdigest())
            scan.sizes.append(img.size)
            scan.modes.append(mode)
        if progress is not None:
            progress(1)
    X = np.asarray(rows, dtype=np.float64).reshape(len(rows), side * side)
    scan.thumbnails = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return scan


def image_problems(scan: ImageScan) -> dict[str, Any]:
    """Broken files, tiny images, extreme aspect ratios and mixed file modes of a scan.

    Tiny and extreme images are listed one by one only when they are the odd ones out; when most
    images are tiny (a 28 px dataset), that is a property of the data, said once in
    ``all_tiny``.
    """
    tiny, extreme = [], []
    for k, (w, h) in zip(scan.ok, scan.sizes, strict=True):
        short, long_ = min(w, h), max(w, h)
        row = {"path": scan.paths[k], "width": w, "height": h}
        if short < TINY_SIDE:
            tiny.append(row)
        if long_ / max(short, 1) >= EXTREME_ASPECT:
            extreme.append({**row, "aspect": round(long_ / max(short, 1), 2)})
    n = max(len(scan.ok), 1)
    all_tiny = len(tiny) > n / 2
    modes = Counter(scan.modes)
    common = modes.most_common(1)[0][0] if modes else None
    odd_modes = [
        {"path": scan.paths[k], "mode": m}
        for k, m in zip(scan.ok, scan.modes, strict=True)
        if m != common
    ]
    return {
        "broken": [{"path": p, "reason": r} for p, r in scan.broken],
        "tiny": [] if all_tiny else tiny,
        "all_tiny": all_tiny,
        "median_size": (
            [int(np.median([s[0] for s in scan.sizes])), int(np.median([s[1] for s in scan.sizes]))]
            if scan.sizes
            else None
        ),
        "extreme_aspect": sorted(extreme, key=lambda r: -r["aspect"]),
        "modes": dict(modes),
        "odd_modes": odd_modes,
    }
