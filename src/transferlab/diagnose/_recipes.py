"""Fine-tuning recipes by the kind of shift found: one home for the settings that `advise`
prints as a command and `transferlab auto` runs. Each is the configuration that measured best
for its case (benchmarks/RESULTS.md, issue 4), with the reason a person can read.

The shift itself is located here too (`locate_shift`): BatchNorm input statistics of the
user's images against those of natural reference photos, tap by tap, shallow to deep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ACT_SHIFT_RATIO",
    "LOW_TAPS",
    "SHIFT_FLOOR",
    "SHIFT_RATIO",
    "Recipe",
    "Shift",
    "for_family",
    "larger_size",
    "locate_shift",
    "recipes_for",
    "stage_after",
]

# taps that hold low-level features (colour, edges, textures) in stem/stage naming
LOW_TAPS = ("stem", "stage1", "stage2")
SHIFT_RATIO = 1.8  # target BN shift / reference BN shift that counts as a domain shift
SHIFT_FLOOR = 0.35  # ... and the absolute W2 shift it must also exceed
#: the ratio for the activation measure of networks without BatchNorm (`activation_shift`),
#: whose floor (two halves of the reference photos) sits far below the BatchNorm one: on lite0,
#: where both measures exist, it gives BatchNorm's verdicts on hymenoptera, trashnet, aid_rs10
#: (no shift; their largest ratios 3.5, 11, 4.5) and pneumoniamnist (low-level, >= 14.6 on
#: the stem and first stages). Calibrated on those four: provisional, since no pretrained
#: transformer loads offline here (benchmarks/RESULTS.md, issue 20)
ACT_SHIFT_RATIO = 13.0

#: how each FinetuneConfig field is spelled on the command line (`Recipe.flags`)
_FLAGS = {
    "image_size": "--image-size",
    "freeze_to": "--freeze-to",
    "bn_policy": "--bn",
    "epochs": "--epochs",
    "lr": "--lr",
    "lr_mult": "--lr-mult",
    "layer_decay": "--layer-decay",
    "crop_scale": "--crop-scale",
    "tta": "--tta",
    "ema": "--ema",
    "wise": "--wise",
}


@dataclass(frozen=True)
class Shift:
    """Where the user's images depart from natural photos (see `locate_shift`).

    Attributes:
        first_tap: the shallowest tap past the rule; low: it is a low-level tap (`LOW_TAPS`).
        n_stages: stage taps measured (the network's depth in stages).
        first_index: position of `first_tap` among the measured taps.
        ratios: target / reference shift per tap.
    """

    first_tap: str
    low: bool
    n_stages: int
    first_index: int
    ratios: dict[str, float] = field(default_factory=dict)


def stage_after(tap: str, n_stages: int) -> int | None:
    """The ``--freeze-to`` that keeps everything up to `tap` frozen and trains from the stage
    after it (``stageK`` -> K + 1, the last stage at most); None when `tap` is not a stage."""
    if tap.startswith("stage") and tap[5:].isdigit():
        return min(int(tap[5:]) + 1, max(1, n_stages))
    return None


def locate_shift(
    bn_target: dict[str, float], bn_reference: dict[str, float], ratio: float = SHIFT_RATIO
) -> tuple[Shift | None, int]:
    """The first tap whose BatchNorm shift on the target images is at least `ratio` times
    the reference photos' and above `SHIFT_FLOOR` (None: no shift), and the number of stage
    taps. For the activation measure of networks without BatchNorm, `ratio` is
    `ACT_SHIFT_RATIO`."""
    taps = [t for t in bn_target if t in bn_reference]
    ratios = {t: bn_target[t] / max(bn_reference[t], 1e-6) for t in taps}
    n_stages = sum(1 for t in taps if t.startswith("stage"))
    shifted = [t for t in taps if ratios[t] >= ratio and bn_target[t] >= SHIFT_FLOOR]
    if not shifted:
        return None, n_stages
    first = shifted[0]
    return Shift(first, first in LOW_TAPS, n_stages, taps.index(first), ratios), n_stages


def larger_size(input_size: int) -> int:
    """A larger input for large images: about 15% more, a multiple of 32 (224 -> 256)."""
    return max(round(input_size * 1.15 / 32), input_size // 32 + 1) * 32


@dataclass(frozen=True)
class Recipe:
    """A fine-tuning configuration for a kind of data, and why.

    Attributes:
        name: short id (``lp-ft-wise``, ``lp-ft-wise-large``, ``partial-freeze-ema``,
            ``deep-unfreeze``).
        family: ``near_imagenet``, ``low_level_shift`` or ``high_level_shift``.
        settings: `FinetuneConfig` fields it sets (the others keep their defaults).
        why: the measurement behind it, in a sentence.
    """

    name: str
    family: str
    settings: dict[str, Any]
    why: str

    def flags(self) -> str:
        """The settings as `transferlab finetune` flags, in a fixed order."""
        parts = []
        for key, flag in _FLAGS.items():
            if key not in self.settings:
                continue
            value = self.settings[key]
            if value is True:
                parts.append(flag)
            elif key == "lr":
                parts.append(f"{flag} {value:.0e}".replace("e-0", "e-"))
            else:
                parts.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
        return " ".join(parts)


def _low_level_start(
    layer_probe: dict[str, Any] | None, peak: str | None, n_stages: int
) -> tuple[int, str]:
    """The stage a low-level-shift fine-tune trains from, and why (see `recipes_for`)."""
    after = stage_after(peak, n_stages) if peak else None
    if peak == "stem":
        return 1, "every stage: the layer probe peaks at the stem"
    if after is not None and peak is not None:
        if int(peak[5:]) < n_stages:
            return after, f"the stage after {peak}, where the layer probe peaks"
        return after, f"the last stage: the layer probe peaks at {peak}"
    return max(1, n_stages - 2), "the last three stages; no earlier layer probes clearly better"


def recipes_for(
    shift: Shift | None,
    *,
    n_stages: int,
    peak: str | None,
    min_side: float,
    input_size: int,
    layer_probe: dict[str, Any] | None = None,
    family: str = "batchnorm-cnn",
) -> list[Recipe]:
    """The recipes to try for this data, most promising first, in the flags of the backbone's
    `family` (`for_family`).

    Args:
        shift: `locate_shift`'s finding (None: the images sit as close to ImageNet as photos).
        n_stages: stage taps of the backbone.
        peak: the layer where the probe clearly peaks before the last (None: no such peak).
        min_side: median smallest side of the images, in pixels.
        input_size: the backbone's input size.
        family: the backbone's family (`transferlab.backbones.FAMILIES`).
    """
    out = [
        for_family(r, family)
        for r in _recipes(shift, n_stages, peak, min_side, input_size, layer_probe)
    ]
    # a recipe that only changed the input size has nothing left to try on a transformer
    return [
        r
        for i, r in enumerate(out)
        if i == 0 or r.name != "lp-ft-wise-large" or "image_size" in r.settings
    ]


def for_family(recipe: Recipe, family: str) -> Recipe:
    """`recipe` for a `family` without BatchNorm: no BatchNorm policy (there are no statistics
    to freeze or train) and the family's layer-wise LR decay in place of the LR spread, at its
    peak LR scaled as the recipe scales the CNN one (the x-ray recipe's 1e-3 is twice 5e-4)."""
    if family == "batchnorm-cnn":
        return recipe
    from transferlab.finetune import FAMILY_DEFAULTS

    if family not in FAMILY_DEFAULTS:
        return recipe
    base, own = FAMILY_DEFAULTS["batchnorm-cnn"], FAMILY_DEFAULTS[family]
    # a transformer's patch grid is fixed at its input size: it trains at that size
    drop = ("bn_policy", "lr_mult", *(("image_size",) if family == "transformer" else ()))
    settings = {k: v for k, v in recipe.settings.items() if k not in drop}
    if "lr" in settings:
        settings["lr"] = float(f"{own['lr'] * settings['lr'] / base['lr']:.0e}")
    if "lr_mult" in recipe.settings:
        settings["layer_decay"] = own["layer_decay"]
    why = (
        f"{recipe.why} For a {family} there are no BatchNorm statistics: the BatchNorm policy "
        f"does not apply, and learning rates decay by {own['layer_decay']} per block "
        "(--layer-decay) instead of a fixed spread."
    )
    return Recipe(recipe.name, recipe.family, settings, why)


def _recipes(
    shift: Shift | None,
    n_stages: int,
    peak: str | None,
    min_side: float,
    input_size: int,
    layer_probe: dict[str, Any] | None,
) -> list[Recipe]:
    if shift is not None and shift.low:
        # x-rays (pneumoniamnist): retraining early stages with BN trained scored below the
        # probe (val 0.907 / test 0.782); keeping them frozen with ImageNet statistics and
        # training from the stage after the probe peak, with EMA, reached test 0.906-0.921
        train_from, why_from = _low_level_start(layer_probe, peak, n_stages)
        settings: dict[str, Any] = {}
        why = (
            "Low-level features are off, yet retraining the early stages does not pay: on "
            "x-rays it scored below the probe, while keeping the stem and early stages frozen "
            "with their ImageNet BatchNorm statistics and fine-tuning the deeper stages beat "
            f"every probe. Fine-tune from stage {train_from} ({why_from}) with BatchNorm "
            "statistics frozen, a 10x spread of learning rates, large crops, 10 epochs and a "
            "moving average of the weights (--ema), which held up best on shifted test images."
        )
        # tiny images (28 px x-rays): 112 px scored as 224 did for a quarter of the compute
        if min_side * 4 <= input_size and input_size > 112:
            settings["image_size"] = 112
            why += (
                f" The images are {min_side:.0f} px: train at 112 px, not {input_size}; "
                "upsampling further adds compute, not detail."
            )
        settings.update(
            freeze_to=train_from,
            bn_policy="freeze",
            epochs=10,
            lr=1e-3,
            lr_mult=10.0,
            crop_scale=0.6,
            tta=True,
            ema=0.998,
        )
        return [Recipe("partial-freeze-ema", "low_level_shift", settings, why)]
    if shift is not None:
        return [
            Recipe(
                "deep-unfreeze",
                "high_level_shift",
                {"bn_policy": "train", "lr_mult": 10.0, "freeze_to": max(0, shift.first_index)},
                f"Only deeper features are off (from {shift.first_tap}): fine-tune from there "
                "upwards, early stages frozen.",
            )
        ]
    base = Recipe(
        "lp-ft-wise",
        "near_imagenet",
        {"bn_policy": "freeze", "epochs": 5, "wise": "auto"},
        "Near-ImageNet photos: start the head from the linear probe (LP-FT), fine-tune the "
        "whole network gently with BatchNorm statistics frozen, then blend with the start "
        "(WiSE-FT): +1 to 2 points over the probe on trashnet and hymenoptera.",
    )
    out = [base]
    if min_side >= 1.4 * input_size:
        size = larger_size(input_size)
        out.append(
            Recipe(
                "lp-ft-wise-large",
                "near_imagenet",
                {"image_size": size, "bn_policy": "freeze", "epochs": 4, "tta": True},
                f"The images are large ({min_side:.0f} px): at {size} px hymenoptera's "
                f"fine-tune beat its probe, where at {input_size} px it only tied.",
            )
        )
    return out
