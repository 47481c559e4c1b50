"""Fine-tuning the fastai way, for any timm backbone.

A fresh head sized to the classes; layer groups (stem, each stage, head) from timm's
``group_matcher``; train the head with the body frozen, then unfreeze with discriminative per-group
learning rates on a one-cycle schedule (AdamW, weight decay off for 1-D parameters, label
smoothing, gradient clipping). Checkpoints every epoch and resume from the last completed one with
the same result as an uninterrupted run (per-epoch seeding).

Two choices differ from fastai's defaults, on evidence measured here (see benchmarks/RESULTS.md):

* the head starts from the linear probe fitted on cached features ("LP-FT", Kumar et al. 2022),
  not from timm's random init, whose weights (up to 1/sqrt(k)) make the first predictions wildly
  overconfident; the probe is also the baseline the fine-tune is compared against;
* images are decoded once, downsized, and kept in memory (when they fit), since on a small CPU
  JPEG decoding of large photos would otherwise compete with training for the same cores.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from transferlab.backbones import Backbone, load_backbone
from transferlab.data import DEFAULT_MAX_PIXELS, Sample, load_image
from transferlab.distributed import ddp as _ddp
from transferlab.exceptions import DatasetError, ImageLoadError, InvalidParameterError

__all__ = [
    "BN_POLICIES",
    "Callback",
    "CancelFitException",
    "FineTuner",
    "FinetuneConfig",
    "FinetuneResult",
    "LRFindResult",
    "layer_groups",
]

logger = logging.getLogger(__name__)

BN_POLICIES = ("train", "freeze")
PRECISIONS = ("auto", "fp32", "bf16")


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether training runs under bf16 autocast: ``"auto"`` takes it where the hardware does
    bf16 natively (a GPU that supports it; a CPU with AVX-512-BF16/AMX), since emulated bf16 on
    other CPUs measured several times slower than fp32 (issue 8)."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


CHECKPOINT = "last.pt"


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters of `FineTuner`; CLI flags map one-to-one onto these fields.

    Attributes:
        backbone, weights: the network to start from (see `load_backbone`).
        epochs: epochs with the body unfrozen.
        freeze_epochs: epochs training only the head first (0 skips the phase: the default, since
            the head already starts from the linear probe; fastai's 1 is for a random head).
        lr: peak learning rate of the head in the one-cycle schedule.
        lr_mult: ratio of the head's to the stem's learning rate when unfrozen (fastai's
            ``slice(lr / lr_mult, lr)``, spaced geometrically over the layer groups).
        weight_decay: AdamW decoupled weight decay (not applied to biases and norms).
        label_smoothing: cross-entropy label smoothing.
        mixup: MixUp (Zhang et al. 2018) Beta(alpha, alpha) parameter: each batch is blended with
            a shuffled copy of itself and the loss with both labels; smoother decision
            boundaries, better calibrated under shift (0 disables; 0.2-0.4 is usual).
        grad_clip: max global gradient norm (0 disables).
        pct_start: fraction of each one-cycle schedule spent warming up.
        batch_size: images per step.
        bn_policy: ``"train"`` updates BatchNorm statistics in unfrozen groups; ``"freeze"`` keeps
            the pretrained statistics throughout (better for tiny batches or tiny data).
        head_init: ``"probe"`` starts the head from a linear probe on cached features (LP-FT);
            ``"random"`` uses a small random init.
        augment: random-resized crop + flip + colour jitter during training.
        crop_scale: smallest share of the image area a random crop keeps (raise it when the
            whole picture matters, e.g. x-rays; lower it for more augmentation).
        jitter: colour-jitter strength: brightness and contrast (and saturation for colour data)
            vary by up to this fraction; raise it when a class differs from the other in
            exposure or contrast for reasons that will not hold on new images (0 disables).
        tta: average predictions over the image and its mirror at evaluation.
        ema: keep an exponential moving average of the weights with this decay (e.g. 0.998;
            None: off) and validate, select and save the averaged weights, as timm's
            ``--model-ema``: averaged weights sit in flatter minima and hold up better when new
            images drift from the training set. Bias-corrected, so it averages about the last
            ``1 / (1 - ema)`` steps (0.998: 500) and never leans on the starting weights.
        class_balance: None, ``"weights"`` (class-weighted loss) or ``"sampler"`` (balanced
            sampling).
        early_stopping: stop after this many epochs without validation improvement (None: never).
        wise: weight-space ensembling of the starting point and the fine-tuned weights (WiSE-FT,
            Wortsman et al. 2022): ``"auto"`` picks alpha in {0.25, 0.5, 0.75, 1} on validation,
            a number in (0, 1] fixes it, ``"off"`` keeps the fine-tuned weights (alpha = 1).
        image_size: train/eval input size (None: the backbone's own).
        adapt_bn: re-estimate BatchNorm statistics on the training images (AdaBN) before the
            head is fit: for data far from ImageNet's photos (x-rays, sketches), where
            `transferlab diagnose` finds a low-level shift.
        freeze_to: the layer group the unfrozen phase trains from: 0 trains all (default), 2
            keeps the stem and first stage frozen, negative counts from the end (fastai's
            ``freeze_to``); `diagnose` suggests it when only deep features are off.
        seed: seeds Python, NumPy and torch, per epoch, so a resumed run matches.
        num_workers: data-loading processes (None: automatic).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        max_pixels: decompression-bomb limit per image.
        precision: ``"auto"`` (bf16 autocast where the hardware does bf16 natively, fp32
            elsewhere), ``"fp32"`` (the opt-out) or ``"bf16"``; the loss, the probe that starts
            the head and validation metrics stay fp32 either way.
    """

    backbone: str = "efficientnet_lite0"
    weights: str = "default"
    epochs: int = 5
    freeze_epochs: int = 0
    lr: float = 5e-4
    lr_mult: float = 100.0
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    mixup: float = 0.0
    grad_clip: float = 1.0
    pct_start: float = 0.25
    batch_size: int = 16
    bn_policy: str = "freeze"
    head_init: str = "probe"
    augment: bool = True
    crop_scale: float = 0.35
    jitter: float = 0.2
    tta: bool = False
    ema: float | None = None
    class_balance: str | None = None
    early_stopping: int | None = None
    wise: str | float = "auto"
    image_size: int | None = None
    adapt_bn: bool = False
    freeze_to: int = 0
    seed: int = 0
    num_workers: int | None = None
    device: str = "auto"
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    precision: str = "auto"

    def __post_init__(self) -> None:
        checks = [
            (
                self.precision in PRECISIONS,
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
            ),
            (self.epochs >= 0, f"epochs must be >= 0, got {self.epochs}"),
            (self.freeze_epochs >= 0, f"freeze_epochs must be >= 0, got {self.freeze_epochs}"),
            (self.epochs + self.freeze_epochs > 0, "epochs + freeze_epochs must be at least 1"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.lr_mult >= 1, f"lr_mult must be >= 1, got {self.lr_mult}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (
                0 <= self.label_smoothing < 1,
                f"label_smoothing must be in [0, 1), got {self.label_smoothing}",
            ),
            (self.mixup >= 0, f"mixup must be >= 0, got {self.mixup}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}"),
            (0 < self.pct_start < 1, f"pct_start must be in (0, 1), got {self.pct_start}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (
                0.05 <= self.crop_scale <= 1,
                f"crop_scale must be in [0.05, 1], got {self.crop_scale}",
            ),
            (0 <= self.jitter < 1, f"jitter must be in [0, 1), got {self.jitter}"),
            (
                self.ema is None or 0 < self.ema < 1,
                f"ema must be None or a decay in (0, 1), got {self.ema}",
            ),
            (
                self.bn_policy in BN_POLICIES,
                f"bn_policy must be one of {', '.join(BN_POLICIES)}, got {self.bn_policy!r}",
            ),
            (
                self.head_init in ("probe", "random"),
                f"head_init must be 'probe' or 'random', got {self.head_init!r}",
            ),
            (
                self.class_balance in (None, "weights", "sampler"),
                f"class_balance must be None, 'weights' or 'sampler', got {self.class_balance!r}",
            ),
            (
                self.wise in ("auto", "off")
                or (isinstance(self.wise, (int, float)) and 0 < float(self.wise) <= 1),
                f"wise must be 'auto', 'off' or a number in (0, 1], got {self.wise!r}",
            ),
            (
                self.early_stopping is None or self.early_stopping >= 1,
                f"early_stopping must be None or >= 1, got {self.early_stopping}",
            ),
            (
                self.image_size is None or self.image_size >= 32,
                f"image_size must be >= 32, got {self.image_size}",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise InvalidParameterError(msg)


@dataclass
class FinetuneResult:
    """What `FineTuner.fit` produced.

    Attributes:
        history: one dict per epoch: phase, train_loss, val_loss, val_accuracy (val_map for
            multi-label), lr_head, seconds.
        best_epoch: epoch (1-based, over both phases) with the best validation accuracy.
        best_val_accuracy: its accuracy.
        probe_val_accuracy: the linear probe's accuracy on the same validation images (when the
            head was initialised from it), the baseline to beat.
        stopped_early: early stopping ended the run.
        seconds: wall time of `fit`.
    """

    history: list[dict[str, Any]]
    best_epoch: int
    best_val_accuracy: float
    probe_val_accuracy: float | None = None
    wise_alpha: float = 1.0
    wise_scores: dict[str, float] | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    train_images_per_second: float = 0.0
    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LRFindResult:
    """An exponential learning-rate sweep: where the loss falls fastest, and the LR to use.

    Attributes:
        lrs, losses: the learning rate and raw training loss of each step.
        smoothed: the losses smoothed (exponential moving average, bias-corrected).
        suggestion: the suggested peak learning rate.
        rule: how `suggestion` was chosen, in words.
        steepest: the LR where the smoothed loss falls fastest (for reference).
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    rule: str
    steepest: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Smoothed loss against LR (log scale), with the suggestion marked; saved as PNG."""
        from transferlab._internal.plotting import pyplot as _pyplot

        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
        ax.plot(self.lrs, self.losses, color="0.8", lw=1, label="loss")
        ax.plot(self.lrs, self.smoothed, color="C0", lw=2, label="smoothed loss")
        ax.axvline(
            self.suggestion, color="C3", ls="--", label=f"suggested lr {self.suggestion:.2g}"
        )
        ax.axvline(self.steepest, color="C2", ls=":", label=f"steepest descent {self.steepest:.2g}")
        ax.set_xscale("log")
        finite = [v for v in self.smoothed if np.isfinite(v)]
        if finite:
            lo, hi = min(finite), finite[0]
            ax.set_ylim(lo - 0.1 * abs(hi - lo + 1e-9), hi + 0.5 * abs(hi - lo + 1e-9))
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.set_title(f"LR finder — {self.rule}")
        ax.legend()
        ax.grid(alpha=0.3, which="both")
        out = Path(path)
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out


def suggest_lr(
    lrs: Sequence[float], losses: Sequence[float], beta: float = 0.9
) -> tuple[list[float], float, float, str]:
    """Smooth the losses; suggest the LR of the minimum smoothed loss divided by 10 (Smith's rule,
    as fastai's ``minimum``), and report the steepest-descent LR too."""
    smoothed, avg = [], 0.0
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        smoothed.append(avg / (1 - beta**i))
    arr = np.asarray(smoothed)
    i_min = int(np.nanargmin(arr))
    log_lr = np.log10(np.asarray(lrs))
    if len(arr) >= 3:
        grads = (
            np.gradient(arr[: i_min + 1], log_lr[: i_min + 1])
            if i_min >= 2
            else np.gradient(arr, log_lr)
        )
        steepest = float(lrs[int(np.argmin(grads))])
    else:
        steepest = float(lrs[i_min])
    return smoothed, float(lrs[i_min]) / 10, steepest, "minimum smoothed loss / 10"


class CancelFitException(Exception):
    """Raise from a callback to end training cleanly after the current epoch."""


class Callback:
    """Hooks into the training loop. Subclass and override any of the events, in `order`.

    Events: ``before_fit``, ``before_epoch``, ``after_batch``, ``after_epoch``, ``after_fit``;
    each receives the `FineTuner`. Lower `order` runs first.
    """

    order = 0

    def before_fit(self, tuner: FineTuner) -> None: ...
    def before_epoch(self, tuner: FineTuner) -> None: ...
    def after_batch(self, tuner: FineTuner) -> None: ...
    def after_epoch(self, tuner: FineTuner) -> None: ...
    def after_fit(self, tuner: FineTuner) -> None: ...


def layer_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Parameter names per layer group, shallow to deep, with the classifier last.

    Uses the model's timm ``group_matcher(coarse=True)`` (stem, each stage, head) when it has one,
    else one group per top-level child.
    """
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    head_ids = (
        {id(p) for p in classifier.parameters()} if isinstance(classifier, nn.Module) else set()
    )
    named = dict(model.named_parameters())
    head_names = [n for n, p in named.items() if id(p) in head_ids]
    groups: list[tuple[str, list[str]]] = []
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        grouped = group_parameters(model, model.group_matcher(coarse=True))
        for gid in sorted(grouped):
            names = [n for n in grouped[gid] if n not in head_names]
            if names:
                groups.append((f"group{len(groups)}", names))
    else:
        seen: set[str] = set(head_names)
        for child, _ in model.named_children():
            names = [n for n in named if n.startswith(child + ".") and n not in seen]
            if names:
                groups.append((child, names))
                seen.update(names)
    if groups:
        groups[0] = ("stem", groups[0][1])
    if head_names:
        groups.append(("classifier", head_names))
    return groups


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def _preload_size(size: int) -> int:
    """Shorter side images are kept at: enough for random-resized crops at `size`."""
    return math.ceil(size * 1.3)


class _Images(torch.utils.data.Dataset):
    """Labelled images decoded once (downsized, in memory) and transformed per access."""

    def __init__(
        self,
        images: list[Image.Image],
        targets: np.ndarray,
        transform: Callable[[Any], torch.Tensor],
    ):
        self.images = images
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), torch.as_tensor(self.targets[i])


def _decode_all(
    samples: Sequence[Sample],
    short_side: int | None,
    max_pixels: int | None,
    progress: bool,
    geometry: Callable[[Image.Image], Image.Image] | None = None,
) -> tuple[list[Image.Image], list[int], list[ImageLoadError]]:
    """Decode each image once and keep it small: for training, reduced to `short_side` (JPEG
    draft mode + resize); for evaluation, decoded in full and passed through `geometry` (the eval
    resize + centre crop), so in-training validation sees exactly what `predict` will."""
    from tqdm.auto import tqdm

    images: list[Image.Image] = []
    kept: list[int] = []
    failures: list[ImageLoadError] = []
    for i, s in enumerate(
        tqdm(samples, desc="decode", unit="img", disable=None if progress else True, leave=False)
    ):
        try:
            img = load_image(s.path, max_pixels=max_pixels, draft_size=short_side)
        except ImageLoadError as exc:
            failures.append(exc)
            continue
        if geometry is not None:
            img = geometry(img)
        elif short_side is not None:
            w, h = img.size
            scale = short_side / min(w, h)
            if scale < 1:
                img = img.resize(
                    (max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC
                )
        images.append(img)
        kept.append(i)
    return images, kept, failures


def train_transform(
    backbone: Backbone,
    size: int,
    *,
    augment: bool,
    greyscale: bool,
    min_scale: float = 0.35,
    jitter: float = 0.2,
) -> Callable[[Any], torch.Tensor]:
    """Random-resized crop (area `min_scale`..1), flip and colour jitter of strength `jitter`
    (brightness/contrast only for greyscale data)."""
    from torchvision import transforms as T

    cfg = backbone.data_config
    interp = (
        T.InterpolationMode.BICUBIC
        if cfg.get("interpolation") == "bicubic"
        else T.InterpolationMode.BILINEAR
    )
    norm = T.Normalize(cfg["mean"], cfg["std"])
    if not augment:
        return eval_transform(backbone, size)
    steps: list[Any] = [
        T.RandomResizedCrop(size, scale=(min_scale, 1.0), interpolation=interp, antialias=True),
        T.RandomHorizontalFlip(),
    ]
    if jitter > 0:
        colour = (
            T.ColorJitter(jitter, jitter)
            if greyscale
            else T.ColorJitter(jitter, jitter, jitter, min(0.5, jitter / 10))
        )
        steps.append(T.RandomApply([colour], p=0.8))
    return T.Compose([*steps, T.ToTensor(), norm])


def eval_transform(
    backbone: Backbone, size: int, *, part: str = "all"
) -> Callable[[Any], torch.Tensor]:
    """The backbone's own eval preprocessing at `size`: resize the shorter side, centre crop
    (``part="geometry"``), then to tensor and normalise (``part="tensor"``); ``"all"`` does both."""
    from torchvision import transforms as T

    cfg = backbone.data_config
    interp = (
        T.InterpolationMode.BICUBIC
        if cfg.get("interpolation") == "bicubic"
        else T.InterpolationMode.BILINEAR
    )
    resize = math.floor(size / cfg.get("crop_pct", 0.875))
    geometry = [T.Resize(resize, interpolation=interp, antialias=True), T.CenterCrop(size)]
    tensor = [T.ToTensor(), T.Normalize(cfg["mean"], cfg["std"])]
    steps = {"all": geometry + tensor, "geometry": geometry, "tensor": tensor}[part]
    return T.Compose(steps)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# the tuner
# ---------------------------------------------------------------------------------------------


class FineTuner:
    """Fine-tune a pretrained backbone on labelled images.

    Args:
        config: hyper-parameters (`FinetuneConfig`).
        callbacks: extra `Callback` objects (progress, checkpoints and early stopping are built in).
        progress: show progress bars.

    Attributes (after `fit`):
        backbone_: the `Backbone` whose ``model`` now carries the fine-tuned weights and head.
        classes_: class names, in output order.
        groups_: layer groups (name, parameter names), shallow to deep.
        result_: the `FinetuneResult`.

    Example:
        >>> tuner = FineTuner(FinetuneConfig(backbone="test_resnet", weights="random", epochs=1))
        >>> tuner.config.freeze_epochs, tuner.config.bn_policy
        (0, 'freeze')
    """

    def __init__(
        self,
        config: FinetuneConfig | None = None,
        *,
        callbacks: Sequence[Callback] = (),
        progress: bool = True,
    ) -> None:
        self.config = config or FinetuneConfig()
        self.callbacks = sorted(callbacks, key=lambda cb: cb.order)
        self.progress = progress
        self.epoch = 0  # epochs completed (both phases)
        self.multi_label_ = False
        self.score_key_ = "val_accuracy"
        self.history: list[dict[str, Any]] = []
        self._ema: dict[str, torch.Tensor] | None = None  # weight average (config.ema)
        self._ema_steps = 0

    # -- building blocks ----------------------------------------------------------------------
    def _setup(self, classes: Sequence[str]) -> None:
        cfg = self.config
        self.backbone_ = load_backbone(
            cfg.backbone,
            weights=cfg.weights,
            device=_ddp.rank_device(cfg.device),
            channels_last=True,
        )
        self.classes_ = [str(c) for c in classes]
        model = self.backbone_.model
        model.reset_classifier(len(self.classes_))
        head = model.get_classifier()
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
        model.to(self.backbone_.device, memory_format=torch.channels_last)
        self.bf16_ = use_bf16(cfg.precision, self.backbone_.device)
        self.groups_ = layer_groups(model)
        self.size_ = cfg.image_size or int(self.backbone_.data_config["input_size"][-1])

    def _init_head_from_probe(
        self,
        train_x: torch.Tensor | None,
        loader_eval: Any,
        y_train: np.ndarray,
        val_loader: Any,
        y_val: np.ndarray,
    ) -> float | None:
        """Fit a logistic-regression probe on pre-logits of the (un-augmented) train images and
        copy it into the head; returns the probe's validation score (accuracy, or mAP)."""
        from transferlab.probe import LinearProbe, MultiLabelProbe

        xtr = self._embed(loader_eval)
        xva = self._embed(val_loader)
        if self.multi_label_:
            from transferlab.evaluate import evaluate_multilabel

            ml = MultiLabelProbe(C=1.0, standardize=False).fit(xtr, y_train.astype(int))
            ests = ml.pipeline_[-1].estimators_
            raw = np.vstack([np.ravel(getattr(e, "coef_", np.zeros(xtr.shape[1]))) for e in ests])
            icpt = np.array([float(np.ravel(getattr(e, "intercept_", [0.0]))[0]) for e in ests])
            self._copy_head(raw, icpt)
            return evaluate_multilabel(y_val.astype(int), ml.predict_proba(xva), self.classes_).mAP
        # On raw features, not standardised ones: folding a standardiser into the head divides by
        # each feature's spread, and near-constant features (many, on x-rays) then get weights in
        # the thousands; augmented images push those features off their constant and the first
        # losses reached 34 (pneumoniamnist). Raw-feature probes score as well here.
        probe = LinearProbe(C=1.0, standardize=False).fit(xtr, np.asarray(self.classes_)[y_train])
        clf = probe.pipeline_[-1]
        coef = clf.coef_
        bias = clf.intercept_
        if coef.shape[0] == 1:  # binary logistic regression: logits (-z/2, +z/2)
            coef = np.vstack([-coef / 2, coef / 2])
            bias = np.array([-bias[0] / 2, bias[0] / 2])
        self._copy_head(coef, bias)
        pred = probe.predict(xva)
        return float(np.mean(pred == np.asarray(self.classes_)[y_val]))

    def _copy_head(self, coef: np.ndarray, bias: np.ndarray) -> None:
        head = self.backbone_.model.get_classifier()
        with torch.no_grad():
            head.weight.copy_(torch.as_tensor(coef, dtype=head.weight.dtype))
            head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))

    @torch.inference_mode()
    def _embed(self, loader: Any) -> np.ndarray:
        model = self.backbone_.model
        model.eval()
        out = []
        for x, _ in loader:
            x = x.to(self.backbone_.device).contiguous(memory_format=torch.channels_last)
            out.append(
                model.forward_head(model.forward_features(x), pre_logits=True).float().cpu().numpy()
            )
        if isinstance(loader.sampler, _ddp.ShardSampler):  # DDP: this rank's share, then all
            return _ddp.gather_batches(out)
        return np.concatenate(out)

    def freeze_to(self, n: int) -> None:
        """Train only layer groups ``n`` and deeper (negative counts from the end, like fastai)."""
        named = dict(self.backbone_.model.named_parameters())
        n = n % len(self.groups_) if n < 0 else min(n, len(self.groups_))
        for i, (_, names) in enumerate(self.groups_):
            for name in names:
                named[name].requires_grad_(i >= n)
        self.frozen_to_ = n

    def _train_transform(
        self, images: Sequence[Image.Image]
    ) -> tuple[Callable[[Any], torch.Tensor], bool]:
        """The training augmentation the config asks for, and whether `images` are greyscale
        (judged on the first 50; it narrows colour jitter to brightness and contrast)."""
        cfg = self.config
        greyscale = all(_is_grey(img) for img in images[:50])
        transform = train_transform(
            self.backbone_,
            self.size_,
            augment=cfg.augment,
            greyscale=greyscale,
            min_scale=cfg.crop_scale,
            jitter=cfg.jitter,
        )
        return transform, greyscale

    def _set_train_mode(self) -> None:
        """Train mode, except BatchNorm in frozen groups (always) and everywhere under 'freeze'."""
        model = self.backbone_.model
        model.train()
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                params = list(module.parameters(recurse=False))
                frozen = bool(params) and not any(p.requires_grad for p in params)
                if self.config.bn_policy == "freeze" or frozen:
                    module.eval()

    def _optimizer(self, lr: float, lr_mult: float) -> tuple[torch.optim.Optimizer, list[float]]:
        """AdamW with one parameter group per (layer group, decay / no decay); per-group peak LRs
        spaced geometrically from lr / lr_mult (stem) to lr (classifier)."""
        named = dict(self.backbone_.model.named_parameters())
        active = [(i, names) for i, (_, names) in enumerate(self.groups_) if i >= self.frozen_to_]
        n = len(active)
        param_groups, max_lrs = [], []
        for k, (_, names) in enumerate(active):
            scale = lr_mult ** (-(n - 1 - k) / max(n - 1, 1)) if n > 1 else 1.0
            decay = [named[m] for m in names if named[m].ndim > 1]
            no_decay = [named[m] for m in names if named[m].ndim <= 1]
            for params, wd in ((decay, self.config.weight_decay), (no_decay, 0.0)):
                if params:
                    param_groups.append({"params": params, "weight_decay": wd})
                    max_lrs.append(lr * scale)
        return torch.optim.AdamW(param_groups, lr=lr), max_lrs

    def _run_phase(
        self,
        phase: str,
        epochs: int,
        lr: float,
        lr_mult: float,
        loaders: dict[str, Any],
        loss_fn: nn.Module,
        ckpt_dir: Path | None,
        start_epoch_in_phase: int,
        resume_state: dict[str, Any] | None,
    ) -> bool:
        """One one-cycle schedule over `epochs`; returns False when stopped early/cancelled."""
        opt, max_lrs = self._optimizer(lr, lr_mult)
        steps = len(loaders["train"])
        # torch's one-cycle needs 2+ warm-up steps and 2+ annealing steps; tiny data gets them
        total = max(4, epochs * steps)
        pct = min(max(self.config.pct_start, 2.0 / total), 0.5)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=max_lrs,
            total_steps=total,
            pct_start=pct,
            div_factor=25.0,
            final_div_factor=1e4,
        )
        if resume_state is not None:
            opt.load_state_dict(resume_state["optimizer"])
            sched.load_state_dict(resume_state["scheduler"])
        from tqdm.auto import tqdm

        device = self.backbone_.device
        model = self.backbone_.model
        # DDP (under torchrun): wrapped after freeze_to, as it syncs what requires grad
        train_model = _ddp.wrap_model(model, device, sync_bn=self.config.bn_policy == "train")
        for e in range(start_epoch_in_phase, epochs):
            _seed_everything(self.config.seed * 1000 + self.epoch + _ddp.seed_offset())
            self._generator.manual_seed(self.config.seed * 1000 + self.epoch)
            for cb in self.callbacks:
                cb.before_epoch(self)
            self._set_train_mode()
            t0 = time.perf_counter()
            total, n_seen = 0.0, 0
            bar = tqdm(
                loaders["train"],
                desc=f"{phase} epoch {e + 1}/{epochs}",
                unit="batch",
                disable=None if self.progress else True,
                leave=False,
            )
            for x, y in bar:
                x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                y = y.to(device)
                lam, perm = 1.0, None
                if self.config.mixup > 0 and len(y) > 1:
                    lam = float(np.random.beta(self.config.mixup, self.config.mixup))
                    perm = torch.randperm(len(y), device=device)
                    x = (lam * x + (1 - lam) * x[perm]).contiguous(
                        memory_format=torch.channels_last
                    )
                with torch.autocast(device.type, torch.bfloat16, enabled=self.bf16_):
                    logits = train_model(x)
                loss = loss_fn(logits.float(), y)
                if perm is not None:
                    loss = lam * loss + (1 - lam) * loss_fn(logits.float(), y[perm])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if self.config.grad_clip:
                    nn.utils.clip_grad_norm_(
                        [p for g in opt.param_groups for p in g["params"]], self.config.grad_clip
                    )
                opt.step()
                sched.step()
                self._ema_update()
                total += float(loss.detach()) * len(y)
                n_seen += len(y)
                self.last_loss_ = float(loss.detach())
                bar.set_postfix(loss=f"{total / n_seen:.4f}")
                for cb in self.callbacks:
                    cb.after_batch(self)
            train_seconds = time.perf_counter() - t0
            total, n_seen = _ddp.all_reduce_sums([total, n_seen], device)  # over ranks
            raw = self._swap_in_ema()  # validate (and keep as best) the averaged weights
            val_loss, val_score = self._evaluate_loader(loaders["val"], loss_fn)
            self.epoch += 1
            self.history.append(
                {
                    "epoch": self.epoch,
                    "phase": phase,
                    "train_loss": total / max(n_seen, 1),
                    "val_loss": val_loss,
                    self.score_key_: val_score,
                    "lr_head": float(sched.get_last_lr()[-1]),
                    "seconds": round(time.perf_counter() - t0, 2),
                    "train_images_per_second": round(n_seen / max(train_seconds, 1e-9), 2),
                }
            )
            logger.info("epoch %d %s: %s", self.epoch, phase, self.history[-1])
            if self.progress:
                h = self.history[-1]
                name = "mAP" if self.multi_label_ else "accuracy"
                tqdm.write(
                    f"epoch {h['epoch']} ({phase}): train loss {h['train_loss']:.4f}  val loss "
                    f"{h['val_loss']:.4f}  val {name} {h[self.score_key_]:.4f}  ({h['seconds']:.0f} s)",
                    file=sys.stderr,  # progress, like the bar: stdout stays for results (--json)
                )
            if self._best_index() == len(self.history) - 1:
                self._best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if raw is not None:
                model.load_state_dict(raw)  # training goes on from the raw weights
            if ckpt_dir is not None and _ddp.is_main_process():
                self._save_checkpoint(ckpt_dir, phase, e + 1, opt, sched)
            try:
                for cb in self.callbacks:
                    cb.after_epoch(self)
            except CancelFitException:
                return False
        return True

    def _best_index(self) -> int:
        """Index in `history` of the best epoch by validation; ties go to the later epoch. The
        one rule for the weights kept, best.pt and the reported best epoch."""
        scores = [h[self.score_key_] for h in self.history]
        return len(scores) - 1 - int(np.argmax(scores[::-1]))

    # -- weight averaging (EMA) ----------------------------------------------------------------
    def _ema_update(self) -> None:
        """One EMA step over the model's floating-point state (parameters and BN statistics)."""
        if self._ema is None:
            return
        # bias-corrected (as Adam's moments): step t weighs (1 - d) d^(T - t) / (1 - d^T), so
        # the average covers the last ~1 / (1 - d) steps and never leans on the starting point
        self._ema_steps += 1
        decay = float(self.config.ema)
        weight = (1 - decay) / (1 - decay**self._ema_steps)
        state = self.backbone_.model.state_dict()
        keys = [k for k, v in self._ema.items() if v.is_floating_point()]
        with torch.no_grad():
            torch._foreach_lerp_([self._ema[k] for k in keys], [state[k] for k in keys], weight)
            for k, v in self._ema.items():
                if not v.is_floating_point():
                    v.copy_(state[k])

    def _swap_in_ema(self) -> dict[str, torch.Tensor] | None:
        """Load the averaged weights; returns the raw ones to restore (None when EMA is off)."""
        if self._ema is None:
            return None
        model = self.backbone_.model
        raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self._ema)
        return raw

    @torch.inference_mode()
    def predict_proba_loader(self, loader: Any) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (softmax; sigmoid for multi-label; mirror TTA when configured) and
        targets, for a loader."""
        model = self.backbone_.model
        model.eval()
        act = torch.sigmoid if self.multi_label_ else (lambda z: z.softmax(-1))
        probs, targets = [], []
        for x, y in loader:
            x = x.to(self.backbone_.device).contiguous(memory_format=torch.channels_last)
            p = act(model(x).float())
            if self.config.tta:
                p = (p + act(model(torch.flip(x, dims=[3])).float())) / 2
            probs.append(p.cpu().numpy())
            targets.append(y.numpy())
        if isinstance(loader.sampler, _ddp.ShardSampler):  # DDP: this rank's share, then all
            return _ddp.gather_batches(probs), _ddp.gather_batches(targets)
        return np.concatenate(probs), np.concatenate(targets)

    def _evaluate_loader(self, loader: Any, loss_fn: nn.Module) -> tuple[float, float]:
        proba, y = self.predict_proba_loader(loader)
        if self.multi_label_:
            from transferlab.evaluate import evaluate_multilabel

            p = np.clip(proba, 1e-7, 1 - 1e-7)
            bce = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
            return bce, evaluate_multilabel(y.astype(int), proba, self.classes_).mAP
        nll = float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, None))))
        return nll, float(np.mean(proba.argmax(1) == y))

    def _loss(self, y_train: np.ndarray) -> nn.Module:
        """Cross-entropy (single-label) or BCE (multi-label), class-weighted when asked."""
        cfg, dev = self.config, self.backbone_.device
        if self.multi_label_:
            pos_weight = None
            if cfg.class_balance == "weights":
                pos = y_train.sum(0).clip(min=1)
                pos_weight = torch.as_tensor(
                    (len(y_train) - pos) / pos, dtype=torch.float32, device=dev
                )
            return _SmoothedBCE(cfg.label_smoothing, pos_weight)
        class_w = None
        if cfg.class_balance == "weights":
            counts = np.bincount(y_train, minlength=len(self.classes_)).astype(float)
            class_w = torch.as_tensor(
                len(y_train) / (len(counts) * counts), dtype=torch.float32, device=dev
            )
        return nn.CrossEntropyLoss(weight=class_w, label_smoothing=cfg.label_smoothing)

    def _wise(self, val_loader: Any, loss_fn: nn.Module) -> tuple[float, dict[str, float] | None]:
        """Interpolate start and fine-tuned weights; keep the alpha with the best validation
        score (ties: lower validation loss). Returns alpha and the score of each alpha tried."""
        cfg = self.config
        if cfg.wise == "off":
            return 1.0, None
        model = self.backbone_.model
        tuned = {k: v.detach().clone() for k, v in model.state_dict().items()}
        alphas = [0.25, 0.5, 0.75, 1.0] if cfg.wise == "auto" else [float(cfg.wise)]

        def blend(alpha: float) -> dict[str, torch.Tensor]:
            return {
                k: (1 - alpha) * self._init_state[k] + alpha * v if v.is_floating_point() else v
                for k, v in tuned.items()
            }

        results = {}
        for alpha in alphas:
            model.load_state_dict(blend(alpha))
            loss, score = self._evaluate_loader(val_loader, loss_fn)
            results[alpha] = (score, -loss)
        best = max(alphas, key=lambda a: results[a])
        model.load_state_dict(blend(best))
        model.eval()
        return best, {str(a): results[a][0] for a in alphas}

    # -- checkpoints --------------------------------------------------------------------------
    def _load_file(self, path: Path | None, *, weights_only: bool = True) -> Any:
        """``torch.load(path)`` onto the device, or None when there is no such file. Under DDP
        rank 0 reads it and sends it to the others (the run directory need not be shared)."""
        if not _ddp.is_distributed():
            if path is None or not path.exists():
                return None
            return torch.load(path, map_location=self.backbone_.device, weights_only=weights_only)

        def read() -> Any:
            if path is None or not path.exists():
                return None
            return torch.load(path, map_location="cpu", weights_only=weights_only)

        return _ddp.to_device(_ddp.on_main(read), self.backbone_.device)

    def _save_checkpoint(
        self, ckpt_dir: Path, phase: str, epoch_in_phase: int, opt: Any, sched: Any
    ) -> None:
        """`last.pt` after every epoch (atomically), and the best-by-validation weights."""
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.backbone_.model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "phase": phase,
            "epoch_in_phase": epoch_in_phase,
            "epoch": self.epoch,
            "history": self.history,
            "classes": self.classes_,
            "config": asdict(self.config),
            "probe_val_accuracy": getattr(self, "probe_val_accuracy_", None),
            "fingerprint": self._fingerprint_,
            "world_size": _ddp.get_world_size(),
            "ema": self._ema,
            "ema_steps": self._ema_steps,
        }
        tmp = ckpt_dir / f".{CHECKPOINT}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, ckpt_dir / CHECKPOINT)
        if self._best_index() == len(self.history) - 1:
            tmp = ckpt_dir / ".best.pt.tmp"
            torch.save({"model": self._best_state, "epoch": self.epoch}, tmp)
            os.replace(tmp, ckpt_dir / "best.pt")

    # -- LR finder ----------------------------------------------------------------------------
    def lr_find(
        self,
        train: Sequence[Sample],
        classes: Sequence[str],
        *,
        start_lr: float = 1e-7,
        end_lr: float = 1.0,
        num_it: int = 60,
        frozen: bool = True,
    ) -> LRFindResult:
        """Exponential LR sweep (Smith 2015, fastai's ``lr_find``) on `train`, weights restored after.

        Trains with the LR multiplied by a constant factor each step, from `start_lr` to `end_lr`
        over `num_it` steps (stopping once the loss exceeds 4x its minimum), on the head only when
        `frozen` (the phase whose LR it informs), else on the whole network.
        """
        if not 0 < start_lr < end_lr:
            raise InvalidParameterError(f"need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
        if num_it < 5:
            raise InvalidParameterError(f"num_it must be >= 5, got {num_it}")
        cfg = self.config
        _seed_everything(cfg.seed)
        self._setup(classes)
        index = {c: i for i, c in enumerate(self.classes_)}
        imgs, kept, _ = _decode_all(train, _preload_size(self.size_), cfg.max_pixels, self.progress)
        y = np.array([index[train[i].label] for i in kept], dtype=np.int64)
        ds = _Images(imgs, y, self._train_transform(imgs)[0])
        loader = torch.utils.data.DataLoader(
            ds,
            batch_size=cfg.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(cfg.seed),
            drop_last=len(y) > cfg.batch_size,
        )
        model = self.backbone_.model
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.freeze_to(-1 if frozen else 0)
        opt, _ = self._optimizer(start_lr, 1.0)
        gamma = (end_lr / start_lr) ** (1 / (num_it - 1))
        loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        lrs: list[float] = []
        losses: list[float] = []
        self._set_train_mode()
        from tqdm.auto import tqdm

        bar = tqdm(
            total=num_it,
            desc="lr_find",
            unit="step",
            disable=None if self.progress else True,
            leave=False,
        )
        try:
            step, best = 0, float("inf")
            while step < num_it:
                for x, t in loader:
                    lr = start_lr * gamma**step
                    for g in opt.param_groups:
                        g["lr"] = lr
                    x = x.to(self.backbone_.device).contiguous(memory_format=torch.channels_last)
                    loss = loss_fn(model(x), t.to(self.backbone_.device))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    value = float(loss.detach())
                    lrs.append(lr)
                    losses.append(value)
                    best = min(best, value)
                    step += 1
                    bar.update(1)
                    if step >= num_it or not np.isfinite(value) or value > 4 * best:
                        step = num_it
                        break
        finally:
            bar.close()
            model.load_state_dict(saved)
            model.eval()
        smoothed, suggestion, steepest, rule = suggest_lr(lrs, losses)
        return LRFindResult(lrs, losses, smoothed, suggestion, rule, steepest)

    # -- the whole recipe ---------------------------------------------------------------------
    def fit(
        self,
        train: Sequence[Sample],
        val: Sequence[Sample],
        classes: Sequence[str],
        *,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        resume: bool = False,
        on_error: str = "skip",
        multi_label: bool = False,
    ) -> FinetuneResult:
        """Fine-tune on `train`, validating on `val` after every epoch; keep the best weights.

        Args:
            train, val: labelled samples (labels among `classes`).
            classes: class names; the head's outputs follow this order.
            checkpoint_dir: where ``last.pt``/``best.pt`` go (None: no checkpoints, no resume).
            resume: continue from ``checkpoint_dir/last.pt`` if it exists.
            on_error: ``"skip"`` broken images (listed in `failures_`) or ``"raise"`` the first.
            multi_label: samples carry label sets (`Sample.labels`): sigmoid head, BCE loss,
                model selection on validation mAP.

        Raises:
            DatasetError: a class has no decodable training image, or no validation image decodes.
        """
        t_start = time.perf_counter()
        cfg = self.config
        self.progress = self.progress and _ddp.is_main_process()  # DDP: rank 0 reports
        if multi_label and cfg.class_balance == "sampler":
            raise InvalidParameterError(
                "class_balance='sampler' is for single-label data; use 'weights'"
            )
        self.multi_label_ = multi_label
        self.score_key_ = "val_map" if multi_label else "val_accuracy"
        _seed_everything(cfg.seed)
        self._setup(classes)
        index = {c: i for i, c in enumerate(self.classes_)}
        ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self._fingerprint_ = {
            "data": sorted(s.path for s in train),
            "val": sorted(s.path for s in val),
            "config": asdict(cfg),
            "classes": self.classes_,
        }

        short = _preload_size(self.size_)
        tr_imgs, tr_kept, tr_fail = _decode_all(train, short, cfg.max_pixels, self.progress)
        geometry = eval_transform(self.backbone_, self.size_, part="geometry")
        va_imgs, va_kept, va_fail = _decode_all(val, None, cfg.max_pixels, self.progress, geometry)
        self.failures_ = tr_fail + va_fail
        if on_error == "raise" and self.failures_:
            raise self.failures_[0]
        if self.multi_label_:
            from transferlab.data import label_matrix

            y_train = label_matrix([train[i] for i in tr_kept], self.classes_).astype(np.float32)
            y_val = label_matrix([val[i] for i in va_kept], self.classes_).astype(np.float32)
            missing = [c for c, n in zip(self.classes_, y_train.sum(0), strict=True) if n == 0]
        else:
            y_train = np.array([index[train[i].label] for i in tr_kept], dtype=np.int64)
            y_val = np.array([index[val[i].label] for i in va_kept], dtype=np.int64)
            missing = [c for c in self.classes_ if index[c] not in set(y_train.tolist())]
        if missing:
            raise DatasetError(f"class(es) {', '.join(missing)} have no decodable training image")
        if not len(y_val):
            raise DatasetError("no validation image could be decoded")
        transform, self.greyscale_ = self._train_transform(tr_imgs)

        g = torch.Generator().manual_seed(cfg.seed)
        self._generator = g  # reseeded every epoch: a resumed run shuffles as an uninterrupted one
        workers = cfg.num_workers if cfg.num_workers is not None else 0
        ds_train = _Images(tr_imgs, y_train, transform)
        sampler = None
        if cfg.class_balance == "sampler":
            w = 1.0 / np.bincount(y_train, minlength=len(self.classes_))[y_train]
            sampler = torch.utils.data.WeightedRandomSampler(
                torch.as_tensor(w, dtype=torch.double), len(y_train), generator=g
            )
        loaders = {
            "train": torch.utils.data.DataLoader(
                ds_train,
                batch_size=cfg.batch_size,
                shuffle=sampler is None,
                sampler=sampler,
                drop_last=len(y_train) > cfg.batch_size,
                num_workers=workers,
                generator=g,
            ),
            "val": torch.utils.data.DataLoader(
                _Images(va_imgs, y_val, eval_transform(self.backbone_, self.size_, part="tensor")),
                batch_size=64,
                num_workers=workers,
            ),
            "train_eval": torch.utils.data.DataLoader(
                _Images(
                    _decode_all(
                        [train[i] for i in tr_kept], None, cfg.max_pixels, self.progress, geometry
                    )[0],
                    y_train,
                    eval_transform(self.backbone_, self.size_, part="tensor"),
                ),
                batch_size=64,
                num_workers=workers,
            ),
        }
        loss_fn = self._loss(y_train)
        train_eval_all = loaders["train_eval"]  # AdaBN sees every image on every rank
        loaders = {k: _ddp.shard_loader(v, train=k == "train") for k, v in loaders.items()}

        resume_state = self._load_file(
            ckpt_dir / CHECKPOINT if resume and ckpt_dir is not None else None, weights_only=False
        )
        if resume_state is not None:
            saved_world = int(resume_state.get("world_size", 1))
            if saved_world != _ddp.get_world_size():
                raise InvalidParameterError(
                    f"cannot resume from {ckpt_dir / CHECKPOINT}: it was made by {saved_world} "
                    f"process(es), this run has {_ddp.get_world_size()}; the global batch and the "
                    f"LR schedule depend on it, so resume with {saved_world} (--nproc / "
                    "--nproc_per_node x nodes)"
                )
            saved = dict(resume_state.get("fingerprint") or {})
            if isinstance(saved.get("config"), dict):  # a checkpoint from before a config field
                saved["config"] = {**_config_defaults(), **saved["config"]}  # existed: default
            if saved != self._fingerprint_:
                raise InvalidParameterError(
                    f"cannot resume from {ckpt_dir / CHECKPOINT}: it was made with other data or settings; "
                    "rerun without --resume (or with the original settings)"
                )
            self.backbone_.model.load_state_dict(resume_state["model"])
            self.history = list(resume_state["history"])
            self.epoch = int(resume_state["epoch"])
            self.probe_val_accuracy_ = resume_state.get("probe_val_accuracy")
            self._ema = resume_state.get("ema")
            self._ema_steps = int(resume_state.get("ema_steps", 0))
            logger.info("resuming after epoch %d (%s)", self.epoch, resume_state["phase"])
        if resume_state is None:
            if cfg.adapt_bn:
                from transferlab.backbones import reestimate_bn

                n_bn = reestimate_bn(
                    self.backbone_.model,
                    (x for x, _ in train_eval_all),
                    self.backbone_.device,
                )
                logger.info("AdaBN: BatchNorm statistics re-estimated on %d training images", n_bn)
            self.probe_val_accuracy_ = (
                self._init_head_from_probe(
                    None, loaders["train_eval"], y_train, loaders["val"], y_val
                )
                if cfg.head_init == "probe"
                else None
            )
        # the starting point, for weight-space ensembling at the end (kept beside checkpoints)
        init_path = ckpt_dir / "init.pt" if ckpt_dir is not None else None
        init_state = self._load_file(init_path) if resume_state is not None else None
        if init_state is not None:
            self._init_state = init_state
        else:
            self._init_state = {
                k: v.detach().clone() for k, v in self.backbone_.model.state_dict().items()
            }
            if init_path is not None and _ddp.is_main_process():
                init_path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(self._init_state, init_path)
        if resume_state is None:  # a buffer shaped as the model; step 1 overwrites it (weight 1)
            self._ema_steps = 0
            self._ema = (
                {k: v.detach().clone() for k, v in self.backbone_.model.state_dict().items()}
                if cfg.ema is not None
                else None
            )
        self._best_state: dict[str, torch.Tensor] | None = None
        best_ckpt = (
            self._load_file(ckpt_dir / "best.pt")
            if resume_state is not None and ckpt_dir is not None
            else None
        )
        if best_ckpt is not None:
            self._best_state = best_ckpt["model"]

        if cfg.early_stopping and not any(isinstance(cb, EarlyStopping) for cb in self.callbacks):
            self.callbacks = sorted(
                [*self.callbacks, EarlyStopping(cfg.early_stopping)], key=lambda cb: cb.order
            )
        for cb in self.callbacks:
            cb.before_fit(self)
        phases = [
            ("frozen", cfg.freeze_epochs, cfg.lr, 1.0, -1),
            ("unfrozen", cfg.epochs, cfg.lr / 2, cfg.lr_mult, cfg.freeze_to),
        ]
        completed = True
        for phase, n_epochs, lr, mult, freeze in phases:
            if n_epochs == 0:
                continue
            start = 0
            state = None
            if resume_state is not None:
                order = [p[0] for p in phases]
                done_phase = resume_state["phase"]
                if order.index(phase) < order.index(done_phase):
                    continue
                if phase == done_phase:
                    start = int(resume_state["epoch_in_phase"])
                    if start >= n_epochs:
                        continue
                    state = resume_state
            self.freeze_to(freeze)
            completed = self._run_phase(
                phase, n_epochs, lr, mult, loaders, loss_fn, ckpt_dir, start, state
            )
            if not completed:
                break
        # keep the best epoch's weights (selected on validation, reported as such)
        best = self._best_index()
        if self._best_state is None and ckpt_dir is not None:
            best_ckpt = self._load_file(ckpt_dir / "best.pt")
            self._best_state = best_ckpt["model"] if best_ckpt is not None else None
        if self._best_state is not None:
            self.backbone_.model.load_state_dict(self._best_state)
        alpha, wise_scores = self._wise(loaders["val"], loss_fn)
        for cb in self.callbacks:
            cb.after_fit(self)
        self.backbone_.model.eval()
        ips = [h["train_images_per_second"] for h in self.history]
        self.result_ = FinetuneResult(
            history=self.history,
            best_epoch=self.history[best]["epoch"],
            best_val_accuracy=self.history[best][self.score_key_],
            probe_val_accuracy=self.probe_val_accuracy_,
            wise_alpha=alpha,
            wise_scores=wise_scores,
            stopped_early=not completed,
            seconds=round(time.perf_counter() - t_start, 2),
            train_images_per_second=float(np.median(ips)) if ips else 0.0,
            precision="bf16" if self.bf16_ else "fp32",
        )
        return self.result_


def _is_grey(img: Image.Image) -> bool:
    arr = np.asarray(img.resize((32, 32)))
    return bool(
        np.abs(arr[..., 0].astype(int) - arr[..., 1]).max() < 3
        and np.abs(arr[..., 1].astype(int) - arr[..., 2]).max() < 3
    )


def _config_defaults() -> dict[str, Any]:
    """FinetuneConfig's field defaults (fields added later read as these in old checkpoints)."""
    from dataclasses import MISSING, fields

    return {
        f.name: f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        for f in fields(FinetuneConfig)
        if f.default is not MISSING or f.default_factory is not MISSING
    }


class _SmoothedBCE(nn.Module):
    """BCE-with-logits with targets pulled towards 0.5 by `smoothing` (multi-label smoothing)."""

    def __init__(self, smoothing: float, pos_weight: torch.Tensor | None) -> None:
        super().__init__()
        self.smoothing = smoothing
        self.loss = nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, target * (1 - self.smoothing) + 0.5 * self.smoothing)


class EarlyStopping(Callback):
    """Stop when validation accuracy has not improved for `patience` epochs."""

    order = 10

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def after_epoch(self, tuner: FineTuner) -> None:
        accs = [h[tuner.score_key_] for h in tuner.history]
        best = int(np.argmax(accs))
        if len(accs) - 1 - best >= self.patience:
            raise CancelFitException
