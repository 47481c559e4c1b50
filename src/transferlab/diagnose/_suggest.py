"""Which unlabelled images to label next (issue 19): with a handful of labels, the next ten
chosen well move accuracy more than the next hundred chosen at random.

Strategies (`STRATEGIES`), each ranking a pool of unlabelled feature vectors:

- ``random``: the baseline.
- ``margin``: the pool images the current probe is least sure about (smallest gap between its
  two most likely classes).
- ``typical``: a cold start without trusting the probe (TypiClust, Hacohen et al. 2022): cluster
  labelled + pool images into as many clusters as there will be labels, and take the most typical
  image (densest neighbourhood) of each of the largest clusters no label covers yet.
- ``margin-diverse``: the least sure images, spread out: the 5n smallest-margin images clustered
  into n groups, the least sure of each group.
- ``auto``: ``typical`` while the smallest class has fewer than `COLD_START_PER_CLASS` labels,
  then ``margin-diverse``. Chosen by `benchmarks/bench_suggest.py` (RESULTS.md issue 19).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from transferlab.exceptions import InvalidParameterError

__all__ = ["COLD_START_PER_CLASS", "STRATEGIES", "Suggestions", "suggest_labels"]

STRATEGIES = ("auto", "random", "margin", "typical", "margin-diverse")
#: labels per class (of the smallest class) below which `auto` starts cold (``typical``)
COLD_START_PER_CLASS = 3


@dataclass
class Suggestions:
    """Attributes:
    order: positions in the pool, the one to label first first.
    scores: per suggestion, the probe's margin (``margin*`` strategies; lower = less sure) or
        the typicality (``typical``); NaN for ``random``.
    predicted: per suggestion, the probe's guess of its class (None without a probe), so a
        labelling tool can pre-fill it.
    strategy: the strategy used (``auto`` resolved) and why, in words.
    """

    order: list[int]
    scores: list[float]
    predicted: list[str | None]
    strategy: str
    why: str


def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def _probe(X: np.ndarray, y: Sequence[Any], seed: int) -> Any:
    from transferlab.probe import LinearProbe

    return LinearProbe(C=1.0, random_state=seed).fit(X, np.asarray(y, dtype=object))


def _margins(P: np.ndarray) -> np.ndarray:
    top = np.sort(P, axis=1)
    return top[:, -1] - top[:, -2] if P.shape[1] > 1 else np.ones(len(P))


def _typical(L: np.ndarray, U: np.ndarray, n: int, seed: int) -> tuple[list[int], list[float]]:
    from sklearn.cluster import KMeans
    from sklearn.neighbors import NearestNeighbors

    k = min(len(L) + n, len(U))
    both = np.vstack([L, U]) if len(L) else U
    km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(both)
    lab_u = km.labels_[len(L) :]
    covered = Counter(km.labels_[: len(L)].tolist())
    sizes = Counter(lab_u.tolist())
    # uncovered clusters first, then the least covered; larger clusters first within each
    clusters = sorted(sizes, key=lambda c: (covered.get(c, 0), -sizes[c]))
    order: list[int] = []
    scores: list[float] = []
    for c in clusters:
        if len(order) == n:
            break
        members = np.flatnonzero(lab_u == c)
        if len(members) == 1:
            order.append(int(members[0]))
            scores.append(0.0)
            continue
        m = min(20, len(members) - 1)
        d, _ = NearestNeighbors(n_neighbors=m + 1).fit(U[members]).kneighbors(U[members])
        typicality = 1.0 / (d[:, 1:].mean(axis=1) + 1e-12)
        best = int(np.argmax(typicality))
        order.append(int(members[best]))
        scores.append(round(float(typicality[best]), 4))
    if len(order) < n:  # clusters of labelled images only: fill with the most typical others
        m = min(20, len(U) - 1)
        if m >= 1:
            d, _ = NearestNeighbors(n_neighbors=m + 1).fit(U).kneighbors(U)
            typicality = 1.0 / (d[:, 1:].mean(axis=1) + 1e-12)
        else:
            typicality = np.ones(len(U))
        taken = set(order)
        for i in np.argsort(-typicality):
            if int(i) not in taken:
                order.append(int(i))
                scores.append(round(float(typicality[i]), 4))
                if len(order) == n:
                    break
    return order, scores


def _diverse(U: np.ndarray, margin: np.ndarray, n: int, seed: int) -> list[int]:
    from sklearn.cluster import KMeans

    cand = np.argsort(margin)[: min(len(U), 5 * n)]
    if len(cand) <= n:
        return [int(i) for i in cand]
    km = KMeans(n_clusters=n, n_init=3, random_state=seed).fit(U[cand])
    picks = []
    for c in range(n):
        members = cand[km.labels_ == c]
        if len(members):
            picks.append(int(members[np.argmin(margin[members])]))
    return sorted(picks, key=lambda i: margin[i])


def suggest_labels(
    X_labelled: np.ndarray,
    y: Sequence[Any],
    X_pool: np.ndarray,
    n: int,
    *,
    strategy: str = "auto",
    seed: int = 0,
) -> Suggestions:
    """The `n` pool images (rows of `X_pool`) whose labels should help the probe most, best
    first, given the labelled rows `X_labelled` with labels `y`.

    Raises:
        InvalidParameterError: an unknown strategy, n < 1, an empty pool, or shapes that differ.
    """
    if strategy not in STRATEGIES:
        raise InvalidParameterError(
            f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}"
        )
    if n < 1:
        raise InvalidParameterError(f"n must be at least 1, got {n}")
    U = _unit(X_pool)
    if len(U) == 0:
        raise InvalidParameterError("the pool of unlabelled images is empty")
    L = _unit(X_labelled) if len(X_labelled) else np.zeros((0, U.shape[1]))
    if len(L) != len(y) or (len(L) and L.shape[1] != U.shape[1]):
        raise InvalidParameterError(
            f"{len(L)} labelled rows with {len(y)} labels and width {L.shape[1]} against a pool "
            f"of width {U.shape[1]}"
        )
    n = min(n, len(U))
    counts = Counter(str(v) for v in y)
    smallest = min(counts.values()) if counts else 0
    if strategy == "auto":
        if len(counts) < 2 or smallest < COLD_START_PER_CLASS:
            strategy = "typical"
            why = (
                f"cold start: the smallest class has {smallest} label(s) (< "
                f"{COLD_START_PER_CLASS}), so typical images of clusters no label covers yet"
            )
        else:
            strategy = "margin-diverse"
            why = "the probe's least sure images, spread over the pool"
    else:
        why = f"strategy {strategy!r} as asked"
    probe = _probe(L, y, seed) if len(counts) >= 2 else None
    P = probe.predict_proba(U) if probe is not None else None
    if strategy == "random":
        order = [int(i) for i in np.random.default_rng(seed).permutation(len(U))[:n]]
        scores = [float("nan")] * n
    elif strategy == "typical":
        order, scores = _typical(L, U, n, seed)
    else:
        if P is None:
            raise InvalidParameterError(
                f"strategy {strategy!r} needs labels of at least 2 classes; use 'typical'"
            )
        margin = _margins(P)
        order = (
            [int(i) for i in np.argsort(margin)[:n]]
            if strategy == "margin"
            else _diverse(U, margin, n, seed)
        )
        scores = [round(float(margin[i]), 4) for i in order]
    predicted: list[str | None] = (
        [str(probe.classes_[int(P[i].argmax())]) for i in order]
        if probe is not None and P is not None
        else [None] * len(order)
    )
    return Suggestions(order, scores, predicted, strategy, why)
