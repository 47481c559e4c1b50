"""What the fine-tuning tests share: a fast configuration and a two-class stripes folder."""

from __future__ import annotations

from pathlib import Path

from tests._helpers import build_image_folder

#: A tiny random-weights network at 48 px, batch 4, no worker processes: seconds per run.
FAST = {
    "backbone": "test_resnet",
    "weights": "random",
    "image_size": 48,
    "batch_size": 4,
    "num_workers": 0,
}


def make_data(root: Path) -> Path:
    """train/ (8 per class) and val/ (4 per class) of horizontal vs vertical stripes."""
    build_image_folder(root / "train", n_per_class=8, seed=1)
    build_image_folder(root / "val", n_per_class=4, seed=2)
    return root
