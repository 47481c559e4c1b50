"""Custom Collections API: labelled examples -> trained probe -> predictions, per API key."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Body, File, Form, Query, Response, UploadFile
from fastapi.responses import FileResponse
from sqlalchemy import select
from starlette.background import BackgroundTask

from transferlab.serve.deps import CurrentKey, Services, ServicesDep, get_collection
from transferlab.serve.errors import ApiError
from transferlab.serve.images import read_limited, store_image, temp_image
from transferlab.serve.jobs import BatchedExtractor, check_trainable, collection_metrics
from transferlab.serve.routers.features import check_model
from transferlab.serve.schemas import (
    CollectionCreate,
    CollectionPublic,
    ExamplePublic,
    JobPublic,
    PredictResponse,
    TrainRequest,
)
from transferlab.serve.store import Collection, Example, Job, StoredModel

__all__ = ["router"]

router = APIRouter(prefix="/v1/collections", tags=["collections"])

MAX_LABEL_LEN = 100
MAX_LABELS = 50
UNCERTAIN = "uncertain"  # what predict answers under the threshold (artifacts.Prediction)


def _latest_model(s: Any, collection_id: str) -> StoredModel | None:
    return s.scalar(
        select(StoredModel)
        .where(StoredModel.collection_id == collection_id)
        .order_by(StoredModel.created.desc(), StoredModel.id.desc())
        .limit(1)
    )


def _public(services: Services, coll: Collection) -> CollectionPublic:
    with services.store.session() as s:
        rows = s.scalars(select(Example.labels).where(Example.collection_id == coll.id)).all()
        model = _latest_model(s, coll.id)
    counts = Counter(lab for labels in rows for lab in labels)
    return CollectionPublic(
        id=coll.id,
        name=coll.name,
        multi_label=coll.multi_label,
        backbone=coll.backbone,
        layer=coll.layer,
        created=coll.created,
        n_examples=len(rows),
        labels=dict(sorted(counts.items())),
        model=None
        if model is None
        else {
            "id": model.id,
            "job_id": model.job_id,
            "classes": model.classes,
            "created": model.created.isoformat(),
            "accuracy": model.metrics.get("accuracy"),
        },
    )


@router.post("", status_code=201, response_model=CollectionPublic)
def create_collection(
    body: CollectionCreate, services: ServicesDep, key: CurrentKey
) -> CollectionPublic:
    layer = check_model(services, body.backbone, body.layer or services.settings.layer)
    coll = Collection(
        owner_id=key.id,
        name=body.name.strip() or "untitled",
        multi_label=body.multi_label,
        backbone=services.settings.backbone,
        layer=layer,
    )
    with services.store.session() as s:
        s.add(coll)
    return _public(services, coll)


@router.get("", response_model=list[CollectionPublic])
def list_collections(services: ServicesDep, key: CurrentKey) -> list[CollectionPublic]:
    with services.store.session() as s:
        rows = list(
            s.scalars(
                select(Collection)
                .where(Collection.owner_id == key.id)
                .order_by(Collection.created, Collection.id)
            )
        )
    return [_public(services, c) for c in rows]


@router.get("/{collection_id}", response_model=CollectionPublic)
def get_one(collection_id: str, services: ServicesDep, key: CurrentKey) -> CollectionPublic:
    return _public(services, get_collection(services, key, collection_id))


def _active_job(s: Any, collection_id: str) -> Job | None:
    return s.scalar(
        select(Job).where(Job.collection_id == collection_id, Job.status.in_(("queued", "running")))
    )


@router.delete("/{collection_id}", status_code=204)
def delete_collection(collection_id: str, services: ServicesDep, key: CurrentKey) -> Response:
    coll = get_collection(services, key, collection_id)
    store = services.store
    with services.jobs_lock, store.session() as s:
        job = _active_job(s, coll.id)
        if job is not None:
            raise ApiError(409, f"collection has a {job.status} job {job.id}; wait for it to end")
        images = {
            (sha, ext)
            for sha, ext in s.execute(
                select(Example.image_sha256, Example.image_ext).where(
                    Example.collection_id == coll.id
                )
            )
        }
        row = s.get(Collection, coll.id)
        if row is not None:
            s.delete(row)
    shutil.rmtree(store.data_dir / "models" / coll.id, ignore_errors=True)
    for sha, ext in images:
        store.drop_image_if_unused(sha, ext)
    _forget_models(services, coll.id)
    return Response(status_code=204)


def _check_backbone(services: Services, coll: Collection) -> None:
    """409 when the collection's stored features come from another backbone than the one this
    server runs (restarted with another TRANSFERLAB_BACKBONE): mixing them would be garbage."""
    if coll.backbone != services.settings.backbone:
        raise ApiError(
            409,
            f"collection {coll.id!r} was built with backbone {coll.backbone!r}; this server runs "
            f"{services.settings.backbone!r}. Serve it with TRANSFERLAB_BACKBONE={coll.backbone}",
            "backbone_mismatch",
        )


# -- examples ----------------------------------------------------------------------------------
def _parse_labels(coll: Collection, label: list[str] | None, labels: str | None) -> list[str]:
    raw = list(label or [])
    if labels:
        raw += labels.split(";")
    out = list(dict.fromkeys(lab.strip() for lab in raw if lab.strip()))
    if not out:
        raise ApiError(422, "label: give the example's label (form field 'label')", "missing_label")
    for lab in out:
        if len(lab) > MAX_LABEL_LEN or not lab.isprintable():
            raise ApiError(422, f"label {lab[:40]!r}: at most {MAX_LABEL_LEN} printable characters")
        if lab == UNCERTAIN:
            raise ApiError(
                422, f"label {UNCERTAIN!r} is reserved: predict answers it under the threshold"
            )
    if not coll.multi_label and len(out) > 1:
        raise ApiError(
            422,
            f"this collection is single-label; got {len(out)} labels ({', '.join(out)}). "
            "Create it with multi_label=true for several labels per image",
        )
    if len(out) > MAX_LABELS:
        raise ApiError(422, f"at most {MAX_LABELS} labels per example")
    return out


@router.post("/{collection_id}/examples", status_code=201, response_model=ExamplePublic)
def add_example(
    collection_id: str,
    services: ServicesDep,
    key: CurrentKey,
    file: Annotated[UploadFile, File(description="the image")],
    label: Annotated[list[str] | None, Form(description="label (repeat for multi-label)")] = None,
    labels: Annotated[str | None, Form(description="';'-separated labels")] = None,
) -> ExamplePublic:
    """Store the image, compute its features once, and keep both with the label(s)."""
    coll = get_collection(services, key, collection_id)
    _check_backbone(services, coll)
    names = _parse_labels(coll, label, labels)
    settings = services.settings
    store = services.store
    name = file.filename or "file"
    data = read_limited(file.file, settings.max_upload_bytes, name)
    sha, ext, path = store_image(store, data, name, settings.max_pixels)
    try:
        res = services.batcher.extract([str(path)], [coll.layer], settings.request_timeout_s)
        if res.failures:
            raise ApiError(400, f"{name}: image cannot be decoded: {res.failures[0].reason}")
        vec = np.ascontiguousarray(res.features[coll.layer][0], dtype=np.float32)
        ex = Example(
            collection_id=coll.id,
            labels=names,
            image_sha256=sha,
            image_ext=ext,
            feature=vec.tobytes(),
            dim=int(vec.shape[0]),
        )
        with store.session() as s:
            if s.get(Collection, coll.id) is None:  # deleted meanwhile
                raise ApiError(404, f"collection {collection_id!r} not found")
            s.add(ex)
    except BaseException:
        store.drop_image_if_unused(sha, ext)  # no example refers to it: leave no orphan file
        raise
    # A concurrent delete of another example with the same picture may have removed the file
    # between our write and our commit; writing it again (a no-op when present) closes that race.
    store.put_image(data, ext)
    return ExamplePublic.model_validate(ex, from_attributes=True)


@router.get("/{collection_id}/examples", response_model=list[ExamplePublic])
def list_examples(
    collection_id: str,
    services: ServicesDep,
    key: CurrentKey,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[ExamplePublic]:
    coll = get_collection(services, key, collection_id)
    with services.store.session() as s:
        rows = s.scalars(
            select(Example)
            .where(Example.collection_id == coll.id)
            .order_by(Example.created, Example.id)
            .limit(limit)
            .offset(offset)
        ).all()
    return [ExamplePublic.model_validate(r, from_attributes=True) for r in rows]


@router.delete("/{collection_id}/examples/{example_id}", status_code=204)
def delete_example(
    collection_id: str, example_id: str, services: ServicesDep, key: CurrentKey
) -> Response:
    coll = get_collection(services, key, collection_id)
    with services.store.session() as s:
        ex = s.scalar(
            select(Example).where(Example.id == example_id, Example.collection_id == coll.id)
        )
        if ex is None:
            raise ApiError(404, f"example {example_id!r} not found in this collection")
        sha, ext = ex.image_sha256, ex.image_ext
        s.delete(ex)
    services.store.drop_image_if_unused(sha, ext)
    return Response(status_code=204)


# -- training, metrics, prediction -------------------------------------------------------------
@router.post("/{collection_id}/train", status_code=202, response_model=JobPublic)
def train(
    collection_id: str,
    services: ServicesDep,
    key: CurrentKey,
    body: Annotated[TrainRequest | None, Body()] = None,
) -> JobPublic:
    """Start a background training job; poll ``GET /v1/jobs/{id}``."""
    coll = get_collection(services, key, collection_id)
    req = body or TrainRequest()
    kind = req.kind
    params: dict[str, Any] = {}
    if kind == "finetune":
        params = {k: v for k, v in (("epochs", req.epochs), ("image_size", req.image_size)) if v}
    elif req.epochs is not None or req.image_size is not None:
        raise ApiError(422, "epochs and image_size apply to kind='finetune' only")
    _check_backbone(services, coll)
    # one job per collection: the check and the insert must not interleave with another train
    # or a delete of the same collection (a single process serves a database)
    with services.jobs_lock:
        with services.store.session() as s:
            active = _active_job(s, coll.id)
            if active is not None:
                raise ApiError(
                    409, f"collection already has a {active.status} training job {active.id}"
                )
            examples = list(s.scalars(select(Example).where(Example.collection_id == coll.id)))
            check_trainable(examples, coll.multi_label)
            job = Job(
                collection_id=coll.id, kind=kind, status="queued", message="waiting", params=params
            )
            s.add(job)
        try:
            services.runner.submit(job.id)
        except ApiError:
            with services.store.session() as s:
                row = s.get(Job, job.id)
                if row is not None:
                    s.delete(row)
            raise
    return JobPublic.model_validate(job, from_attributes=True)


@router.get("/{collection_id}/metrics")
def metrics(collection_id: str, services: ServicesDep, key: CurrentKey) -> dict[str, Any]:
    """Cross-validated accuracy and confusion matrix on the stored features (no training)."""
    from transferlab.serve.jobs import _jsonable

    coll = get_collection(services, key, collection_id)

    def cache_key(rows: Any) -> tuple[str, str]:
        listed = sorted([e.id, e.image_sha256, sorted(e.labels)] for e in rows)
        return coll.id, hashlib.sha256(json.dumps([coll.multi_label, listed]).encode()).hexdigest()

    where = Example.collection_id == coll.id
    order = (Example.created, Example.id)  # the CV folds follow row order
    with services.store.session() as s:  # a hit reads ids, digests and labels, not the vectors
        light = s.execute(
            select(Example.id, Example.image_sha256, Example.labels).where(where).order_by(*order)
        ).all()
    seen = cache_key(light)
    with services.metrics_lock:
        if seen in services.metrics:
            services.metrics.move_to_end(seen)
            return services.metrics[seen]  # type: ignore[no-any-return]
    with services.store.session() as s:
        examples = list(s.scalars(select(Example).where(where).order_by(*order)))
    result, *_ = collection_metrics(examples, coll.multi_label)
    out = _jsonable(result)
    with services.metrics_lock:  # keyed by the rows it was computed on (they may have changed)
        services.metrics[cache_key(examples)] = out
        while len(services.metrics) > MAX_CACHED_METRICS:
            services.metrics.popitem(last=False)
    return out  # type: ignore[no-any-return]


MAX_LOADED_MODELS = 16
MAX_CACHED_METRICS = 64


def _forget_models(services: Services, collection_id: str) -> None:
    with services.models_lock:
        for k in [k for k, m in services.models.items() if m.collection_id == collection_id]:
            del services.models[k]


def _load_model(services: Services, row: StoredModel, layer: str) -> Any:
    """A `TransferModel` for a stored model, using the shared batched extractor (LRU-cached)."""
    import joblib

    from transferlab.exceptions import TransferlabError
    from transferlab.models import TransferModel, load_model

    with services.models_lock:
        if row.id in services.models:
            services.models.move_to_end(row.id)
            return services.models[row.id]
    root = Path(row.path)
    try:
        meta = json.loads((root / "model.json").read_text())
        if meta.get("kind") == "finetuned":
            # a whole network of its own: it runs in the request's thread, not the batcher
            model = load_model(root, device=services.settings.device, progress=False)
        else:
            probe = joblib.load(root / meta["probe"]["file"])
            model = TransferModel(
                BatchedExtractor(services.batcher, layer, services.settings.request_timeout_s),  # type: ignore[arg-type]
                probe,
                row.metrics,
                classes=meta["classes"],
            )
            model.temperature = float(meta.get("calibration", {}).get("temperature", 1.0))
    except (OSError, ValueError, KeyError, TransferlabError) as exc:
        raise ApiError(
            409, f"the trained model's files are missing or damaged ({exc}); train again"
        ) from None
    model.collection_id = row.collection_id  # type: ignore[attr-defined]
    with services.models_lock:
        services.models[row.id] = model
        while len(services.models) > MAX_LOADED_MODELS:
            services.models.popitem(last=False)
    return model


@router.post("/{collection_id}/predict", response_model=PredictResponse)
def predict(
    collection_id: str,
    services: ServicesDep,
    key: CurrentKey,
    file: Annotated[UploadFile, File(description="the image")],
    top_k: Annotated[int, Form(ge=1, le=100)] = 3,
    threshold: Annotated[float | None, Form(ge=0, le=1)] = None,
) -> PredictResponse:
    """Top-k labels with calibrated probabilities; ``uncertain`` when the best is under
    `threshold`."""
    coll = get_collection(services, key, collection_id)
    with services.store.session() as s:
        row = _latest_model(s, coll.id)
    if row is None:
        raise ApiError(
            409,
            "this collection has no trained model yet; POST /v1/collections/{id}/train first",
            "not_trained",
        )
    _check_backbone(services, coll)
    model = _load_model(services, row, coll.layer)
    settings = services.settings
    name = file.filename or "file"
    data = read_limited(file.file, settings.max_upload_bytes, name)
    path = temp_image(services.store, data, name, settings.max_pixels)
    try:
        (pred,) = model.predict_paths([str(path)], top_k=top_k, threshold=threshold)
    finally:
        path.unlink(missing_ok=True)
    if pred.error:
        raise ApiError(400, f"{name}: image cannot be decoded: {pred.error}", "bad_image")
    return PredictResponse(
        label=pred.label,
        probability=pred.probability,
        uncertain=pred.uncertain,
        labels=pred.labels,
        top=[{"label": c, "probability": p} for c, p in pred.top],  # type: ignore[misc]
        model_id=row.id,
    )


@router.get("/{collection_id}/model", response_class=FileResponse)
def export_model(collection_id: str, services: ServicesDep, key: CurrentKey) -> FileResponse:
    """The latest trained model directory as a zip (loadable with `transferlab predict`)."""
    coll = get_collection(services, key, collection_id)
    with services.store.session() as s:
        row = _latest_model(s, coll.id)
    if row is None or not Path(row.path).is_dir():
        raise ApiError(409, "this collection has no trained model yet", "not_trained")
    import uuid

    base = services.store.data_dir / "tmp" / uuid.uuid4().hex
    archive = Path(shutil.make_archive(str(base), "zip", root_dir=row.path))
    return FileResponse(
        archive,
        media_type="application/zip",
        filename=f"model-{coll.id}-{row.id}.zip",
        background=BackgroundTask(archive.unlink, missing_ok=True),
    )
