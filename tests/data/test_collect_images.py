"""collect_images: every image to extract from a path, with its split name."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from tests._helpers import build_image_folder
from tests.data._files import _make_tree, _save_png
from transferlab.data import collect_images, load_dataset, load_image
from transferlab.exceptions import DatasetError, DatasetNotFoundError

# --------------------------------------------------------------------------------------------
# collect_images
# --------------------------------------------------------------------------------------------


def test_collect_images_loose_folder(tmp_path):
    root = tmp_path / "loose"
    paths = [_save_png(root / f"img_{i}.png") for i in range(4)]
    (root / "notes.txt").write_text("x")
    samples, splits = collect_images(root)
    assert sorted(s.path for s in samples) == sorted(str(p) for p in paths)
    assert all(s.label is None for s in samples)
    assert splits == [""] * 4


def test_collect_images_single_class_folder_is_unlabelled(tmp_path):
    root = _make_tree(tmp_path / "one", {"only": 3})
    samples, splits = collect_images(root)
    assert len(samples) == 3
    assert all(s.label is None for s in samples)
    assert splits == ["", "", ""]


def test_collect_images_single_file(tmp_path):
    p = _save_png(tmp_path / "one.png")
    samples, splits = collect_images(p)
    assert [s.path for s in samples] == [str(p)]
    assert samples[0].label is None
    assert splits == [""]


def test_collect_images_dataset_gives_split_names(tmp_path):
    root = tmp_path / "ds"
    _make_tree(root / "train", {"a": 4, "b": 3})
    _make_tree(root / "val", {"a": 2, "b": 2})
    samples, splits = collect_images(root)
    assert len(samples) == len(splits) == 11
    assert Counter(splits) == {"train": 7, "val": 4}
    for s, split in zip(samples, splits, strict=True):
        assert f"{os.sep}{split}{os.sep}" in s.path
        assert s.label in ("a", "b")


def test_collect_images_single_tree_matches_load_dataset(tmp_path):
    root = _make_tree(tmp_path / "ds", {"a": 10, "b": 10})
    samples, splits = collect_images(root, val_fraction=0.3, seed=4)
    ds = load_dataset(root, val_fraction=0.3, seed=4)
    assert [s for s, sp in zip(samples, splits, strict=True) if sp == "val"] == ds.val
    assert [s for s, sp in zip(samples, splits, strict=True) if sp == "train"] == ds.train


def test_collect_images_missing_path(tmp_path):
    with pytest.raises(DatasetNotFoundError):
        collect_images(tmp_path / "absent")


def test_collect_images_folder_without_images(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "README.md").write_text("x")
    with pytest.raises(DatasetError, match="no image files"):
        collect_images(root)


def test_build_image_folder_images_load(tmp_path):
    root = build_image_folder(tmp_path / "gen", n_per_class=2, ext=".jpg")
    samples, _ = collect_images(root)
    for s in samples:
        img = load_image(s.path)
        assert img.mode == "RGB"
        assert img.size == (64, 64)
