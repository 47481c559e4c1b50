"""`FeatureExtractor`: image paths -> vectors from any backbone layer, batched and cached.

Cached vectors are reused and the rest computed by PyTorch or ONNX Runtime (`engine`), in the
precision `precision` picks; `ExtractionResult` says which inputs have rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from transferlab._internal.choices import FEATURE_ENGINES, FEATURE_PRECISIONS
from transferlab._internal.progress import progress as _progress
from transferlab.backbones._card import POOLS, BackboneCard, cuda_may_be_present
from transferlab.backbones._ort import cpu_threads
from transferlab.data._images import DEFAULT_MAX_PIXELS
from transferlab.exceptions import ImageLoadError, InvalidParameterError
from transferlab.features._cache import FEATURE_FORMAT, FeatureCache, default_cache_dir, file_digest
from transferlab.features._ort_engine import ONNX_AUTO_MIN_IMAGES, OrtEngine

if TYPE_CHECKING:  # torch and timm load only where a model is needed (issue 17)
    import torch

    from transferlab.backbones import Backbone

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

ENGINES = FEATURE_ENGINES
#: ``int8``: the ONNX export statically quantised (CPU, ONNX Runtime only).
PRECISIONS = FEATURE_PRECISIONS


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
        engine: what computed the rows that were not cached: ``"onnxruntime"`` or ``"torch"``
            and the precision (``"onnxruntime-fp32"``, ``"torch-bf16"``, ...), or ``"cache"``.
    """

    features: dict[str, np.ndarray]
    paths: list[str]
    index: np.ndarray
    failures: list[ImageLoadError] = field(default_factory=list)
    n_cached: int = 0
    seconds: float = 0.0
    engine: str = "cache"

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
    """Decoding processes (PyTorch engine) or threads (ONNX Runtime engine) for `n` images in
    batches of `batch_size` (0: decode in the calling thread)."""
    if n <= 2 * batch_size:
        return 0  # starting processes costs more than it saves on a handful of images
    # a GPU eats batches faster than a few cores decode them: give decoding every core it can use
    return max(1, min(8 if gpu else 4, (os.cpu_count() or 1)))


