"""A loaded backbone: the timm model, its preprocessing and its named taps, pooled.

The model contract is timm's: embeddings from `forward_head(forward_features(x), pre_logits=True)`,
preprocessing from `resolve_model_data_config`, and named taps (stem, each stage, pre_logits,
logits) read with forward hooks, never by cutting children.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from transferlab.backbones._card import POOLS, TOKEN_POOLS, BackboneCard, TapInfo, check_layer
from transferlab.backbones._device import resolve_device
from transferlab.backbones._family import Family, family_of
from transferlab.backbones._registry import (
    WEIGHT_SOURCES,
    BackboneSpec,
    _timm,
    get_backbone_spec,
    list_backbones,
)
from transferlab.backbones._weights import (
    _load_into,
    _package_weights,
    _state_dict_from_file,
    _weights_digest,
)
from transferlab.data import eval_transform, train_transform
from transferlab.exceptions import InvalidParameterError, WeightsNotFoundError

__all__ = ["POOLS", "Backbone", "TapInfo", "load_backbone", "pool_features"]


class _StopForward(Exception):
    """Raised from a hook once every requested tap is read, to skip the rest of the network."""


def _stage_modules(model: nn.Module) -> list[str]:
    """Module paths of the stages, in order, from the model's own structure."""
    for attr in ("blocks", "stages", "layers"):
        seq = getattr(model, attr, None)
        if isinstance(seq, (nn.Sequential, nn.ModuleList)) and len(seq) > 1:
            return [f"{attr}.{i}" for i in range(len(seq))]
    resnet = [f"layer{i}" for i in range(1, 5) if hasattr(model, f"layer{i}")]
    if resnet:
        return resnet
    info = getattr(model, "feature_info", None)
    if info:  # some models (RegNet) list their stem as the first feature level: not a stage
        stem = _stem_module(model)
        return [i["module"] for i in info if i["module"] != stem]
    return []


def _stem_module(model: nn.Module) -> str | None:
    names = dict(model.named_modules())
    for cand in ("bn1", "stem", "patch_embed"):
        if cand in names:
            return cand
    first = getattr(model, "pretrained_cfg", {}).get("first_conv")
    return first if first in names else None


