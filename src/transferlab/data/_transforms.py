"""The one eval and the one train transform: PIL image in, normalised tensor out.

Both read the backbone's timm data config (``input_size``, ``interpolation``, ``mean``, ``std``,
``crop_pct``, ``crop_mode``) and nothing else, so any object with a ``data_config`` mapping will
do (this layer sits below `transferlab.backbones` and does not import it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch

from transferlab.exceptions import InvalidParameterError

__all__ = ["eval_transform", "train_transform"]

#: Names of the `eval_transform` parts: geometry (resize + crop, on PIL images), tensor
#: (to tensor + normalise), or both.
PARTS = ("all", "geometry", "tensor")


class HasDataConfig(Protocol):
    """A backbone, as far as preprocessing is concerned: its timm data config."""

    @property
    def data_config(self) -> Mapping[str, Any]: ...


def eval_transform(
    backbone: HasDataConfig, size: int | tuple[int, int], *, part: str = "all"
) -> Callable[[Any], torch.Tensor]:
    """The backbone's own eval preprocessing at `size`: resize the shorter side, centre crop
    (``part="geometry"``), then to tensor and normalise (``part="tensor"``); ``"all"`` does both.

    This is timm's `create_transform` (``is_training=False``) on the backbone's data config with
    `size` as the input size, cut in two where asked: fine-tuning decodes and crops each image
    once, then converts it every epoch.
    """
    import timm.data

    if part not in PARTS:
        raise InvalidParameterError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    cfg = backbone.data_config
    tf = timm.data.create_transform(
        input_size=size if isinstance(size, int) else tuple(size),
        is_training=False,
        interpolation=cfg.get("interpolation", "bilinear"),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        crop_pct=cfg.get("crop_pct"),
        crop_mode=cfg.get("crop_mode"),
    )
    if part == "all":
        return tf
    from torchvision import transforms as T

    steps = list(tf.transforms)  # [..geometry.., MaybeToTensor, Normalize]
    return T.Compose(steps[:-2] if part == "geometry" else steps[-2:])


def train_transform(
    backbone: HasDataConfig,
    size: int,
    *,
    augment: bool,
    greyscale: bool,
    min_scale: float = 0.35,
    jitter: float = 0.2,
    style: float = 0.0,
) -> Callable[[Any], torch.Tensor]:
    """Random-resized crop (area `min_scale`..1), flip and colour jitter of strength `jitter`
    (brightness/contrast only for greyscale data); without `augment`, `eval_transform`. With
    `style` > 0, that share of the images is first rendered as a line drawing or greyscale
    (`RandomStyle`: the ``style`` remedy for drawing or greyscale targets, issue 22).

    Written with torchvision rather than timm's ``create_transform(is_training=True)``: timm's
    `RandomResizedCropAndInterpolation` draws its crop from Python's `random`, torchvision's from
    torch's generator, so the same seed would crop different boxes and the fine-tuning figures
    (issue 4) would change; timm's jitter also has no "brightness and contrast only" setting for
    greyscale data.
    """
    from torchvision import transforms as T

    if not augment:
        return eval_transform(backbone, size)
    cfg = backbone.data_config
    interp = (
        T.InterpolationMode.BICUBIC
        if cfg.get("interpolation") == "bicubic"
        else T.InterpolationMode.BILINEAR
    )
    steps: list[Any] = [RandomStyle(style)] if style > 0 else []
    steps += [
        T.RandomResizedCrop(size, scale=(min_scale, 1.0), interpolation=interp, antialias=True),
        T.RandomHorizontalFlip(),
    ]
    if jitter > 0:
        colour = (
            T.ColorJitter(jitter, jitter)
            if greyscale
            else T.ColorJitter(jitter, jitter, jitter, min(0.5, jitter / 10))
        )
        steps.append(T.RandomApply([colour], p=0.8))
    return T.Compose([*steps, T.ToTensor(), T.Normalize(cfg["mean"], cfg["std"])])


class RandomStyle:
    """With probability `p`, render a PIL image in one of `STYLES` (drawn uniformly); the
    draws come from torch's generator, so a seeded fine-tune repeats them."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Any) -> Any:
        from transferlab.data._styles import STYLES, render_style

        if float(torch.rand(())) >= self.p:
            return img
        names = list(STYLES)
        return render_style(img, names[int(torch.randint(len(names), ()))])

    def __repr__(self) -> str:
        return f"RandomStyle(p={self.p})"
