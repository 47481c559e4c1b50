"""Background work with bounded queues: feature batching and training jobs.

* `FeatureBatcher` owns the `FeatureExtractor`: one thread runs every forward pass (the backbone's
  layer hooks are not thread-safe), and requests that arrive within ``batch_wait_ms`` of each other
  share a batch. Its queue is bounded: a full queue is a 503, never unbounded memory.
* `JobRunner` runs training jobs one at a time in a worker thread, from a bounded queue (full:
  429). Job state lives in the database, so a restart sees it; see `Store.recover_jobs`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

from transferlab.exceptions import DatasetError, ImageLoadError
from transferlab.features import ExtractionResult, FeatureExtractor
from transferlab.serve.errors import ApiError
from transferlab.store import Collection, Example, Job, Store, StoredModel, utcnow

__all__ = ["BatchedExtractor", "FeatureBatcher", "JobRunner", "train_collection"]

logger = logging.getLogger(__name__)

_STOP = object()


class FeatureBatcher:
    """Serialises and batches feature extraction for concurrent requests.

    Args:
        extractor: a fitted `FeatureExtractor` (used from the batcher thread only).
        max_batch: images per forward pass at most.
        wait_s: how long the first request of a batch waits for company.
        queue_size: requests that may wait; more get `ApiError` 503.
    """

    def __init__(
        self, extractor: FeatureExtractor, max_batch: int, wait_s: float, queue_size: int
    ) -> None:
        self.extractor = extractor
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._loop, name="feature-batcher", daemon=True)
        self._thread.start()

    def submit(self, paths: Sequence[str], layers: Sequence[str]) -> Future[ExtractionResult]:
        fut: Future[ExtractionResult] = Future()
        try:
            self._queue.put_nowait((list(paths), list(layers), fut))
        except queue.Full:
            raise ApiError(
                503,
                "feature extraction queue is full; retry shortly",
                "overloaded",
                headers={"Retry-After": "1"},
            ) from None
        return fut

    def extract(
        self, paths: Sequence[str], layers: Sequence[str], timeout: float = 120.0
    ) -> ExtractionResult:
        return self.submit(paths, layers).result(timeout=timeout)

    def stop(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            n = len(item[0])
            deadline = time.monotonic() + self.wait_s
            stop = False
            while n < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
                n += len(nxt[0])
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list[tuple[list[str], list[str], Future[ExtractionResult]]]) -> None:
        all_paths = [p for paths, _, _ in batch for p in paths]
        layers = sorted({la for _, lays, _ in batch for la in lays})
        try:
            res = self.extractor.extract(all_paths, layers=layers, on_error="skip")
        except Exception as exc:  # hand the failure to every waiting request
            for _, _, fut in batch:
                fut.set_exception(exc)
            return
        failed = {e.path: e for e in res.failures}
        start = 0
        for paths, lays, fut in batch:
            stop = start + len(paths)
            rows = np.flatnonzero((res.index >= start) & (res.index < stop))
            fut.set_result(
                ExtractionResult(
                    features={la: res.features[la][rows] for la in lays},
                    paths=[all_paths[int(res.index[r])] for r in rows],
                    index=res.index[rows] - start,
                    failures=[failed[p] for p in dict.fromkeys(paths) if p in failed],
                    seconds=res.seconds,
                )
            )
            start = stop


class BatchedExtractor:
    """What `TransferModel` needs of an extractor (``layer``, ``extract``, ``_backbone``), routed
    through the batcher so predictions share its thread and batches."""

    def __init__(self, batcher: FeatureBatcher, layer: str, timeout: float = 120.0) -> None:
        self.batcher = batcher
        self.layer = layer
        self.pool = batcher.extractor.pool
        self.timeout = timeout

    def extract(self, paths: Sequence[str], *, on_error: str = "skip") -> ExtractionResult:
        res = self.batcher.extract([str(p) for p in paths], [self.layer], self.timeout)
        if on_error == "raise" and res.failures:
            raise res.failures[0]
        return res

    def _backbone(self) -> Any:
        return self.batcher.extractor._backbone()


class JobRunner:
    """One worker thread draining a bounded queue of job ids."""

    def __init__(self, store: Store, batcher: FeatureBatcher, queue_size: int) -> None:
        self.store = store
        self.batcher = batcher
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)
        self._thread.start()

    def submit(self, job_id: str) -> None:
        """Queue a job that is already in the database with status ``queued``.

        Raises:
            ApiError: 429 when the queue is full.
        """
        try:
            self._queue.put_nowait(job_id)
        except queue.Full:
            raise ApiError(
                429,
                "too many training jobs waiting; retry when one has finished",
                "too_many_jobs",
                headers={"Retry-After": "5"},
            ) from None

    def stop(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is _STOP:
                return
            try:
                train_collection(self.store, self.batcher, job_id)
            except Exception:  # the job row carries the error; the worker must live on
                logger.exception("job %s crashed", job_id)


def _set(store: Store, job_id: str, **values: Any) -> None:
    with store.session() as s:
        job = s.get(Job, job_id)
        if job is not None:
            for k, v in values.items():
                setattr(job, k, v)
            job.updated = utcnow()


def training_data(
    examples: Sequence[Example], multi_label: bool
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features, targets (labels, or a 0/1 matrix when multi-label) and the class list."""
    if not examples:
        raise DatasetError("the collection has no examples; add labelled images first")
    X = np.stack([np.frombuffer(e.feature, dtype=np.float32) for e in examples])
    classes = sorted({lab for e in examples for lab in e.labels})
    if multi_label:
        index = {c: j for j, c in enumerate(classes)}
        Y = np.zeros((len(examples), len(classes)), dtype=np.int64)
        for i, e in enumerate(examples):
            for lab in e.labels:
                Y[i, index[lab]] = 1
        return X, Y, classes
    return X, np.asarray([e.labels[0] for e in examples]), classes


