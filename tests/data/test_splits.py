"""The one stratified split and subsample: each replaces an older copy without changing its picks
(the copies are kept below, verbatim, as references)."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import pytest

from tests._helpers import SHARED_DATASETS
from transferlab.data import (
    Sample,
    load_dataset,
    stratified_split,
    stratified_split_indices,
    stratified_subsample,
)
from transferlab.exceptions import DatasetError, InvalidParameterError


def _legacy_stratified_split(samples, val_fraction, seed):
    """data.stratified_split before issue 16."""
    if any(s.labels for s in samples):
        items = sorted(samples, key=lambda s: s.path)
        random.Random(f"{seed}-multilabel").shuffle(items)
        n_val = min(max(round(len(items) * val_fraction), 1), len(items) - 1)
        return items[n_val:], items[:n_val]
    by_class = defaultdict(list)
    for s in sorted(samples, key=lambda s: s.path):
        by_class[s.label].append(s)
    train, val = [], []
    for label in sorted(by_class, key=str):
        items = by_class[label]
        rng = random.Random(f"{seed}-{label}")
        rng.shuffle(items)
        n_val = round(len(items) * val_fraction)
        n_val = min(max(n_val, 1 if len(items) >= 2 else 0), len(items) - 1)
        val.extend(items[:n_val])
        train.extend(items[n_val:])
    return train, val


def _legacy_subsample(samples: Sequence[Sample], n: int | None, seed: int) -> list[Sample]:
    """pipeline/_diagnose.py:_subsample before issue 16."""
    samples = sorted(samples, key=lambda s: s.path)
    if n is None or len(samples) <= n:
        return list(samples)
    rng = np.random.default_rng(seed)
    by: dict[str, list[Sample]] = {}
    for s in samples:
        by.setdefault(s.label, []).append(s)
    out: list[Sample] = []
    for items in by.values():
        k = max(2, round(n * len(items) / len(samples)))
        idx = rng.choice(len(items), min(k, len(items)), replace=False)
        out += [items[i] for i in sorted(idx)]
    return out


def _legacy_draw(y: np.ndarray, k, rng: np.random.Generator) -> np.ndarray:
    """evaluate/_curves.py:_draw before issue 16."""
    idx = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if k == "all" or len(members) <= int(k):
            idx.append(members)
        else:
            idx.append(rng.choice(members, size=int(k), replace=False))
    return np.sort(np.concatenate(idx))


def _subsample(samples: Sequence[Sample], n: int | None, seed: int) -> list[Sample]:
    """The replacement given to pipeline/_diagnose.py."""
    samples = sorted(samples, key=lambda s: s.path)
    if n is None or len(samples) <= n:
        return list(samples)
    labels = [s.label for s in samples]
    first_seen = list(dict.fromkeys(labels))
    idx = stratified_subsample(
        labels, n, min_per_class=2, classes=first_seen, seed=seed, draw_whole=True
    )
    return [samples[i] for i in idx]


def _draw(y: np.ndarray, k, rng: np.random.Generator) -> np.ndarray:
    """The replacement given to evaluate/_curves.py."""
    return np.sort(stratified_subsample(y, per_class=None if k == "all" else int(k), seed=rng))


def _random_samples(rng: np.random.Generator, n_classes: int, lo: int, hi: int) -> list[Sample]:
    names = [f"c{i}" for i in range(n_classes)]
    out = []
    for c in names:
        for j in range(int(rng.integers(lo, hi + 1))):
            # paths not grouped by class (as in a CSV), so first-seen order is not sorted order
            out.append(Sample(f"/d/{rng.integers(0, 10**6):07d}_{j}.png", c))
    rng.shuffle(out)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_stratified_split_picks_what_it_picked_before(seed):
    rng = np.random.default_rng(seed)
    samples = _random_samples(rng, int(rng.integers(2, 8)), 1, 40)
    for fraction in (0.1, 0.2, 0.5, 0.8):
        assert stratified_split(samples, fraction, seed) == _legacy_stratified_split(
            samples, fraction, seed
        )
    multi = [Sample(s.path, s.label, (s.label, "x")) for s in samples]
    assert stratified_split(multi, 0.2, seed) == _legacy_stratified_split(multi, 0.2, seed)


def test_stratified_split_indices_checks_the_fraction():
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(DatasetError, match="val_fraction"):
            stratified_split_indices(["a", "b"], bad, 0)


def test_stratified_split_indices_keep_a_training_item_per_label():
    labels = ["a"] * 5 + ["b"] * 3 + ["c"]
    train, val = stratified_split_indices(labels, 0.2, seed=0)
    assert sorted(train + val) == list(range(9))
    assert sorted(labels[i] for i in val) == ["a", "b"]  # 'c' has one item: kept for training


@pytest.mark.parametrize("seed", range(8))
def test_subsample_picks_what_diagnose_picked_before(seed):
    rng = np.random.default_rng(100 + seed)
    samples = _random_samples(rng, int(rng.integers(2, 7)), 20, 120)
    for n in (8, 30, len(samples) // 2, len(samples) - 5, len(samples), None):
        assert _subsample(samples, n, seed) == _legacy_subsample(samples, n, seed)
    # a class kept whole before the others (the case where a draw-free sampler would differ)
    small = [Sample(f"/d/{i:07d}_s.png", "c_small") for i in range(2)]
    mixed = [*small, *samples]
    for n in (20, 40):
        assert _subsample(mixed, n, seed) == _legacy_subsample(mixed, n, seed)


@pytest.mark.parametrize("name", ["hymenoptera", "trashnet", "aid_rs10", "pneumoniamnist"])
def test_subsample_of_the_real_datasets_is_unchanged(name):
    if not (SHARED_DATASETS / name).is_dir():
        pytest.skip(f"real dataset {name!r} not found")
    ds = load_dataset(SHARED_DATASETS / name)
    samples = [*ds.train, *ds.val]
    for n in (8, 120, 300, 2000):  # 2000: diagnose's default max_images
        assert _subsample(samples, n, seed=0) == _legacy_subsample(samples, n, seed=0)


def test_subsample_spends_no_random_numbers_on_a_class_kept_whole():
    """The one documented difference from diagnose's old `_subsample`: a class no bigger than its
    share is kept whole without a draw, so the classes after it may get other picks."""
    labels = ["a"] * 2 + ["b"] * 50 + ["c"] * 50
    rng = np.random.default_rng(0)
    idx = stratified_subsample(labels, 20, min_per_class=2, seed=0)
    assert idx[:2].tolist() == [0, 1]  # 'a' (2 images, share 2): all of it
    b = np.sort(rng.choice(np.arange(2, 52), size=10, replace=False))
    assert idx[2:12].tolist() == b.tolist()  # 'b' takes the first draw


@pytest.mark.parametrize("seed", range(6))
def test_draw_picks_what_learning_curves_picked_before(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, int(rng.integers(2, 6)), int(rng.integers(10, 80)))
    for k in (1, 2, 5, 10, 20, "all"):
        for r in range(3):
            key = [seed, r, 0 if k == "all" else int(k)]
            a = _draw(y, k, np.random.default_rng(key))
            b = _legacy_draw(y, k, np.random.default_rng(key))
            assert a.tolist() == b.tolist()


def test_subsample_sizes_and_errors():
    labels = np.repeat(["x", "y", "z"], [10, 20, 30])
    assert len(stratified_subsample(labels)) == 60
    assert len(stratified_subsample(labels, 100)) == 60
    idx = stratified_subsample(labels, 30, seed=1)
    assert [int((labels[idx] == c).sum()) for c in "xyz"] == [5, 10, 15]
    idx = stratified_subsample(labels, per_class=12, seed=1)
    assert [int((labels[idx] == c).sum()) for c in "xyz"] == [10, 12, 12]
    assert idx.tolist() == stratified_subsample(labels, per_class=12, seed=1).tolist()
    with pytest.raises(InvalidParameterError, match="n or per_class"):
        stratified_subsample(labels, 10, per_class=2)
