"""Layer-wise probing: a cross-validated linear probe on every tap, shallow to deep.

Yosinski et al. (2014) showed that features go from general (edges, colours) to specific
(ImageNet's classes) with depth; where the accuracy curve peaks is the best place to cut the
network for this task. A peak before the last layer says the top layers are too ImageNet-specific
for the target: cut earlier, or retrain the top stages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from transferlab.exceptions import InvalidParameterError

__all__ = ["LayerProbeResult", "LayerProfileDisplay", "cv_probe_accuracy", "layer_probe"]


def cv_probe_accuracy(
    X: np.ndarray, y: Sequence[Any], *, cv: int = 5, seed: int = 0
) -> tuple[float, float]:
    """Mean and standard deviation of stratified k-fold accuracy of a `LinearProbe`.

    The folds shrink to the smallest class count (at least 2), so few-shot sets work.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    from transferlab.probe import LinearProbe

    y = np.asarray(y)
    _, counts = np.unique(y, return_counts=True)
    if len(counts) < 2:
        raise InvalidParameterError("probing needs at least two classes")
    if counts.min() < 2:
        raise InvalidParameterError(
            f"probing needs at least 2 images per class; the smallest class has {counts.min()}"
        )
    folds = StratifiedKFold(n_splits=min(cv, int(counts.min())), shuffle=True, random_state=seed)
    scores = cross_val_score(LinearProbe(), X, y, cv=folds, scoring="accuracy")
    return float(np.mean(scores)), float(np.std(scores))


@dataclass
class LayerProbeResult:
    """Cross-validated probe accuracy per layer.

    Attributes:
        layers: tap names, shallow to deep; dims: their feature widths.
        accuracy, accuracy_std: mean and spread over folds.
        best_layer: the shallowest layer whose accuracy is within one fold-spread of the best
            (cheaper to compute, and as good as the data can tell).
        chance: accuracy of always predicting the most frequent class.
    """

    layers: list[str]
    dims: list[int]
    accuracy: list[float]
    accuracy_std: list[float]
    best_layer: str
    chance: float

    @property
    def peak_layer(self) -> str:
        return self.layers[int(np.argmax(self.accuracy))]

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_layer": self.best_layer,
            "peak_layer": self.peak_layer,
            "chance": round(self.chance, 4),
            "layers": {
                layer: {"dim": d, "accuracy": round(a, 4), "std": round(s, 4)}
                for layer, d, a, s in zip(
                    self.layers, self.dims, self.accuracy, self.accuracy_std, strict=True
                )
            },
        }


def layer_probe(
    features: dict[str, np.ndarray], y: Sequence[Any], *, cv: int = 5, seed: int = 0
) -> LayerProbeResult:
    """Probe every layer of `features` (name -> (n, d), in depth order) against labels `y`.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = np.repeat([0, 1], 20)
        >>> feats = {"noise": rng.normal(size=(40, 4)), "signal": rng.normal(size=(40, 4)) + y[:, None]}
        >>> r = layer_probe(feats, y)
        >>> r.peak_layer, r.accuracy[1] > r.accuracy[0]
        ('signal', True)
    """
    y = np.asarray(y)
    if not features:
        raise InvalidParameterError("layer_probe needs features from at least one layer")
    accs, stds, dims = [], [], []
    for layer, X in features.items():
        if len(X) != len(y):
            raise InvalidParameterError(
                f"layer {layer!r} has {len(X)} rows but there are {len(y)} labels"
            )
        m, s = cv_probe_accuracy(X, y, cv=cv, seed=seed)
        accs.append(m)
        stds.append(s)
        dims.append(int(X.shape[1]))
    layers = list(features)
    top = int(np.argmax(accs))
    best = next(i for i in range(len(layers)) if accs[i] >= accs[top] - stds[top])
    _, counts = np.unique(y, return_counts=True)
    return LayerProbeResult(layers, dims, accs, stds, layers[best], float(counts.max() / len(y)))


class LayerProfileDisplay:
    """Lines of per-layer values (probe accuracy, domain gap, BN shift) against depth."""

    def __init__(
        self,
        layers: Sequence[str],
        series: dict[str, Sequence[float]],
        *,
        ylabel: str,
        title: str = "",
        errors: dict[str, Sequence[float]] | None = None,
        hline: tuple[float, str] | None = None,
        mark: str | None = None,
    ) -> None:
        self.layers, self.series, self.ylabel, self.title = list(layers), series, ylabel, title
        self.errors, self.hline, self.mark = errors or {}, hline, mark

    @classmethod
    def from_layer_probe(
        cls, result: LayerProbeResult, label: str = "probe"
    ) -> LayerProfileDisplay:
        return cls(
            result.layers,
            {label: result.accuracy},
            ylabel="cross-validated probe accuracy",
            title="Linear probe accuracy by depth",
            errors={label: result.accuracy_std},
            hline=(result.chance, "majority class"),
            mark=result.best_layer,
        )

    def plot(self, ax: Any = None) -> LayerProfileDisplay:
        from transferlab._internal.plotting import pyplot as _pyplot

        plt = _pyplot()
        if ax is None:
            _, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
        x = np.arange(len(self.layers))
        for name, values in self.series.items():
            v = np.asarray(values, dtype=float)
            ax.plot(x, v, marker="o", label=name)
            if name in self.errors:
                e = np.asarray(self.errors[name], dtype=float)
                ax.fill_between(x, v - e, v + e, alpha=0.2)
        if self.hline is not None:
            ax.axhline(self.hline[0], color="grey", ls="--", lw=1, label=self.hline[1])
        if self.mark in self.layers:
            ax.axvline(
                self.layers.index(self.mark),
                color="tab:green",
                ls=":",
                label=f"cut point: {self.mark}",
            )
        ax.set_xticks(x, self.layers, rotation=30, ha="right")
        ax.set_ylabel(self.ylabel)
        ax.set_xlabel("layer (shallow → deep)")
        if self.title:
            ax.set_title(self.title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        self.ax_, self.figure_ = ax, ax.figure
        return self
