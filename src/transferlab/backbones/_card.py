"""`BackboneCard`: what a run needs to know about a loaded backbone, kept on disk so that a later
run can know it without loading the model (no torch or timm import).

A card holds the backbone's identity (name, timm architecture, weights digest), its eval
preprocessing and its taps. It is written the first time a backbone is loaded and found again
by the name and *where the weights come from* (the weights file's path, size and mtime, and the
library versions that build the model), so a changed file or upgraded timm makes a new card.
With a card, cache keys, saved-model metadata and the ONNX Runtime path need no model: a warm
run whose vectors are all cached, or whose network runs in ONNX Runtime, never imports torch
(issue 17). This module imports neither torch nor timm.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
import os
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from transferlab.backbones._registry import _REGISTRY
from transferlab.exceptions import UnknownLayerError

__all__ = [
    "CARD_FORMAT",
    "POOLS",
    "TOKEN_POOLS",
    "BackboneCard",
    "TapInfo",
    "cuda_may_be_present",
    "weights_identity",
]

#: Poolings of a transformer's tokens: the class token, the mean of the patch tokens, both.
TOKEN_POOLS = ("token", "patch", "token_patch")

#: How spatial maps and token sequences become vectors (see `pool_features`).
POOLS = ("avg", "max", "avgmax", *TOKEN_POOLS)

#: Bump when a card's meaning changes: older cards are then ignored (and rewritten).
CARD_FORMAT = 1


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


@dataclass(frozen=True)
class BackboneCard:
    """A backbone as the feature cache, saved models and the ONNX path see it.

    Made by `Backbone.card()`; `load`/`save` keep it in a folder of JSON files. It answers the
    questions `Backbone` answers about identity and shape (`fingerprint`, `preprocessing`,
    `layers`, `check_layer`, `tap_info`) without a model in memory.
    """

    name: str
    timm_name: str
    weights_source: str
    weights_sha256: str
    data_config: dict[str, Any]
    taps: tuple[TapInfo, ...] = field(default_factory=tuple)

    @property
    def layers(self) -> list[str]:
        return [t.name for t in self.taps]

    def fingerprint(self) -> str:
        """Identifies architecture + weights (the same string `Backbone.fingerprint` gives)."""
        return f"{self.timm_name}@{self.weights_sha256[:16]}"

    def preprocessing(self) -> dict[str, Any]:
        keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
        return {k: self.data_config[k] for k in keys if k in self.data_config}

    def tap_info(self) -> list[TapInfo]:
        return list(self.taps)

    def check_layer(self, layer: str) -> str:
        return check_layer(self.name, self.layers, layer)

    def pooled_dim(self, layer: str, pool: str) -> int:
        """Length of `layer`'s vector under `pool` (see `pool_features`): twice the channels
        for the concatenating poolings of a map or token sequence; a token pooling of
        ``pre_logits`` reads the last block's tokens (after the final norm), where there are."""
        taps = {t.name: t for t in self.taps}
        tap = taps[self.check_layer(layer)]
        stages = [t for t in self.taps if t.name.startswith("stage")]
        if layer == "pre_logits" and pool in TOKEN_POOLS:
            if stages and len(stages[-1].spatial) == 1:
                return stages[-1].channels * (2 if pool == "token_patch" else 1)
            return tap.channels  # a map model: its own head pooling, whatever `pool` says
        double = (pool == "avgmax" and bool(tap.spatial)) or (
            pool == "token_patch" and len(tap.spatial) == 1
        )
        return tap.channels * (2 if double else 1)

    # -- on disk --------------------------------------------------------------------------------
    @staticmethod
    def path_for(directory: str | os.PathLike[str], name: str, weights: Any) -> Path | None:
        """Where the card of (`name`, `weights`) lives, or None where the weights' origin cannot
        be told without loading them (hub downloads, unregistered names with default weights)."""
        ident = weights_identity(name, weights)
        if ident is None:
            return None
        key = hashlib.sha256(f"{CARD_FORMAT}|{ident}".encode()).hexdigest()[:24]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return Path(directory) / "cards" / f"{safe}-{key}.json"

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], name: str, weights: Any
    ) -> BackboneCard | None:
        """The stored card, or None (none stored, unreadable, or of another format)."""
        path = cls.path_for(directory, name, weights)
        if path is None or not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            if raw.pop("card_format", None) != CARD_FORMAT:
                return None
            taps = tuple(
                TapInfo(
                    t["name"], t["module"], int(t["channels"]), tuple(t["spatial"]), t["reduction"]
                )
                for t in raw.pop("taps")
            )
            return cls(**raw, taps=taps)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a damaged card is only a missed shortcut: the model is loaded instead

    def save(self, directory: str | os.PathLike[str], weights: Any) -> Path | None:
        """Write the card (atomically) where `load` finds it; None where it cannot be keyed."""
        path = self.path_for(directory, self.name, weights)
        if path is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {"card_format": CARD_FORMAT, **asdict(self)}
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(body, indent=1))
            os.replace(tmp, path)
        except OSError:
            return None  # a read-only cache folder: every run loads the model, as before
        finally:
            if tmp.exists():
                tmp.unlink()
        return path


def check_layer(backbone: str, layers: list[str], layer: str) -> str:
    """`layer` if `backbone` has it, else `UnknownLayerError` naming the layers and close ones
    (one message for loaded backbones and cards)."""
    if layer not in layers:
        close = difflib.get_close_matches(layer, layers, n=3)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownLayerError(
            f"backbone {backbone!r} has no layer {layer!r}; layers: {', '.join(layers)}.{hint}"
        )
    return layer


def _versions() -> str:
    out = []
    for dist in ("timm", "torch"):
        try:
            out.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(f"{dist}=none")
    return ",".join(out)


def _file_identity(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"


def weights_identity(name: str, weights: Any) -> str | None:
    """A string naming where `name`'s weights come from, cheap to compute (no model load), or
    None where that cannot be told without loading them."""
    if not isinstance(name, str):
        return None
    weights = "default" if weights is None else os.fspath(weights)
    spec = _REGISTRY.get(name)
    if weights == "default":
        if spec is None or not spec.weights.startswith("package:"):
            return None  # hub weights: their file is found (or fetched) by timm
        _, module_name, attr = spec.weights.split(":")
        try:
            module = importlib.import_module(module_name)  # the weights packages import no torch
            ident = _file_identity(getattr(module, attr).get_model_file_path())
        except Exception:
            return None
        if ident is None:
            return None
        base = f"package:{ident}"
    elif weights == "random":
        base = "random"
    elif weights == "hub":
        return None
    else:
        ident = _file_identity(weights)
        if ident is None:
            return None
        base = f"file:{ident}"
    timm_name = spec.timm_name if spec is not None else name
    overrides = json.dumps(spec.pretrained_cfg_overrides, sort_keys=True) if spec else "{}"
    return f"{name}|{timm_name}|{overrides}|{base}|{_versions()}"


def cuda_may_be_present() -> bool:
    """False only where this machine surely has no NVIDIA GPU (no driver), so ``device="auto"``
    is the CPU without importing torch to ask."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return (
        any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0"))
        or os.name == "nt"
    )
