"""Outliers (issue 19): images far from every other image in feature space, such as a stray
x-ray or satellite tile among photos of insects, which a probe will fit as noise.

The score of an image is its mean cosine distance to its `k` nearest other images; the flagged
ones lie above Tukey's fence (Q3 + 1.5 IQR) of all the scores. Measured
(`benchmarks/bench_outliers.py`, RESULTS.md issue 19): 4 images from each of three other
datasets injected into hymenoptera, trashnet and aid_rs10: k = 10 flags all 12 on each, with
7 of 397, 4 of 600 and 11 of 1000 clean images above the fence; k = 5 misses a third of
them, because injected images of one source are each other's nearest neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transferlab.exceptions import InvalidParameterError

__all__ = ["OUTLIER_NEIGHBOURS", "Outliers", "outliers"]

#: neighbours averaged over: more than the few odd images of one kind a folder may hold
OUTLIER_NEIGHBOURS = 10


@dataclass
class Outliers:
    """Attributes:
    scores: per row, the mean cosine distance to its `k` nearest other rows.
    threshold: the fence above which a row is flagged.
    flagged: the flagged rows, farthest first.
    """

    scores: np.ndarray
    threshold: float
    flagged: list[int]


def outliers(X: np.ndarray, *, k: int = OUTLIER_NEIGHBOURS) -> Outliers:
    """Score every row of `X` by its distance to its neighbours and flag the far ones.

    Raises:
        InvalidParameterError: `X` is not 2-D or has too few rows for `k` neighbours.
    """
    from sklearn.neighbors import NearestNeighbors

    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise InvalidParameterError(f"outliers needs a 2-D feature matrix, got shape {X.shape}")
    if len(X) < 3:
        raise InvalidParameterError(f"outliers needs at least 3 images, got {len(X)}")
    k = min(k, len(X) - 1)
    Z = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    dist, _ = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(Z).kneighbors(Z)
    scores = dist[:, 1:].mean(axis=1)
    q1, q3 = np.percentile(scores, [25, 75])
    threshold = float(q3 + 1.5 * (q3 - q1))
    flagged = [int(i) for i in np.argsort(-scores) if scores[i] > threshold]
    return Outliers(scores, threshold, flagged)
