"""What a fine-tune is asked to do (`FinetuneConfig`) and what it produced (`FinetuneResult`)."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields, replace
from typing import Any

from transferlab._internal.deprecation import warn_once
from transferlab.backbones import PRECISIONS
from transferlab.data import DEFAULT_MAX_PIXELS
from transferlab.exceptions import InvalidParameterError

__all__ = [
    "BN_POLICIES",
    "CHECKPOINT",
    "FAMILY_DEFAULTS",
    "FinetuneConfig",
    "FinetuneResult",
    "config_defaults",
]

BN_POLICIES = ("train", "freeze")
CHECKPOINT = "last.pt"

#: The fine-tuning defaults of each backbone family (`transferlab.backbones.FAMILIES`), for the
#: fields a user leaves at None. BatchNorm CNNs: the recipe measured here (issue 4: a 100x LR
#: spread over coarse groups, peak 5e-4). Transformers: layer-wise LR decay over the blocks with
#: a lower peak LR, the recipe of BEiT, MAE and DINOv2 fine-tuning and timm's ``--layer-decay``
#: (0.65-0.75 per block there; 0.75 for the 12 blocks of the small models); ConvNeXt: its
#: paper's fine-tuning decay, 0.8 per block. The transformer and ConvNeXt values are the
#: literature's, not measured here: no pretrained transformer weights load offline on this
#: machine (benchmarks/RESULTS.md, issue 20).
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "batchnorm-cnn": {"lr": 5e-4, "layer_decay": "off"},
    "layernorm-cnn": {"lr": 2e-4, "layer_decay": 0.8},
    "transformer": {"lr": 1e-4, "layer_decay": 0.75},
}


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters of `FineTuner`; CLI flags map one-to-one onto these fields.

    Attributes:
        backbone, weights: the network to start from (see `load_backbone`).
        epochs: epochs with the body unfrozen.
        freeze_epochs: epochs training only the head first (0 skips the phase: the default, since
            the head already starts from the linear probe; fastai's 1 is for a random head).
        lr: peak learning rate of the head in the one-cycle schedule (None: the backbone
            family's default, `FAMILY_DEFAULTS`: 5e-4 for BatchNorm CNNs, 1e-4 transformers).
        lr_mult: ratio of the head's to the stem's learning rate when unfrozen (fastai's
            ``slice(lr / lr_mult, lr)``, spaced geometrically over the layer groups); used
            when `layer_decay` is ``"off"``.
        layer_decay: layer-wise LR decay: each layer (block, as timm's fine-grained groups
            count them) trains at this factor times the LR of the one above it, the head at
            `lr` (BEiT / timm ``--layer-decay``). ``"off"``: the `lr_mult` spread over coarse
            groups instead; None: the family's default (0.75 for transformers, 0.8 for
            ConvNeXt, off for BatchNorm CNNs).
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
        style: share of training images rendered as a line drawing or greyscale each time they
            are drawn (the ``style`` remedy, issue 22: for images to predict that are drawings
            or greyscale while the training images are colour photos; 0 disables).
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
            the head and validation metrics stay fp32 either way, and on CPU so do depthwise
            convolutions, whose bf16 backward is slower than fp32 (issue 17: with them in fp32,
            bf16 trains EfficientNet-Lite0 about 1.5x faster than fp32 on an AVX-512-BF16 CPU;
            with them in bf16 it was slower than fp32).
    """

    backbone: str = "efficientnet_lite0"
    weights: str = "default"
    epochs: int = 5
    freeze_epochs: int = 0
    lr: float | None = None
    lr_mult: float = 100.0
    layer_decay: float | str | None = None
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
    style: float = 0.0
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
            (self.lr is None or self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (
                self.layer_decay in (None, "off")
                or (
                    isinstance(self.layer_decay, (int, float))
                    and not isinstance(self.layer_decay, bool)
                    and 0 < float(self.layer_decay) <= 1
                ),
                f"layer_decay must be None, 'off' or a number in (0, 1], got {self.layer_decay!r}",
            ),
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
            (0 <= self.style <= 1, f"style must be in [0, 1], got {self.style}"),
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

    def resolved(self, family: str) -> FinetuneConfig:
        """This config with the fields left at None filled from `family`'s defaults."""
        defaults = FAMILY_DEFAULTS.get(family, FAMILY_DEFAULTS["batchnorm-cnn"])
        filled = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return replace(self, **filled) if filled else self


@dataclass
class FinetuneResult:
    """What `FineTuner.fit` produced.

    Attributes:
        history: one dict per epoch: phase, train_loss, val_loss, val_accuracy (val_map for
            multi-label), lr_head, seconds.
        best_epoch: epoch (1-based, over both phases) with the best validation accuracy.
        best_val_accuracy: its accuracy.
        probe_val_score: the linear probe's score on the same validation images (accuracy; mAP
            for multi-label) when the head was initialised from it: the baseline to beat.
            (``probe_val_accuracy`` is its old name, kept as a deprecated alias.)
        stopped_early: early stopping ended the run.
        seconds: wall time of `fit`.
    """

    history: list[dict[str, Any]]
    best_epoch: int
    best_val_accuracy: float
    probe_val_score: float | None = None
    wise_alpha: float = 1.0
    wise_scores: dict[str, float] | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    train_images_per_second: float = 0.0
    precision: str = "fp32"

    @property
    def probe_val_accuracy(self) -> float | None:
        """Deprecated: `probe_val_score`."""
        warn_once("FinetuneResult.probe_val_accuracy", "FinetuneResult.probe_val_score")
        return self.probe_val_score

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["probe_val_accuracy"] = self.probe_val_score  # the old key, for readers of to_dict
        return d


def config_defaults() -> dict[str, Any]:
    """FinetuneConfig's field defaults (fields added later read as these in old checkpoints)."""
    return {
        f.name: f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        for f in fields(FinetuneConfig)
        if f.default is not MISSING or f.default_factory is not MISSING
    }
