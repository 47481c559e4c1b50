"""load_dataset on CSV files: paths, headers, split columns, delimiters."""

from __future__ import annotations

import os
from collections import Counter

from tests.data._files import _csv_images, _write_csv
from transferlab.data import load_dataset

# --------------------------------------------------------------------------------------------
# load_dataset: CSV
# --------------------------------------------------------------------------------------------


def test_load_dataset_csv_relative_paths_without_split(tmp_path):
    rows = _csv_images(tmp_path, {"cat": 10, "dog": 10})
    csv_path = _write_csv(tmp_path / "labels.csv", ["path,label", *[f"{p},{c}" for p, c in rows]])
    ds = load_dataset(csv_path, val_fraction=0.2, seed=0)
    assert ds.source == "csv"
    assert ds.classes == ["cat", "dog"]
    assert Counter(s.label for s in ds.val) == {"cat": 2, "dog": 2}
    expected = {(str(tmp_path / p), c) for p, c in rows}
    assert {(s.path, s.label) for s in ds.train + ds.val} == expected
    assert all(os.path.isfile(s.path) for s in ds.train + ds.val)
    assert load_dataset(csv_path, val_fraction=0.2, seed=0).val == ds.val


def test_load_dataset_csv_paths_resolved_from_csv_folder_not_cwd(tmp_path, monkeypatch):
    data = tmp_path / "data"
    rows = _csv_images(data, {"cat": 3, "dog": 3})
    csv_path = _write_csv(data / "labels.csv", ["path,label", *[f"{p},{c}" for p, c in rows]])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ds = load_dataset(csv_path)
    assert all(s.path.startswith(str(data)) for s in ds.train + ds.val)
    assert all(os.path.isfile(s.path) for s in ds.train + ds.val)


def test_load_dataset_csv_absolute_paths_kept(tmp_path):
    rows = _csv_images(tmp_path / "imgdir", {"a": 3, "b": 3})
    sub = tmp_path / "meta"
    sub.mkdir()
    lines = ["path,label", *[f"{tmp_path / 'imgdir' / p},{c}" for p, c in rows]]
    ds = load_dataset(_write_csv(sub / "l.csv", lines))
    assert {s.path for s in ds.train + ds.val} == {str(tmp_path / "imgdir" / p) for p, _ in rows}


def test_load_dataset_csv_case_insensitive_header_and_split_column(tmp_path):
    rows = _csv_images(tmp_path, {"cat": 6, "dog": 6})
    lines = ["Path,Label,Split"]
    expected: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}
    for i, (p, c) in enumerate(rows):
        split = ("Train", "train", "VAL", "test")[i % 4]
        lines.append(f"{p},{c},{split}")
        expected[split.lower()].add(str(tmp_path / p))
    ds = load_dataset(_write_csv(tmp_path / "labels.csv", lines))
    assert ds.source == "csv"
    assert {s.path for s in ds.train} == expected["train"]
    assert {s.path for s in ds.val} == expected["val"]
    assert {s.path for s in ds.test} == expected["test"]
    assert ds.classes == ["cat", "dog"]


def test_load_dataset_csv_split_column_with_blank_split_goes_to_train(tmp_path):
    rows = _csv_images(tmp_path, {"a": 4, "b": 4})
    lines = ["path,label,split"]
    for i, (p, c) in enumerate(rows):
        lines.append(f"{p},{c},{'valid' if i % 4 == 0 else ''}")
    ds = load_dataset(_write_csv(tmp_path / "l.csv", lines))
    assert len(ds.val) == 2
    assert len(ds.train) == 6


def test_load_dataset_csv_with_bom_and_alternative_column_names(tmp_path):
    rows = _csv_images(tmp_path, {"a": 3, "b": 3})
    p = tmp_path / "l.csv"
    text = "filename,class\n" + "\n".join(f"{r},{c}" for r, c in rows) + "\n"
    p.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    ds = load_dataset(p)
    assert ds.classes == ["a", "b"]
    assert len(ds.train) + len(ds.val) == 6


def test_load_dataset_csv_header_with_spaces_after_commas(tmp_path):
    rows = _csv_images(tmp_path, {"a": 3, "b": 3})
    csv_path = _write_csv(tmp_path / "l.csv", ["path, label", *[f"{p},{c}" for p, c in rows]])
    ds = load_dataset(csv_path)
    assert ds.classes == ["a", "b"]


def test_load_dataset_tsv_file(tmp_path):
    rows = _csv_images(tmp_path, {"a": 3, "b": 3})
    tsv = _write_csv(tmp_path / "l.tsv", ["path\tlabel", *[f"{p}\t{c}" for p, c in rows]])
    ds = load_dataset(tsv)
    assert ds.classes == ["a", "b"]
