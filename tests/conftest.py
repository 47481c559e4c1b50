"""Shared fixtures: tiny generated image folders, an isolated feature cache. Helpers: tests/_helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests._helpers import build_image_folder


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test run uses its own feature cache, never the user's."""
    os.environ["TRANSFERLAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("feature-cache"))


@pytest.fixture(autouse=True, scope="session")
def _agg_backend() -> None:
    import matplotlib

    matplotlib.use("Agg")


@pytest.fixture
def tiny_image_folder(tmp_path: Path) -> Path:
    """Two classes x 6 images, one tree (split by load_dataset)."""
    return build_image_folder(tmp_path / "tiny")


@pytest.fixture
def tiny_split_folder(tmp_path: Path) -> Path:
    """train/ and val/ trees, two classes."""
    root = tmp_path / "split"
    build_image_folder(root / "train", n_per_class=6, seed=1)
    build_image_folder(root / "val", n_per_class=3, seed=2)
    return root


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip, with the reason, where CUDA is not available."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
        for item in gpu_items:
            item.add_marker(skip)
