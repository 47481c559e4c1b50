"""Duplicates within and across splits (issue 19): exact by decoded pixels, near by features."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests._helpers import build_image_folder, shared_dataset
from transferlab.data import load_dataset
from transferlab.diagnose import (
    NEAR_DUPLICATE_SIMILARITY,
    THUMBNAIL_SIMILARITY,
    exact_duplicates,
    near_duplicates,
    thumbnails,
)
from transferlab.exceptions import InvalidParameterError


def _splits(root: Path) -> dict:
    ds = load_dataset(root)
    return {"train": ds.train, "val": ds.val}


def test_exact_duplicates_by_pixels_within_and_across_splits(tmp_path: Path) -> None:
    root = tmp_path / "data"
    build_image_folder(root / "train", n_per_class=5, seed=1)
    build_image_folder(root / "val", n_per_class=3, seed=2)
    a = root / "train" / "hstripes" / "hstripes_0.png"
    # leakage: the same file in val, under the right label
    shutil.copy(a, root / "val" / "hstripes" / "copy_of_0.png")
    # the same pixels re-encoded (other bytes: a text chunk and another compression level)
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("comment", "re-saved")
    Image.open(root / "train" / "vstripes" / "vstripes_1.png").save(
        root / "train" / "vstripes" / "resaved_1.png", pnginfo=info, compress_level=9
    )
    assert (root / "train/vstripes/resaved_1.png").read_bytes() != (
        root / "train/vstripes/vstripes_1.png"
    ).read_bytes()
    # a broken file is reported, not grouped, not fatal
    (root / "train" / "hstripes" / "broken.png").write_bytes(b"not a png")
    groups, broken = exact_duplicates(_splits(root))
    assert [len(g.paths) for g in groups] == [2, 2]
    leak, within = groups  # cross-split first
    assert leak.cross_split and leak.splits == ["train", "val"] and not leak.label_conflict
    assert Path(leak.paths[0]) == a
    assert not within.cross_split and within.splits == ["train", "train"]
    assert [Path(p).name for p, _ in broken] == ["broken.png"]
    assert leak.to_dict()["cross_split"] is True


def test_a_copy_under_another_label_is_a_label_conflict(tmp_path: Path) -> None:
    root = tmp_path / "data"
    build_image_folder(root / "train", n_per_class=4, seed=3)
    build_image_folder(root / "val", n_per_class=2, seed=4)
    shutil.copy(root / "train/hstripes/hstripes_2.png", root / "val/vstripes/mislabelled.png")
    (group,), _ = exact_duplicates(_splits(root))
    assert group.cross_split and group.label_conflict and group.labels == ["hstripes", "vstripes"]


def test_near_duplicates_from_features_skip_exact_groups(tmp_path: Path) -> None:
    root = tmp_path / "data"
    build_image_folder(root / "train", n_per_class=4, seed=5)
    build_image_folder(root / "val", n_per_class=2, seed=6)
    splits = _splits(root)
    samples = [(s, name) for name, ss in splits.items() for s in ss]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(len(samples), 64))
    X[-1] = X[0] + 0.05 * rng.normal(size=64)  # a val image nearly the first train image
    X[2] = X[1] * 3.0  # same direction: similarity 1 (scale does not matter)
    groups = near_duplicates(X, samples)
    assert len(groups) == 2
    assert groups[0].cross_split and groups[0].paths == [samples[0][0].path, samples[-1][0].path]
    assert NEAR_DUPLICATE_SIMILARITY <= groups[0].similarity < 1.0
    assert groups[1].similarity == pytest.approx(1.0)
    # a group already reported as exact is not repeated as near
    assert len(near_duplicates(X, samples, exclude=groups[1:])) == 1
    # nothing near at a threshold of 1 except the exact direction
    assert [g.similarity for g in near_duplicates(X, samples, threshold=0.9999)] == [1.0]
    with pytest.raises(InvalidParameterError, match="threshold"):
        near_duplicates(X, samples, threshold=1.5)
    with pytest.raises(InvalidParameterError, match="one feature row per sample"):
        near_duplicates(X[:-1], samples)


def test_thumbnails_find_a_resized_recompressed_copy_across_splits(tmp_path: Path) -> None:
    root = tmp_path / "data"
    build_image_folder(root / "train", n_per_class=4, seed=7)
    build_image_folder(root / "val", n_per_class=2, seed=8)
    src = root / "train" / "vstripes" / "vstripes_3.png"
    img = Image.open(src).convert("RGB")
    img.resize((img.width // 2, img.height // 2)).save(root / "val/vstripes/small.jpg", quality=70)
    (root / "val" / "hstripes" / "broken.png").write_bytes(b"")
    splits = _splits(root)
    samples = [(s, name) for name, ss in splits.items() for s in ss]
    X, kept = thumbnails([s.path for s, _ in samples])
    assert len(kept) == len(samples) - 1  # the empty file has no row
    assert np.allclose(np.linalg.norm(X, axis=1), 1.0)
    groups = near_duplicates(X, [samples[k] for k in kept], threshold=THUMBNAIL_SIMILARITY)
    assert [sorted(Path(p).name for p in g.paths) for g in groups] == [
        ["small.jpg", "vstripes_3.png"]
    ]
    assert groups[0].cross_split


def test_pneumoniamnist_duplicate_groups() -> None:
    """Its SOURCE.md: 7 exact-duplicate groups, 3 of them across train and val."""
    ds = load_dataset(shared_dataset("pneumoniamnist"))
    groups, broken = exact_duplicates({"train": ds.train, "val": ds.val, "test": ds.test})
    assert not broken
    assert len(groups) == 7
    leaks = [g for g in groups if g.cross_split]
    assert len(leaks) == 3 and all(set(g.splits) == {"train", "val"} for g in leaks)
    names = {tuple(Path(p).stem for p in g.paths) for g in leaks}
    assert ("train_00494", "train_00803", "val_00039") in names


def test_cross_split_twins_by_file_and_by_vectors(tmp_path: Path) -> None:
    from transferlab.diagnose import cross_split_twins, leakage_line

    root = tmp_path / "data"
    build_image_folder(root / "train", n_per_class=4, seed=1)
    build_image_folder(root / "val", n_per_class=2, seed=2)
    a = root / "train" / "hstripes" / "hstripes_0.png"
    shutil.copy(a, root / "val" / "hstripes" / "same_file.png")
    splits = _splits(root)
    groups = cross_split_twins(splits)
    assert [sorted(Path(p).name for p in g.paths) for g in groups] == [
        ["hstripes_0.png", "same_file.png"]
    ]
    line = leakage_line(groups, str(root))
    assert line is not None and "1 validation/test image" in line and "same_file.png" in line
    assert f"transferlab audit {root}" in line
    # by vectors only (no file digests): equal vectors join, different ones do not
    rng = np.random.default_rng(0)
    vectors = {s.path: rng.normal(size=8) for ss in splits.values() for s in ss}
    b = str(root / "train" / "vstripes" / "vstripes_1.png")
    other = str(root / "val" / "vstripes" / "vstripes_0.png")
    vectors[other] = vectors[b] * 2.0  # same direction: cosine 1
    groups = cross_split_twins(splits, vectors, file_digests=False)
    assert [set(g.paths) for g in groups] == [{b, other}]
    # nothing shared: no line
    del vectors[other]
    assert leakage_line(cross_split_twins(splits, vectors, file_digests=False), "x") is None


def test_scan_and_image_problems(tmp_path: Path) -> None:
    from transferlab.diagnose import image_problems, scan_images

    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        p = tmp_path / f"ok{i}.png"
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    Image.fromarray(rng.integers(0, 255, (10, 12), dtype=np.uint8)).save(tmp_path / "tiny.png")
    Image.fromarray(rng.integers(0, 255, (40, 200, 3), dtype=np.uint8)).save(tmp_path / "strip.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    paths += [tmp_path / "tiny.png", tmp_path / "strip.png", tmp_path / "bad.jpg"]
    scan = scan_images(paths)
    assert scan.ok == [0, 1, 2, 3, 4, 5] and len(scan.digests) == 6
    assert scan.thumbnails.shape == (6, 256)
    assert np.allclose(np.linalg.norm(scan.thumbnails, axis=1), 1)
    assert [p for p, _ in scan.broken] == [str(tmp_path / "bad.jpg")]
    ip = image_problems(scan)
    assert [Path(r["path"]).name for r in ip["tiny"]] == ["tiny.png"] and not ip["all_tiny"]
    assert [r["aspect"] for r in ip["extreme_aspect"]] == [5.0]
    assert ip["modes"] == {"RGB": 5, "L": 1} and [r["mode"] for r in ip["odd_modes"]] == ["L"]
    assert ip["broken"][0]["reason"]
    # a dataset of small images is said once, not listed image by image
    small = scan_images([tmp_path / "tiny.png"] * 3)
    assert image_problems(small)["all_tiny"] and image_problems(small)["tiny"] == []


def test_outliers_flag_the_far_rows_farthest_first() -> None:
    from transferlab.diagnose import outliers

    rng = np.random.default_rng(0)
    centre = rng.normal(size=32)
    X = centre + 0.3 * rng.normal(size=(60, 32))
    X[[5, 40]] = rng.normal(size=(2, 32)) * 3  # two unrelated directions
    o = outliers(X)
    assert set(o.flagged[:2]) == {5, 40} and len(o.flagged) <= 4  # a fence: a tail row may pass
    scores = o.scores[o.flagged]
    assert list(scores) == sorted(scores, reverse=True) and scores.min() > o.threshold
    with pytest.raises(InvalidParameterError, match="at least 3"):
        outliers(X[:2])
