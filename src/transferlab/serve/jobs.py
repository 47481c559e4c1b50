"""Training jobs with a bounded queue: a linear probe on stored features, a fine-tune, or auto.

`JobRunner` runs training jobs one at a time in a worker thread, from a bounded queue (full: 429).
Job state lives in the database, so a restart sees it; see `Store.recover_jobs`. Feature
extraction for requests is `transferlab.serve.batcher`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from transferlab._internal.json import json_default
from transferlab._internal.memory import release_memory
from transferlab.exceptions import DatasetError, ImageLoadError, InvalidParameterError
from transferlab.finetune import Callback
from transferlab.serve.auto import run_auto_job
from transferlab.serve.batcher import BatchedExtractor, FeatureBatcher
from transferlab.serve.errors import ApiError, NotTrainable
from transferlab.serve.schemas import examples_digest
from transferlab.serve.store import (
    INTERRUPTED,
    Collection,
    Example,
    Job,
    Store,
    StoredModel,
    utcnow,
)

__all__ = [
    "Cancelled",
    "Interrupted",
    "JobRunner",
    "auto_collection",
    "check_trainable",
    "collection_metrics",
    "finetune_collection",
    "jsonable",
    "probe_collection",
    "split_examples",
    "train_collection",
]

logger = logging.getLogger(__name__)

#: fine-tuning epochs when the request names none: a service job should end in minutes on a CPU
FINETUNE_EPOCHS = 3


class JobRunner:
    """One worker thread running queued jobs, the keys taking turns.

    Each key's jobs wait in its own line, and the worker takes the next job from the key whose
    last job started longest ago (a key that never ran first; ties in arrival order): one
    key's backlog never holds another key's job back by more than the job running now.
    The total waiting is bounded (`queue_size`: full is 429). `cancel` takes a queued job out,
    or makes the running one stop at its next step (a fine-tune: its next batch).
    """

    def __init__(
        self, store: Store, batcher: FeatureBatcher, queue_size: int, device: str = "auto"
    ) -> None:
        self.store = store
        self.batcher = batcher
        self.device = device
        self.queue_size = queue_size
        #: set at shutdown: a fine-tune stops at its next batch, queued jobs are not started
        #: (both are marked failed as interrupted, now or by `Store.recover_jobs` at restart)
        self.stopping = threading.Event()
        self._cv = threading.Condition()
        self._lines: dict[Any, deque[str]] = {}  # owner -> its waiting job ids (arrival order)
        self._started: dict[Any, int] = {}  # owner -> when its last job started (a counter)
        self._n_started = 0
        self._cancelled: set[str] = set()
        self.running: str | None = None
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        with self._cv:
            return sum(len(q) for q in self._lines.values())

    def submit(self, job_id: str, owner: Any = None) -> None:
        """Queue a job that is already in the database with status ``queued``, in `owner`'s
        line (the API key's id).

        Raises:
            ApiError: 429 when the queue is full.
        """
        with self._cv:
            if sum(len(q) for q in self._lines.values()) >= self.queue_size:
                raise ApiError(
                    429,
                    "too many training jobs waiting; retry when one has finished",
                    "too_many_jobs",
                    headers={"Retry-After": "5"},
                )
            self._lines.setdefault(owner, deque()).append(job_id)
            self._cv.notify()

    def cancel(self, job_id: str) -> str:
        """``"queued"``: taken out of its line (never runs); ``"running"``: asked to stop at its
        next step; ``"gone"``: this runner does not hold it."""
        with self._cv:
            for owner, line in self._lines.items():
                if job_id in line:
                    line.remove(job_id)
                    if not line:
                        del self._lines[owner]
                    return "queued"
            if self.running == job_id:
                self._cancelled.add(job_id)
                return "running"
        return "gone"

    def check(self, job_id: str) -> None:
        """Raise `Interrupted` at shutdown, `Cancelled` when `job_id` was cancelled: called by a
        running job between its steps."""
        if self.stopping.is_set():
            raise Interrupted
        if job_id in self._cancelled:
            raise Cancelled

    def stop(self) -> None:
        self.stopping.set()
        with self._cv:
            self._cv.notify_all()  # wakes an idle worker; a busy one sees `stopping`
        self._thread.join(timeout=30)

    def _next(self) -> str | None:
        with self._cv:
            while not self._lines and not self.stopping.is_set():
                self._cv.wait(timeout=1.0)
            if self.stopping.is_set():
                return None
            owner = min(self._lines, key=lambda o: self._started.get(o, -1))
            line = self._lines[owner]
            job_id = line.popleft()
            if not line:
                del self._lines[owner]
            self._n_started += 1
            self._started[owner] = self._n_started
            self.running = job_id
            return job_id

    def _loop(self) -> None:
        while not self.stopping.is_set():
            job_id = self._next()
            if job_id is None:
                return
            try:
                train_collection(self.store, self.batcher, job_id, self)
            except Exception:  # the job row carries the error; the worker must live on
                logger.exception("job %s crashed", job_id)
            finally:  # a fine-tune's images and activations: back to the OS, not kept
                with self._cv:
                    self.running = None
                    self._cancelled.discard(job_id)
                release_memory()


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
        raise NotTrainable("the collection has no examples; add labelled images first")
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
        raise NotTrainable("the collection has no examples; add labelled images first")
    classes = {lab for e in examples for lab in e.labels}
    if len(classes) < 2:
        raise NotTrainable(
            f"training needs examples of at least 2 labels; this collection has "
            f"{len(classes)} ({', '.join(sorted(classes)) or 'none'})"
        )
    if multi_label:
        for c in classes:
            if all(c in e.labels for e in examples):
                raise NotTrainable(
                    f"label {c!r} is on every example; a multi-label probe needs images without "
                    "it too"
                )


def cross_validated(X: np.ndarray, y: np.ndarray, multi_label: bool) -> tuple[np.ndarray, str]:
    """Out-of-fold probabilities (for metrics and calibration) and how they were obtained."""
    from sklearn.model_selection import KFold, cross_val_predict

    from transferlab.probe import LinearProbe, MultiLabelProbe, oof_proba

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
    return oof_proba(X, y, cv=folds, seed=0)[0], f"{folds}-fold"


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


def train_collection(
    store: Store, batcher: FeatureBatcher, job_id: str, runner: JobRunner | None = None
) -> None:
    """Run one job: a linear probe on the stored features, a fine-tune of the backbone on the
    stored images, or auto (`transferlab.serve.auto`); save the model, record the outcome in
    the job row."""
    with store.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            return
        coll = s.get(Collection, job.collection_id)
        if coll is None:
            return
        job.status, job.progress, job.message = "running", 0.05, "loading examples"
        examples = list(coll.examples)
        kind, params = job.kind, dict(job.params or {})
    t0 = time.perf_counter()
    done = "model ready"
    try:
        if kind == "finetune":
            finetune_collection(store, coll, examples, job_id, params, runner)
        elif kind == "auto":
            done = auto_collection(store, coll, examples, job_id, params, runner)
        else:
            probe_collection(store, batcher, coll, examples, job_id)
        with store.session() as s:
            job = s.get(Job, job_id)
            if job is not None:
                job.status, job.progress, job.message = "succeeded", 1.0, done
                job.updated = utcnow()
            # what the model was trained on, so that later changes show it out of date
            digest = examples_digest([e.id for e in examples], [e.labels for e in examples])
            for row in s.scalars(select(StoredModel).where(StoredModel.job_id == job_id)):
                row.metrics = {**(row.metrics or {}), "examples_digest": digest}
        logger.info(
            "job succeeded",
            extra={"job_id": job_id, "kind": kind, "seconds": round(time.perf_counter() - t0, 2)},
        )
    except Cancelled:  # before its model was recorded: nothing of it is kept
        import shutil

        shutil.rmtree(store.model_dir(coll.id, job_id), ignore_errors=True)
        _set(store, job_id, status="cancelled", message="cancelled")
    except Interrupted:
        _set(store, job_id, status="failed", error=INTERRUPTED, message=INTERRUPTED)
    except (DatasetError, ImageLoadError, InvalidParameterError, ValueError) as exc:
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


def probe_collection(
    store: Store, batcher: FeatureBatcher, coll: Collection, examples: list[Example], job_id: str
) -> None:
    """Fit the collection's probe from its stored features and save it as a `TransferModel`."""
    from transferlab.evaluate import calibrate
    from transferlab.models import TransferModel
    from transferlab.probe import LinearProbe, MultiLabelProbe

    multi_label, layer, coll_id = coll.multi_label, coll.layer, coll.id
    t0 = time.perf_counter()
    metrics, X, classes, proba = collection_metrics(examples, multi_label)
    _set(store, job_id, progress=0.5, message="cross-validated; fitting the final probe")
    _, y, _ = training_data(examples, multi_label)
    temperature = 1.0
    if multi_label:
        probe: Any = MultiLabelProbe().fit(X, y)
    else:
        probe = LinearProbe().fit(X, y)
        idx = np.searchsorted(np.asarray(classes), y)
        temperature = calibrate(proba, idx, fitted_on="out-of-fold").temperature
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
    _record_model(store, coll_id, job_id, path, classes, metrics)


def auto_collection(
    store: Store,
    coll: Collection,
    examples: list[Example],
    job_id: str,
    params: dict[str, Any],
    runner: Any = None,
) -> str:
    """kind='auto': `run_auto` on the collection's images, its stage lines as the job's progress
    (stopping at the next stage when the server shuts down); the model it keeps is recorded as
    the collection's. Returns the job's closing message (what was chosen)."""

    def report(progress: float, message: str) -> None:
        if runner is not None:
            runner.check(job_id)
        _set(store, job_id, progress=progress, message=message)

    device = getattr(runner, "device", "auto")
    done = run_auto_job(store, coll, examples, job_id, params, device=device, report=report)
    _record_model(store, coll.id, job_id, done.model_dir, done.classes, done.metrics)
    return done.message


def _record_model(
    store: Store,
    coll_id: str,
    job_id: str,
    path: Any,
    classes: list[str],
    metrics: dict[str, Any],
) -> None:
    with store.session() as s:
        s.add(
            StoredModel(
                collection_id=coll_id,
                job_id=job_id,
                path=str(path),
                classes=classes,
                metrics=jsonable(metrics),
            )
        )


class Interrupted(Exception):
    """The server is shutting down: the running job stops and is marked failed (re-runnable)."""


class Cancelled(Interrupted):
    """``DELETE /v1/jobs/{id}`` (or deleting its collection): the running job stops and is
    marked cancelled."""


class _Progress(Callback):
    """Reports a fine-tune's progress (0.1-0.85 over its batches) into the job row, and stops it
    when the server shuts down."""

    def __init__(self, store: Store, job_id: str, total_batches: int, runner: Any) -> None:
        self.store = store
        self.job_id = job_id
        self.total = max(total_batches, 1)
        self.done = 0
        self.runner = runner
        self._last = 0.0

    def _check(self) -> None:
        if self.runner is not None:
            self.runner.check(self.job_id)

    def before_epoch(self, tuner: Any) -> None:
        self._check()

    def after_batch(self, tuner: Any) -> None:
        self._check()
        self.done += 1
        now = time.monotonic()
        if now - self._last >= 0.5:  # a database write at most twice a second
            self._last = now
            _set(
                self.store,
                self.job_id,
                progress=round(0.1 + 0.75 * min(self.done / self.total, 1.0), 3),
                message=f"fine-tuning: epoch {tuner.epoch + 1}, batch {self.done}/{self.total}",
            )

    def after_epoch(self, tuner: Any) -> None:
        last = tuner.history[-1] if tuner.history else {}
        score = last.get(tuner.score_key_)
        _set(
            self.store,
            self.job_id,
            message=f"fine-tuning: epoch {tuner.epoch} done"
            + (f", validation {tuner.score_key_[4:]} {score:.3f}" if score is not None else ""),
        )


def split_examples(
    examples: Sequence[Example], multi_label: bool, val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Example], list[Example], str]:
    """Train/validation split for fine-tuning, drawn by `transferlab.data.stratified_split_indices`
    (per label when single-label: at least one image of each label with two or more held out);
    how it was made, in words. Multi-label: nothing is held out from fewer than 4 images, and a
    held-out image with a label no training image has goes back to training."""
    from transferlab.data import stratified_split_indices

    if multi_label and len(examples) < 4:
        train_idx: list[int] = list(range(len(examples)))
        val_idx: list[int] = []
    else:  # multi-label: split at random, only the number of items counts
        keys = [";".join(e.labels) for e in examples]
        train_idx, val_idx = stratified_split_indices(
            keys, val_fraction, seed, multi_label=multi_label
        )
    train = [examples[i] for i in train_idx]
    val = [examples[i] for i in val_idx]
    if multi_label:
        # every label must keep a training image (else the job fails: "no training image"):
        # a held-out example carrying a label the training part lacks goes back to training
        for e in list(val):
            if not set(e.labels) <= {lab for t in train for lab in t.labels}:
                val.remove(e)
                train.append(e)
    if not val:  # too few images to hold any out: validate on the training images, and say so
        return (
            list(examples),
            list(examples),
            ("validated on the training images (too few to hold out)"),
        )
    return train, val, f"{len(train)} train / {len(val)} validation images (held out at random)"


