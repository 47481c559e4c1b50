"""`suggest_labels` (issue 19): what each strategy picks, on vectors whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from transferlab.diagnose import COLD_START_PER_CLASS, suggest_labels
from transferlab.exceptions import InvalidParameterError


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """4 tight clusters in 16-D (two per class: a, a', b, b'), 30 points each."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 16)) * 4
    X = np.vstack([c + rng.normal(size=(30, 16)) * 0.3 for c in centres])
    y = np.repeat(["a", "a", "b", "b"], 30)
    return X, y


def test_typical_cold_start_covers_the_clusters_no_label_covers() -> None:
    X, y = _blobs()
    labelled = [0, 60]  # one label in cluster 0 (a) and one in cluster 2 (b)
    pool = np.setdiff1d(np.arange(len(y)), labelled)
    s = suggest_labels(X[labelled], y[labelled], X[pool], 2)
    assert s.strategy == "typical" and "cold start" in s.why
    clusters = {int(pool[i]) // 30 for i in s.order}
    assert clusters == {1, 3}  # the two clusters without a label, one image each
    # the typical image of a cluster is near its centre, not at its edge
    for i in s.order:
        members = X[(pool[i] // 30) * 30 : (pool[i] // 30 + 1) * 30]
        d = np.linalg.norm(members - members.mean(0), axis=1)
        assert np.linalg.norm(X[pool[i]] - members.mean(0)) <= np.median(d)


def test_margin_picks_what_the_probe_is_unsure_of_and_auto_switches_after_cold_start() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8))
    y = np.where(X[:, 0] > 0, "pos", "neg")
    X[:, 1:] += 6  # away from the origin: the unit vectors keep x0 as a direction
    k = COLD_START_PER_CLASS + 7
    labelled = [
        int(i) for c in ("pos", "neg") for i in rng.choice(np.flatnonzero(y == c), k, replace=False)
    ]
    pool = np.setdiff1d(np.arange(300), labelled)
    s = suggest_labels(X[labelled], y[labelled], X[pool], 10, strategy="margin")
    assert s.scores == sorted(s.scores)  # smallest margin first
    # the least sure images lie nearer the boundary than the pool's average
    near = np.abs(X[pool[s.order], 0]).mean()
    assert near < np.abs(X[pool, 0]).mean() / 2
    auto = suggest_labels(X[labelled], y[labelled], X[pool], 10)
    assert auto.strategy == "margin-diverse" and len(set(auto.order)) == 10
    assert all(p in ("pos", "neg") for p in auto.predicted)


def test_random_is_seeded_and_errors_are_clear() -> None:
    X, y = _blobs()
    a = suggest_labels(X[:2], y[:2], X[2:], 5, strategy="random", seed=1)
    b = suggest_labels(X[:2], y[:2], X[2:], 5, strategy="random", seed=1)
    assert a.order == b.order and len(set(a.order)) == 5
    assert len(suggest_labels(X[:2], y[:2], X[2:5], 10).order) == 3  # n capped at the pool
    with pytest.raises(InvalidParameterError, match="strategy"):
        suggest_labels(X[:2], y[:2], X[2:], 5, strategy="best")
    with pytest.raises(InvalidParameterError, match="empty"):
        suggest_labels(X[:2], y[:2], X[:0], 5)
    with pytest.raises(InvalidParameterError, match="width"):
        suggest_labels(X[:2], y[:2], X[2:, :3], 5)
    with pytest.raises(InvalidParameterError, match="2 classes"):
        suggest_labels(X[:2], ["a", "a"], X[2:], 5, strategy="margin")
    # no labels at all: a pure cold start still ranks the pool
    s = suggest_labels(X[:0], [], X, 4)
    assert s.strategy == "typical" and len({i // 30 for i in s.order}) == 4
