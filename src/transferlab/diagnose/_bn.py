"""BatchNorm statistics: how far target activations sit from ImageNet's, and AdaBN re-estimation.

A BatchNorm layer stores the mean and variance of its input over the pretraining data. Feeding
target images and comparing the live statistics with the stored ones shows, layer by layer,
where the target distribution departs from what the network was tuned for: a shift in the
first layers means low-level statistics (colour, contrast, texture) differ, a shift only in the
last ones means the content differs. AdaBN (Li et al. 2016, "Revisiting Batch Normalization For
Practical Domain Adaptation") re-estimates the stored statistics on the target images, which
re-centres every layer without any labels.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab.backbones import Backbone, reestimate_bn
from transferlab.data import DEFAULT_MAX_PIXELS
from transferlab.exceptions import InvalidParameterError

__all__ = [
    "BNShift",
    "adapt_bn",
    "bn_layers",
    "bn_shift",
    "image_batches",
    "input_moments",
    "save_backbone_weights",
    "tap_of_module",
]


def bn_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """The model's BatchNorm layers with running statistics, in forward (definition) order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def tap_of_module(backbone: Backbone, module: str) -> str:
    """The tap a module belongs to: the stem, a stage, or ``head`` (after the last stage)."""
    taps = [(t.name, t.module) for t in backbone.tap_info() if not t.module.startswith("<")]
    for name, prefix in reversed(taps):
        if module == prefix or module.startswith(prefix + "."):
            return name
    stages = [n for n, _ in taps if n.startswith("stage")]
    first_stage = dict(taps).get(stages[0]) if stages else None
    # modules before the first stage (conv_stem, bn1) are the stem; anything else is the head
    names = [n for n, _ in backbone.model.named_modules()]
    if first_stage and first_stage in names and names.index(module) < names.index(first_stage):
        return "stem"
    return "head"


def image_batches(
    backbone: Backbone,
    paths: Sequence[str | os.PathLike[str]],
    *,
    transform: Callable[[Any], torch.Tensor] | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Iterator[torch.Tensor]:
    """Preprocessed batches of `paths` (the backbone's eval transform by default); broken
    images are skipped, as in feature extraction."""
    from transferlab.data import ImageFileDataset, collate_skipping_failures
    from transferlab.features import default_num_workers

    paths = [os.fspath(p) for p in paths]
    ds = ImageFileDataset(paths, transform or backbone.transform(), max_pixels)
    workers = (
        num_workers if num_workers is not None else default_num_workers(len(paths), batch_size)
    )
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_skipping_failures
    )
    for _, x, _bad in loader:
        if x is not None:
            yield x


def shift_from_running(
    bn: nn.modules.batchnorm._BatchNorm, mu: np.ndarray, var: np.ndarray
) -> tuple[float, float, float]:
    """Mean shift, |log variance ratio| and W2 (see `BNShift`) of input statistics `mu`, `var`
    (per channel) against `bn`'s running statistics, each averaged over channels."""
    rmu = bn.running_mean.double().cpu().numpy()
    rvar = bn.running_var.double().cpu().numpy() + bn.eps
    sd, rsd = np.sqrt(var + bn.eps), np.sqrt(rvar)
    return (
        float(np.mean(np.abs(mu - rmu) / rsd)),
        float(np.mean(np.abs(np.log((var + bn.eps) / rvar)))),
        float(np.mean(np.sqrt(((mu - rmu) ** 2 + (sd - rsd) ** 2) / rvar))),
    )


@dataclass
class BNShift:
    """Per BatchNorm layer: how far the target's input statistics sit from the running ones.

    Attributes:
        layers: BN module names, in forward order.
        taps: the tap (stem, stageN, head) each layer belongs to.
        mean_shift: mean over channels of |mu_target - mu_run| / sigma_run.
        log_var_ratio: mean over channels of |log(var_target / var_run)|.
        w2: mean over channels of the 2-Wasserstein distance between the two Gaussians, in units
            of the running standard deviation: sqrt((dmu^2 + dsigma^2) / var_run). One number per
            layer that grows with both kinds of shift; about 0.1-0.3 on ImageNet-like photos.
        n_images: images the statistics came from.
        measure: ``"batchnorm"`` (against the stored running statistics) or ``"activations"``
            (the inputs of every norm layer against those of reference photos, for networks
            without BatchNorm: see `activation_shift`).
    """

    layers: list[str]
    taps: list[str]
    mean_shift: np.ndarray
    log_var_ratio: np.ndarray
    w2: np.ndarray
    n_images: int
    measure: str = "batchnorm"

    def by_tap(self, metric: str = "w2") -> dict[str, float]:
        """Mean of `metric` over the BN layers of each tap, shallow to deep."""
        values = getattr(self, metric)
        out: dict[str, list[float]] = {}
        for tap, v in zip(self.taps, values, strict=True):
            out.setdefault(tap, []).append(float(v))
        return {tap: float(np.mean(v)) for tap, v in out.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_images": self.n_images,
            "measure": self.measure,
            "by_tap_w2": self.by_tap("w2"),
            "by_tap_mean_shift": self.by_tap("mean_shift"),
            "by_tap_log_var_ratio": self.by_tap("log_var_ratio"),
        }


