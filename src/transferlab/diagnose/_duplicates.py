"""Duplicates within and across splits (issue 19): the same picture twice in the training images
weighs it double; the same picture in train and val/test (leakage) inflates the measured score.

Exact duplicates are images with the same decoded pixels (so a re-saved PNG is still caught);
near-duplicates are images whose vectors have a cosine similarity at or above a threshold: 16 x
16 greyscale thumbnails (`thumbnails`) catch re-compressed and resized copies, backbone features
catch some cropped ones. Both thresholds were measured (`benchmarks/bench_duplicates.py`,
RESULTS.md issue 19) on JPEG-70, half-size and 90%-crop copies of four datasets' images against
each image's most similar other image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from transferlab.data import Sample
from transferlab.diagnose._scan import ImageScan, scan_images
from transferlab.exceptions import InvalidParameterError

__all__ = [
    "NEAR_DUPLICATE_SIMILARITY",
    "THUMBNAIL_SIMILARITY",
    "TWIN_SIMILARITY",
    "DuplicateGroup",
    "cross_split_twins",
    "exact_duplicates",
    "leakage_line",
    "near_duplicates",
    "thumbnails",
]

#: cosine similarity of pre_logits features (lite0) at or above which two images count as
#: near-duplicates: no distinct pair of hymenoptera, trashnet, aid_rs10 or pneumoniamnist
#: (train + val) reaches it, while 0.95 flagged 2 of trashnet's 600 and 4 of pneumoniamnist's
#: 2698; it finds only 0-19% of the altered copies, which the thumbnails find instead
NEAR_DUPLICATE_SIMILARITY = 0.97
#: the same for `thumbnails`: every JPEG-70 and half-size copy of the four datasets reaches it
#: (min 0.991), and no distinct pair of three of them does (trashnet: 4 of 600 images, plain
#: backgrounds); 90% crops mostly do not (0-3%)
THUMBNAIL_SIMILARITY = 0.99
#: cosine similarity of the same picture's feature vectors computed in different batches (the
#: float noise is ~1e-7); no distinct pair of the four datasets comes near it
TWIN_SIMILARITY = 0.9999


@dataclass
class DuplicateGroup:
    """Images that are the same picture.

    Attributes:
        kind: ``exact`` (same pixels) or ``near`` (vector similarity >= the threshold: of
            `thumbnails` or of backbone features).
        paths, splits, labels: one entry per image, sorted by split then path.
        similarity: the lowest pairwise cosine similarity that joined the group (1.0 for exact).
    """

    kind: str
    paths: list[str]
    splits: list[str]
    labels: list[str]
    similarity: float = 1.0

    @property
    def cross_split(self) -> bool:
        """Leakage: the group spans more than one split."""
        return len(set(self.splits)) > 1

    @property
    def label_conflict(self) -> bool:
        """The copies carry different labels (at least one of them is wrong)."""
        return len(set(self.labels)) > 1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cross_split": self.cross_split,
                "label_conflict": self.label_conflict}  # fmt: skip


def thumbnails(paths: Sequence[str], side: int = 16) -> tuple[np.ndarray, list[int]]:
    """Each decodable image as a `side` x `side` greyscale thumbnail, mean removed, unit length
    (a perceptual-hash-like vector, for `near_duplicates`); and the positions of `paths` that
    decoded (the rows)."""
    scan = scan_images(paths, side=side)
    return scan.thumbnails, scan.ok


def _group(
    kind: str,
    members: list[list[int]],
    rows: Sequence[tuple[str, str, str]],
    similarity: Sequence[float] | None = None,
) -> list[DuplicateGroup]:
    groups = []
    for i, m in enumerate(members):
        m = sorted(m, key=lambda k: (rows[k][1], rows[k][0]))
        groups.append(
            DuplicateGroup(
                kind,
                [rows[k][0] for k in m],
                [rows[k][1] for k in m],
                [rows[k][2] for k in m],
                round(float(similarity[i]), 4) if similarity is not None else 1.0,
            )
        )
    # leakage first, then the largest groups
    return sorted(groups, key=lambda g: (not g.cross_split, -len(g.paths), g.paths[0]))


def _rows(splits: Mapping[str, Sequence[Sample]]) -> list[tuple[str, str, str]]:
    return [(s.path, name, str(s.label)) for name, samples in splits.items() for s in samples]


def exact_duplicates(
    splits: Mapping[str, Sequence[Sample]],
    *,
    scan: ImageScan | None = None,
) -> tuple[list[DuplicateGroup], list[tuple[str, str]]]:
    """Groups of images with identical pixels, within and across `splits` (name -> samples);
    `scan` reuses a `scan_images` of the same images in the same order (split by split).

    Returns:
        The groups (cross-split ones first) and (path, reason) of each image that would not
        decode (not grouped).
    """
    rows = _rows(splits)
    paths = [r[0] for r in rows]
    if scan is None:
        scan = scan_images(paths)
    elif scan.paths != paths:
        raise InvalidParameterError(
            "exact_duplicates: the scan must be of the splits' images, in order "
            f"({len(scan.paths)} scanned, {len(paths)} in the splits)"
        )
    by_digest: dict[str, list[int]] = {}
    for k, d in zip(scan.ok, scan.digests, strict=True):
        by_digest.setdefault(d, []).append(k)
    return _group("exact", [m for m in by_digest.values() if len(m) > 1], rows), scan.broken


def near_duplicates(
    X: np.ndarray,
    samples: Sequence[tuple[Sample, str]],
    *,
    threshold: float = NEAR_DUPLICATE_SIMILARITY,
    exclude: Sequence[DuplicateGroup] = (),
) -> list[DuplicateGroup]:
    """Groups of images whose feature rows (`X`, one per (sample, split) in `samples`) have a
    cosine similarity >= `threshold`, joined transitively; pairs already in an `exclude` group
    (e.g. the exact duplicates) are not reported again.

    Raises:
        InvalidParameterError: `X` and `samples` differ in length, or `threshold` is not in (0, 1].
    """
    from scipy.sparse.csgraph import connected_components
    from sklearn.neighbors import radius_neighbors_graph

    if len(X) != len(samples):
        raise InvalidParameterError(
            f"near_duplicates needs one feature row per sample, got {len(X)} rows "
            f"and {len(samples)} samples"
        )
    if not 0 < threshold <= 1:
        raise InvalidParameterError(f"threshold must be in (0, 1], got {threshold}")
    rows = [(s.path, split, str(s.label)) for s, split in samples]
    if len(rows) < 2:
        return []
    Z = np.asarray(X, dtype=np.float64)
    Z = Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    # cosine similarity >= t  <=>  euclidean distance of unit vectors <= sqrt(2 - 2t)
    graph = radius_neighbors_graph(Z, np.sqrt(max(0.0, 2 - 2 * threshold)) + 1e-9, mode="distance")
    n, label = connected_components(graph, directed=False)
    done = {frozenset(g.paths) for g in exclude}
    members, sims = [], []
    for c in range(n):
        m = np.flatnonzero(label == c)
        if len(m) < 2 or frozenset(rows[k][0] for k in m) in done:
            continue
        S = Z[m] @ Z[m].T
        # the weakest link that holds the group together
        sims.append(float(np.min(np.where(threshold - 1e-9 <= S, S, np.inf).min(axis=1))))
        members.append(list(m))
    return _group("near", members, rows, sims)


def cross_split_twins(
    splits: Mapping[str, Sequence[Sample]],
    vectors: Mapping[str, np.ndarray] | None = None,
    *,
    file_digests: bool = True,
) -> list[DuplicateGroup]:
    """Leakage in seconds, without decoding: groups of images in more than one split that are
    the same file (byte digest) or whose feature `vectors` (path -> vector, e.g. the features a
    run already has or the cache holds) have a cosine similarity >= `TWIN_SIMILARITY`.

    This is the check `fit`, `finetune` and `auto` run to print one line; `transferlab audit`
    finds re-encoded and near copies too.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from transferlab.features import file_digest

    rows = _rows(splits)
    n = len(rows)
    edges: list[tuple[int, int]] = []
    if file_digests:
        first: dict[str, int] = {}
        for k, (path, _, _) in enumerate(rows):
            try:
                d = file_digest(path)
            except Exception:  # an unreadable file is the run's to report, not this check's
                continue
            if d in first:
                edges.append((first[d], k))
            else:
                first[d] = k
    if vectors:
        have = [k for k, r in enumerate(rows) if r[0] in vectors]
        if len(have) > 1:
            Z = np.stack([np.asarray(vectors[rows[k][0]], dtype=np.float64) for k in have])
            Z /= np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
            from sklearn.neighbors import radius_neighbors_graph

            g = radius_neighbors_graph(Z, np.sqrt(2 - 2 * TWIN_SIMILARITY) + 1e-9).tocoo()
            edges += [(have[i], have[j]) for i, j in zip(g.row, g.col, strict=True) if i < j]
    if not edges:
        return []
    i, j = np.asarray(edges).T
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    members = [list(np.flatnonzero(label == c)) for c in np.unique(label)]
    groups = _group("exact", [m for m in members if len(m) > 1], rows)
    return [g for g in groups if g.cross_split]


def leakage_line(groups: Sequence[DuplicateGroup], data: str) -> str | None:
    """The one line a run prints when `cross_split_twins` found leakage, pointing to audit."""
    leaked = [g for g in groups if g.cross_split]
    if not leaked:
        return None
    n = sum(sum(1 for s in g.splits if s != "train") for g in leaked)
    g = leaked[0]
    a = g.paths[0]  # sorted by split: the first of the first split and one of another
    b = next(p for p, s in zip(g.paths, g.splits, strict=True) if s != g.splits[0])
    return (
        f"{n} validation/test image(s) are copies of images in another split (e.g. {a} = {b}): "
        f"scores on them are inflated; run `transferlab audit {data}` to see every duplicate"
    )
