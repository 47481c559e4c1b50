"""Labelled samples, the dataset that holds them, and the one stratified split and subsample.

No file system here: `transferlab.data._sources` finds the samples, this module says what they
are and how they are divided. Every split and subsample in the package goes through
`stratified_split_indices` / `stratified_subsample`, so the same seed picks the same images
wherever it is used.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from transferlab.exceptions import DatasetError, InvalidParameterError

__all__ = [
    "Dataset",
    "Sample",
    "label_matrix",
    "stratified_split",
    "stratified_split_indices",
    "stratified_subsample",
]


@dataclass(frozen=True)
class Sample:
    """One labelled image. `label` is None for unlabelled images (prediction).

    For multi-label data `labels` holds the image's labels (possibly none) and `label` their
    ``;``-joined text, kept for display.
    """

    path: str
    label: str | None = None
    labels: tuple[str, ...] = ()


@dataclass
class Dataset:
    """Train/validation(/test) samples and the class list, as `load_dataset` found them.

    Attributes:
        train: training samples.
        val: validation samples (held out from training; metrics are reported on them).
        test: optional test samples (a `test/` folder or CSV split), reported separately.
        classes: sorted class names; a model's outputs follow this order.
        source: where the samples came from: ``"imagefolder-split"`` (train/ and val/ folders),
            ``"imagefolder"`` (one tree, split here), or ``"csv"``.
        root: the dataset path given.
        ignored: files skipped because their extension is not an image's (e.g. README.md).
        split_note: a sentence saying how the split was made, for summaries and reports.
        multi_label: samples carry label sets (`Sample.labels`) rather than one label.
        split_explicit: the data came with named splits (``train/`` folders, with or without
            ``val/`` and ``test/``, or a CSV ``split`` column that names validation rows), so
            ``val``/``test`` are the user's own held-out images; False when `load_dataset`
            drew the validation images itself.
    """

    train: list[Sample]
    val: list[Sample]
    classes: list[str]
    source: str
    root: str
    test: list[Sample] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    split_note: str = ""
    multi_label: bool = False
    split_explicit: bool = False

    def label_matrix(self, samples: Sequence[Sample]) -> np.ndarray:
        """(n, n_classes) 0/1 matrix of `samples`' labels (multi-label data)."""
        return label_matrix(samples, self.classes)

    def summary(self) -> str:
        """A short multi-line description: counts per split and class (like fastai's summary)."""
        kind = "labels (multi-label)" if self.multi_label else "classes"
        lines = [
            f"dataset {self.root} ({self.source}): {len(self.classes)} {kind}; {self.split_note}"
        ]
        for name, samples in (("train", self.train), ("val", self.val), ("test", self.test)):
            if samples:
                counts = Counter(
                    lab for s in samples for lab in (s.labels if self.multi_label else [s.label])
                )
                per = ", ".join(f"{c}={counts.get(c, 0)}" for c in self.classes)
                lines.append(f"  {name}: {len(samples)} images ({per})")
        if self.ignored:
            lines.append(f"  ignored {len(self.ignored)} non-image files")
        return "\n".join(lines)


def label_matrix(samples: Sequence[Sample], classes: Sequence[str]) -> np.ndarray:
    """(n, n_classes) 0/1 int matrix: row i marks the labels of samples[i]."""
    index = {c: j for j, c in enumerate(classes)}
    y = np.zeros((len(samples), len(classes)), dtype=np.int64)
    for i, s in enumerate(samples):
        for lab in s.labels:
            if lab in index:
                y[i, index[lab]] = 1
    return y


def stratified_split_indices(
    labels: Sequence[Hashable], val_fraction: float, seed: int, *, multi_label: bool = False
) -> tuple[list[int], list[int]]:
    """Positions of the training and the validation items: a deterministic split per label.

    Each label keeps at least one training item; a label with 2+ items gives at least one to
    validation. With `multi_label` (label sets rarely repeat) the items are split at random
    instead. The picks depend on the order of `labels`: sort the items first (`stratified_split`
    sorts by path) for a split that does not depend on the order files were listed in.

    Example:
        >>> stratified_split_indices(["a", "a", "a", "b", "b"], 0.4, seed=0)
        ([0, 2, 4], [1, 3])
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if multi_label:
        order = list(range(len(labels)))
        random.Random(f"{seed}-multilabel").shuffle(order)
        n_val = min(max(round(len(order) * val_fraction), 1), len(order) - 1)
        return order[n_val:], order[:n_val]
    by_class: dict[Hashable, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    train: list[int] = []
    val: list[int] = []
    for label in sorted(by_class, key=str):
        items = by_class[label]
        random.Random(f"{seed}-{label}").shuffle(items)
        n_val = round(len(items) * val_fraction)
        n_val = min(max(n_val, 1 if len(items) >= 2 else 0), len(items) - 1)
        val.extend(items[:n_val])
        train.extend(items[n_val:])
    return train, val


def stratified_split(
    samples: Sequence[Sample], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split per class, deterministically: the same files, fraction and seed give the same split.

    Each class keeps at least one training image; a class with 2+ images gives at least one to
    validation. File order does not matter (samples are sorted by path first). Multi-label
    samples are split at random (see `stratified_split_indices`).
    """
    items = sorted(samples, key=lambda s: s.path)
    train, val = stratified_split_indices(
        [s.label for s in items], val_fraction, seed, multi_label=any(s.labels for s in items)
    )
    return [items[i] for i in train], [items[i] for i in val]


def stratified_subsample(
    labels: Sequence[Hashable] | np.ndarray,
    n: int | None = None,
    *,
    per_class: int | None = None,
    min_per_class: int = 1,
    classes: Sequence[Hashable] | None = None,
    seed: int | Sequence[int] | np.random.Generator = 0,
    draw_whole: bool = False,
) -> np.ndarray:
    """Positions of a random subsample that keeps every label: ``n`` in all, shared in
    proportion (at least `min_per_class` each), or `per_class` of each label.

    A label with no more items than its share is kept whole, and draws no random numbers unless
    `draw_whole`; the others are drawn without replacement. Labels are visited in `classes` order (default:
    sorted), which fixes the random numbers each gets.

    Args:
        labels: one label per item.
        n: total size wanted (``None``, or at least ``len(labels)``: every item).
        per_class: items per label instead of `n` (``None``: every item).
        min_per_class: the smallest share a label gets with `n`.
        classes: the order labels are drawn in (every label must be listed).
        seed: a seed or a numpy ``Generator`` (drawn from, so it advances).
        draw_whole: spend a draw on a label kept whole too, as diagnose's and rank's sampler
            always did (the stream their recorded picks came from).

    Returns:
        Positions into `labels`, grouped by label in `classes` order, ascending within a label.

    Example:
        >>> stratified_subsample(["a"] * 6 + ["b"] * 3, per_class=2, seed=0).tolist()
        [3, 4, 6, 8]
    """
    if n is not None and per_class is not None:
        raise InvalidParameterError("give n or per_class, not both")
    y = np.asarray(labels, dtype=object)
    order = sorted(set(y.tolist())) if classes is None else list(classes)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    whole = (n is None and per_class is None) or (n is not None and len(y) <= n)
    picks = []
    for c in order:
        members = np.flatnonzero(y == c)
        if whole:
            k = len(members)
        elif per_class is not None:
            k = per_class
        else:
            assert n is not None
            k = max(min_per_class, round(n * len(members) / len(y)))
        if k >= len(members) and not draw_whole:
            picks.append(members)
        else:
            picks.append(np.sort(rng.choice(members, size=min(k, len(members)), replace=False)))
    return np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)
