"""Is the input prepared the way the backbone was trained? Detect wrong scaling, mean/std,
channel order and size from what a transform actually produces.

Two checks. Given a user's own transform (the usual source of the bug), compare its outputs with
the backbone's reference preprocessing on the same images: the effective per-channel scale and
offset, moment-matched over all pixels, say whether values are 0-255, 0-1 or normalised with other
statistics, and the correlation of the colour (chroma) components says whether channels are
swapped. Given only tensors, fall back on the first BatchNorm layer: its running statistics are
what ImageNet images look like after correct preprocessing, so a fix (divide by 255, normalise,
swap R and B) that brings the live statistics much closer is evidence of the bug it fixes.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from transferlab.backbones import Backbone
from transferlab.data import load_image
from transferlab.exceptions import ImageLoadError, InvalidParameterError

__all__ = ["PreprocessingIssue", "check_input_tensors", "check_preprocessing"]


@dataclass
class PreprocessingIssue:
    """One detected mismatch: a short code, a sentence, the fix, and the numbers behind it."""

    code: str
    message: str
    fix: str
    evidence: dict[str, Any] = field(default_factory=dict)


def _as_tensor(out: Any, path: str) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        t = out
    elif isinstance(out, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(out))  # e.g. an OpenCV-style arr[..., ::-1]
        if t.ndim == 3 and t.shape[-1] in (1, 3, 4) and t.shape[0] not in (1, 3, 4):
            t = t.permute(2, 0, 1)  # HWC -> CHW
    else:
        raise InvalidParameterError(
            f"the transform returned {type(out).__name__} for {path}; it must return a tensor "
            "or an array (C, H, W)"
        )
    if t.ndim != 3:
        raise InvalidParameterError(
            f"the transform returned shape {tuple(t.shape)} for {path}; expected (C, H, W)"
        )
    return t.float()


def _chroma(x: np.ndarray) -> np.ndarray:
    """(3, N) channels -> colour components: each channel z-scored, minus the per-pixel mean."""
    z = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-8)
    return z - z.mean(0, keepdims=True)


def check_preprocessing(
    backbone: Backbone,
    paths: Sequence[str | os.PathLike[str]],
    transform: Callable[[Any], Any],
    *,
    max_images: int = 32,
) -> list[PreprocessingIssue]:
    """Compare `transform`'s outputs with the backbone's own preprocessing on the same images.

    Returns the issues found (empty when the transform matches): ``size``, ``channels``,
    ``channel_order``, ``unscaled`` (0-255 values), ``not_normalised`` (0-1 values),
    ``mean_std`` (normalised with other statistics).
    """
    ref_tf = backbone.transform()
    mean = np.asarray(backbone.data_config["mean"], dtype=np.float64)
    std = np.asarray(backbone.data_config["std"], dtype=np.float64)
    size = tuple(backbone.data_config["input_size"][1:])
    users, refs = [], []
    shapes: set[tuple[int, ...]] = set()
    for p in [os.fspath(p) for p in paths][:max_images]:
        try:
            img = load_image(p)
        except ImageLoadError:
            continue
        u = _as_tensor(transform(img), p)
        shapes.add(tuple(u.shape))
        r = ref_tf(img).float()
        # compare on a common small grid: robust to different resize/crop geometry
        users.append(F.interpolate(u[None], size=(32, 32), mode="area")[0])
        refs.append(F.interpolate(r[None], size=(32, 32), mode="area")[0])
    if not users:
        raise InvalidParameterError("no image could be read to check the preprocessing")
    issues: list[PreprocessingIssue] = []
    shape = sorted(shapes)[0]
    if shape[1:] != size:
        issues.append(
            PreprocessingIssue(
                "size",
                f"the transform makes {shape[2]}x{shape[1]} inputs; {backbone.name} was trained "
                f"on {size[1]}x{size[0]}",
                f"resize/crop to {size[1]}x{size[0]} (the backbone's transform does: "
                f"backbone.transform())",
                {"got": list(shape[1:]), "expected": list(size)},
            )
        )
    if shape[0] != 3:
        issues.append(
            PreprocessingIssue(
                "channels",
                f"the transform makes {shape[0]}-channel inputs; the backbone expects 3 (RGB)",
                "convert images to RGB before the tensor conversion (greyscale: repeat the channel)",
                {"got": shape[0], "expected": 3},
            )
        )
        return issues
    u = torch.stack(users).permute(1, 0, 2, 3).reshape(3, -1).double().numpy()
    r = torch.stack(refs).permute(1, 0, 2, 3).reshape(3, -1).double().numpy()
    raw = r * std[:, None] + mean[:, None]  # the reference back in [0, 1] pixel units

    # channel order from the colour components (meaningless for greyscale images: skipped)
    perm = (0, 1, 2)
    cr, cu = _chroma(raw), _chroma(u)
    if np.abs(cr).mean() > 0.05:
        corr = np.corrcoef(np.vstack([cu, cr]))[:3, 3:]
        scores = {p: sum(corr[c, p[c]] for c in range(3)) for p in itertools.permutations(range(3))}
        best = max(scores, key=scores.__getitem__)
        if best != perm and scores[best] - scores[perm] > 0.5:
            perm = best
            names = "RGB"
            issues.append(
                PreprocessingIssue(
                    "channel_order",
                    f"channels arrive as {''.join(names[i] for i in perm)}, not RGB (e.g. an OpenCV "
                    "BGR image)",
                    "convert to RGB (cv2.cvtColor(img, cv2.COLOR_BGR2RGB), or x[[2, 1, 0]])",
                    {
                        "chroma_correlation_identity": round(float(scores[(0, 1, 2)]), 3),
                        "chroma_correlation_best": round(float(scores[best]), 3),
                    },
                )
            )
    # effective per-channel affine map from [0, 1] pixels, by moment matching
    src = raw[list(perm)]
    s = u.std(1) / (src.std(1) + 1e-12)
    t = u.mean(1) - s * src.mean(1)
    eff_std, eff_mean = 1 / s, -t / s
    evidence = {
        "effective_mean": [round(float(v), 3) for v in eff_mean],
        "effective_std": [round(float(v), 4) for v in eff_std],
        "expected_mean": mean.round(3).tolist(),
        "expected_std": std.round(3).tolist(),
        "value_range": [round(float(u.min()), 3), round(float(u.max()), 3)],
    }
    scale = float(np.median(s * std))  # 1 when the scale is right, 255 when not divided by 255
    if 100 < scale < 650:
        issues.append(
            PreprocessingIssue(
                "unscaled",
                f"inputs look like 0-255 pixel values (range {evidence['value_range']}); the "
                "backbone expects pixels scaled to [0, 1] then normalised",
                f"divide by 255 and normalise with mean={mean.round(3).tolist()}, "
                f"std={std.round(3).tolist()}",
                evidence,
            )
        )
    elif np.allclose(eff_std, 1, atol=0.15) and np.allclose(eff_mean, 0, atol=0.08):
        issues.append(
            PreprocessingIssue(
                "not_normalised",
                "inputs are pixels in [0, 1] without mean/std normalisation",
                f"add Normalize(mean={mean.round(3).tolist()}, std={std.round(3).tolist()})",
                evidence,
            )
        )
    elif (np.abs(eff_mean - mean) > 0.1).any() or (np.abs(np.log(eff_std / std)) > 0.25).any():
        issues.append(
            PreprocessingIssue(
                "mean_std",
                f"inputs are normalised with mean≈{evidence['effective_mean']}, "
                f"std≈{evidence['effective_std']}; {backbone.name} expects mean={evidence['expected_mean']}, "
                f"std={evidence['expected_std']}",
                "normalise with the backbone's statistics (backbone.data_config['mean'/'std'])",
                evidence,
            )
        )
    return issues


@torch.no_grad()
def _first_bn_w2(backbone: Backbone, x: torch.Tensor) -> float:
    from transferlab.diagnose._bn import bn_layers, shift_from_running

    _, bn = bn_layers(backbone.model)[0]
    seen: dict[str, torch.Tensor] = {}

    class _Stop(Exception):
        pass

    def hook(_m: Any, inp: tuple[torch.Tensor, ...]) -> None:
        seen["x"] = inp[0].detach().double()
        raise _Stop

    h = bn.register_forward_pre_hook(hook)
    try:
        backbone.model.forward_features(x.to(backbone.device))
    except _Stop:
        pass
    finally:
        h.remove()
    a = seen["x"]
    dims = [d for d in range(a.ndim) if d != 1]
    mu, var = a.mean(dims).cpu().numpy(), a.var(dims, correction=0).cpu().numpy()
    return shift_from_running(bn, mu, var)[2]


def check_input_tensors(backbone: Backbone, x: torch.Tensor) -> list[PreprocessingIssue]:
    """Check a batch (N, C, H, W) that is about to enter the backbone, without its source images.

    Value ranges tell unscaled and unnormalised inputs apart; for channel order, the first
    BatchNorm layer's statistics are compared with and without swapping R and B.
    """
    if x.ndim != 4:
        raise InvalidParameterError(f"expected a batch (N, C, H, W), got shape {tuple(x.shape)}")
    x = x.float()
    mean = np.asarray(backbone.data_config["mean"])
    std = np.asarray(backbone.data_config["std"])
    issues: list[PreprocessingIssue] = []
    lo, hi = float(x.min()), float(x.max())
    rng = {
        "value_range": [round(lo, 3), round(hi, 3)],
        "channel_means": x.mean((0, 2, 3)).round(decimals=3).tolist(),
    }
    if hi > 20:
        issues.append(
            PreprocessingIssue(
                "unscaled",
                f"inputs range {lo:.0f}..{hi:.0f}: 0-255 pixel values, not normalised",
                f"divide by 255 and normalise with mean={mean.round(3).tolist()}, std={std.round(3).tolist()}",
                rng,
            )
        )
        return issues
    if lo >= 0 and hi <= 1.0 + 1e-6:
        # All in [0, 1]: raw pixels, or normalised bright images? Ask the first BatchNorm layer
        # whether normalising brings its statistics closer to the pretrained ones.
        m = torch.as_tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
        sd = torch.as_tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
        as_is, normalised = _first_bn_w2(backbone, x), _first_bn_w2(backbone, (x - m) / sd)
        if normalised < 0.8 * as_is:
            issues.append(
                PreprocessingIssue(
                    "not_normalised",
                    "inputs are all in [0, 1] and normalising them with the backbone's mean/std "
                    f"brings the first layer's statistics {100 * (1 - normalised / as_is):.0f}% "
                    "closer to ImageNet's: scaled but not normalised (unless the images are "
                    "unusually bright and washed out; check with the source images via "
                    "check_preprocessing)",
                    f"add Normalize(mean={mean.round(3).tolist()}, std={std.round(3).tolist()})",
                    {
                        **rng,
                        "first_bn_w2": round(as_is, 4),
                        "first_bn_w2_normalised": round(normalised, 4),
                    },
                )
            )
            return issues
    if x.shape[1] == 3:
        as_is = _first_bn_w2(backbone, x)
        swapped = _first_bn_w2(backbone, x[:, [2, 1, 0]])
        if swapped < 0.88 * as_is:
            issues.append(
                PreprocessingIssue(
                    "channel_order",
                    "swapping the R and B channels brings the first layer's statistics "
                    f"{100 * (1 - swapped / as_is):.0f}% closer to ImageNet's: the inputs look BGR",
                    "convert to RGB (cv2.cvtColor(img, cv2.COLOR_BGR2RGB), or x[:, [2, 1, 0]])",
                    {"first_bn_w2": round(as_is, 4), "first_bn_w2_swapped": round(swapped, 4)},
                )
            )
    return issues
