"""Small numeric helpers that several layers need (numpy only)."""

from __future__ import annotations

import numpy as np

__all__ = ["softmax"]


def softmax(z: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, keeping the input's float dtype.

    The row maximum is subtracted first, so large scores do not overflow. No input checks:
    callers facing user input (`transferlab.diagnose.softmax`) validate before calling.

    >>> softmax(np.array([[0.0, 0.0], [1000.0, 0.0]])).round(3).tolist()
    [[0.5, 0.5], [1.0, 0.0]]
    """
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
