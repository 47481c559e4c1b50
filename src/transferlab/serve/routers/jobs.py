"""Training jobs: ``GET /v1/jobs/{id}`` (status) and ``DELETE /v1/jobs/{id}`` (cancel), owner
only."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from transferlab.serve.deps import CurrentKey, Services, ServicesDep, one_or_404
from transferlab.serve.errors import ApiError
from transferlab.serve.schemas import JobPublic
from transferlab.serve.store import Collection, Job, StoredModel, utcnow

__all__ = ["cancel_jobs", "router"]

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


@router.delete("/{job_id}", response_model=JobPublic)
def cancel_job(job_id: str, services: ServicesDep, key: CurrentKey) -> JobPublic:
    """Cancel a queued job (it never runs: ``cancelled`` at once) or a running one (it stops at
    its next step, a fine-tune at its next batch, and keeps no model: ``cancelled`` when it
    has; poll ``GET``). A job that has ended answers 409."""
    with services.jobs_lock:
        job = _owned_job(services, key, job_id)
        if job.status not in ("queued", "running"):
            raise ApiError(409, f"job {job_id!r} has already ended ({job.status})", "job_ended")
        where = cancel_jobs(services, [job.id])
        with services.store.session() as s:
            job = s.get(Job, job_id)
            assert job is not None
            if where.get(job_id) == "running":
                job.message = "cancelling: stops at its next step"
            return JobPublic.of(job)


def cancel_jobs(services: Services, job_ids: list[str]) -> dict[str, str]:
    """Cancel these jobs (`JobRunner.cancel`); queued ones are marked cancelled here, running
    ones when they stop. Returns job id -> ``queued``, ``running`` or ``gone``."""
    out = {}
    for job_id in job_ids:
        where = services.runner.cancel(job_id)
        out[job_id] = where
        if where != "running":  # queued (or lost by a restart): it will never run
            with services.store.session() as s:
                row = s.get(Job, job_id)
                if row is not None and row.status in ("queued", "running"):
                    row.status, row.message, row.updated = "cancelled", "cancelled", utcnow()
    return out


def _owned_job(services: Services, key: Any, job_id: str) -> Job:
    with services.store.session() as s:
        return one_or_404(
            s,
            select(Job)
            .join(Collection, Collection.id == Job.collection_id)
            .where(Job.id == job_id, Collection.owner_id == key.id),
            f"job {job_id!r} not found",
        )