class FeatureExtractor(OrtEngine, TransformerMixin, BaseEstimator):
    """Image paths -> feature vectors from one layer of a pretrained backbone.

    A scikit-learn transformer with nothing to learn: `fit` only finds out what the backbone is
    (its stored `BackboneCard`, or by loading it), so it drops into a `Pipeline` before a
    `LinearProbe`. The model itself is loaded only when PyTorch must run it or export it: a run
    whose vectors are all cached, or whose network runs in an ONNX Runtime export made earlier,
    imports neither torch nor timm.

    Args:
        backbone: registered name or timm model name (see `transferlab backbones`), or a
            loaded `Backbone`.
        layer: tap to read: ``stem``, ``stageN``, ``pre_logits`` (default) or ``logits``.
        pool: how spatial maps and token sequences become vectors: ``avg``, ``max``,
            ``avgmax`` (concatenated), or for transformers ``token`` (class token), ``patch``
            (mean of the patch tokens) or ``token_patch`` (both; see `pool_features`).
        weights: ``"default"``, ``"hub"``, ``"random"`` or a weights file (see `load_backbone`).
        batch_size: images per forward pass (None: 32 on CPU, 256 on a GPU).
        num_workers: decoding processes (PyTorch engine) or threads (ONNX Runtime engine);
            None picks by input size, cores and device.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        cache: True (default cache dir), False (no cache), a directory, or a `FeatureCache`.
        progress: show a progress bar on long work.
        max_pixels: decompression-bomb limit passed to `load_image`.
        engine: ``"auto"`` (default: ONNX Runtime on CPU when the run is big enough to repay
            the one-off export, or an export exists; else PyTorch), ``"torch"`` (PyTorch,
            channels-last) or ``"onnx"`` (the backbone exported once to ONNX and run by ONNX
            Runtime on CPU; outputs within 1e-4 of PyTorch's, so both share the cache).
        precision: ``"auto"`` (fp32 on CPU, where the default stays within 1e-4 of the PyTorch
            reference; bf16 autocast on a GPU that supports it), ``"fp32"``, ``"bf16"``
            (autocast; cosine similarity to fp32 about 0.9998), or ``"int8"`` (the ONNX export
            statically quantised, calibrated on `calibration`; CPU only). Vectors of each
            precision are cached apart.
        calibration: images the int8 export is calibrated on (the user's training images);
            None: the first images an int8 extraction is asked for.
        int8_model: an int8 export to use as it is (a saved model carries its own), instead of
            the one found or made in the cache folder.

    Attributes:
        card_: the backbone's `BackboneCard` (identity, preprocessing, taps), after `fit`.
        backbone_: the loaded `Backbone`, loaded on first access.
        n_features_out_: length of the vectors.
        quantization_: with ``precision="int8"``, what the export measured (see
            `transferlab.backbones.QuantizationReport`), once it is known.

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
        calibration: Sequence[str] | None = None,
        int8_model: str | None = None,
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
        self.calibration = calibration
        self.int8_model = int8_model

    # -- estimator API -------------------------------------------------------------------------
    def fit(self, X: Any = None, y: Any = None) -> FeatureExtractor:
        """Find out what the backbone is: its stored card, or load it (nothing is learnt)."""
        self._validate_params()
        if not isinstance(self.backbone, str):  # a loaded Backbone
            self.backbone_ = self.backbone
        else:
            card = BackboneCard.load(self._folder(), self.backbone, self.weights)
            if card is None:
                self.backbone_ = self._load()
            else:
                self.card_ = card
        self.card_.check_layer(self.layer)
        self.n_features_out_ = self.card_.pooled_dim(self.layer, self.pool)
        return self

    @property
    def backbone_(self) -> Backbone:
        """The loaded `Backbone` (loaded here on first use: torch and timm come with it)."""
        bb = self.__dict__.get("_model")
        if bb is None:
            bb = self.backbone if not isinstance(self.backbone, str) else self._load()
            self.backbone_ = bb
        return bb

    @backbone_.setter
    def backbone_(self, bb: Backbone) -> None:
        self.__dict__["_model"] = bb
        self.card_ = bb.card()

    def _load(self) -> Backbone:
        from transferlab.backbones import load_backbone

        bb = load_backbone(self.backbone, weights=self.weights, device=self.device)
        bb.card().save(self._folder(), self.weights)  # later runs need not load it
        return bb

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
        if self.precision == "int8" and self.engine == "torch":
            raise InvalidParameterError(
                "precision='int8' runs the quantised ONNX export: use engine='auto' or 'onnx'"
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
            return self.cache if self.cache.vectors else None
        if self.cache is True:
            return FeatureCache()
        return FeatureCache(self.cache)

    def _folder(self) -> Path:
        """The cache folder (used for cards and exports even when vectors are not cached)."""
        if isinstance(self.cache, FeatureCache):
            return Path(self.cache.directory)
        if self.cache in (True, False, None):
            return Path(default_cache_dir())
        return Path(os.fspath(self.cache))

    def _card(self) -> BackboneCard:
        if not hasattr(self, "card_"):
            self.fit()
        return self.card_

    def namespace(self, layer: str | None = None) -> tuple[str, dict[str, Any]]:
        """The cache namespace for a layer and the facts it stands for."""
        card = self._card()
        desc = {
            "backbone": card.name,
            "fingerprint": card.fingerprint(),
            "weights_sha256": card.weights_sha256,
            "layer": layer or self.layer,
            "pool": self.pool,
            "preprocessing": card.preprocessing(),
            "format": FEATURE_FORMAT,
        }
        precision = self._precision()
        if precision != "fp32":  # fp32 keys stay as they were
            desc["precision"] = precision
        if precision == "int8":  # vectors depend on the calibration: key by the export itself
            desc["int8_model"] = self._int8_identity(layer or self.layer)
        ns = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:32]
        return ns, desc

    def _device_type(self) -> str:
        bb = self.__dict__.get("_model")
        if bb is not None:
            return str(bb.device.type)
        if self.device == "cpu" or (self.device == "auto" and not cuda_may_be_present()):
            return "cpu"  # known without importing torch
        from transferlab.backbones import resolve_device

        return resolve_device(self.device).type

    def _precision(self) -> str:
        """What the vectors are computed in: ``fp32``, ``bf16`` or ``int8``."""
        if self.precision == "int8":
            if self._device_type() != "cpu":
                raise InvalidParameterError("precision='int8' runs on CPU; use device='cpu'")
            return "int8"
        if self.precision in ("auto", "fp32") and self._device_type() == "cpu":
            return "fp32"  # "auto" keeps the fp32 reference vectors on CPU
        from transferlab.backbones import resolve_device, use_bf16

        bb = self.__dict__.get("_model")
        device = bb.device if bb is not None else resolve_device(self.device)
        return "bf16" if use_bf16(self.precision, device, cpu=False) else "fp32"

    def _batch_size(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return 256 if self._device_type() == "cuda" else 32

    def extract(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        layers: Sequence[str] | None = None,
        on_error: str = "skip",
        cached_only: bool = False,
    ) -> ExtractionResult:
        """Features for `paths` from `layers` (default: this extractor's layer), in one pass.

        Cached vectors are reused; the rest are computed in batches and stored.

        Args:
            paths: image files.
            layers: taps to read together (one forward pass serves them all).
            on_error: ``"skip"`` leaves broken images out and lists them in `failures`;
                ``"raise"`` stops at the first broken image with an `ImageLoadError`.
            cached_only: compute nothing: the result holds only the images the cache has
                (`index` says which), for checks that must not cost an extraction.
        """
        if on_error not in ("skip", "raise"):
            raise InvalidParameterError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        t0 = time.perf_counter()
        card = self._card()
        layers = [card.check_layer(la) for la in (layers if layers is not None else [self.layer])]
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
        if self.precision == "int8":  # the export (and so the cache key) needs its calibration
            self._ort_runner(layers, ONNX_AUTO_MIN_IMAGES, calibrate_on=str_paths)

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
        engine = "cache"
        if cached_only:
            todo = []
        if todo:
            engine = self._compute(
                str_paths, digests, todo, layers, spaces, rows, failures, cache, on_error
            )
        if on_error == "raise" and failures:
            raise failures[min(failures)]
        ok = [i for i in range(n) if i not in failures and all(i in rows[la] for la in layers)]
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
            engine=engine,
        )

    def prepare(self, layers: Sequence[str] | None = None) -> FeatureExtractor:
        """Find the backbone and, where the engine is ONNX Runtime (``"onnx"``, or ``"auto"`` on
        CPU), export/load its session for `layers` now.

        For long-running processes (the service) that see small batches: ``"auto"`` would
        otherwise keep them on PyTorch until a run big enough to repay the export comes along.
        Returns self.
        """
        card = self._card()
        layers = [card.check_layer(la) for la in (layers or [self.layer])]
        self._ort_runner(layers, ONNX_AUTO_MIN_IMAGES, calibrate_on=self.calibration)
        return self

    def forward_batch(
        self, x: torch.Tensor | np.ndarray, layers: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Vectors for a batch already preprocessed by ``backbone_.transform()``.

        The forward pass every path shares (the cache-filling `extract`, Ray actors, the
        service): device, channels-last, engine and precision as configured. With
        ``engine="auto"`` a single batch uses ONNX Runtime only if an export already exists.
        """
        card = self._card()
        layers = [card.check_layer(la) for la in (layers or [self.layer])]
        runner = self._ort_runner(layers, len(x))
        if runner is not None:
            arr = x if isinstance(x, np.ndarray) else x.float().cpu().numpy()
            return runner(arr)
        return self._torch_forward(x, layers)

    def _torch_forward(self, x: Any, layers: list[str]) -> dict[str, np.ndarray]:
        import torch

        bb = self.backbone_
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        x = x.to(bb.device, non_blocking=True)
        if bb.device.type in ("cpu", "cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
        bf16 = self._precision() == "bf16"
        with torch.autocast(bb.device.type, torch.bfloat16, enabled=bf16):
            outs = bb.forward_taps(x, layers, pool=self.pool)
        return {la: outs[la].float().cpu().numpy() for la in layers}

    # -- computing the missing rows ------------------------------------------------------------
    def _compute(
        self,
        paths: list[str],
        digests: list[str | None],
        todo: list[int],
        layers: list[str],
        spaces: dict[str, tuple[str, dict[str, Any]]],
        rows: dict[str, dict[int, np.ndarray]],
        failures: dict[int, ImageLoadError],
        cache: FeatureCache | None,
        on_error: str,
    ) -> str:
        """Compute the `todo` rows (ONNX Runtime when it applies, else PyTorch); the engine."""
        card = self._card()
        runner = self._ort_runner(layers, len(todo), calibrate_on=[paths[i] for i in todo])
        batches = None
        if runner is not None:
            from transferlab.data._preprocess import NumpyEvalTransform
            from transferlab.features._decode import decoded_batches

            try:
                transform = NumpyEvalTransform(card.data_config)
            except InvalidParameterError:
                runner = None  # a crop mode only the torchvision transform has
            else:
                threads = self.num_workers
                if threads is None:  # 2 threads measured best on 2 cores (RESULTS.md, issue 17)
                    threads = min(2, cpu_threads()) if len(todo) > self._batch_size() else 0
                batches = decoded_batches(
                    [paths[i] for i in todo],
                    transform,
                    batch_size=self._batch_size(),
                    max_pixels=self.max_pixels,
                    threads=threads,
                )
        if batches is None:
            batches = self._torch_batches([paths[i] for i in todo])
        forward = runner if runner is not None else (lambda x: self._torch_forward(x, layers))
        label = f"features {card.name}:{'/'.join(layers)}"
        with _progress(len(todo), label, self.progress) as bar:
            for local_idx, x, bad in batches:
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
                    outs = forward(x)
                    for layer in layers:
                        new = {}
                        for j, vec in zip(local_idx, outs[layer], strict=True):
                            i = todo[j]
                            rows[layer][i] = vec
                            new[digests[i]] = vec
                        if cache is not None:
                            cache.put_many(spaces[layer][0], new)  # type: ignore[arg-type]
                bar.update(len(local_idx) + len(bad))
        engine = "onnxruntime" if runner is not None else "torch"
        return f"{engine}-{self._precision()}"

    def _torch_batches(self, paths: list[str]) -> Iterable[Any]:
        import torch

        from transferlab.data import ImageFileDataset, collate_skipping_failures

        bb = self.backbone_
        dataset = ImageFileDataset(paths, bb.transform(), self.max_pixels)
        batch_size = self._batch_size()
        gpu = bb.device.type == "cuda"
        workers = (
            self.num_workers
            if self.num_workers is not None
            else default_num_workers(len(paths), batch_size, gpu=gpu)
        )
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=collate_skipping_failures,
            persistent_workers=False,
            pin_memory=gpu,
        )
