"""Training job status: ``GET /v1/jobs/{id}`` (owner only)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from transferlab.serve.deps import CurrentKey, ServicesDep, one_or_404
from transferlab.serve.schemas import JobPublic
from transferlab.serve.store import Collection, Job, StoredModel

__all__ = ["router"]

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, services: ServicesDep, key: CurrentKey) -> JobPublic:
    """Status (queued, running, succeeded, failed), progress 0-1, message and error; once
    succeeded, ``result``: the model it trained (accuracy; kind='auto': the chosen candidate)."""
    with services.store.session() as s:
        job = one_or_404(
            s,
            select(Job)
            .join(Collection, Collection.id == Job.collection_id)
            .where(Job.id == job_id, Collection.owner_id == key.id),
            f"job {job_id!r} not found",
        )
        model = None
        if job.status == "succeeded":
            model = s.scalar(
                select(StoredModel)
                .where(StoredModel.job_id == job.id)
                .order_by(StoredModel.id.desc())
                .limit(1)
            )
        return JobPublic.of(job, model)
