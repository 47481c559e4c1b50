"""Training a collection: start a background job (probe, fine-tune or auto), and the
cross-validated metrics that a probe on the stored features reaches (no model trained)."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Body
from sqlalchemy import func, select

from transferlab.serve.deps import CurrentKey, OwnedCollection, ServicesDep
from transferlab.serve.errors import ApiError
from transferlab.serve.jobs import check_trainable, collection_metrics, jsonable
from transferlab.serve.routers._common import active_job, check_backbone
from transferlab.serve.schemas import AutoTrain, FinetuneTrain, JobPublic, ProbeTrain, TrainRequest
from transferlab.serve.settings import Settings
from transferlab.serve.store import Collection, Example, Job

__all__ = ["router"]

router = APIRouter(prefix="/v1/collections", tags=["collections"])

MAX_CACHED_METRICS = 64


@router.post("/{collection_id}/train", status_code=202, response_model=JobPublic)
def train(
    coll: OwnedCollection,
    services: ServicesDep,
    key: CurrentKey,
    body: Annotated[TrainRequest | None, Body()] = None,
) -> JobPublic:
    """Start a background training job; poll ``GET /v1/jobs/{id}``.

    ``{"kind": "auto", "budget_s": 600}`` runs `transferlab auto` on the collection's images
    within the budget; the job's message follows its stages, and its ``result`` names the
    candidate kept (a probe on a layer, or a fine-tune recipe) and its validation accuracy.
    """
    req: Any = body or ProbeTrain()
    kind = req.kind
    params: dict[str, Any] = {}
    if isinstance(req, FinetuneTrain):  # each kind's fields are its own (the schema refuses others)
        params = {k: v for k, v in (("epochs", req.epochs), ("image_size", req.image_size)) if v}
    elif isinstance(req, AutoTrain):
        params = auto_params(req, services.settings, coll)
    check_backbone(services, coll)
    # one job per collection: the check and the insert must not interleave with another train
    # or a delete of the same collection (a single process serves a database)
    with services.jobs_lock:
        with services.store.session() as s:
            active = active_job(s, coll.id)
            if active is not None:
                raise ApiError(
                    409, f"collection already has a {active.status} training job {active.id}"
                )
            mine = s.scalar(
                select(func.count(Job.id))
                .join(Collection, Collection.id == Job.collection_id)
                .where(Collection.owner_id == key.id, Job.status.in_(("queued", "running")))
            )
            cap = services.settings.max_jobs_per_key
            if (mine or 0) >= cap:
                raise ApiError(
                    429,
                    f"this key has {mine} training jobs queued or running, its maximum "
                    f"(max_jobs_per_key={cap}); retry when one has finished, or cancel one "
                    "with DELETE /v1/jobs/{id}",
                    "too_many_jobs",
                    headers={"Retry-After": "10"},
                )
            examples = list(s.scalars(select(Example).where(Example.collection_id == coll.id)))
            check_trainable(examples, coll.multi_label)
            job = Job(
                collection_id=coll.id, kind=kind, status="queued", message="waiting", params=params
            )
            s.add(job)
        try:
            services.runner.submit(job.id, owner=key.id)
        except ApiError:
            with services.store.session() as s:
                row = s.get(Job, job.id)
                if row is not None:
                    s.delete(row)
            raise
    return JobPublic.of(job)


def auto_params(req: AutoTrain, settings: Settings, coll: Any) -> dict[str, Any]:
    """What an auto job runs with, fixed when it is queued (and kept in its row): the budget,
    checked against the server's cap, and the backbones ranked with their weights."""
    cap = settings.max_auto_budget_s
    budget = req.budget_s if req.budget_s is not None else min(settings.auto_budget_s, cap)
    if budget > cap:
        raise ApiError(
            422,
            f"budget_s: must be at most {cap:g} seconds (this server's max_auto_budget_s), "
            f"got {budget:g}",
        )
    return {
        "budget_s": float(budget),
        "backbones": list(settings.auto_backbones or [coll.backbone]),
        "weights": settings.auto_weights or settings.weights,
    }


@router.get("/{collection_id}/metrics")
def metrics(coll: OwnedCollection, services: ServicesDep) -> dict[str, Any]:
    """Cross-validated accuracy and confusion matrix on the stored features (no training)."""

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
    out = jsonable(result)
    with services.metrics_lock:  # keyed by the rows it was computed on (they may have changed)
        services.metrics[cache_key(examples)] = out
        while len(services.metrics) > MAX_CACHED_METRICS:
            services.metrics.popitem(last=False)
    return out  # type: ignore[no-any-return]
