"""Likely label errors (issue 19): images whose given label a probe that never saw them finds
unlikely, ranked by cleanlab's confident learning (`cleanlab.filter.find_label_issues`) on
out-of-fold probabilities.

Measured (RESULTS.md issue 19), 10% of training labels flipped at random, k = the number
flipped: a probe on the concatenated pre_logits of lite0/1/2 with C = min(1, 60 / n) puts 83%
of the flipped hymenoptera images and 78% of trashnet's in its top k (mean of 3 seeds); lite0
alone reaches only 67-69% on trashnet. With no label flipped it flags 0 of 244 and 33 of 420.
A fixed C = 0.1 did as well on the whole sets but found only 6-28% on trashnet subsets of 10
and 20 images per class, where min(1, 60 / n) finds 50-53%.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from transferlab.exceptions import InvalidParameterError

__all__ = ["LABEL_ISSUE_C_TIMES_N", "LabelIssue", "label_issue_C", "label_issues"]

#: the probe's C for this job is this over the number of images (at most 1): the same
#: regularisation per image at every size, stronger than the default 1.0 on a few hundred
#: images, so that the out-of-fold probabilities follow the many right labels rather than fit
#: the few wrong ones, and not so strong on a few dozen that the probe learns nothing
LABEL_ISSUE_C_TIMES_N = 60.0


def label_issue_C(n: int) -> float:
    """The probe's C for `label_issues` on `n` images."""
    return min(1.0, LABEL_ISSUE_C_TIMES_N / max(n, 1))


@dataclass
class LabelIssue:
    """One image whose label is likely wrong.

    Attributes:
        index: its row in the inputs.
        given: the label it carries.
        suggested: the label the out-of-fold probe finds most likely.
        confidence: the probe's probability of `suggested`.
        given_probability: its probability of `given` (the ranking: lowest first).
    """

    index: int
    given: str
    suggested: str
    confidence: float
    given_probability: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def label_issues(
    X: np.ndarray,
    y: Sequence[Any],
    *,
    cv: int = 5,
    seed: int = 0,
    C: float | None = None,
) -> list[LabelIssue]:
    """The images cleanlab flags as likely mislabelled, worst first (lowest probability of the
    given label under a `cv`-fold out-of-fold `LinearProbe` on `X`, of C = `C` or, by
    default, `label_issue_C` of the number of images).

    Raises:
        InvalidParameterError: `X` and `y` differ in length, fewer than 2 classes, or a class
            with fewer than 2 images.
    """
    from cleanlab.filter import find_label_issues

    from transferlab.probe import oof_proba

    labels = np.asarray([str(v) for v in y], dtype=object)
    if len(X) != len(labels):
        raise InvalidParameterError(
            f"label_issues needs one label per feature row, got {len(X)} rows and {len(labels)} labels"
        )
    if len(set(labels)) < 2:
        raise InvalidParameterError("label_issues needs at least 2 classes")
    C = label_issue_C(len(labels)) if C is None else C
    proba, classes = oof_proba(np.asarray(X), labels, cv=cv, seed=seed, C=C)
    given = np.searchsorted(classes, labels)
    order = find_label_issues(given, proba, return_indices_ranked_by="self_confidence")
    return [
        LabelIssue(
            int(i),
            str(labels[i]),
            str(classes[int(proba[i].argmax())]),
            round(float(proba[i].max()), 4),
            round(float(proba[i, given[i]]), 4),
        )
        for i in order
    ]
