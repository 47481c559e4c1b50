"""Style renderings of photos, and how colourful a set of images is.

Why: when the images a model will be asked about are drawings (sketches, edge maps) or
greyscale, a probe trained on photos has learnt colour and texture it will never see. Training
it also on line and greyscale renderings of the same photos teaches it the shapes instead
(measured in benchmarks/bench_domain_shift.py: hymenoptera photos -> edge maps 0.536 -> 0.843).
The renderings here are deliberately not the filters the benchmark's synthetic targets are made
with (those live in the benchmark), so the gain is not a filter matching itself.

`colourfulness` is what the remedy rule reads: a line-drawing or greyscale target has almost
no saturation, a colour-shifted one has plenty.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from transferlab.data._images import DEFAULT_MAX_PIXELS, load_image
from transferlab.exceptions import ImageLoadError

__all__ = [
    "COLOURLESS_SATURATION",
    "STYLES",
    "colourfulness",
    "render_style",
    "render_styles",
]

#: mean HSV saturation (0-1) under which a set of images counts as colourless: greyscale photos,
#: PIL sketches and edge maps score 0.000, the photo sets in ../shared/datasets 0.19-0.43, and
#: trashnet with its contrast cut to 0.45 (a colour shift, not a drawing) still 0.077
COLOURLESS_SATURATION = 0.03

#: longest side of a rendering: the backbone sees at most a few hundred pixels anyway
_RENDER_SIDE = 320


def _contour(img: Image.Image) -> Image.Image:
    """Dark outlines on white: smoothed greyscale through PIL's contour kernel."""
    g = ImageOps.grayscale(img).filter(ImageFilter.SMOOTH_MORE).filter(ImageFilter.CONTOUR)
    return ImageOps.autocontrast(g, cutoff=2).convert("RGB")


def _grey(img: Image.Image) -> Image.Image:
    return ImageOps.grayscale(img).convert("RGB")


#: style name -> rendering (PIL RGB in, PIL RGB out); "line" + "grey" is the ``style`` remedy
STYLES: dict[str, Callable[[Image.Image], Image.Image]] = {"line": _contour, "grey": _grey}


def render_style(img: Image.Image, style: str) -> Image.Image:
    """One rendering of `img` (see `STYLES`)."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    img = img.convert("RGB")
    if max(img.size) > _RENDER_SIDE:
        img = img.copy()
        img.thumbnail((_RENDER_SIDE, _RENDER_SIDE))
    return STYLES[style](img)


def render_styles(
    paths: Sequence[str | os.PathLike[str]],
    styles: Sequence[str],
    folder: str | os.PathLike[str],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> dict[str, list[str]]:
    """Render every image in every style as PNG files under `folder`, named by the source
    file's content digest (a second call reuses them, and so does the feature cache).

    Returns style -> rendered paths in the order of `paths`. Unreadable images raise
    `ImageLoadError` naming the file (callers pass images they have already read).
    """
    out: dict[str, list[str]] = {s: [] for s in styles}
    root = Path(folder)
    for p in paths:
        with open(p, "rb") as fh:
            digest = hashlib.blake2b(fh.read(), digest_size=16).hexdigest()
        todo = [s for s in styles if not (root / s / f"{digest}.png").exists()]
        img = load_image(p, max_pixels=max_pixels) if todo else None
        for s in styles:
            target = root / s / f"{digest}.png"
            if s in todo and img is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_suffix(".tmp.png")
                render_style(img, s).save(tmp)
                os.replace(tmp, target)
            out[s].append(target.as_posix())
    return out


def colourfulness(
    paths: Sequence[str | os.PathLike[str]],
    *,
    max_images: int = 200,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> float:
    """Mean HSV saturation (0-1) of up to `max_images` evenly spaced images, on thumbnails;
    unreadable images are left out. NaN when none could be read."""
    paths = list(paths)
    if len(paths) > max_images:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, max_images).astype(int)]
    values = []
    for p in paths:
        try:
            img = load_image(p, max_pixels=max_pixels)
        except ImageLoadError:  # a broken file says nothing about colour
            continue
        img.thumbnail((64, 64))
        values.append(float(np.asarray(img.convert("HSV"))[..., 1].mean()) / 255.0)
    return float(np.mean(values)) if values else float("nan")
