"""load_dataset refuses what cannot be trained on, and says why."""

from __future__ import annotations

import pytest

from tests.data._files import _csv_images, _make_tree, _save_png, _write_csv
from transferlab.data import load_dataset
from transferlab.exceptions import DatasetError, DatasetNotFoundError

# --------------------------------------------------------------------------------------------
# load_dataset: errors
# --------------------------------------------------------------------------------------------


def test_load_dataset_missing_path(tmp_path):
    missing = tmp_path / "no_such_dataset"
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(missing)
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, DatasetError)
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)


def test_load_dataset_missing_path_suggests_close_match(tmp_path):
    _make_tree(tmp_path / "flowers", {"a": 2, "b": 2})
    with pytest.raises(DatasetNotFoundError, match="Did you mean") as info:
        load_dataset(tmp_path / "flowres")
    assert str(tmp_path / "flowers") in str(info.value)


def test_load_dataset_missing_path_is_catchable_as_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "gone")


def test_load_dataset_empty_class_folder(tmp_path):
    root = _make_tree(tmp_path / "ds", {"a": 3, "b": 3})
    (root / "empty_cls").mkdir()
    (root / "empty_cls" / "README.md").write_text("nothing here\n")
    with pytest.raises(DatasetError, match="empty class folder") as info:
        load_dataset(root)
    assert str(root / "empty_cls") in str(info.value)


def test_load_dataset_empty_class_folder_in_val(tmp_path):
    root = tmp_path / "ds"
    _make_tree(root / "train", {"a": 3, "b": 3})
    _make_tree(root / "val", {"a": 1})
    (root / "val" / "b").mkdir()
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    assert str(root / "val" / "b") in str(info.value)


def test_load_dataset_single_class(tmp_path):
    root = _make_tree(tmp_path / "ds", {"only": 6})
    with pytest.raises(DatasetError, match="at least 2 classes") as info:
        load_dataset(root)
    assert "'only'" in str(info.value)
    assert str(root) in str(info.value)


def test_load_dataset_no_class_folders(tmp_path):
    root = tmp_path / "loose"
    for i in range(3):
        _save_png(root / f"{i}.png")
    with pytest.raises(DatasetError, match="no class folders") as info:
        load_dataset(root)
    assert str(root) in str(info.value)


def test_load_dataset_val_class_unknown_to_train(tmp_path):
    root = tmp_path / "ds"
    _make_tree(root / "train", {"ants": 3, "bees": 3})
    _make_tree(root / "val", {"ants": 1, "bees": 1, "wasps": 1})
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    msg = str(info.value)
    assert "wasps" in msg
    assert "val" in msg
    assert "ants" in msg and "bees" in msg  # lists the train classes for comparison


def test_load_dataset_test_class_unknown_to_train(tmp_path):
    root = tmp_path / "ds"
    _make_tree(root / "train", {"ants": 3, "bees": 3})
    _make_tree(root / "val", {"ants": 1, "bees": 1})
    _make_tree(root / "test", {"ants": 1, "hornets": 1})
    with pytest.raises(DatasetError, match="hornets") as info:
        load_dataset(root)
    assert "test" in str(info.value)


def test_load_dataset_too_few_images_for_validation(tmp_path):
    root = _make_tree(tmp_path / "ds", {"a": 1, "b": 1})
    with pytest.raises(DatasetError, match="no validation images"):
        load_dataset(root)


def test_load_dataset_bad_val_fraction(tmp_path):
    root = _make_tree(tmp_path / "ds", {"a": 3, "b": 3})
    with pytest.raises(DatasetError, match="val_fraction") as info:
        load_dataset(root, val_fraction=1.5)
    assert "1.5" in str(info.value)


def test_load_dataset_csv_missing_label_column(tmp_path):
    rows = _csv_images(tmp_path, {"a": 2, "b": 2})
    csv_path = _write_csv(tmp_path / "l.csv", ["path,category", *[f"{p},{c}" for p, c in rows]])
    with pytest.raises(DatasetError) as info:
        load_dataset(csv_path)
    msg = str(info.value)
    assert str(csv_path) in msg
    assert "missing 'label'" in msg
    assert "'path'" in msg and "'category'" in msg  # the columns found


def test_load_dataset_csv_missing_both_columns(tmp_path):
    csv_path = _write_csv(tmp_path / "l.csv", ["a,b", "1,2"])
    with pytest.raises(DatasetError, match="missing 'path' and 'label'") as info:
        load_dataset(csv_path)
    assert "'a', 'b'" in str(info.value)


def test_load_dataset_empty_csv_file(tmp_path):
    csv_path = tmp_path / "empty.csv"
    csv_path.write_text("")
    with pytest.raises(DatasetError, match="empty file"):
        load_dataset(csv_path)


def test_load_dataset_csv_header_only(tmp_path):
    csv_path = _write_csv(tmp_path / "l.csv", ["path,label"])
    with pytest.raises(DatasetError, match="no rows"):
        load_dataset(csv_path)


@pytest.mark.parametrize(("bad_line", "what"), [("imgs/x.png,", "label"), (",b", "path")])
def test_load_dataset_csv_empty_cell_gives_line_number(tmp_path, bad_line, what):
    rows = _csv_images(tmp_path, {"a": 2, "b": 2})
    lines = ["path,label", *[f"{p},{c}" for p, c in rows]]
    lines.insert(3, bad_line)  # header is line 1, so this is line 4
    csv_path = _write_csv(tmp_path / "l.csv", lines)
    with pytest.raises(DatasetError) as info:
        load_dataset(csv_path)
    msg = str(info.value)
    assert "line 4" in msg
    assert f"empty {what}" in msg
    assert str(csv_path) in msg


def test_load_dataset_csv_unknown_split_value(tmp_path):
    rows = _csv_images(tmp_path, {"a": 2, "b": 2})
    lines = ["path,label,split", *[f"{p},{c},train" for p, c in rows], "imgs/a_00.png,a,holdout"]
    csv_path = _write_csv(tmp_path / "l.csv", lines)
    with pytest.raises(DatasetError, match="holdout") as info:
        load_dataset(csv_path)
    assert "split" in str(info.value)


def test_load_dataset_csv_not_utf8(tmp_path):
    p = tmp_path / "l.csv"
    p.write_bytes(b"path,label\n\xff\xfe\xfa,a\n")
    with pytest.raises(DatasetError, match="UTF-8"):
        load_dataset(p)


@pytest.mark.parametrize("name", ["photo.png", "labels.json"])
def test_load_dataset_non_csv_file(tmp_path, name):
    p = tmp_path / name
    if name.endswith(".png"):
        _save_png(p)
    else:
        p.write_text("{}")
    with pytest.raises(DatasetError, match="not a CSV") as info:
        load_dataset(p)
    assert str(p) in str(info.value)
