"""Decoding for `torch.utils.data.DataLoader`: a broken image becomes a reported failure, not a
crashed batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from transferlab.data._images import load_image
from transferlab.exceptions import ImageLoadError

__all__ = ["ImageFileDataset", "collate_skipping_failures"]


class ImageFileDataset(torch.utils.data.Dataset):
    """Decodes and preprocesses images; a broken one yields its error instead of a tensor."""

    def __init__(self, paths: Sequence[str], transform: Any, max_pixels: int | None) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            img = load_image(self.paths[i], max_pixels=self.max_pixels)
            return i, self.transform(img), ""
        except ImageLoadError as exc:
            return i, None, exc.reason


def collate_skipping_failures(
    batch: list[tuple[int, torch.Tensor | None, str]],
) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """(indices of the decoded images, their stacked tensors or None, (index, reason) failures)."""
    ok = [(i, t) for i, t, _ in batch if t is not None]
    bad = [(i, err) for i, t, err in batch if t is None]
    x = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], x, bad
