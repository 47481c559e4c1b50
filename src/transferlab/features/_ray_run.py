"""The driver of a Ray extraction: checks, the shards left to compute, the Ray Data pipeline,
and the manifest marked complete at the end."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.data import DEFAULT_MAX_PIXELS
from transferlab.exceptions import DatasetError, ImageLoadError, InvalidParameterError
from transferlab.features._extractor import FEATURE_FORMAT, FeatureExtractor
from transferlab.features._ray_listing import _digest_items, list_sources
from transferlab.features._ray_shards import (
    MANIFEST_NAME,
    SHARD_FORMAT,
    SHARD_GLOB,
    _prepare_out_dir,
    _shard_meta,
    _shard_path,
    _write_json,
    _write_shard,
)
from transferlab.features._ray_stages import CRASH_ENV, _decode_shard, _Embedder, _still_broken

__all__ = ["RAY_INSTALL_HINT", "RayExtractionResult", "extract_with_ray", "is_ray_available"]

RAY_INSTALL_HINT = "pip install 'transferlab[ray]'"


def is_ray_available() -> bool:
    """True when Ray and Ray Data can be imported (without importing them)."""
    return (
        importlib.util.find_spec("ray") is not None
        and importlib.util.find_spec("pandas") is not None
    )


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # Ray Data is a separate extra of ray
    except ImportError as exc:
        raise InvalidParameterError(
            f"--engine ray needs Ray Data ({exc}): {RAY_INSTALL_HINT}"
        ) from None
    return ray


@dataclass
class RayExtractionResult:
    """What `extract_with_ray` did.

    Attributes:
        out_dir: the shard folder.
        n_images: images in the listing.
        n_rows: vectors in the folder (images that decoded).
        dim: length of each vector.
        n_shards: shard files in the folder.
        shards_computed: shards this run computed.
        shards_skipped: shards found finished and left alone (resume).
        failures: images that could not be used (in every shard, computed now or before).
        workers: size of the actor pool (0 when nothing was left to compute).
        seconds: wall time.
        first_shard_seconds: wall time until the first computed shard was written (listing,
            model checks, cluster and actor start-up, one shard's work); 0 if none was computed.
    """

    out_dir: Path
    n_images: int
    n_rows: int
    dim: int
    n_shards: int
    shards_computed: list[int] = field(default_factory=list)
    shards_skipped: list[int] = field(default_factory=list)
    failures: list[ImageLoadError] = field(default_factory=list)
    workers: int = 0
    seconds: float = 0.0
    first_shard_seconds: float = 0.0


@contextmanager
def _quiet_ray_data(ray: Any) -> Iterator[None]:
    """Ray Data's INFO lines and progress bars would interleave with our progress bar, which
    counts images; errors still show. The caller's settings are restored afterwards."""
    loggers = [logging.getLogger(n) for n in ("ray.data", "ray.data._internal")]
    levels = [lg.level for lg in loggers]
    ctx = ray.data.DataContext.get_current()
    bars = ctx.enable_progress_bars
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    ctx.enable_progress_bars = False
    try:
        yield
    finally:
        ctx.enable_progress_bars = bars
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def extract_with_ray(
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    backbone: str = "efficientnet_lite0",
    layer: str = "pre_logits",
    pool: str = "avg",
    weights: str | None = "default",
    batch_size: int | None = None,
    shard_size: int = 128,
    workers: int | None = None,
    cpus_per_worker: float = 1,
    device: str = "auto",
    precision: str = "fp32",
    address: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    on_error: str = "skip",
    overwrite: bool = False,
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = True,
) -> RayExtractionResult:
    """Extract feature vectors on a Ray cluster into a folder of Parquet shards.

    Each shard ``part-NNNNN.parquet`` holds rows (path, digest, label, split, vector) for a fixed
    slice of the listing sorted by path; ``_transferlab.json`` records the model and listing.
    Running again with the same arguments computes only the shards that are missing.

    Args:
        data: what `list_sources` accepts: folder, CSV, Parquet listing or fsspec URL. On a
            cluster of several machines the paths must be readable from every node (shared
            storage or URLs).
        out_dir: folder for the shards, on the machine running this function (the driver).
        backbone, layer, pool, weights, batch_size, max_pixels: as for `FeatureExtractor`.
        shard_size: images per shard: the unit of work, retry and resume.
        workers: actors in the pool (one model each); default one per GPU on a cluster with GPUs,
            else one per `cpus_per_worker` CPUs.
        cpus_per_worker: CPUs each actor (and each decoding task) reserves.
        device: ``"auto"`` (GPU actors when the cluster has GPUs), ``"cpu"`` or ``"cuda"``.
        precision: ``"fp32"`` (default: every shard equals the single-process PyTorch path,
            whatever hardware ran it, so a run resumed elsewhere stays one extraction) or
            ``"bf16"`` (autocast; faster on GPUs with bf16). Recorded in the manifest: a re-run
            with the other precision is refused like one with another layer.
        address: Ray cluster to join (``"auto"``, ``"ray://host:10001"``); None joins the
            cluster this process is already connected to, or ``$RAY_ADDRESS``, or starts a local
            one for the duration of the call.
        on_error: ``"skip"`` leaves broken images out (listed in `failures` and in the shard
            metadata); ``"raise"`` stops at the first shard holding one, with its `ImageLoadError`.
        overwrite: replace shards of a different extraction (other model, layer, pool or shard
            size) found in `out_dir`. A changed listing needs no flag: shards whose images
            changed are recomputed, the others kept.
        val_fraction, seed: the split of a labelled folder without a val/ folder.
        progress: a progress bar on stderr (when it is a terminal).

    Raises:
        InvalidParameterError: bad arguments, Ray not installed, `out_dir` a file or holding
            other things.
        DatasetError: nothing to extract.
        ImageLoadError: with ``on_error="raise"``, the first broken image.
    """
    from transferlab._internal.progress import progress as _progress

    t0 = time.perf_counter()
    if on_error not in ("skip", "raise"):
        raise InvalidParameterError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise InvalidParameterError(f"shard_size must be a positive integer, got {shard_size!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise InvalidParameterError(f"workers must be None or an integer >= 1, got {workers!r}")
    if not cpus_per_worker > 0:
        raise InvalidParameterError(f"cpus_per_worker must be > 0, got {cpus_per_worker!r}")
    if device not in ("auto", "cpu", "cuda"):
        raise InvalidParameterError(f"device must be auto, cpu or cuda, got {device!r}")
    if precision not in ("fp32", "bf16"):
        raise InvalidParameterError(f"precision must be fp32 or bf16, got {precision!r}")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise InvalidParameterError(
            f"--out {out} is a file; with --engine ray it must be a folder (of Parquet shards)"
        )
    ray = _import_ray()  # before minutes of listing and model loading
    import pyarrow  # noqa: F401  (a dependency of ray[data]; named in the extra anyway)

    items = list_sources(data, val_fraction=val_fraction, seed=seed)
    # The driver loads the model once (on CPU) to check backbone/layer/pool early and to learn the
    # fingerprint, vector length and preprocessing the actors must reproduce.
    fx = FeatureExtractor(
        backbone,
        layer=layer,
        pool=pool,
        weights=weights,
        batch_size=batch_size,
        device="cpu",
        cache=False,
        progress=False,
        max_pixels=max_pixels,
        engine="torch",
    ).fit()
    bb = fx.backbone_
    dim = int(fx.n_features_out_)
    shards = [items[s : s + shard_size] for s in range(0, len(items), shard_size)]
    digests = [_digest_items(s) for s in shards]
    manifest = {
        "format": SHARD_FORMAT,
        "feature_format": FEATURE_FORMAT,
        "backbone": bb.name,
        "fingerprint": bb.fingerprint(),
        "weights_sha256": bb.weights_sha256,
        "layer": layer,
        "pool": pool,
        "precision": precision,
        "preprocessing": bb.preprocessing(),
        "dim": dim,
        "max_pixels": max_pixels,
        "shard_size": shard_size,
        "n_shards": len(shards),
        "n_images": len(items),
        "listing_sha256": _digest_items(items),
    }
    _prepare_out_dir(out, manifest, overwrite, mark_unfinished=False)

    todo, skipped = [], []
    failures: list[ImageLoadError] = []
    for i, digest in enumerate(digests):
        meta = _shard_meta(_shard_path(out, i))
        if meta is not None and meta.get("items_sha256") == digest:
            old = [ImageLoadError(p, reason) for p, reason in meta.get("failures", [])]
            if old and on_error == "raise":  # a lenient earlier run left these out
                for f in old:
                    reason = _still_broken(f.path, max_pixels)
                    if reason is not None:  # strict stops, as if the shard were computed now
                        raise ImageLoadError(f.path, reason)
                todo.append(i)  # repaired since: compute the shard again, with them
                continue
            skipped.append(i)
            failures.extend(old)
        else:
            todo.append(i)
    # marked unfinished only now: a --strict re-run refused above leaves a finished folder as is
    _write_json(out / MANIFEST_NAME, {**manifest, "complete": False})
    names = {_shard_path(out, i).name for i in range(len(shards))}
    for extra in out.glob(SHARD_GLOB):  # shards beyond the listing (it shrank): not ours now
        if extra.name not in names and re.fullmatch(r"part-\d{5,}\.parquet", extra.name):
            extra.unlink()

    n_workers = 0
    first_written: list[float] = []  # perf_counter() when the first shard is on disk
    if todo:
        started = False
        if not ray.is_initialized():
            init_args: dict[str, Any] = {"logging_level": logging.WARNING}
            if address is not None:
                init_args["address"] = address
            elif not os.environ.get("RAY_ADDRESS"):
                init_args["include_dashboard"] = False
            try:
                ray.init(**init_args)
            except ConnectionError as exc:
                raise InvalidParameterError(
                    f"cannot reach the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}: {exc}"
                ) from None
            started = True
        try:
            with _quiet_ray_data(ray):
                new_failures, n_workers = _run_pipeline(
                    ray,
                    out,
                    todo,
                    [[[it.path, it.label, it.split] for it in s] for s in shards],
                    digests,
                    transform=bb.transform(),
                    params={
                        "backbone": backbone,
                        "layer": layer,
                        "pool": pool,
                        "weights": weights,
                        "batch_size": batch_size,
                        "max_pixels": max_pixels,
                        "precision": precision,
                    },
                    fingerprint=bb.fingerprint(),
                    dim=dim,
                    manifest=manifest,
                    workers=workers,
                    cpus_per_worker=cpus_per_worker,
                    device=device,
                    on_error=on_error,
                    on_written=lambda: first_written or first_written.append(time.perf_counter()),
                    progress_bar=lambda: _progress(
                        sum(len(shards[i]) for i in todo), f"ray {bb.name}:{layer}", progress
                    ),
                )
        finally:
            if started:
                ray.shutdown()
        failures.extend(new_failures)
    missing = [i for i in range(len(shards)) if not _shard_path(out, i).is_file()]
    if missing:  # cannot happen unless files vanish under us; never report success then
        raise DatasetError(
            f"{out}: shards {missing[:5]} missing after the run; run again to resume"
        )
    import pyarrow.parquet as pq

    n_rows = sum(pq.read_metadata(_shard_path(out, i)).num_rows for i in range(len(shards)))
    _write_json(out / MANIFEST_NAME, {**manifest, "complete": True, "n_rows": n_rows})
    return RayExtractionResult(
        out_dir=out,
        n_images=len(items),
        n_rows=n_rows,
        dim=dim,
        n_shards=len(shards),
        shards_computed=todo,
        shards_skipped=skipped,
        failures=sorted(failures, key=lambda f: f.path),
        workers=n_workers,
        seconds=time.perf_counter() - t0,
        first_shard_seconds=first_written[0] - t0 if first_written else 0.0,
    )


def _run_pipeline(
    ray: Any,
    out: Path,
    todo: list[int],
    shard_items: list[list[list[str]]],
    digests: list[str],
    *,
    transform: Any,
    params: dict[str, Any],
    fingerprint: str,
    dim: int,
    manifest: dict[str, Any],
    workers: int | None,
    cpus_per_worker: float,
    device: str,
    on_error: str,
    on_written: Any,
    progress_bar: Any,
) -> tuple[list[ImageLoadError], int]:
    resources = ray.cluster_resources()
    n_gpus = int(resources.get("GPU", 0))
    if device == "cuda" and n_gpus == 0:
        raise InvalidParameterError("device='cuda' but the Ray cluster has no GPU; use auto or cpu")
    use_gpu = n_gpus > 0 and device != "cpu"
    if workers is None:
        workers = n_gpus if use_gpu else max(1, int(resources.get("CPU", 1) // cpus_per_worker))
    workers = max(1, min(workers, len(todo)))
    actor_args: dict[str, Any] = {"num_cpus": cpus_per_worker}
    if use_gpu:
        actor_args["num_gpus"] = 1
    ds = ray.data.from_items(
        [{"shard": i, "items": json.dumps(shard_items[i])} for i in todo],
        override_num_blocks=len(todo),
    )
    ds = ds.map_batches(
        _decode_shard,
        batch_size=1,
        batch_format="numpy",
        fn_kwargs={"transform": transform, "max_pixels": params["max_pixels"]},
        num_cpus=cpus_per_worker,
    )
    ds = ds.map_batches(
        _Embedder,
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        fn_constructor_kwargs={
            "params": {**params, "device": "cuda" if use_gpu else "cpu"},
            "fingerprint": fingerprint,
            "crash": os.environ.get(CRASH_ENV),
        },
        **actor_args,
    )
    failures: list[ImageLoadError] = []
    done: set[int] = set()
    with progress_bar() as bar:
        for row in ds.iter_rows():
            shard = int(row["shard"])
            if shard in done:  # a retried call delivered twice: the first copy is on disk
                continue
            items = json.loads(row["items"])
            bad = [ImageLoadError(items[k][0], reason) for k, reason in json.loads(row["failures"])]
            if bad and on_error == "raise":
                raise bad[0]
            rows = json.loads(row["ok"])
            vectors = np.frombuffer(row["vectors"], dtype=np.float32).reshape(len(rows), dim)
            _write_shard(
                _shard_path(out, shard),
                items,
                rows,
                vectors,
                dim,
                {
                    "shard": shard,
                    "items_sha256": digests[shard],
                    "n_listed": len(items),
                    "failures": [[f.path, f.reason] for f in bad],
                    "fingerprint": manifest["fingerprint"],
                    "layer": manifest["layer"],
                    "pool": manifest["pool"],
                },
            )
            done.add(shard)
            on_written()
            failures.extend(bad)
            bar.update(len(items))
    return failures, workers
