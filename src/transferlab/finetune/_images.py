"""Training images decoded once, kept small and in memory, transformed per access.

On a small CPU, decoding large JPEGs every epoch would compete with training for the same cores,
so each image is decoded once: downsized for the random crops of training, and (when asked) also
passed through the eval geometry for the un-augmented views (the probe that starts the head,
AdaBN, validation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from transferlab.data import Sample, load_image
from transferlab.exceptions import DatasetError, ImageLoadError

__all__ = [
    "Decoded",
    "ImageSet",
    "check_decoded",
    "decode_all",
    "is_grey",
    "preload_size",
    "targets",
]


def preload_size(size: int) -> int:
    """Shorter side images are kept at: enough for random-resized crops at `size`."""
    return math.ceil(size * 1.3)


def is_grey(img: Image.Image) -> bool:
    """All three channels (nearly) equal: greyscale content stored as RGB."""
    arr = np.asarray(img.resize((32, 32)))
    return bool(
        np.abs(arr[..., 0].astype(int) - arr[..., 1]).max() < 3
        and np.abs(arr[..., 1].astype(int) - arr[..., 2]).max() < 3
    )


class ImageSet(torch.utils.data.Dataset):
    """Labelled images decoded once (downsized, in memory) and transformed per access."""

    def __init__(
        self,
        images: list[Image.Image],
        targets: np.ndarray,
        transform: Callable[[Any], torch.Tensor],
    ):
        self.images = images
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), torch.as_tensor(self.targets[i])


@dataclass
class Decoded:
    """The images of `decode_all`: `train` (downsized) and/or `eval` (eval geometry) views of the
    samples at positions `kept`; `failures` for the others."""

    train: list[Image.Image] = field(default_factory=list)
    eval: list[Image.Image] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    failures: list[ImageLoadError] = field(default_factory=list)


def _downsize(img: Image.Image, short_side: int) -> Image.Image:
    w, h = img.size
    scale = short_side / min(w, h)
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
    return img


def _drafted(path: str, img: Image.Image) -> bool:
    """Whether `img` is smaller than the file's own size (JPEG draft mode; EXIF turns allowed)."""
    with Image.open(path) as f:
        return sorted(f.size) != sorted(img.size)


def decode_all(
    samples: Sequence[Sample],
    *,
    max_pixels: int | None,
    progress: bool,
    short_side: int | None = None,
    geometry: Callable[[Image.Image], Image.Image] | None = None,
) -> Decoded:
    """Decode each image once. With `short_side`, a training view reduced to it (JPEG draft mode
    + resize); with `geometry` (the eval resize + centre crop), an eval view, so in-training
    validation sees exactly what `predict` will. With both, the eval view is taken from the same
    decode, before the downsizing, unless JPEG draft mode reduced that decode."""
    from tqdm.auto import tqdm

    out = Decoded()
    for i, s in enumerate(
        tqdm(samples, desc="decode", unit="img", disable=None if progress else True, leave=False)
    ):
        try:
            img = load_image(s.path, max_pixels=max_pixels, draft_size=short_side)
        except ImageLoadError as exc:
            out.failures.append(exc)
            continue
        if geometry is not None:
            if short_side is not None and _drafted(s.path, img):
                # JPEG draft mode decoded at a reduced scale: the eval view must see the image
                # `predict` will, so only these images are decoded a second time, in full
                full = load_image(s.path, max_pixels=max_pixels)
                out.eval.append(geometry(full))
            else:
                out.eval.append(geometry(img))
        if short_side is not None:
            out.train.append(_downsize(img, short_side))
        out.kept.append(i)
    return out


def targets(
    samples: Sequence[Sample], kept: list[int], classes: list[str], *, multi_label: bool
) -> np.ndarray:
    """Class indices (int64) of the samples at `kept`, or their 0/1 label matrix (float32)."""
    chosen = [samples[i] for i in kept]
    if multi_label:
        from transferlab.data import label_matrix

        return label_matrix(chosen, classes).astype(np.float32)
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[s.label] for s in chosen], dtype=np.int64)


def check_decoded(
    y_train: np.ndarray, y_val: np.ndarray, classes: list[str], *, multi_label: bool
) -> None:
    """Every class has a decodable training image, and some validation image decoded."""
    if multi_label:
        missing = [c for c, n in zip(classes, y_train.sum(0), strict=True) if n == 0]
    else:
        present = set(y_train.tolist())
        missing = [c for i, c in enumerate(classes) if i not in present]
    if missing:
        raise DatasetError(f"class(es) {', '.join(missing)} have no decodable training image")
    if not len(y_val):
        raise DatasetError("no validation image could be decoded")
