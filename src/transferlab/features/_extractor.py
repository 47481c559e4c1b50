"""`FeatureExtractor`: image paths -> vectors from any backbone layer, batched and cached.

Cached vectors are reused and the rest computed by PyTorch or ONNX Runtime (`engine`), in the
precision `precision` picks; `ExtractionResult` says which inputs have rows.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin

from transferlab._internal.progress import progress as _progress
from transferlab.backbones import POOLS, PRECISIONS, Backbone, load_backbone, use_bf16
from transferlab.data import DEFAULT_MAX_PIXELS, ImageFileDataset, collate_skipping_failures
from transferlab.exceptions import ImageLoadError, InvalidParameterError
from transferlab.features._cache import FeatureCache, default_cache_dir, file_digest

__all__ = [
    "ENGINES",
    "FEATURE_FORMAT",
    "ONNX_AUTO_MIN_IMAGES",
    "PRECISIONS",
    "ExtractionResult",
    "FeatureExtractor",
    "default_num_workers",
]

logger = logging.getLogger("transferlab.features")
T = TypeVar("T")
K = TypeVar("K")

#: Bump when the meaning of a stored vector changes (pooling code, dtype...): old entries then miss.
FEATURE_FORMAT = 1
ENGINES = ("auto", "torch", "onnx")
#: With ``engine="auto"`` on CPU, a run exports the backbone to ONNX only when it has at least this
#: many images to compute (or an export is already there): exporting lite0 and loading the
#: session costs a few seconds, what PyTorch spends on about this many images here.
ONNX_AUTO_MIN_IMAGES = 64


@dataclass
class ExtractionResult:
    """What `FeatureExtractor.extract` produced.

    Attributes:
        features: layer name -> float32 array (n_ok, dim), rows in the order of `paths`.
        paths: the images that decoded (input order kept); failed ones are left out.
        index: for each row, its position in the input list.
        failures: one `ImageLoadError` per image that could not be used (path and reason).
        n_cached: rows served from the cache.
        seconds: wall time of the extraction.
    """

    features: dict[str, np.ndarray]
    paths: list[str]
    index: np.ndarray
    failures: list[ImageLoadError] = field(default_factory=list)
    n_cached: int = 0
    seconds: float = 0.0

    def select(self, items: Sequence[T]) -> list[T]:
        """The input `items` (one per input path, e.g. the samples) that have a row, in row
        order: ``select(samples)[r]`` is the sample of feature row ``r``."""
        return [items[i] for i in self.index]

    def rows_of(self, groups: Sequence[K], names: Iterable[K] | None = None) -> dict[K, np.ndarray]:
        """Feature-row numbers of each group, where ``groups[i]`` is input ``i``'s group (its
        split, say); `names` (default: the groups in first-seen order) are the keys, and a
        group left without rows maps to an empty array, so ``features[rows]`` always works."""
        keys = list(dict.fromkeys(groups)) if names is None else list(names)
        of_row = self.select(groups)
        return {
            k: np.array([r for r, g in enumerate(of_row) if g == k], dtype=np.intp) for k in keys
        }


def default_num_workers(n: int, batch_size: int, *, gpu: bool = False) -> int:
    """Decoding processes for `n` images in batches of `batch_size` (0: decode in-process)."""
    if n <= 2 * batch_size:
        return 0  # starting processes costs more than it saves on a handful of images
    # a GPU eats batches faster than a few cores decode them: give decoding every core it can use
    return max(1, min(8 if gpu else 4, (os.cpu_count() or 1)))


class FeatureExtractor(TransformerMixin, BaseEstimator):
    """Image paths -> feature vectors from one layer of a pretrained backbone.

    A scikit-learn transformer with nothing to learn: `fit` only loads the backbone, and
    `transform` loads it on first use, so it drops into a `Pipeline` before a `LinearProbe`.

    Args:
        backbone: registered name or timm model name (see `transferlab backbones`).
        layer: tap to read: ``stem``, ``stageN``, ``pre_logits`` (default) or ``logits``.
        pool: how spatial maps become vectors: ``avg``, ``max`` or ``avgmax`` (concatenated).
        weights: ``"default"``, ``"hub"``, ``"random"`` or a weights file (see `load_backbone`).
        batch_size: images per forward pass (None: 32 on CPU, 256 on a GPU).
        num_workers: decoding processes; None picks by input size, cores and device.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        cache: True (default cache dir), False (no cache), a directory, or a `FeatureCache`.
        progress: show a progress bar on long work.
        max_pixels: decompression-bomb limit passed to `load_image`.
        engine: ``"auto"`` (default: ONNX Runtime on CPU when it is installed and the run is
            big enough to repay the export, else PyTorch), ``"torch"`` (PyTorch, channels-last)
            or ``"onnx"`` (the backbone exported once to ONNX and run by ONNX Runtime on CPU;
            outputs within 1e-4 of PyTorch's, so both share the cache). Issue 8's benchmark
            chose the default: ONNX Runtime ran lite0 several times faster than PyTorch eager.
        precision: ``"auto"`` (fp32 on CPU, where the default stays within 1e-4 of the PyTorch
            reference; bf16 autocast on a GPU that supports it), ``"fp32"`` or ``"bf16"``
            (autocast; cosine similarity to fp32 about 0.9998; cached apart from fp32 vectors).

    Attributes:
        backbone_: the loaded `Backbone` (after `fit` or the first `transform`).
        n_features_out_: length of the vectors.

    Example:
        >>> import tempfile, os
        >>> from PIL import Image
        >>> p = os.path.join(tempfile.mkdtemp(), "red.png")
        >>> Image.new("RGB", (64, 48), "red").save(p)
        >>> fx = FeatureExtractor("efficientnet_lite0", layer="stage3", cache=False, progress=False)
        >>> fx.transform([p]).shape
        (1, 40)
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        *,
        layer: str = "pre_logits",
        pool: str = "avg",
        weights: str | None = "default",
        batch_size: int | None = None,
        num_workers: int | None = None,
        device: str = "auto",
        cache: bool | str | os.PathLike[str] | FeatureCache = True,
        progress: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        engine: str = "auto",
        precision: str = "auto",
    ) -> None:
        self.backbone = backbone
        self.layer = layer
        self.pool = pool
        self.weights = weights
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = device
        self.cache = cache
        self.progress = progress
        self.max_pixels = max_pixels
        self.engine = engine
        self.precision = precision

    # -- estimator API -------------------------------------------------------------------------
    def fit(self, X: Any = None, y: Any = None) -> FeatureExtractor:
        """Load the backbone (nothing is learnt). Returns self."""
        self._validate_params()
        if isinstance(self.backbone, Backbone):
            self.backbone_ = self.backbone
        else:
            self.backbone_ = load_backbone(self.backbone, weights=self.weights, device=self.device)
        self.backbone_.check_layer(self.layer)
        info = {t.name: t for t in self.backbone_.tap_info()}[self.layer]
        self.n_features_out_ = info.dim * (2 if self.pool == "avgmax" and info.spatial else 1)
        return self

    def transform(self, X: Sequence[str | os.PathLike[str]]) -> np.ndarray:
        """Feature matrix (n_images, n_features) in the order of `X`.

        Raises:
            ImageLoadError: an image cannot be decoded (use `extract` to skip broken files).
        """
        result = self.extract(X, on_error="raise")
        return result.features[self.layer]

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_onnx_runners", None)  # ONNX Runtime sessions do not pickle; rebuilt on use
        state.pop("_onnx_failed", None)  # an export that failed here may work where it loads
        return state

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags

    # -- the work ------------------------------------------------------------------------------
    def _validate_params(self) -> None:
        if self.engine not in ENGINES:
            raise InvalidParameterError(
                f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}"
            )
        if self.pool not in POOLS:
            raise InvalidParameterError(
                f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}"
            )
        if self.precision not in PRECISIONS:
            raise InvalidParameterError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.batch_size is not None and (
            not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise InvalidParameterError(
                f"batch_size must be None or a positive integer, got {self.batch_size!r}"
            )
        if self.num_workers is not None and (
            not isinstance(self.num_workers, int) or self.num_workers < 0
        ):
            raise InvalidParameterError(
                f"num_workers must be None or an integer >= 0, got {self.num_workers!r}"
            )

    def _cache(self) -> FeatureCache | None:
        if self.cache is False or self.cache is None:
            return None
        if isinstance(self.cache, FeatureCache):
            return self.cache
        if self.cache is True:
            return FeatureCache()
        return FeatureCache(self.cache)

    def namespace(self, layer: str | None = None) -> tuple[str, dict[str, Any]]:
        """The cache namespace for a layer and the facts it stands for."""
        bb = self._backbone()
        desc = {
            "backbone": bb.name,
            "fingerprint": bb.fingerprint(),
            "weights_sha256": bb.weights_sha256,
            "layer": layer or self.layer,
            "pool": self.pool,
            "preprocessing": bb.preprocessing(),
            "format": FEATURE_FORMAT,
        }
        if self._precision(bb) == "bf16":  # fp32 keys stay as they were
            desc["precision"] = "bf16"
        ns = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:32]
        return ns, desc

    def _precision(self, bb: Backbone) -> str:
        # the package's one rule; cpu=False: on CPU "auto" keeps the fp32 reference vectors
        return "bf16" if use_bf16(self.precision, bb.device, cpu=False) else "fp32"

    def _batch_size(self, bb: Backbone) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return 256 if bb.device.type == "cuda" else 32

    def _backbone(self) -> Backbone:
        if not hasattr(self, "backbone_"):
            self.fit()
        return self.backbone_

    def extract(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        layers: Sequence[str] | None = None,
        on_error: str = "skip",
    ) -> ExtractionResult:
        """Features for `paths` from `layers` (default: this extractor's layer), in one pass.

        Cached vectors are reused; the rest are computed in batches and stored.

        Args:
            paths: image files.
            layers: taps to read together (one forward pass serves them all).
            on_error: ``"skip"`` leaves broken images out and lists them in `failures`;
                ``"raise"`` stops at the first broken image with an `ImageLoadError`.
        """
        if on_error not in ("skip", "raise"):
            raise InvalidParameterError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        t0 = time.perf_counter()
        bb = self._backbone()
        layers = list(layers) if layers is not None else [self.layer]
        for layer in layers:
            bb.check_layer(layer)
        str_paths = [os.fspath(p) for p in paths]
        n = len(str_paths)
        failures: dict[int, ImageLoadError] = {}
        digests: list[str | None] = []
        for i, p in enumerate(str_paths):
            try:
                digests.append(file_digest(p))
            except ImageLoadError as exc:
                failures[i] = exc  # with on_error="raise", raised once we know it is the first
                digests.append(None)

        cache = self._cache()
        spaces = {layer: self.namespace(layer) for layer in layers}
        rows: dict[str, dict[int, np.ndarray]] = {layer: {} for layer in layers}
        if cache is not None:
            for layer, (ns, desc) in spaces.items():
                cache.register(ns, desc)
                keys = [d for d in digests if d is not None]
                hit = cache.get_many(ns, keys)
                for i, d in enumerate(digests):
                    if d is not None and d in hit:
                        rows[layer][i] = hit[d]
        todo = [
            i
            for i, d in enumerate(digests)
            if d is not None and any(i not in rows[la] for la in layers)
        ]
        n_cached = sum(1 for i, d in enumerate(digests) if d is not None and i not in todo)
        if todo:
            self._compute(
                bb, str_paths, digests, todo, layers, spaces, rows, failures, cache, on_error
            )
        if on_error == "raise" and failures:
            raise failures[min(failures)]
        ok = [i for i in range(n) if i not in failures]
        feats = {
            layer: (
                np.stack([rows[layer][i] for i in ok]).astype(np.float32, copy=False)
                if ok
                else np.zeros((0, 0), np.float32)
            )
            for layer in layers
        }
        return ExtractionResult(
            features=feats,
            paths=[str_paths[i] for i in ok],
            index=np.asarray(ok, dtype=np.int64),
            failures=[failures[i] for i in sorted(failures)],
            n_cached=n_cached,
            seconds=time.perf_counter() - t0,
        )

    def prepare(self, layers: Sequence[str] | None = None) -> FeatureExtractor:
        """Load the backbone and, where the engine is ONNX Runtime (``"onnx"``, or ``"auto"`` on
        CPU), export/load its session for `layers` now.

        For long-running processes (the service) that see small batches: ``"auto"`` would
        otherwise keep them on PyTorch until a run big enough to repay the export comes along.
        Returns self.
        """
        bb = self._backbone()
        layers = [bb.check_layer(la) for la in (layers or [self.layer])]
        self._onnx_runner(bb, layers, ONNX_AUTO_MIN_IMAGES)
        return self

    def forward_batch(
        self, x: torch.Tensor, layers: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Vectors for a batch already preprocessed by ``backbone_.transform()``.

        The forward pass every path shares (the cache-filling `extract`, Ray actors, the
        service): device, channels-last, engine and precision as configured. With
        ``engine="auto"`` a single batch uses ONNX Runtime only if an export already exists.
        """
        bb = self._backbone()
        layers = [bb.check_layer(la) for la in (layers or [self.layer])]
        runner = self._onnx_runner(bb, layers, len(x))
        return self._forward(bb, x, layers, runner, self._precision(bb) == "bf16")

    def _forward(
        self, bb: Backbone, x: torch.Tensor, layers: list[str], runner: Any, bf16: bool
    ) -> dict[str, np.ndarray]:
        x = x.to(bb.device, non_blocking=True)
        if bb.device.type in ("cpu", "cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
        if runner is not None:
            outs = runner(x)
        else:
            with torch.autocast(bb.device.type, torch.bfloat16, enabled=bf16):
                outs = bb.forward_taps(x, layers, pool=self.pool)
        return {la: outs[la].float().cpu().numpy() for la in layers}

    def _onnx_runner(self, bb: Backbone, layers: list[str], n_todo: int) -> Any:
        """The ONNX Runtime runner this run should use, or None for PyTorch.

        One session per set of layers is kept: evaluate and predict call `extract` once per
        chunk, and loading a session each time would dominate.
        """
        if self.engine == "torch":
            return None
        if self._precision(bb) == "bf16":
            if self.engine == "onnx":
                raise InvalidParameterError(
                    "engine='onnx' computes in fp32; precision='bf16' needs engine='torch'"
                )
            return None
        if bb.device.type != "cpu":
            if self.engine == "onnx":
                raise InvalidParameterError("engine='onnx' runs on CPU; use device='cpu'")
            return None  # auto on a GPU: PyTorch
        from transferlab.backbones import OnnxTaps

        runners = self.__dict__.setdefault("_onnx_runners", {})
        failed = self.__dict__.setdefault("_onnx_failed", set())  # keys whose export failed
        pool = self.pool
        key = (bb.fingerprint(), tuple(layers), pool)
        if key in runners:
            return runners[key]
        cache = self._cache()  # only its folder: the export lives beside the vectors
        folder = (cache.directory if cache is not None else default_cache_dir()) / "onnx"
        if self.engine == "auto":
            if key in failed or importlib.util.find_spec("onnxruntime") is None:
                return None
            exported = os.path.isfile(OnnxTaps.path_for(bb, layers, pool, folder))
            if n_todo < ONNX_AUTO_MIN_IMAGES and not exported:
                return None
            try:
                runners[key] = OnnxTaps(bb, layers, pool, folder)
            except Exception as exc:  # an architecture the exporter cannot trace: stay on torch
                logger.warning("ONNX export of %s failed (%s); using PyTorch", bb.name, exc)
                failed.add(key)
                return None
            return runners[key]
        runners[key] = OnnxTaps(bb, layers, pool, folder)
        return runners[key]

    def _compute(
        self,
        bb: Backbone,
        paths: list[str],
        digests: list[str | None],
        todo: list[int],
        layers: list[str],
        spaces: dict[str, tuple[str, dict[str, Any]]],
        rows: dict[str, dict[int, np.ndarray]],
        failures: dict[int, ImageLoadError],
        cache: FeatureCache | None,
        on_error: str,
    ) -> None:
        dataset = ImageFileDataset([paths[i] for i in todo], bb.transform(), self.max_pixels)
        batch_size = self._batch_size(bb)
        gpu = bb.device.type == "cuda"
        workers = (
            self.num_workers
            if self.num_workers is not None
            else default_num_workers(len(todo), batch_size, gpu=gpu)
        )
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=collate_skipping_failures,
            persistent_workers=False,
            pin_memory=gpu,
        )
        runner = self._onnx_runner(bb, layers, len(todo))
        bf16 = self._precision(bb) == "bf16"
        with _progress(len(todo), f"features {bb.name}:{'/'.join(layers)}", self.progress) as bar:
            for local_idx, x, bad in loader:
                for j, reason in bad:
                    err = ImageLoadError(paths[todo[j]], reason)
                    if on_error == "raise":
                        # images are decoded in input order: the first broken one is this one,
                        # or an earlier file that could not even be read for hashing
                        failures[todo[j]] = err
                        raise failures[min(failures)]
                    logger.info("skipped %s", err)  # callers report failures from the result
                    failures[todo[j]] = err
                if x is not None:
                    outs = self._forward(bb, x, layers, runner, bf16)
                    for layer in layers:
                        vecs = outs[layer]
                        new = {}
                        for j, vec in zip(local_idx, vecs, strict=True):
                            i = todo[j]
                            rows[layer][i] = vec
                            new[digests[i]] = vec
                        if cache is not None:
                            cache.put_many(spaces[layer][0], new)  # type: ignore[arg-type]
                bar.update(len(local_idx) + len(bad))
