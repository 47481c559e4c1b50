"""The one eval and train transform: timm's `create_transform` where it gives the same tensors as
the hand-written versions it replaced (kept below as references), on real photos."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from tests._helpers import SHARED_DATASETS
from transferlab.data import eval_transform, load_image, train_transform
from transferlab.exceptions import InvalidParameterError

CONFIGS = {
    # efficientnet_lite0's (TF weights): bicubic, mean/std 0.5
    "lite0": {
        "input_size": [3, 224, 224],
        "interpolation": "bicubic",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "crop_pct": 0.875,
        "crop_mode": "center",
    },
    # timm's test_resnet: bilinear, crop_pct 0.95, tuples as timm returns them
    "test_resnet": {
        "input_size": (3, 160, 160),
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "crop_pct": 0.95,
        "crop_mode": "center",
    },
    "imagenet": {
        "input_size": [3, 224, 224],
        "interpolation": "bicubic",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "crop_pct": 1.0,
        "crop_mode": "center",
    },
}


def _photos() -> list[Image.Image]:
    """Real photos of several shapes and modes (colour, greyscale, wide, tall, small)."""
    photos = [
        Image.fromarray(skdata.chelsea()),  # 451x300
        Image.fromarray(skdata.astronaut()),  # 512x512
        Image.fromarray(skdata.camera()).convert("RGB"),  # greyscale
        Image.fromarray(skdata.coffee()),  # 600x400
        Image.fromarray(skdata.rocket()),  # tall
        Image.fromarray(skdata.chelsea()[40:140, 60:120]),  # smaller than the crop
    ]
    hym = sorted((SHARED_DATASETS / "hymenoptera" / "val" / "ants").glob("*.jpg"))[:3]
    photos += [load_image(p) for p in hym]
    return photos


PHOTOS = _photos()


def _reference_eval(cfg: dict, size: int, part: str = "all"):
    """finetune.eval_transform as written by hand before it moved here (the reference)."""
    from torchvision import transforms as T

    interp = (
        T.InterpolationMode.BICUBIC
        if cfg.get("interpolation") == "bicubic"
        else T.InterpolationMode.BILINEAR
    )
    resize = math.floor(size / cfg.get("crop_pct", 0.875))
    geometry = [T.Resize(resize, interpolation=interp, antialias=True), T.CenterCrop(size)]
    tensor = [T.ToTensor(), T.Normalize(cfg["mean"], cfg["std"])]
    return T.Compose({"all": geometry + tensor, "geometry": geometry, "tensor": tensor}[part])


def _reference_train(cfg: dict, size: int, *, greyscale: bool, min_scale: float, jitter: float):
    """finetune.train_transform (augment=True) as it was written before it moved here."""
    from torchvision import transforms as T

    interp = (
        T.InterpolationMode.BICUBIC
        if cfg.get("interpolation") == "bicubic"
        else T.InterpolationMode.BILINEAR
    )
    steps = [
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


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("size", [224, 160, 64])
def test_eval_transform_is_the_hand_written_one(name, size):
    cfg = CONFIGS[name]
    bb = SimpleNamespace(data_config=cfg)
    ours, ref = eval_transform(bb, size), _reference_eval(cfg, size)
    for img in PHOTOS:
        a, b = ours(img), ref(img)
        assert a.shape == b.shape == (3, size, size)
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_eval_transform_parts_compose_to_the_whole(name):
    cfg = CONFIGS[name]
    bb = SimpleNamespace(data_config=cfg)
    geometry, tensor = (
        eval_transform(bb, 96, part="geometry"),
        eval_transform(bb, 96, part="tensor"),
    )
    ref_geometry = _reference_eval(cfg, 96, "geometry")
    for img in PHOTOS:
        cropped = geometry(img)
        assert isinstance(cropped, Image.Image)
        assert np.array_equal(np.asarray(cropped), np.asarray(ref_geometry(img)))
        assert torch.equal(tensor(cropped), eval_transform(bb, 96)(img))
        assert torch.equal(tensor(cropped), _reference_eval(cfg, 96, "tensor")(cropped))


def test_eval_transform_rejects_an_unknown_part():
    with pytest.raises(InvalidParameterError, match="part must be one of all, geometry, tensor"):
        eval_transform(SimpleNamespace(data_config=CONFIGS["lite0"]), 64, part="crop")


def test_eval_transform_at_the_input_size_is_timms_create_transform():
    """What `Backbone.transform()` returned before: timm's transform on the whole data config."""
    import timm.data

    for cfg in CONFIGS.values():
        size = tuple(cfg["input_size"][1:])
        ref = timm.data.create_transform(**cfg, is_training=False)
        ours = eval_transform(SimpleNamespace(data_config=cfg), size)
        for img in PHOTOS:
            assert torch.equal(ours(img), ref(img))


@pytest.mark.parametrize("greyscale", [False, True])
@pytest.mark.parametrize("jitter", [0.0, 0.2, 0.6])
def test_train_transform_draws_the_same_augmentations(greyscale, jitter):
    cfg = CONFIGS["lite0"]
    bb = SimpleNamespace(data_config=cfg)
    ours = train_transform(
        bb, 128, augment=True, greyscale=greyscale, min_scale=0.35, jitter=jitter
    )
    ref = _reference_train(cfg, 128, greyscale=greyscale, min_scale=0.35, jitter=jitter)
    for seed, img in enumerate(PHOTOS):
        torch.manual_seed(seed)
        a = ours(img)
        torch.manual_seed(seed)
        b = ref(img)
        assert torch.equal(a, b)


def test_train_transform_without_augmentation_is_the_eval_transform():
    bb = SimpleNamespace(data_config=CONFIGS["test_resnet"])
    tf = train_transform(bb, 96, augment=False, greyscale=False)
    for img in PHOTOS:
        assert torch.equal(tf(img), _reference_eval(CONFIGS["test_resnet"], 96)(img))


def test_style_augmentation_draws_a_share_colourless_and_repeats_with_the_seed():
    """``style`` (issue 22): that share of the images comes out as a line drawing or
    greyscale (equal channels), drawn from torch's generator so a seeded run repeats."""
    bb = SimpleNamespace(data_config=CONFIGS["lite0"])
    tf = train_transform(bb, 96, augment=True, greyscale=False, jitter=0.0, style=0.5)
    photo = PHOTOS[0]

    def colourless(t: torch.Tensor) -> bool:
        mean = torch.tensor(CONFIGS["lite0"]["mean"]).view(3, 1, 1)
        std = torch.tensor(CONFIGS["lite0"]["std"]).view(3, 1, 1)
        rgb = t * std + mean
        return bool((rgb.max(0).values - rgb.min(0).values).max() < 0.02)

    torch.manual_seed(0)
    drawn = [colourless(tf(photo)) for _ in range(40)]
    assert 10 <= sum(drawn) <= 30  # about half, and never all or none
    torch.manual_seed(0)
    assert [colourless(tf(photo)) for _ in range(40)] == drawn
    plain = train_transform(bb, 96, augment=True, greyscale=False, jitter=0.0)
    assert not any(colourless(plain(photo)) for _ in range(10))
