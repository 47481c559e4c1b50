"""Are the images a model will be asked about from another domain than its training images?

The shift that hurts most in practice is not between the user's images and ImageNet but
between the images it trains on and the images it will predict (photos -> sketches, one
hospital's scanner -> another's). A probe's accuracy cross-validated on the training images
says nothing about the other domain. Measured here per layer: how well a linear classifier
tells the training images from the other split's (0.5: indistinguishable), the MMD between
them, and, when the other split is labelled, the probe's accuracy within the training domain
(cross-validated) against its accuracy on the other split (trained on all training images).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["SPLIT_SHIFT_ACCURACY", "SplitShift", "split_shift"]

#: a domain classifier this accurate at telling train from the other split, at some layer,
#: means another domain: random halves of one image set score about 0.5 (tests/diagnose)
SPLIT_SHIFT_ACCURACY = 0.8


@dataclass
class SplitShift:
    """Train against another split, per layer.

    Attributes:
        other: the other split's name (``val``, ``test``, or ``target`` for unlabelled images).
        n_train, n_other: images on each side.
        layers: layer -> ``domain_accuracy`` (train vs other), ``mmd``, and when the other
            split is labelled ``within`` (the probe's cross-validated accuracy on train) and
            ``cross`` (trained on train, scored on the other split).
        shifted: some layer's domain accuracy reaches `SPLIT_SHIFT_ACCURACY`.
        layer: the layer the summary figures come from (the last feature layer).
        saturation: mean HSV saturation of each side (``train`` and `other`): what tells a
            drawing or greyscale domain from a colour one (`choose_remedy` reads it).
        bn_shift: each side's BatchNorm statistics against the network's own, by depth (empty
            for networks without BatchNorm): a low-level shift shows as one side's shallow taps
            moving away while the other's stay.
        remedy: the measured-best remedy for this kind of shift and its command (set by
            `run_diagnose`).
    """

    other: str
    n_train: int
    n_other: int
    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    shifted: bool = False
    layer: str = ""
    saturation: dict[str, float] = field(default_factory=dict)
    bn_shift: dict[str, dict[str, float]] = field(default_factory=dict)
    remedy: dict[str, str] = field(default_factory=dict)

    @property
    def within(self) -> float | None:
        return self.layers.get(self.layer, {}).get("within")

    @property
    def cross(self) -> float | None:
        return self.layers.get(self.layer, {}).get("cross")

    def to_dict(self) -> dict[str, Any]:
        return {
            "other": self.other,
            "n_train": self.n_train,
            "n_other": self.n_other,
            "shifted": self.shifted,
            "layer": self.layer,
            "rule": f"domain classifier accuracy >= {SPLIT_SHIFT_ACCURACY} at some layer",
            "layers": {la: {k: round(v, 4) for k, v in d.items()} for la, d in self.layers.items()},
            "saturation": {k: round(v, 4) for k, v in self.saturation.items()},
            "bn_shift": {
                side: {t: round(v, 4) for t, v in taps.items()}
                for side, taps in self.bn_shift.items()
            },
            "remedy": dict(self.remedy),
        }


def split_shift(
    train: dict[str, np.ndarray],
    y_train: np.ndarray,
    other: dict[str, np.ndarray],
    y_other: np.ndarray | None,
    *,
    other_name: str = "val",
    cv: int = 5,
    seed: int = 0,
) -> SplitShift:
    """Measure train against `other` at every layer both have (see the module docstring)."""
    from transferlab.diagnose._domain import domain_classifier_accuracy, mmd_rbf
    from transferlab.diagnose._layers import cv_probe_accuracy
    from transferlab.probe import LinearProbe

    layers = [la for la in train if la in other and la != "logits"]
    n_train, n_other = len(y_train), len(next(iter(other.values())))
    out = SplitShift(other_name, n_train, n_other)
    labelled = (
        y_other is not None and len(set(np.asarray(y_other).tolist()) - set(y_train.tolist())) == 0
    )
    for la in layers:
        row = {
            "domain_accuracy": domain_classifier_accuracy(other[la], train[la], seed=seed),
            "mmd": mmd_rbf(train[la], other[la], seed=seed),
        }
        if labelled:
            row["within"], _ = cv_probe_accuracy(train[la], y_train, cv=cv, seed=seed)
            probe = LinearProbe().fit(train[la], y_train)
            row["cross"] = float(probe.score(other[la], y_other))
        out.layers[la] = row
    out.shifted = any(r["domain_accuracy"] >= SPLIT_SHIFT_ACCURACY for r in out.layers.values())
    out.layer = "pre_logits" if "pre_logits" in out.layers else (layers[-1] if layers else "")
    return out
