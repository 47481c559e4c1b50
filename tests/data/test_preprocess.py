"""`NumpyEvalTransform` gives the torch eval transform's pixels without importing torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests._helpers import shared_dataset
from transferlab.data import eval_transform, load_image
from transferlab.data._preprocess import NumpyEvalTransform
from transferlab.exceptions import InvalidParameterError


class _Cfg:
    def __init__(self, **cfg):
        self.data_config = cfg


LITE0 = {
    "input_size": [3, 224, 224], "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3,
    "crop_pct": 0.875, "crop_mode": "center",
}  # fmt: skip
IMAGENET = {
    "input_size": [3, 260, 260], "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225], "crop_pct": 0.95, "crop_mode": "center",
}  # fmt: skip
SQUASH = {**IMAGENET, "crop_mode": "squash", "input_size": [3, 192, 192]}


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    out = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in ((375, 500), (500, 333), (64, 48), (37, 300), (224, 224), (100, 100))
    ]
    out.append(Image.new("RGB", (120, 90), (10, 200, 30)))
    return out


@pytest.mark.parametrize("cfg", [LITE0, IMAGENET, SQUASH], ids=["lite0", "imagenet", "squash"])
def test_same_pixels_as_the_torch_transform(cfg):
    """Resize, crop (padding images smaller than the crop), scale and normalise as timm's eval
    `create_transform` does: the arrays agree to float rounding."""
    ours, theirs = (
        NumpyEvalTransform(cfg),
        eval_transform(_Cfg(**cfg), tuple(cfg["input_size"][1:])),
    )
    for img in _images():
        a = ours(img)
        b = theirs(img).numpy()
        assert a.shape == b.shape == tuple(cfg["input_size"]) and a.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_same_pixels_on_real_photos():
    root = shared_dataset("hymenoptera")
    paths = sorted(root.glob("val/*/*"))[:12]
    ours, theirs = NumpyEvalTransform(LITE0), eval_transform(_Cfg(**LITE0), (224, 224))
    for p in paths:
        img = load_image(p)
        np.testing.assert_allclose(ours(img), theirs(img).numpy(), atol=1e-6)


def test_modes_it_cannot_reproduce_are_refused():
    with pytest.raises(InvalidParameterError, match="border"):
        NumpyEvalTransform({**LITE0, "crop_mode": "border"})
    with pytest.raises(InvalidParameterError, match="random"):
        NumpyEvalTransform({**LITE0, "interpolation": "random"})


def test_imports_no_torch():
    code = (
        "import sys\nfrom PIL import Image\nfrom transferlab.data._preprocess import NumpyEvalTransform\n"
        f"NumpyEvalTransform({LITE0!r})(Image.new('RGB', (50, 40)))\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