def finetune_collection(
    store: Store,
    coll: Collection,
    examples: list[Example],
    job_id: str,
    params: dict[str, Any],
    runner: Any = None,
) -> None:
    """Fine-tune the collection's backbone on its stored images (`transferlab.finetune`), then
    calibrate on the held-out images (`transferlab.pipeline.finish_finetune`, as `transferlab
    finetune` does) and save a `FinetunedModel` that predict and export use."""
    from transferlab.data import Sample
    from transferlab.finetune import FinetuneConfig, FineTuner
    from transferlab.pipeline import finish_finetune

    check_trainable(examples, coll.multi_label)
    multi_label = coll.multi_label
    train, val, split_note = split_examples(examples, multi_label)

    def samples(rows: list[Example]) -> list[Sample]:
        return [
            Sample(
                str(store.image_path(e.image_sha256, e.image_ext)),
                ";".join(e.labels),
                tuple(e.labels) if multi_label else (),
            )
            for e in rows
        ]

    tr, va = samples(train), samples(val)
    classes = sorted({lab for e in examples for lab in e.labels})
    cfg = FinetuneConfig(
        backbone=coll.backbone,
        epochs=int(params.get("epochs", FINETUNE_EPOCHS)),
        image_size=params.get("image_size"),
        batch_size=int(params.get("batch_size", 16)),
        device=getattr(runner, "device", "auto"),
        num_workers=0,  # the service's own threads; no processes forked from a server
        wise="off" if len(va) < 4 else "auto",  # a blend chosen on 1-3 images is noise
    )
    steps = cfg.epochs * max(1, -(-len(tr) // cfg.batch_size))
    _set(store, job_id, progress=0.1, message=f"fine-tuning: decoding images ({split_note})")
    tuner = FineTuner(cfg, callbacks=[_Progress(store, job_id, steps, runner)], progress=False)
    result = tuner.fit(tr, va, classes, multi_label=multi_label)
    _set(store, job_id, progress=0.9, message="calibrating on the held-out images")
    done = finish_finetune(tuner, va, multi_label=multi_label, progress=False)
    model = done.model
    if multi_label:
        report: dict[str, Any] = done.val.__dict__
        calibration: dict[str, Any] = {"thresholds": model.thresholds.tolist()}
    else:
        report = done.val.to_dict()
        calibration = {"temperature": model.temperature}
    metrics = {
        **report,
        "method": "finetune",
        "validation": split_note,
        "n_examples": len(examples),
        "calibration": {**calibration, "fitted_on": "validation", "n": len(done.val_index)},
        "epochs": cfg.epochs,
        "image_size": tuner.size_,
        "best_epoch": result.best_epoch,
        "probe_val_score": result.probe_val_score,
        "history": result.history,
        "skipped": [{"image": Path(e.path).name, "reason": e.reason} for e in tuner.failures_],
        "train_seconds": result.seconds,
    }
    model.metrics = jsonable(metrics)
    _set(store, job_id, progress=0.95, message="saving the model")
    path = model.save(store.model_dir(coll.id, job_id), overwrite=True)
    _record_model(store, coll.id, job_id, path, list(tuner.classes_), metrics)


def jsonable(obj: Any) -> Any:
    """`obj` in plain JSON types, for the database's JSON column and the responses: what the one
    encoder (`json_default`) converts, converted all the way down, with NaN and infinities as
    None (strict JSON has none; metrics.json keeps them)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float):  # numpy's float64 too
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return jsonable(json_default(obj))