def check_trainable(examples: Sequence[Example], multi_label: bool) -> None:
    """Refuse, with the reason, data no probe can learn from (checked before queueing)."""
    if not examples:
        raise DatasetError("the collection has no examples; add labelled images first")
    classes = {lab for e in examples for lab in e.labels}
    if len(classes) < 2:
        raise DatasetError(
            f"training needs examples of at least 2 labels; this collection has "
            f"{len(classes)} ({', '.join(sorted(classes)) or 'none'})"
        )
    if multi_label:
        for c in classes:
            if all(c in e.labels for e in examples):
                raise DatasetError(
                    f"label {c!r} is on every example; a multi-label probe needs images without "
                    "it too"
                )


def cross_validated(X: np.ndarray, y: np.ndarray, multi_label: bool) -> tuple[np.ndarray, str]:
    """Out-of-fold probabilities (for metrics and calibration) and how they were obtained."""
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict

    from transferlab.probe import LinearProbe, MultiLabelProbe

    if multi_label:
        folds = min(5, len(X))
        if folds < 2:
            return MultiLabelProbe().fit(X, y).predict_proba(X), "training data (too few images)"
        cv: Any = KFold(folds, shuffle=True, random_state=0)
        try:
            return cross_val_predict(
                MultiLabelProbe(), X, y, cv=cv, method="predict_proba"
            ), f"{folds}-fold"
        except ValueError:  # a fold lacking a label entirely
            return MultiLabelProbe().fit(X, y).predict_proba(X), "training data (folds too small)"
    counts = np.unique(y, return_counts=True)[1]
    folds = int(min(5, counts.min()))
    if folds < 2:
        return LinearProbe().fit(X, y).predict_proba(
            X
        ), "training data (a label has only 1 example)"
    cv = StratifiedKFold(folds, shuffle=True, random_state=0)
    return cross_val_predict(LinearProbe(), X, y, cv=cv, method="predict_proba"), f"{folds}-fold"


def collection_metrics(
    examples: Sequence[Example], multi_label: bool
) -> tuple[dict[str, Any], np.ndarray, list[str], np.ndarray]:
    """Cross-validated metrics on the stored features, plus the data they came from."""
    from transferlab.evaluate import evaluate_multilabel, evaluate_predictions

    check_trainable(examples, multi_label)
    X, y, classes = training_data(examples, multi_label)
    proba, how = cross_validated(X, y, multi_label)
    if multi_label:
        report: dict[str, Any] = evaluate_multilabel(y, proba, classes).__dict__
    else:
        report = evaluate_predictions(y, proba, classes).to_dict()
    return {"cross_validation": how, "n_examples": len(X), **report}, X, classes, proba


def train_collection(store: Store, batcher: FeatureBatcher, job_id: str) -> None:
    """Fit the collection's probe from its stored features, save the model, record the outcome."""
    from transferlab.artifacts import TransferModel
    from transferlab.evaluate import TemperatureScaler
    from transferlab.probe import LinearProbe, MultiLabelProbe

    with store.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            return
        coll = s.get(Collection, job.collection_id)
        if coll is None:
            return
        job.status, job.progress, job.message = "running", 0.05, "loading examples"
        examples = list(coll.examples)
        multi_label, layer, coll_id = coll.multi_label, coll.layer, coll.id
    t0 = time.perf_counter()
    try:
        metrics, X, classes, proba = collection_metrics(examples, multi_label)
        _set(store, job_id, progress=0.5, message="cross-validated; fitting the final probe")
        _, y, _ = training_data(examples, multi_label)
        temperature = 1.0
        if multi_label:
            probe: Any = MultiLabelProbe().fit(X, y)
        else:
            probe = LinearProbe().fit(X, y)
            idx = np.searchsorted(np.asarray(classes), y)
            temperature = TemperatureScaler().fit(proba, idx).temperature_
        metrics["calibration"] = {"temperature": temperature, "fitted_on": "out-of-fold"}
        metrics["train_seconds"] = time.perf_counter() - t0
        _set(store, job_id, progress=0.8, message="saving the model")
        model = TransferModel(
            BatchedExtractor(batcher, layer),  # type: ignore[arg-type]
            probe,
            metrics,
            classes=classes,
        )
        model.temperature = temperature
        path = model.save(store.model_dir(coll_id, job_id), overwrite=True)
        with store.session() as s:
            s.add(
                StoredModel(
                    collection_id=coll_id,
                    job_id=job_id,
                    path=str(path),
                    classes=classes,
                    metrics=_jsonable(metrics),
                )
            )
            job = s.get(Job, job_id)
            if job is not None:
                job.status, job.progress, job.message = "succeeded", 1.0, "model ready"
                job.updated = utcnow()
        logger.info("job %s succeeded in %.2fs", job_id, time.perf_counter() - t0)
    except (DatasetError, ImageLoadError, ValueError) as exc:
        _set(store, job_id, status="failed", error=str(exc), message="training failed")
    except Exception as exc:
        logger.exception("job %s failed", job_id)
        _set(
            store,
            job_id,
            status="failed",
            error=f"{type(exc).__name__}: {exc}",
            message="training failed",
        )


def _jsonable(obj: Any) -> Any:
    """Plain JSON types (NaN -> None) for the database's JSON column."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return None if f != f or f in (float("inf"), float("-inf")) else f
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