@torch.no_grad()
def input_moments(
    backbone: Backbone,
    batches: Iterable[torch.Tensor],
    modules: Sequence[tuple[str, nn.Module, int]],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """Mean and variance per channel of each module's input over `batches` (pooled over images
    and positions; ``(name, module, channel dimension)``), the network in eval mode, and the
    number of images. The one measuring pass of `bn_shift` and `activation_shift`."""
    sums: dict[str, torch.Tensor] = {}
    sqs: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def make_hook(name: str, dim: int) -> Callable[..., None]:
        def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
            x = inp[0].detach().double()
            x = x.movedim(dim, -1).reshape(-1, x.shape[dim])
            sums[name] = sums.get(name, 0) + x.sum(dim=0)
            sqs[name] = sqs.get(name, 0) + (x * x).sum(dim=0)
            counts[name] = counts.get(name, 0) + x.shape[0]

        return hook

    handles = [m.register_forward_pre_hook(make_hook(n, d)) for n, m, d in modules]
    model = backbone.model
    was_training = model.training
    model.eval()
    n_images = 0
    try:
        for x in batches:
            x = x.to(backbone.device)
            if x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            model.forward_features(x)
            n_images += x.shape[0]
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    mus, variances = {}, {}
    for name in sums:
        mu = (sums[name] / counts[name]).cpu().numpy()
        mus[name] = mu
        variances[name] = np.maximum((sqs[name] / counts[name]).cpu().numpy() - mu**2, 0.0)
    return mus, variances, n_images


@torch.no_grad()
def bn_shift(backbone: Backbone, batches: Iterable[torch.Tensor]) -> BNShift:
    """Measure each BN layer's input statistics on `batches` against its running statistics.

    The network runs in eval mode (the stored statistics normalise every layer), so each layer
    sees what it would see at inference; statistics are pooled over images and positions.

    Raises:
        InvalidParameterError: the backbone has no BatchNorm layer, or `batches` is empty.
    """
    layers = bn_layers(backbone.model)
    if not layers:
        raise InvalidParameterError(
            f"backbone {backbone.name!r} has no BatchNorm layer with running statistics"
        )
    mus, variances, n_images = input_moments(backbone, batches, [(n, m, 1) for n, m in layers])
    if n_images == 0:
        raise InvalidParameterError("no image could be read to measure BatchNorm statistics")
    mean_shift, log_var, w2 = [], [], []
    for name, m in layers:
        ms, lv, w = shift_from_running(m, mus[name], variances[name])
        mean_shift.append(ms)
        log_var.append(lv)
        w2.append(w)
    names = [n for n, _ in layers]
    return BNShift(
        layers=names,
        taps=[tap_of_module(backbone, n) for n in names],
        mean_shift=np.asarray(mean_shift),
        log_var_ratio=np.asarray(log_var),
        w2=np.asarray(w2),
        n_images=n_images,
    )


@torch.no_grad()
def adapt_bn(
    backbone: Backbone,
    batches: Iterable[torch.Tensor],
    *,
    progress: Callable[[int], None] | None = None,
) -> Backbone:
    """AdaBN: a copy of `backbone` whose BatchNorm statistics are re-estimated on `batches`.

    Every BN layer's running mean and variance are reset and replaced by the cumulative average
    over the target batches (``momentum=None``), with the rest of the network in eval mode (no
    dropout, no weight change). The input backbone is left untouched; the copy gets its own
    weights digest, so cached features of the two never mix.

    Raises:
        InvalidParameterError: no BatchNorm layer, or `batches` is empty.
    """
    model = copy.deepcopy(backbone.model)
    if not bn_layers(model):
        raise InvalidParameterError(
            f"backbone {backbone.name!r} has no BatchNorm layer to re-estimate"
        )
    n = reestimate_bn(model, batches, backbone.device, progress)
    if n == 0:
        raise InvalidParameterError("AdaBN needs at least two readable target images")
    model.eval()
    adapted = Backbone(
        backbone.spec, model, f"adabn({n} images)<-{backbone.weights_source}", backbone.device
    )
    adapted.data_config = dict(backbone.data_config)
    return adapted


def save_backbone_weights(backbone: Backbone, path: str | os.PathLike[str]) -> str:
    """Write the backbone's state dict as safetensors, loadable by ``load_backbone(weights=path)``."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    sd = {k: v.detach().cpu().contiguous() for k, v in backbone.model.state_dict().items()}
    save_file(sd, path, metadata={"backbone": backbone.name, "source": backbone.weights_source})
    return path
