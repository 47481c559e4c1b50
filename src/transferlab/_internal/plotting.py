"""matplotlib's pyplot on the headless Agg backend, imported only when a plot is drawn."""

from __future__ import annotations

from typing import Any

__all__ = ["pyplot"]


def pyplot() -> Any:
    """`matplotlib.pyplot`, on Agg unless the user chose a backend already."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - matplotlib is a core dependency
        raise ImportError("plots need matplotlib: pip install matplotlib") from exc
    return plt