class Backbone:
    """A loaded backbone: the timm model in eval mode, its preprocessing and its taps.

    Use `load_backbone` to make one. `forward_taps(x, layers)` returns each requested layer's
    output, pooled by `pool` where spatial, stopping the network after the deepest one needed.

    Attributes:
        spec: the `BackboneSpec`.
        model: the timm `nn.Module` (eval mode).
        weights_source: ``"package"``, ``"hub"``, ``"file:<path>"`` or ``"random"``.
        weights_sha256: digest of the loaded weights (names and bytes).
        data_config: timm data config (input_size, interpolation, mean, std, crop_pct, crop_mode).
        device: where the model lives.
    """

    def __init__(
        self, spec: BackboneSpec, model: nn.Module, weights_source: str, device: torch.device
    ) -> None:
        self.spec = spec
        self.model = model
        self.weights_source = weights_source
        self.device = device
        self.weights_sha256 = _weights_digest(model)
        cfg = _timm().data.resolve_model_data_config(model)
        cfg.update({k: v for k, v in spec.pretrained_cfg_overrides.items() if k in cfg})
        self.data_config: dict[str, Any] = {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()
        }
        stem = _stem_module(model)
        self._taps: dict[str, str] = {}
        if stem:
            self._taps["stem"] = stem
        for i, mod in enumerate(_stage_modules(model), start=1):
            self._taps[f"stage{i}"] = mod
        self._taps["pre_logits"] = "<pre_logits>"
        self._taps["logits"] = "<logits>"
        self._tap_info: list[TapInfo] | None = None
        #: Swin and some others give stage maps as N, H, W, C: turned to N, C, H, W at the tap
        self.output_fmt: str = str(getattr(model, "output_fmt", "NCHW"))
        #: class (and register / distillation) tokens in front of the patch tokens of each
        #: block's output; the stem (patch embedding) has none
        self.prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.family: Family = family_of(model)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def layers(self) -> list[str]:
        """Tap names, shallow to deep: stem, stage1..N, pre_logits, logits."""
        return list(self._taps)

    def fingerprint(self) -> str:
        """Identifies architecture + weights: part of every cache key and saved model."""
        return f"{self.spec.timm_name}@{self.weights_sha256[:16]}"

    def card(self) -> BackboneCard:
        """This backbone's identity, preprocessing and taps, as `BackboneCard` keeps them on disk
        for runs that need no model (one forward pass at the input size, the first time)."""
        return BackboneCard(
            name=self.name,
            timm_name=self.spec.timm_name,
            weights_source=self.weights_source,
            weights_sha256=self.weights_sha256,
            data_config=dict(self.data_config),
            taps=tuple(self.tap_info()),
        )

    def preprocessing(self) -> dict[str, Any]:
        """The eval preprocessing, as plain JSON-able values."""
        keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
        return {k: self.data_config[k] for k in keys if k in self.data_config}

    def transform(self, *, is_training: bool = False) -> Callable[[Any], torch.Tensor]:
        """This backbone's preprocessing at its input size: `transferlab.data.eval_transform`
        (resize, centre crop, to tensor, normalise), or with `is_training` the package's
        training augmentation (`transferlab.data.train_transform`)."""
        size = tuple(self.data_config["input_size"][1:])
        if is_training:
            return train_transform(self, int(size[-1]), augment=True, greyscale=False)
        return eval_transform(self, size)  # type: ignore[arg-type]

    def check_layer(self, layer: str) -> str:
        return check_layer(self.name, self.layers, layer)

    def tap_info(self) -> list[TapInfo]:
        """Each tap's module and output shape, measured by one forward pass at the input size."""
        if self._tap_info is None:
            shapes: dict[str, tuple[int, ...]] = {}
            x = torch.zeros(1, *self.data_config["input_size"], device=self.device)
            outs = self.forward_taps(x, self.layers, pool=None)
            for name, out in outs.items():
                shapes[name] = tuple(out.shape[1:])
            h = self.data_config["input_size"][-1]
            info = []
            for name, mod in self._taps.items():
                shape = shapes[name]
                if len(shape) == 3:  # C, H, W
                    channels, spatial = shape[0], shape[1:]
                    reduction = 2 ** round(math.log2(h / shape[-1])) if shape[-1] else None
                elif len(shape) == 2:  # tokens, C
                    channels, spatial, reduction = shape[1], (shape[0],), None
                else:
                    channels, spatial, reduction = shape[0], (), None
                info.append(
                    TapInfo(name, mod, int(channels), tuple(int(s) for s in spatial), reduction)
                )
            self._tap_info = info
        return self._tap_info

    @torch.inference_mode()
    def forward_taps(
        self,
        x: torch.Tensor,
        layers: Iterable[str],
        pool: str | None = "avg",
        *,
        early_exit: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Outputs of `layers` for the batch `x`, pooled to vectors unless ``pool=None``.

        With `early_exit` the forward pass stops at the last tap needed (an exception out of a
        hook); ONNX export turns it off, since a traced graph cannot stop half-way.

        Hooks rather than timm's `forward_intermediates`: for lite0 that gives the same tensors
        (``extra_blocks=True``; tests/backbones pins it), but its indices follow each
        architecture's own convention (ResNet's first one is after ``act1``, our ``stem`` tap is
        ``bn1``'s output), and not every timm model has it; a hook on a module path serves them
        all with one set of tap names and cached features stay valid.
        """
        wanted = [self.check_layer(layer) for layer in layers]
        modules = dict(self.model.named_modules())
        module_taps = {self._taps[n]: n for n in wanted if not self._taps[n].startswith("<")}
        need_head = any(self._taps[n].startswith("<") for n in wanted)
        outs: dict[str, torch.Tensor] = {}
        handles = []

        def make_hook(tap: str) -> Callable[..., None]:
            def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
                if isinstance(out, (tuple, list)):
                    out = out[0]
                if out.ndim == 4 and self.output_fmt == "NHWC":
                    out = out.permute(0, 3, 1, 2)
                prefix = 0 if tap == "stem" else self.prefix_tokens
                outs[tap] = pool_features(out, pool, prefix, tap) if pool else out.clone()
                if early_exit and not need_head and len(outs) == len(module_taps):
                    raise _StopForward

            return hook

        for mod_name, tap in module_taps.items():
            handles.append(modules[mod_name].register_forward_hook(make_hook(tap)))
        try:
            feats = self.model.forward_features(x)
            if need_head:
                if "pre_logits" in wanted:
                    if pool in TOKEN_POOLS and feats.ndim == 3:  # a token pooling of one's own
                        outs["pre_logits"] = pool_features(
                            feats, pool, self.prefix_tokens, "pre_logits"
                        )
                    else:  # the model's own pooling (timm's global_pool: ViT's class token)
                        outs["pre_logits"] = pool_features(
                            self.model.forward_head(feats, pre_logits=True), pool or "avg"
                        )
                if "logits" in wanted:
                    outs["logits"] = self.model.forward_head(feats)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        return {n: outs[n] for n in wanted}


def pool_features(
    out: torch.Tensor, pool: str, prefix_tokens: int = 0, tap: str = "this tap"
) -> torch.Tensor:
    """Pool a layer output to one vector per image.

    4-D maps (N, C, H, W) are pooled over H, W: ``avg``, ``max``, or ``avgmax`` (both, concatenated,
    as fastai's concat pooling). Token sequences (N, L, C), whose first `prefix_tokens` are the
    class (and register) tokens, are pooled over L the same way, or by ``token`` (the class
    token), ``patch`` (the mean of the patch tokens) or ``token_patch`` (both concatenated: the
    DINOv2 linear evaluation). On a map, ``patch`` is ``avg``. 2-D inputs pass through.
    """
    if pool not in POOLS:
        raise InvalidParameterError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if out.ndim == 2:
        return out.float()
    out = out.float()
    if pool in TOKEN_POOLS:
        if out.ndim != 3 and pool == "patch":
            return out.mean(dim=(2, 3))
        if out.ndim != 3 or prefix_tokens < 1:
            raise InvalidParameterError(
                f"pool={pool!r} needs a class token, and {tap} has none (its output is "
                f"{'a feature map' if out.ndim == 4 else 'a token sequence without one'}): "
                "use pool 'patch', 'avg', 'max' or 'avgmax'"
            )
        cls, patches = out[:, 0], out[:, prefix_tokens:].mean(dim=1)
        if pool == "token":
            return cls
        if pool == "patch":
            return patches
        return torch.cat([cls, patches], dim=1)
    dims = (2, 3) if out.ndim == 4 else (1,)
    if pool == "avg":
        return out.mean(dim=dims)
    if pool == "max":
        return out.amax(dim=dims)
    return torch.cat([out.mean(dim=dims), out.amax(dim=dims)], dim=1)


def load_backbone(
    name: str = "efficientnet_lite0",
    *,
    weights: str | os.PathLike[str] | None = "default",
    device: str | torch.device = "cpu",
    channels_last: bool = True,
) -> Backbone:
    """Build a backbone with its weights, in eval mode.

    Args:
        name: registered name (``transferlab backbones``) or any timm model name.
        weights: ``"default"`` (the spec's source: packaged or hub), ``"hub"`` (timm download),
            ``"random"`` (no pretrained weights, seeded), or a path to a ``.pth``/``.safetensors``
            state dict (timm key names, or the same tensors in the same order).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        channels_last: NHWC memory layout; about twice as fast on CPU, same results.

    Raises:
        UnknownBackboneError: `name` is unknown.
        WeightsNotFoundError: the weights cannot be found, read, downloaded or do not fit.

    Example:
        >>> bb = load_backbone("efficientnet_lite0")
        >>> bb.layers[:2], bb.data_config["input_size"]
        (['stem', 'stage1'], [3, 224, 224])
    """
    spec = get_backbone_spec(name)
    timm = _timm()
    dev = resolve_device(device)
    weights = "default" if weights is None else weights
    source = os.fspath(weights)
    if source == "default":
        source = "package" if spec.weights.startswith("package:") else spec.weights
    if source not in ("package", "hub", "random") and not os.path.exists(source):
        raise WeightsNotFoundError(
            f"weights={source!r}: not a file, and not one of {', '.join(WEIGHT_SOURCES)}"
        )
    torch.manual_seed(0)  # a 'random' backbone is the same every time
    if source == "hub":
        try:
            model = timm.create_model(spec.timm_name, pretrained=True)
        except Exception as exc:  # network, hub or file errors: all mean "no weights here"
            raise WeightsNotFoundError(
                f"could not download weights for {spec.timm_name!r} from the hub ({type(exc).__name__}: "
                f"{exc}). Offline? Use a packaged backbone ({', '.join(list_backbones(pretrained_only=True))}), "
                "--weights PATH to a local file, or --weights random."
            ) from exc
        weights_source = "hub"
    else:
        model = timm.create_model(spec.timm_name, pretrained=False)
        if source == "package":
            sd, path = _package_weights(spec)
            _load_into(model, sd, path)
            weights_source = "package"
        elif source == "random":
            weights_source = "random"
        else:
            _load_into(model, _state_dict_from_file(source), source)
            weights_source = f"file:{os.path.abspath(source)}"
    model.eval().to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return Backbone(spec, model, weights_source, dev)
