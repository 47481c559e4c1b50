"""Turn measurements into findings a person can act on: what is wrong, the numbers that show it,
and what to do. Every rule is a plain threshold on a measured quantity, stated in the finding."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from transferlab.diagnose._recipes import (
    ACT_SHIFT_RATIO,
    LOW_TAPS,
    SHIFT_FLOOR,
    SHIFT_RATIO,
    locate_shift,
    recipes_for,
    stage_after,
)

__all__ = [
    "LOW_TAPS",
    "SHIFT_FLOOR",
    "SHIFT_RATIO",
    "Finding",
    "advise",
    "significant_peak",
    "stage_after",
]

SEVERITIES = ("problem", "warning", "info", "ok")

# thresholds, named so the report can quote them
FEW_SHOT = 20  # images per class below which fine-tuning is not advised
#: largest / smallest class count that counts as imbalanced (diagnose, auto and audit say it)
IMBALANCE = 3.0


@dataclass
class Finding:
    """One diagnosis: a stable `code`, its severity, a one-line title, the evidence (numbers) and
    a recommendation in plain language, with the command or flag that carries it out."""

    code: str
    severity: str
    title: str
    evidence: dict[str, Any]
    recommendation: str
    commands: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _split_finding(shift: dict[str, Any], data: str) -> Finding:
    """The finding for training images and val/test/target images from different domains."""
    layers = shift["layers"]
    best = max(layers, key=lambda la: layers[la]["domain_accuracy"])
    at = layers.get(shift["layer"], {})
    other = shift["other"]
    title = (
        f"Your {other} images come from another domain than your training images: a linear "
        f"classifier tells them apart with accuracy {layers[best]['domain_accuracy']:.2f} at "
        f"{best} (0.5: same domain)"
    )
    if "within" in at and "cross" in at:
        title += (
            f"; the probe scores {at['within']:.3f} cross-validated on the training images but "
            f"{at['cross']:.3f} on {other}"
        )
        rec = (
            f"The cross-validated figure on the training images will not hold on images like "
            f"{other}: it overstates by {100 * (at['within'] - at['cross']):.0f} points. Judge "
            f"models by their {other} accuracy."
        )
    else:
        rec = (
            f"Figures measured on the training images will not hold on the {other} images. "
            f"Label a few of them to measure the model there."
        )
    remedy = shift.get("remedy") or {}
    commands = [f"transferlab fit {data}"]
    if remedy.get("remedy") not in (None, "none"):
        rec += f" Remedy measured best for this kind of shift: {remedy['remedy']} ({remedy['reason']})."
        commands = [remedy["command"]]
    else:
        rec += f" To close the gap, label some images of the {other} domain into training."
    evidence = {
        "other": other,
        "domain_accuracy": {la: round(v["domain_accuracy"], 3) for la, v in layers.items()},
        "mmd": {la: round(v["mmd"], 4) for la, v in layers.items()},
        **(
            {
                "within_domain_accuracy": {la: round(v["within"], 3) for la, v in layers.items()},
                "cross_domain_accuracy": {la: round(v["cross"], 3) for la, v in layers.items()},
            }
            if "within" in at
            else {}
        ),
        "rule": shift.get("rule"),
    }
    for key in ("saturation", "bn_shift"):
        if shift.get(key):
            evidence[key] = shift[key]
    return Finding("split_domain_shift", "problem", title, evidence, rec, commands)


def _mean_over(d: dict[str, float], keys: tuple[str, ...] | list[str]) -> float:
    vals = [d[k] for k in keys if k in d]
    return float(np.mean(vals)) if vals else float("nan")


def _deepest(layers: dict[str, Any]) -> str:
    """The layer a default probe reads: pre_logits when probed, else the last one listed."""
    return "pre_logits" if "pre_logits" in layers else list(layers)[-1]


def significant_peak(layer_probe: dict[str, Any] | None) -> str | None:
    """The layer where the probe peaks, if it beats the deepest layer by more than one standard
    deviation (and 1 point); None otherwise. The same rule as the `earlier_layer_better`
    finding, so the advice never acts on a peak that is noise."""
    if not layer_probe:
        return None
    layers = layer_probe["layers"]
    deepest = _deepest(layers)
    peak = layer_probe["peak_layer"]
    gain = layers[peak]["accuracy"] - layers[deepest]["accuracy"]
    return peak if peak != deepest and gain > max(0.01, layers[deepest]["std"]) else None


def advise(
    *,
    class_counts: dict[str, int],
    target_stats: dict[str, Any],
    reference_stats: dict[str, Any] | None,
    bn_target: dict[str, float] | None,
    bn_reference: dict[str, float] | None,
    layer_probe: dict[str, Any] | None,
    domain_gap: dict[str, Any] | None,
    preprocessing: list[dict[str, Any]] | None = None,
    input_size: int = 224,
    backbone: str = "efficientnet_lite0",
    adabn: dict[str, float] | None = None,
    data: str = "DATA",
    family: str = "batchnorm-cnn",
    split_shift: dict[str, Any] | None = None,
) -> list[Finding]:
    """Findings from the measurements of `diagnose` (all arguments are its plain-dict outputs);
    the commands use the flags of the backbone's `family` (no BatchNorm flags where there is no
    BatchNorm)."""
    out: list[Finding] = []
    has_bn = family == "batchnorm-cnn"
    bb_flag = "" if backbone == "efficientnet_lite0" else f" --backbone {backbone}"
    # 1. preprocessing bugs come first: nothing else is meaningful until they are fixed
    for issue in preprocessing or []:
        out.append(
            Finding(
                f"preprocessing_{issue['code']}",
                "problem",
                f"Preprocessing does not match {backbone}: {issue['message']}",
                issue.get("evidence", {}),
                issue["fix"],
            )
        )

    # 1b. the images to predict are another domain than the training images: every figure
    # measured on the training images alone overstates what the model will do on them
    if split_shift and split_shift.get("shifted"):
        out.append(_split_finding(split_shift, data))

    # 2. domain shift, located by depth from BatchNorm statistics (target vs natural photos)
    adabn_helps = None if not adabn else adabn["after"] - adabn["before"] > 0.01
    shifted_from: str | None = None
    shift_cmd: str | None = None  # the fine-tuning command the shift finding gives
    if bn_target and bn_reference:
        taps = [t for t in bn_target if t in bn_reference]
        ratio = SHIFT_RATIO if has_bn else ACT_SHIFT_RATIO
        shift, n_stages = locate_shift(bn_target, bn_reference, ratio)
        low = [t for t in LOW_TAPS if t in taps]
        low_t, low_r = _mean_over(bn_target, low), _mean_over(bn_reference, low)
        evidence = {
            "bn_shift_w2_target": {t: round(bn_target[t], 3) for t in taps},
            "bn_shift_w2_reference": {t: round(bn_reference[t], 3) for t in taps},
            "measure": "batchnorm" if has_bn else "activations",
            "rule": f"target/reference >= {ratio:g} and target >= {SHIFT_FLOOR}",
        }
        if domain_gap:
            evidence["domain_classifier_accuracy"] = {
                la: v["classifier_accuracy"] for la, v in domain_gap["layers"].items()
            }
        if shift is not None:
            shifted_from = shift.first_tap
            is_low = shift.low
            kind = "low-level" if is_low else "mid/high-level"
            grey = target_stats.get("greyscale_fraction", 0) >= 0.5 and (
                reference_stats is None or reference_stats.get("greyscale_fraction", 0) < 0.5
            )
            causes = []
            if grey:
                causes.append("the images are greyscale while the backbone learnt on colour photos")
            if target_stats.get("median_min_side", input_size) < input_size / 2:
                causes.append(
                    f"the images are small ({target_stats['median_min_side']:.0f} px) and get "
                    f"upsampled {input_size / target_stats['median_min_side']:.0f}x, so they are blurrier "
                    "than any ImageNet photo"
                )
            because = f" ({'; '.join(causes)})" if causes else ""
            first = shift.first_index
            # the recipe (one home: _recipes.py, which `auto` runs too); the peak counts only
            # when it clearly beats the last layer
            recipe = recipes_for(
                shift,
                n_stages=n_stages,
                peak=significant_peak(layer_probe),
                min_side=target_stats.get("median_min_side", input_size),
                input_size=input_size,
                family=family,
            )[0]
            low_rec = recipe.why
            low_cmds = [f"transferlab finetune {data}{bb_flag} {recipe.flags()}"]
            if adabn_helps is not False and has_bn:
                low_cmds.append(f"transferlab fit {data}{bb_flag} --adapt-bn")
            high_rec = (
                f"Only deeper features are off: fine-tune from {shifted_from} upwards "
                f"(the last {max(1, n_stages - max(0, first - 1))} stages) and keep earlier "
                "ones frozen."
            )
            high_flags = "--bn train --lr-mult 10" if has_bn else "--layer-decay 0.75"
            high_cmds = [
                f"transferlab finetune {data}{bb_flag} {high_flags} --freeze-to {max(0, first)}"
            ]
            if adabn_helps is not False and has_bn:
                high_cmds.append(f"transferlab fit {data}{bb_flag} --adapt-bn")
            out.append(
                Finding(
                    "domain_shift_low_level" if is_low else "domain_shift_high_level",
                    "problem" if is_low else "warning",
                    f"{kind.capitalize()} domain shift: activations depart from ImageNet's from "
                    f"the {shifted_from} on{because}",
                    {
                        **evidence,
                        "first_shifted_tap": shifted_from,
                        "low_level_shift_ratio": round(low_t / max(low_r, 1e-6), 2),
                    },
                    low_rec if is_low else high_rec,
                    low_cmds if is_low else high_cmds,
                )
            )
            shift_cmd = (low_cmds if is_low else high_cmds)[0]
            if grey:
                out.append(
                    Finding(
                        "augment_greyscale",
                        "info",
                        "Greyscale images: colour augmentation has nothing to vary",
                        {"greyscale_fraction": target_stats.get("greyscale_fraction")},
                        "Fine-tuning detects greyscale data and keeps jitter to brightness and "
                        "contrast; geometry (crop scale, flips) carries the augmentation. Keep "
                        "crops large (--crop-scale 0.6 or more) when the whole image matters, as in "
                        "x-rays.",
                    )
                )
        else:
            out.append(
                Finding(
                    "no_domain_shift",
                    "ok",
                    "No domain shift: BatchNorm statistics on these images sit as close to "
                    "ImageNet's as natural photos do"
                    if has_bn
                    else "No domain shift: activation statistics on these images sit as close "
                    "to the reference photos' as photos do to each other",
                    evidence,
                    "Pretrained features fit these images; a linear probe on the last layer is the "
                    "first thing to try.",
                )
            )
    if adabn:
        gain = adabn["after"] - adabn["before"]
        out.append(
            Finding(
                "adabn",
                "warning" if gain > 0.01 else "info",
                f"Re-estimating BatchNorm statistics (AdaBN) changes probe accuracy by "
                f"{100 * gain:+.1f} points",
                {k: round(v, 4) for k, v in adabn.items()},
                "Re-estimate BatchNorm statistics on your images before probing or fine-tuning."
                if gain > 0.01
                else "AdaBN does not help here; keep the pretrained statistics.",
                [
                    f"transferlab fit {data}{bb_flag} --adapt-bn",
                    f"transferlab finetune {data}{bb_flag} --adapt-bn",
                ]
                if gain > 0.01
                else [],
            )
        )

    # 3. which layer: the layer-probe curve
    if layer_probe:
        layers = layer_probe["layers"]
        accs = {k: v["accuracy"] for k, v in layers.items()}
        deepest = _deepest(layers)
        peak = layer_probe["peak_layer"]
        if significant_peak(layer_probe) is not None:
            out.append(
                Finding(
                    "earlier_layer_better",
                    "warning",
                    f"An earlier layer transfers better: {peak} {accs[peak]:.3f} vs {deepest} "
                    f"{accs[deepest]:.3f}",
                    {"probe_accuracy": accs},
                    f"The last layers are too ImageNet-specific for this task. For a probe, read "
                    f"features from {peak}; for fine-tuning, retrain the stages after it.",
                    [f"transferlab fit {data}{bb_flag} --layer {peak}"],
                )
            )
        else:
            out.append(
                Finding(
                    "best_layer",
                    "ok",
                    f"The last layer ({deepest}) transfers best or as well as any: {accs[deepest]:.3f}",
                    {"probe_accuracy": accs},
                    f"Use {deepest} features (the default).",
                )
            )

    # 4. data: amount and balance
    counts = np.asarray(list(class_counts.values()))
    if counts.size:
        smallest = int(counts.min())
        probe_acc = (
            layer_probe["layers"][layer_probe["peak_layer"]]["accuracy"] if layer_probe else None
        )
        if smallest < FEW_SHOT:
            out.append(
                Finding(
                    "few_images",
                    "warning",
                    f"Few labelled images: the smallest class has {smallest}",
                    {"class_counts": class_counts, "rule": f"< {FEW_SHOT} per class"},
                    "Too few images to fine-tune safely: use the linear probe (it reaches most of "
                    "its accuracy at 5-10 images per class), and label more images of the classes "
                    "the probe confuses (transferlab evaluate lists them).",
                    [f"transferlab fit {data}{bb_flag}", f"transferlab curve {data}{bb_flag}"],
                )
            )
        elif split_shift and split_shift.get("shifted"):
            pass  # the probe's figure on these images says nothing about the other domain
        elif shifted_from is not None or (probe_acc is not None and probe_acc < 0.9):
            out.append(
                Finding(
                    "prefer_finetune",
                    "info",
                    "Fine-tuning is likely to beat the probe"
                    + (" (domain shift)" if shifted_from else f" (probe only {probe_acc:.3f})"),
                    {"smallest_class": smallest, "probe_accuracy": probe_acc},
                    "There is enough data to fine-tune; compare against the probe on the same "
                    "validation split (transferlab finetune reports both)"
                    + (", with the flags the domain-shift finding gives." if shift_cmd else "."),
                    [shift_cmd or f"transferlab finetune {data}{bb_flag}"],
                )
            )
        else:
            out.append(
                Finding(
                    "prefer_probe",
                    "info",
                    f"The linear probe is already strong ({probe_acc:.3f}) and the domain matches",
                    {"smallest_class": smallest, "probe_accuracy": probe_acc},
                    "Start with the probe (seconds, no risk of forgetting); fine-tune the last "
                    "stages only if you need the last points.",
                    [f"transferlab fit {data}{bb_flag}"],
                )
            )
        if smallest and counts.max() / smallest >= IMBALANCE:
            out.append(
                Finding(
                    "class_imbalance",
                    "warning",
                    f"Classes are imbalanced: {int(counts.max())} vs {smallest} images",
                    {"class_counts": class_counts, "rule": f"largest/smallest >= {IMBALANCE}"},
                    "Weight the loss by class (--balance weights) and judge by balanced accuracy; "
                    "or collect more images of the small classes.",
                    [f"transferlab finetune {data}{bb_flag} --balance weights"],
                )
            )

    # 5. image geometry
    aspect = target_stats.get("median_aspect", 1.0)
    if aspect >= 1.6 or aspect <= 1 / 1.6:
        out.append(
            Finding(
                "aspect_ratio",
                "warning",
                f"Images are elongated (median aspect {aspect:.2f}): the centre crop cuts off their ends",
                {"median_aspect": aspect},
                "Check that the objects survive the centre crop (transferlab evaluate's grids "
                "show inputs); if not, pad or tile images to a squarer shape before training.",
            )
        )
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(out, key=lambda f: order[f.severity])
