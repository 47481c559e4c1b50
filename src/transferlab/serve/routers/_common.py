"""What several collection routers ask of the database and of the loaded-model cache."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from transferlab.serve.deps import Services
from transferlab.serve.errors import ApiError
from transferlab.serve.store import Collection, Job, StoredModel

__all__ = ["active_job", "check_backbone", "forget_models", "latest_model", "one_file"]


def latest_model(s: Any, collection_id: str) -> StoredModel | None:
    """The collection's newest trained model (what predict and export use), or None."""
    return s.scalar(
        select(StoredModel)
        .where(StoredModel.collection_id == collection_id)
        .order_by(StoredModel.created.desc(), StoredModel.id.desc())
        .limit(1)
    )


def active_job(s: Any, collection_id: str) -> Job | None:
    """The collection's queued or running job (at most one), or None."""
    return s.scalar(
        select(Job).where(Job.collection_id == collection_id, Job.status.in_(("queued", "running")))
    )


def check_backbone(services: Services, coll: Collection) -> None:
    """409 when the collection's stored features come from another backbone than the one this
    server runs (restarted with another TRANSFERLAB_BACKBONE): mixing them would be garbage."""
    if coll.backbone != services.settings.backbone:
        raise ApiError(
            409,
            f"collection {coll.id!r} was built with backbone {coll.backbone!r}; this server runs "
            f"{services.settings.backbone!r}. Serve it with TRANSFERLAB_BACKBONE={coll.backbone}",
            "backbone_mismatch",
        )


def forget_models(services: Services, collection_id: str) -> None:
    """Drop a collection's loaded models from the cache (its files are gone)."""
    with services.models_lock:
        for k in [k for k, m in services.models.items() if m.collection_id == collection_id]:
            del services.models[k]


def one_file(files: list[Any]) -> Any:
    """The one upload of a single-image field; two or more are refused (not one kept quietly)."""
    if len(files) != 1:
        raise ApiError(
            422,
            f"file: send exactly one image in this field, got {len(files)} (several images: "
            "one request each, or the pool)",
        )
    return files[0]
