"""Likely label errors (issue 19): flipped labels rank first; clean labels do not flood."""

from __future__ import annotations

import numpy as np
import pytest

from tests._helpers import shared_dataset
from transferlab.diagnose import label_issues
from transferlab.exceptions import InvalidParameterError


def _blobs(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(3, 16))
    y = np.repeat(np.array(["a", "b", "c"], dtype=object), n // 3)
    return centres[np.searchsorted(["a", "b", "c"], y)] + rng.normal(size=(n, 16)), y


def test_flipped_labels_rank_first() -> None:
    X, y = _blobs()
    flipped = [3, 25, 47]
    y = y.copy()
    y[flipped] = ["b", "c", "a"]
    issues = label_issues(X, y)
    assert {i.index for i in issues[:3]} == set(flipped)
    first = next(i for i in issues if i.index == 3)
    assert first.given == "b" and first.suggested == "a"
    assert first.confidence > 0.5 > first.given_probability
    probs = [i.given_probability for i in issues]
    assert probs == sorted(probs)  # worst first


def test_clean_labels_do_not_flood() -> None:
    X, y = _blobs(seed=1)
    assert len(label_issues(X, y)) <= 2


def test_bad_input_is_refused() -> None:
    X, y = _blobs()
    with pytest.raises(InvalidParameterError, match="one label per feature row"):
        label_issues(X[:-1], y)
    with pytest.raises(InvalidParameterError, match="2 classes"):
        label_issues(X, ["a"] * len(X))
    y1 = y.copy()
    y1[0] = "lonely"
    with pytest.raises(InvalidParameterError, match="'lonely' has 1"):
        label_issues(X, y1)


@pytest.mark.slow
def test_flipped_hymenoptera_labels_are_found(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The acceptance measurement at its smallest: one seed, 10% of train flipped."""
    from transferlab.data import load_dataset
    from transferlab.features import FeatureExtractor

    ds = load_dataset(shared_dataset("hymenoptera"))
    paths = [s.path for s in ds.train]
    X = np.hstack([
        FeatureExtractor(b, layer="pre_logits", cache=tmp_path, progress=False).fit().transform(paths)
        for b in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
    ])  # fmt: skip
    y = np.array([str(s.label) for s in ds.train], dtype=object)
    rng = np.random.default_rng(0)
    k = round(0.1 * len(y))
    flip = rng.choice(len(y), k, replace=False)
    y[flip] = np.where(y[flip] == "ants", "bees", "ants")
    top = {i.index for i in label_issues(X, y)[:k]}
    assert len(top & set(flip)) >= 0.7 * k
