"""`run_adapt_bn`: re-estimate a backbone's BatchNorm statistics on unlabelled images (AdaBN)
and save the adapted weights for ``--weights``."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferlab._internal.progress import progress as _progress
from transferlab._internal.rundir import prepare_out
from transferlab.backbones import load_backbone
from transferlab.data import list_images
from transferlab.exceptions import DatasetError, DatasetNotFoundError
from transferlab.pipeline._results import Metrics, RunResult, config_alias

__all__ = ["AdaptBNConfig", "AdaptBNMetrics", "adapt_bn_run", "run_adapt_bn"]


@dataclass(frozen=True)
class AdaptBNConfig:
    """Everything `run_adapt_bn` needs: the images (labels not needed), the backbone, and at
    most `max_images` of them (a seeded random draw)."""

    data: str | os.PathLike[str]
    out: str | os.PathLike[str]
    backbone: str = "efficientnet_lite0"
    weights: str = "default"
    max_images: int | None = 2000
    batch_size: int = 32
    device: str = "auto"
    seed: int = 0
    overwrite: bool = False
    progress: bool = True


@dataclass(kw_only=True)
class AdaptBNMetrics(Metrics):
    """adapt_bn.json: the weights written and the BN shift per depth before and after."""

    FILE = "adapt_bn.json"

    data: str
    backbone: str
    n_images: int
    weights: str
    weights_sha256: str | None
    bn_shift_before: dict[str, float]
    bn_shift_after: dict[str, float]
    bn_shift_measured_on: str
    use: str
    seconds: float


def run_adapt_bn(config: AdaptBNConfig) -> RunResult:
    """Re-estimate the backbone's BatchNorm statistics on the images under `config.data` and
    write ``weights.safetensors`` (use with ``--weights``) and ``adapt_bn.json`` with the BN
    shift per depth before and after."""
    from transferlab.diagnose import adapt_bn, bn_shift, image_batches, save_backbone_weights

    cfg = config
    t0 = time.perf_counter()
    root = Path(cfg.data)
    if not root.exists():
        raise DatasetNotFoundError(f"{root}: no such file or folder")
    paths = [root.as_posix()] if root.is_file() else list_images(root)[0]
    if len(paths) < 2:
        raise DatasetError(f"{root}: AdaBN needs at least 2 images, found {len(paths)}")
    if cfg.max_images is not None and len(paths) > cfg.max_images:
        rng = np.random.default_rng(cfg.seed)
        paths = [paths[i] for i in sorted(rng.choice(len(paths), cfg.max_images, replace=False))]
    outp = Path(cfg.out)
    prepare_out(outp, cfg.overwrite)
    bb = load_backbone(cfg.backbone, weights=cfg.weights, device=cfg.device)
    # measure the shift on images AdaBN did not see, when there are enough
    held_out = len(paths) >= 512
    probe_paths = paths[-256:] if held_out else paths[:256]
    adapt_paths = paths[:-256] if held_out else paths
    bs = cfg.batch_size
    with _progress(len(adapt_paths), f"AdaBN {bb.name}", cfg.progress) as bar:
        adapted = adapt_bn(bb, image_batches(bb, adapt_paths, batch_size=bs), progress=bar.update)
    before = bn_shift(bb, image_batches(bb, probe_paths, batch_size=bs)).by_tap()
    after = bn_shift(adapted, image_batches(adapted, probe_paths, batch_size=bs)).by_tap()
    wfile = save_backbone_weights(adapted, outp / "weights.safetensors")
    metrics = AdaptBNMetrics(
        data=str(root),
        backbone=bb.name,
        n_images=len(adapt_paths),
        weights=wfile,
        weights_sha256=adapted.weights_sha256,
        bn_shift_before={k: round(v, 4) for k, v in before.items()},
        bn_shift_after={k: round(v, 4) for k, v in after.items()},
        bn_shift_measured_on="held-out images" if held_out else "the adapted images",
        use=f"transferlab fit DATA --backbone {bb.name} --weights {wfile}",
        seconds=round(time.perf_counter() - t0, 1),
    )
    return RunResult.written(metrics, outp)


adapt_bn_run = config_alias("adapt_bn_run", run_adapt_bn, AdaptBNConfig)
