"""Feature extraction on a Ray cluster: a Ray Data pipeline writing resumable Parquet shards.

The listing (a folder, a CSV or Parquet listing, or an fsspec URL) is sorted by path and cut into
fixed slices; shard ``i`` is always the same images, so a shard is the unit of work, of retry and of
resume. The pipeline is::

    shards --map_batches(_decode_shard, CPU tasks)--> preprocessed tensors
           --map_batches(_Embedder, actor pool: one model per actor, GPU actors when the
             cluster has GPUs)--> vectors --driver--> part-NNNNN.parquet (tmp file + rename)

Decoding reuses `ImageFileDataset` and `file_digest`, and each actor builds one `FeatureExtractor`
and runs its backbone the way `FeatureExtractor.extract` does, so the vectors are the single-process
ones. The driver writes each shard atomically when its result arrives: an actor that dies has its
shard retried (Ray restarts the actor and resubmits the call), and a shard is either absent or
whole, never written twice with different rows. A re-run skips shards whose file is there and whose
recorded listing digest matches; ``_transferlab.json`` records what the folder holds (model, layer,
listing) so a re-run with other settings is refused instead of mixing vectors.

Ray is an optional dependency (``pip install 'transferlab[ray]'``); it is imported only when an
extraction starts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.data import DEFAULT_MAX_PIXELS, collect_images, is_image_file
from transferlab.exceptions import (
    DatasetError,
    DatasetNotFoundError,
    ImageLoadError,
    InvalidParameterError,
)

__all__ = [
    "ListedImage",
    "RayExtractionResult",
    "extract_with_ray",
    "is_ray_available",
    "list_sources",
    "load_shards",
]

logger = logging.getLogger(__name__)

#: Bump when the meaning of a shard changes: older folders are then refused, not mixed.
SHARD_FORMAT = 1
MANIFEST_NAME = "_transferlab.json"
SHARD_GLOB = "part-*.parquet"
#: Test hook: ``"<shard index>:<marker file>"`` makes the actor processing that shard exit
#: abruptly once (the marker records that it happened), as a killed worker would.
CRASH_ENV = "TRANSFERLAB_RAY_TEST_CRASH"
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


# -- the listing ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ListedImage:
    """One image to extract: a local path or an fsspec URL, its label ('' if none) and split."""

    path: str
    label: str = ""
    split: str = ""


def _is_url(path: str) -> bool:
    return "://" in path


def list_sources(
    data: str | os.PathLike[str], *, val_fraction: float = 0.2, seed: int = 0
) -> list[ListedImage]:
    """Every image named by `data`, sorted by path.

    Args:
        data: a dataset folder or CSV (see `collect_images`), a folder of unlabelled images, a
            ``.parquet`` listing (column ``path``; optional ``label`` and ``split``; relative
            paths are taken from the listing's folder), or an fsspec URL (``s3://bucket/photos/``,
            ``gs://...``, ``file:///...``; a folder is searched recursively, ``*`` globs work;
            images inside class subfolders take the subfolder's name as label).
        val_fraction, seed: the validation split of a labelled folder without one.

    Raises:
        DatasetNotFoundError: the path or URL does not exist.
        DatasetError: no images, or a listing without a ``path`` column.
    """
    text = os.fspath(data)
    if _is_url(text) and not text.lower().endswith(".parquet"):
        items = _list_url(text)
    elif text.lower().endswith(".parquet"):
        items = _list_parquet(text)
    else:
        samples, splits = collect_images(data, val_fraction=val_fraction, seed=seed)
        items = [
            ListedImage(os.path.abspath(s.path), s.label or "", split)
            for s, split in zip(samples, splits, strict=True)
        ]
    if not items:
        raise DatasetError(f"{text}: no images to extract")
    return sorted(items, key=lambda it: it.path)


def _fsspec() -> Any:
    try:
        import fsspec
    except ImportError:
        raise InvalidParameterError(
            "reading URLs needs fsspec (and the filesystem's package, e.g. s3fs): pip install fsspec"
        ) from None
    return fsspec


def _url_to_fs(url: str) -> tuple[Any, str]:
    """fsspec's filesystem and inner path for `url`; a missing filesystem package (s3fs, gcsfs)
    or an unknown protocol is a clear error naming the URL."""
    try:
        return _fsspec().core.url_to_fs(url)  # type: ignore[no-any-return]
    except (ImportError, ValueError) as exc:
        raise InvalidParameterError(f"cannot open {url!r}: {exc}") from None


def _list_url(url: str) -> list[ListedImage]:
    fs, root = _url_to_fs(url)
    if any(c in root for c in "*?["):
        found = list(fs.glob(root))
        base = root.split("*")[0].rsplit("/", 1)[0]
    elif fs.isfile(root):
        found, base = [root], root.rsplit("/", 1)[0]
    elif fs.isdir(root):
        found, base = list(fs.find(root)), root.rstrip("/")
    else:
        raise DatasetNotFoundError(f"{url}: no such file or folder")
    images = sorted(p for p in found if is_image_file(p))
    rel = [p[len(base) :].strip("/").split("/") for p in images]
    # root/<class>/<image> everywhere, with two classes or more: a labelled folder
    labelled = bool(rel) and all(len(r) == 2 for r in rel) and len({r[0] for r in rel}) > 1
    return [
        ListedImage(fs.unstrip_protocol(p), r[0] if labelled else "")
        for p, r in zip(images, rel, strict=True)
    ]


def _list_parquet(path: str) -> list[ListedImage]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if _is_url(path):
        fs, local = _url_to_fs(path)
        if not fs.isfile(local):
            raise DatasetNotFoundError(f"{path}: no such listing")
        base = path.rsplit("/", 1)[0]
        opener: Any = fs.open(local, "rb")
    else:
        if not os.path.exists(path):
            raise DatasetNotFoundError(f"{path}: no such listing")
        base = os.path.dirname(os.path.abspath(path))
        opener = open(path, "rb")  # noqa: SIM115  (closed below)
    try:
        with opener as fh:
            table = pq.read_table(fh)
    except (OSError, pa.ArrowException) as exc:  # ArrowInvalid: not Parquet at all
        raise DatasetError(f"{path}: not a readable Parquet file ({exc})") from None
    cols = {c.lower(): c for c in table.column_names}
    path_col = next((cols[c] for c in ("path", "file", "filename", "image") if c in cols), None)
    if path_col is None:
        raise DatasetError(
            f"{path}: a Parquet listing needs a 'path' column; found {', '.join(table.column_names)}"
        )

    def column(name: str | None) -> list[str]:
        if name is None:
            return [""] * len(table)
        return ["" if v is None else str(v) for v in table.column(name).to_pylist()]

    paths = column(path_col)
    labels = column(next((cols[c] for c in ("label", "class") if c in cols), None))
    splits = column(cols.get("split"))
    items = []
    for p, label, split in zip(paths, labels, splits, strict=True):
        if not p:
            raise DatasetError(f"{path}: empty path in the listing")
        if not (_is_url(p) or os.path.isabs(p)):
            p = f"{base}/{p}" if _is_url(base) else os.path.join(base, p)
        items.append(ListedImage(p, label, split.lower()))
    return items


def _digest_items(items: Sequence[ListedImage]) -> str:
    blob = json.dumps([[it.path, it.label, it.split] for it in items], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


# -- the two pipeline stages ------------------------------------------------------------------------
def _localize(path: str, tmpdir: str, k: int) -> str:
    """A local file holding `path`'s bytes: the path itself, or a copy of a remote URL."""
    if not _is_url(path):
        return path
    fs, inner = _fsspec().core.url_to_fs(path)
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return inner
    local = os.path.join(tmpdir, f"{k}{os.path.splitext(inner)[1]}")
    try:
        with fs.open(inner, "rb") as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except Exception as exc:  # any filesystem's error: the image is unavailable
        raise ImageLoadError(path, f"cannot fetch: {type(exc).__name__}: {exc}") from None
    return local


def _still_broken(path: str, max_pixels: int | None) -> str | None:
    """Why `path` still cannot be used (None if it now decodes): for --strict re-runs over
    shards that recorded it as broken."""
    from transferlab.data import load_image

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
    from transferlab.features import ImageFileDataset, file_digest

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

        from transferlab.features import FeatureExtractor

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
        bb = fx.backbone_
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
            step = fx._batch_size(bb)
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


# -- shards on disk -------------------------------------------------------------------------------
def _shard_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"part-{index:05d}.parquet"


def _shard_meta(path: Path) -> dict[str, Any] | None:
    """The metadata a finished shard file records, or None if absent or unreadable."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta.get(b"transferlab", b"null"))
    except (OSError, ValueError):
        return None


def _write_shard(
    path: Path,
    items: list[list[str]],
    rows: list[list[Any]],
    vectors: np.ndarray,
    dim: int,
    meta: dict[str, Any],
) -> None:
    """Write one shard under a temporary name, then rename it: a shard file is always whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    picked = [items[k] for k, _ in rows]
    table = pa.table(
        {
            "path": pa.array([it[0] for it in picked], pa.string()),
            "digest": pa.array([d for _, d in rows], pa.string()),
            "label": pa.array([it[1] for it in picked], pa.string()),
            "split": pa.array([it[2] for it in picked], pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(np.ascontiguousarray(vectors, np.float32).ravel(), pa.float32()), dim
            ),
        }
    )
    table = table.replace_schema_metadata({"transferlab": json.dumps(meta, sort_keys=True)})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def load_shards(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a folder written by `extract_with_ray`: X, paths, digests, labels, splits, meta.

    Rows come in shard order (the listing sorted by path). ``pyarrow.parquet.read_table(out_dir)``
    or ``ray.data.read_parquet(out_dir)`` read the same folder too, without the checks below.

    Raises:
        DatasetNotFoundError: `out_dir` holds no manifest.
        DatasetError: the extraction has not finished (interrupted, or still running: shards may
            be missing or left from an older listing), or shard files are missing.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(out_dir)
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise DatasetNotFoundError(f"{folder}: no {MANIFEST_NAME}; not a transferlab shard folder")
    try:
        meta = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{manifest_path}: unreadable ({exc})") from None
    if meta.get("complete") is not True:
        # a run in progress or interrupted: shards missing, or stale ones of an older listing
        raise DatasetError(
            f"{folder}: the extraction did not finish ({MANIFEST_NAME} says complete: false); "
            "run the same extract command again to finish it"
        )
    files = [_shard_path(folder, i) for i in range(int(meta.get("n_shards", 0)))]
    missing = [f.name for f in files if not f.is_file()]
    if missing or not files:
        raise DatasetError(
            f"{folder}: shard files missing ({', '.join(missing[:3]) or SHARD_GLOB}); run the "
            "same extract command again to recompute them"
        )
    table = pa.concat_tables([pq.read_table(f) for f in files])
    col = table.column("vector").combine_chunks()
    dim = int(meta.get("dim", col.type.list_size))
    X = np.asarray(col.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(
        len(table), dim
    )
    return {
        "X": X,
        "paths": table.column("path").to_pylist(),
        "digests": table.column("digest").to_pylist(),
        "labels": table.column("label").to_pylist(),
        "splits": table.column("split").to_pylist(),
        "meta": meta,
    }


# -- the driver -----------------------------------------------------------------------------------
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


#: Manifest entries that may change between runs into the same folder.
_PER_RUN_KEYS = frozenset({"complete", "n_rows", "n_images", "n_shards", "listing_sha256"})


def _prepare_out_dir(
    out_dir: Path, manifest: dict[str, Any], overwrite: bool, *, mark_unfinished: bool = True
) -> None:
    """Check `out_dir` can take this extraction (refuse another's shards unless `overwrite`),
    clear what must go, and (unless told not to) write the manifest marked unfinished."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidParameterError(
            f"--out {out_dir} is a file; with --engine ray it must be a folder (of Parquet shards)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".part-*.tmp"):  # left by a driver killed while writing
        stale.unlink(missing_ok=True)
    manifest_path = out_dir / MANIFEST_NAME
    ours = {MANIFEST_NAME} | {p.name for p in out_dir.glob(SHARD_GLOB)}
    others = sorted(p.name for p in out_dir.iterdir() if p.name not in ours)
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            old = {}
        # a changed listing is fine: shards are checked one by one against their slice
        changed = sorted(
            k for k in manifest if k not in _PER_RUN_KEYS and old.get(k) != manifest[k]
        )
        if changed and not overwrite:
            raise InvalidParameterError(
                f"{out_dir} holds shards of another extraction (differs in: {', '.join(changed)}); "
                "choose another --out folder, or pass --overwrite to replace them"
            )
        wipe = bool(changed)
    elif len(ours) > 1 or others:
        if not overwrite or others:
            raise InvalidParameterError(
                f"--out {out_dir} is not empty and was not written by transferlab's ray engine "
                f"({', '.join((others or sorted(ours))[:3])}...); choose an empty or new folder"
            )
        wipe = True
    else:
        wipe = False
    if mark_unfinished or wipe:  # before any shard goes: a kill must not leave "complete"
        _write_json(manifest_path, {**manifest, "complete": False})
    if wipe:
        for p in out_dir.glob(SHARD_GLOB):
            p.unlink()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


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
    from transferlab.features import FEATURE_FORMAT, FeatureExtractor

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
