"""The two stages of the Ray Data pipeline, run on the workers: decoding a shard (CPU tasks)
and embedding it (an actor pool, one `FeatureExtractor` each)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.data import ImageFileDataset, load_image
from transferlab.exceptions import ImageLoadError, InvalidParameterError
from transferlab.features._cache import file_digest
from transferlab.features._extractor import FeatureExtractor
from transferlab.features._ray_listing import _localize

__all__ = ["CRASH_ENV"]

#: Test hook: ``"<shard index>:<marker file>"`` makes the actor processing that shard exit
#: abruptly once (the marker records that it happened), as a killed worker would.
CRASH_ENV = "TRANSFERLAB_RAY_TEST_CRASH"


def _still_broken(path: str, max_pixels: int | None) -> str | None:
    """Why `path` still cannot be used (None if it now decodes): for --strict re-runs over
    shards that recorded it as broken."""
    with tempfile.TemporaryDirectory(prefix="transferlab-ray-") as tmp:
        try:
            load_image(_localize(path, tmp, 0), max_pixels=max_pixels)
        except ImageLoadError as exc:
            return exc.reason
    return None


def _decode_shard(batch: dict[str, np.ndarray], transform: Any, max_pixels: int | None) -> dict:
    """Stage 1 (CPU tasks): hash, decode and preprocess one shard's images.

    Uses the single-process path's own code (`file_digest`, `ImageFileDataset`) so the tensors
    are the ones `FeatureExtractor.extract` would feed its model.
    """
    out: dict[str, list[Any]] = {"shard": [], "items": [], "ok": [], "x": [], "failures": []}
    for shard, items_json in zip(batch["shard"], batch["items"], strict=True):
        items = json.loads(items_json)
        ok: list[list[Any]] = []  # [position in shard, digest]
        tensors = []
        failures: list[list[Any]] = []  # [position, reason]
        with tempfile.TemporaryDirectory(prefix="transferlab-ray-") as tmp:
            for k, (path, _label, _split) in enumerate(items):
                try:
                    local = _localize(path, tmp, k)
                    digest = file_digest(local)
                except ImageLoadError as exc:
                    failures.append([k, exc.reason])
                    continue
                _, tensor, reason = ImageFileDataset([local], transform, max_pixels)[0]
                if tensor is None:
                    failures.append([k, reason])
                else:
                    ok.append([k, digest])
                    tensors.append(tensor.numpy())
        x = (
            np.stack(tensors).astype(np.float32, copy=False)
            if tensors
            else np.zeros((0,), np.float32)
        )
        out["shard"].append(int(shard))
        out["items"].append(items_json)
        out["ok"].append(json.dumps({"rows": ok, "shape": list(x.shape)}))
        out["x"].append(x.tobytes())  # bytes: shards have different lengths (no ragged tensors)
        out["failures"].append(json.dumps(failures))
    return {k: np.asarray(v, dtype=object) for k, v in out.items()}


class _Embedder:
    """Stage 2 (actor pool): one `FeatureExtractor` per actor, loaded once, run on each shard."""

    def __init__(self, params: dict[str, Any], fingerprint: str, crash: str | None) -> None:
        import torch

        if params["device"] == "cpu":
            # Ray sets OMP_NUM_THREADS to the actor's CPUs; make torch honour it too
            torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.fx = FeatureExtractor(**params, cache=False, progress=False, engine="torch").fit()
        got = self.fx.backbone_.fingerprint()
        if got != fingerprint:
            raise InvalidParameterError(
                f"this Ray worker loads backbone weights {got}, the driver {fingerprint}: install "
                "the same weights on every node"
            )
        self.crash = crash

    def _maybe_crash(self, shard: int) -> None:
        if not self.crash:
            return
        index, _, marker = self.crash.partition(":")
        if int(index) == shard and not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            os._exit(1)  # like a SIGKILL: no cleanup, no exception for Ray to see

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        import torch

        fx = self.fx
        out: dict[str, list[Any]] = {
            "shard": [],
            "items": [],
            "ok": [],
            "vectors": [],
            "failures": [],
        }
        for shard, items_json, ok_json, x_bytes, failures in zip(
            batch["shard"], batch["items"], batch["ok"], batch["x"], batch["failures"], strict=True
        ):
            self._maybe_crash(int(shard))
            ok = json.loads(ok_json)
            x_all = np.frombuffer(x_bytes, dtype=np.float32).reshape(ok["shape"])
            parts = []
            # FeatureExtractor's own forward pass (device, channels-last, precision), batch by batch
            step = fx._batch_size()
            for start in range(0, len(ok["rows"]), step):
                x = torch.from_numpy(x_all[start : start + step].copy())
                parts.append(fx.forward_batch(x)[fx.layer])
            vecs = (
                np.concatenate(parts).astype(np.float32, copy=False)
                if parts
                else np.zeros((0, fx.n_features_out_), np.float32)
            )
            out["shard"].append(int(shard))
            out["items"].append(items_json)
            out["ok"].append(json.dumps(ok["rows"]))
            out["vectors"].append(vecs.tobytes())
            out["failures"].append(failures)
        return {k: np.asarray(v, dtype=object) for k, v in out.items()}
