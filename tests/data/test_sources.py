"""load_dataset on folder layouts (one tree, train/ + val/), and the real datasets."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from tests._helpers import shared_dataset
from tests.data._files import _make_tree, _rel, _save_png
from transferlab.data import load_dataset, load_image

# --------------------------------------------------------------------------------------------
# load_dataset: one tree of class folders
# --------------------------------------------------------------------------------------------


def test_load_dataset_single_tree_stratified_and_deterministic(tmp_path):
    root = _make_tree(tmp_path / "ds", {"cats": 20, "dogs": 20, "owls": 10})
    ds = load_dataset(root, val_fraction=0.2, seed=0)
    assert ds.source == "imagefolder"
    assert ds.root == str(root)
    assert ds.classes == ["cats", "dogs", "owls"]
    assert ds.test == []
    all_paths = {str(p) for p in root.rglob("*.png")}
    assert {s.path for s in ds.train} | {s.path for s in ds.val} == all_paths
    assert not {s.path for s in ds.train} & {s.path for s in ds.val}
    for s in ds.train + ds.val:
        assert Path(s.path).parent.name == s.label
    assert Counter(s.label for s in ds.val) == {"cats": 4, "dogs": 4, "owls": 2}
    assert Counter(s.label for s in ds.train) == {"cats": 16, "dogs": 16, "owls": 8}
    assert len(ds.val) == pytest.approx(0.2 * 50, abs=1)
    assert "seed=0" in ds.split_note

    again = load_dataset(root, val_fraction=0.2, seed=0)
    assert again.train == ds.train
    assert again.val == ds.val

    other = load_dataset(root, val_fraction=0.2, seed=1)
    assert {s.path for s in other.val} != {s.path for s in ds.val}
    assert Counter(s.label for s in other.val) == Counter(s.label for s in ds.val)


@pytest.mark.parametrize("val_fraction", [0.1, 0.25, 0.5])
def test_load_dataset_val_fraction_respected(tmp_path, val_fraction):
    root = _make_tree(tmp_path / "ds", {"a": 20, "b": 20})
    ds = load_dataset(root, val_fraction=val_fraction)
    assert len(ds.val) == pytest.approx(40 * val_fraction, abs=1)
    assert {s.label for s in ds.val} == {"a", "b"}
    assert {s.label for s in ds.train} == {"a", "b"}


def test_load_dataset_split_ignores_file_creation_order(tmp_path):
    counts = {"a": 15, "b": 12}
    first = _make_tree(tmp_path / "one", counts)
    second = _make_tree(tmp_path / "two", counts, reverse=True)
    ds1 = load_dataset(first, seed=3)
    ds2 = load_dataset(second, seed=3)
    assert _rel(ds1.val, first) == _rel(ds2.val, second)
    assert _rel(ds1.train, first) == _rel(ds2.train, second)


def test_load_dataset_with_conftest_fixture(tiny_image_folder):
    ds = load_dataset(tiny_image_folder, val_fraction=0.2)
    assert ds.classes == ["hstripes", "vstripes"]
    assert len(ds.train) + len(ds.val) == 12
    assert Counter(s.label for s in ds.val) == {"hstripes": 1, "vstripes": 1}


def test_load_dataset_accepts_str_and_nested_images(tmp_path):
    root = tmp_path / "ds"
    _make_tree(root, {"a": 3, "b": 3})
    _save_png(root / "a" / "sub" / "deep.png")
    ds = load_dataset(str(root))
    paths = {s.path: s.label for s in ds.train + ds.val}
    assert paths[str(root / "a" / "sub" / "deep.png")] == "a"
    assert len(paths) == 7


def test_load_dataset_ignores_non_images_and_hidden_files(tmp_path):
    root = _make_tree(tmp_path / "ds", {"a": 5, "b": 5})
    (root / "a" / "README.md").write_text("about class a\n")
    (root / "b" / "notes.txt").write_text("x\n")
    (root / "a" / ".DS_Store").write_bytes(b"\x00\x01")
    _save_png(root / "b" / ".hidden.png")
    _save_png(root / "a" / ".ipynb_checkpoints" / "copy.png")
    _save_png(root / ".cache" / "c.png")  # hidden folder at the top is not a class
    ds = load_dataset(root)
    assert ds.classes == ["a", "b"]
    used = {s.path for s in ds.train + ds.val}
    assert len(used) == 10
    assert all(".hidden" not in p and ".ipynb" not in p and ".cache" not in p for p in used)
    assert sorted(ds.ignored) == sorted(
        [str(root / "a" / "README.md"), str(root / "b" / "notes.txt")]
    )
    assert "ignored 2 non-image files" in ds.summary()


def test_load_dataset_image_extensions_case_insensitive(tmp_path):
    root = tmp_path / "ds"
    for cls in ("a", "b"):
        for i, ext in enumerate((".PNG", ".JPG", ".jpeg")):
            p = root / cls / f"{i}{ext}"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(p, format="PNG" if ext == ".PNG" else "JPEG")
    ds = load_dataset(root)
    assert len(ds.train) + len(ds.val) == 6
    assert ds.ignored == []


# --------------------------------------------------------------------------------------------
# load_dataset: train/ + val/ layouts
# --------------------------------------------------------------------------------------------


def test_load_dataset_train_val_folders(tiny_split_folder):
    ds = load_dataset(tiny_split_folder)
    assert ds.source == "imagefolder-split"
    assert ds.classes == ["hstripes", "vstripes"]
    assert len(ds.train) == 12
    assert len(ds.val) == 6
    assert all(Path(s.path).parts[-3] == "train" for s in ds.train)
    assert all(Path(s.path).parts[-3] == "val" for s in ds.val)
    assert ds.test == []


@pytest.mark.parametrize("val_name", ["val", "valid", "validation"])
def test_load_dataset_val_folder_names(tmp_path, val_name):
    root = tmp_path / "ds"
    _make_tree(root / "train", {"a": 4, "b": 4})
    _make_tree(root / val_name, {"a": 2, "b": 1})
    ds = load_dataset(root)
    assert len(ds.train) == 8
    assert len(ds.val) == 3
    assert all(f"{os.sep}{val_name}{os.sep}" in s.path for s in ds.val)
    assert ds.test == []
    assert val_name in ds.split_note


def test_load_dataset_train_and_test_only_uses_test_as_val(tmp_path):
    root = tmp_path / "ds"
    _make_tree(root / "train", {"a": 4, "b": 4})
    _make_tree(root / "test", {"a": 2, "b": 2})
    ds = load_dataset(root)
    assert len(ds.train) == 8
    assert len(ds.val) == 4
    assert all(f"{os.sep}test{os.sep}" in s.path for s in ds.val)
    assert ds.test == []
    assert "validation" in ds.split_note


def test_load_dataset_train_val_test_keeps_test_apart(tmp_path):
    root = tmp_path / "ds"
    _make_tree(root / "train", {"a": 4, "b": 4})
    _make_tree(root / "val", {"a": 2, "b": 2})
    _make_tree(root / "test", {"a": 3, "b": 1})
    ds = load_dataset(root)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 4, 4)
    assert all(f"{os.sep}val{os.sep}" in s.path for s in ds.val)
    assert all(f"{os.sep}test{os.sep}" in s.path for s in ds.test)
    assert Counter(s.label for s in ds.test) == {"a": 3, "b": 1}


def test_load_dataset_train_only_is_split_here(tmp_path):
    root = tmp_path / "ds"
    _make_tree(root / "train", {"a": 10, "b": 10})
    ds = load_dataset(root, val_fraction=0.2)
    assert ds.source == "imagefolder-split"
    assert Counter(s.label for s in ds.val) == {"a": 2, "b": 2}
    assert all(f"{os.sep}train{os.sep}" in s.path for s in ds.train + ds.val)


def test_load_dataset_val_may_lack_a_class(tmp_path):
    root = tmp_path / "ds"
    _make_tree(root / "train", {"a": 3, "b": 3, "c": 3})
    _make_tree(root / "val", {"a": 1, "b": 1})
    ds = load_dataset(root)
    assert ds.classes == ["a", "b", "c"]


# --------------------------------------------------------------------------------------------
# real datasets (skip when ../shared/datasets is absent)
# --------------------------------------------------------------------------------------------


def test_real_hymenoptera_layout():
    root = shared_dataset("hymenoptera")
    ds = load_dataset(root)
    assert ds.source == "imagefolder-split"
    assert ds.classes == ["ants", "bees"]
    assert len(ds.train) == 244
    assert len(ds.val) == 153
    assert ds.test == []
    for s in (ds.train[0], ds.val[-1]):
        img = load_image(s.path)
        assert img.mode == "RGB"


def test_real_pneumoniamnist_test_split_and_greyscale_to_rgb():
    root = shared_dataset("pneumoniamnist")
    ds = load_dataset(root)
    assert ds.classes == ["normal", "pneumonia"]
    assert len(ds.test) == 468
    assert Counter(s.label for s in ds.test) == {"normal": 234, "pneumonia": 234}
    assert len(ds.train) == 2428
    assert len(ds.val) == 270
    for s in ds.test[:3] + ds.test[-3:]:
        with Image.open(s.path) as raw:
            assert raw.mode == "L"
        img = load_image(s.path)
        assert img.mode == "RGB"
        assert img.size == (28, 28)
