"""Sample, Dataset and the stratified split load_dataset uses."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.data._files import _csv_images, _make_tree, _write_csv
from transferlab.data import load_dataset, stratified_split
from transferlab.exceptions import DatasetError

# --------------------------------------------------------------------------------------------
# stratified_split
# --------------------------------------------------------------------------------------------


def test_stratified_split_rejects_bad_fraction():
    from transferlab.data import Sample

    samples = [Sample(f"/x/{i}.png", "a") for i in range(4)]
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(DatasetError, match="val_fraction"):
            stratified_split(samples, bad, 0)


def test_stratified_split_per_class_counts_and_order_independence():
    from transferlab.data import Sample

    samples = [Sample(f"/d/a/{i:02d}.png", "a") for i in range(10)]
    samples += [Sample(f"/d/b/{i:02d}.png", "b") for i in range(3)]
    samples += [Sample("/d/c/only.png", "c")]
    train, val = stratified_split(samples, 0.3, seed=5)
    assert set(train) | set(val) == set(samples)
    assert not set(train) & set(val)
    val_counts = Counter(s.label for s in val)
    assert val_counts == {"a": 3, "b": 1}  # round(10*0.3), at least 1 for b, none from c
    assert [s.label for s in train].count("c") == 1
    train2, val2 = stratified_split(list(reversed(samples)), 0.3, seed=5)
    assert train2 == train
    assert val2 == val


def test_dataset_summary_mentions_each_class_count(tmp_path):
    root = tmp_path / "ds"
    _make_tree(root / "train", {"ants": 7, "bees": 5})
    _make_tree(root / "val", {"ants": 3, "bees": 4})
    _make_tree(root / "test", {"ants": 2, "bees": 1})
    ds = load_dataset(root)
    text = ds.summary()
    assert str(root) in text
    assert "2 classes" in text
    lines = text.splitlines()
    train_line = next(line for line in lines if line.strip().startswith("train:"))
    val_line = next(line for line in lines if line.strip().startswith("val:"))
    test_line = next(line for line in lines if line.strip().startswith("test:"))
    assert "12 images" in train_line and "ants=7" in train_line and "bees=5" in train_line
    assert "7 images" in val_line and "ants=3" in val_line and "bees=4" in val_line
    assert "3 images" in test_line and "ants=2" in test_line and "bees=1" in test_line


# --------------------------------------------------------------------------------------------
# Dataset.split_explicit: where the split came from, as a field (not words in split_note)
# --------------------------------------------------------------------------------------------


def _layouts(root: Path) -> dict[str, Path]:
    """Every layout load_dataset reads, written under `root`."""
    out: dict[str, Path] = {}
    out["tree"] = _make_tree(root / "tree", {"a": 5, "b": 5})
    for name, splits in {
        "train-val": ("train", "val"),
        "train-only": ("train",),
        "train-test": ("train", "test"),
        "train-val-test": ("train", "val", "test"),
    }.items():
        for split in splits:
            _make_tree(root / name / split, {"a": 5, "b": 5})
        out[name] = root / name
    rows = _csv_images(root / "csv", {"a": 6, "b": 6})
    for name, splits in {
        "csv-none": [""] * 12,
        "csv-train-val": ["train", "val", "train"] * 4,
        "csv-train-val-blank": ["train", "val", ""] * 4,
        "csv-train-blank": ["train", ""] * 6,
        "csv-train-test": ["train", "test", "train"] * 4,
        "csv-val-only": ["val", "", ""] * 4,
    }.items():
        lines = [
            "path,label,split",
            *[f"{p},{c},{s}" for (p, c), s in zip(rows, splits, strict=True)],
        ]
        out[name] = _write_csv(root / "csv" / f"{name}.csv", lines)
    return out


EXPLICIT = {
    "tree": False,
    "train-val": True,
    "train-only": True,  # a train/ folder names the split (as pipeline has always read it)
    "train-test": True,
    "train-val-test": True,
    "csv-none": False,
    "csv-train-val": True,
    "csv-train-val-blank": True,
    "csv-train-blank": False,  # no validation rows: split here
    "csv-train-test": False,
    "csv-val-only": True,
}


def test_split_explicit_says_what_the_split_note_search_said(tmp_path):
    """pipeline used `source == "imagefolder-split" or "CSV split column" in split_note`."""
    layouts = _layouts(tmp_path)
    assert set(layouts) == set(EXPLICIT)
    for name, path in layouts.items():
        ds = load_dataset(path)
        old = ds.source == "imagefolder-split" or "CSV split column" in ds.split_note
        assert ds.split_explicit is EXPLICIT[name] is old, (name, ds.split_note)
