"""Feature extraction for concurrent requests: one thread, shared batches, a bounded queue.

`FeatureBatcher` owns the `FeatureExtractor`: one thread runs every forward pass (the backbone's
layer hooks are not thread-safe), and requests that arrive within ``batch_wait_ms`` of each other
share a batch. Its queue is bounded: a full queue is a 503, never unbounded memory.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

from transferlab._internal.memory import release_memory
from transferlab.features import ExtractionResult, FeatureExtractor
from transferlab.serve.errors import ApiError

__all__ = ["BatchedExtractor", "FeatureBatcher"]

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
            if self._queue.empty():  # idle: hand the burst's memory back (see _internal.memory)
                release_memory()
            if stop:
                return

    def _run(self, batch: list[tuple[list[str], list[str], Future[ExtractionResult]]]) -> None:
        all_paths = [p for paths, _, _ in batch for p in paths]
        layers = sorted({la for _, lays, _ in batch for la in lays})
        try:
            res = self.extractor.extract(all_paths, layers=layers, on_error="skip")
        except Exception as exc:
            # one image can fail a whole forward pass (memory, a decoder bug): never let it fail
            # the requests it shared the batch with, nor the other images of its own request
            if len(batch) > 1:
                for item in batch:
                    self._run([item])
            elif len(all_paths) > 1:
                self._run_one_by_one(batch[0], layers)
            else:
                batch[0][2].set_exception(exc)
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

    def _run_one_by_one(
        self, item: tuple[list[str], list[str], Future[ExtractionResult]], layers: list[str]
    ) -> None:
        """`item`'s images one at a time; an image whose pass raises becomes its failure."""
        from transferlab.exceptions import ImageLoadError

        paths, lays, fut = item
        rows: list[dict[str, np.ndarray]] = []
        index: list[int] = []
        failures: list[ImageLoadError] = []
        seconds = 0.0
        for i, p in enumerate(paths):
            try:
                res = self.extractor.extract([p], layers=layers, on_error="skip")
            except Exception as exc:
                failures.append(ImageLoadError(p, f"{type(exc).__name__}: {exc}"))
                continue
            seconds += res.seconds
            failures += res.failures
            if len(res.index):
                rows.append({la: res.features[la][0] for la in lays})
                index.append(i)
        fut.set_result(
            ExtractionResult(
                features={
                    la: np.stack([r[la] for r in rows]) if rows else np.zeros((0, 0)) for la in lays
                },
                paths=[paths[i] for i in index],
                index=np.asarray(index, dtype=np.int64),
                failures=failures,
                seconds=seconds,
            )
        )


class BatchedExtractor:
    """What `TransferModel` needs of an extractor (``layer``, ``extract``, ``_card``), routed
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

    def _card(self) -> Any:
        return self.batcher.extractor._card()

    def _precision(self) -> str:
        return str(self.batcher.extractor._precision())

    @property
    def quantization_(self) -> Any:
        return self.batcher.extractor.quantization_

    @property
    def backbone_(self) -> Any:
        return self.batcher.extractor.backbone_
