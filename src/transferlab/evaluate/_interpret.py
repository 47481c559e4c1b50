"""Interpretation of predictions, fastai's `ClassificationInterpretation` done as data.

`Interpretation` holds per-image predictions; `top_losses` and `most_confused` return data;
plotting lives in `transferlab.evaluate._plots`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = ["Interpretation"]


@dataclass
class Interpretation:
    """Predictions on labelled images.

    Attributes:
        paths: image files.
        y_true: true class index per image.
        proba: (n, n_classes) probabilities.
        classes: class names.
    """

    paths: list[str]
    y_true: np.ndarray
    proba: np.ndarray
    classes: list[str]

    @classmethod
    def from_predictions(
        cls, paths: Sequence[str], labels: Sequence[str], proba: np.ndarray, classes: Sequence[str]
    ) -> Interpretation:
        """Build from class-name labels and probabilities whose columns follow `classes`.

        Example:
            >>> it = Interpretation.from_predictions(["a.jpg", "b.jpg"], ["cat", "dog"],
            ...                                      np.array([[0.9, 0.1], [0.7, 0.3]]), ["cat", "dog"])
            >>> it.most_confused()
            [('dog', 'cat', 1)]
        """
        index = {c: i for i, c in enumerate(classes)}
        y = np.array([index[str(lab)] for lab in labels], dtype=np.int64)
        return cls(list(paths), y, np.asarray(proba, dtype=float), [str(c) for c in classes])

    @cached_property
    def y_pred(self) -> np.ndarray:
        return self.proba.argmax(axis=1)

    @cached_property
    def losses(self) -> np.ndarray:
        """Cross-entropy of each image: -log p(true class)."""
        return -np.log(np.clip(self.proba[np.arange(len(self.y_true)), self.y_true], 1e-12, None))

    def top_losses(self, k: int = 9, *, incorrect_only: bool = False) -> list[dict[str, object]]:
        """The k images the model got most wrong (highest loss), with true/predicted class and
        the probabilities of both."""
        order = np.argsort(-self.losses)
        if incorrect_only:
            order = order[self.y_pred[order] != self.y_true[order]]
        return [self._row(int(i)) for i in order[:k]]

    def examples(
        self, k: int = 8, *, correct: bool = True, seed: int = 0
    ) -> list[dict[str, object]]:
        """Up to k correct (or incorrect) predictions, chosen at random but reproducibly."""
        mask = (self.y_pred == self.y_true) == correct
        idx = np.flatnonzero(mask)
        rng = np.random.default_rng(seed)
        pick = rng.choice(idx, size=min(k, len(idx)), replace=False) if len(idx) else idx
        return [self._row(int(i)) for i in sorted(pick)]

    def _row(self, i: int) -> dict[str, object]:
        t, p = int(self.y_true[i]), int(self.y_pred[i])
        return {
            "path": self.paths[i],
            "true": self.classes[t],
            "predicted": self.classes[p],
            "p_predicted": float(self.proba[i, p]),
            "p_true": float(self.proba[i, t]),
            "loss": float(self.losses[i]),
        }

    def most_confused(self, min_val: int = 1) -> list[tuple[str, str, int]]:
        """(true, predicted, count) for off-diagonal confusions seen at least `min_val` times,
        most frequent first."""
        n = len(self.classes)
        cm = np.zeros((n, n), dtype=int)
        np.add.at(cm, (self.y_true, self.y_pred), 1)
        pairs = [
            (self.classes[i], self.classes[j], int(cm[i, j]))
            for i in range(n)
            for j in range(n)
            if i != j and cm[i, j] >= min_val
        ]
        return sorted(pairs, key=lambda t: (-t[2], t[0], t[1]))
