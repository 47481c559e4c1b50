"""Custom Collections API, the collections themselves: create, list, read, delete (per API key).

Their examples, training and predictions have a router each (`examples`, `training`,
`predictions`) under the same ``/v1/collections`` prefix.
"""

from __future__ import annotations

import shutil

from fastapi import APIRouter, Response
from sqlalchemy import func, select

from transferlab.serve.deps import CurrentKey, OwnedCollection, Services, ServicesDep
from transferlab.serve.errors import ApiError
from transferlab.serve.routers._common import active_job, forget_models, latest_model
from transferlab.serve.routers.features import check_model
from transferlab.serve.routers.jobs import cancel_jobs
from transferlab.serve.schemas import CollectionCreate, CollectionPublic
from transferlab.serve.store import Collection, Example, PoolImage

__all__ = ["router"]

router = APIRouter(prefix="/v1/collections", tags=["collections"])


def _public(services: Services, coll: Collection) -> CollectionPublic:
    with services.store.session() as s:
        rows = s.execute(
            select(Example.id, Example.labels).where(Example.collection_id == coll.id)
        ).all()
        model = latest_model(s, coll.id)
    return CollectionPublic.of(coll, [r[1] for r in rows], model, [r[0] for r in rows])


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
    cap = services.settings.max_collections_per_key
    with services.store.session() as s:
        n = s.scalar(select(func.count(Collection.id)).where(Collection.owner_id == key.id))
        if (n or 0) >= cap:
            raise ApiError(
                403,
                f"this key has {n} collections, its maximum (max_collections_per_key={cap}); "
                "delete one first",
                "too_many_collections",
            )
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
def get_one(coll: OwnedCollection, services: ServicesDep) -> CollectionPublic:
    return _public(services, coll)


@router.delete("/{collection_id}", status_code=204)
def delete_collection(coll: OwnedCollection, services: ServicesDep) -> Response:
    import time

    store = services.store
    deadline = time.monotonic() + 30
    while True:  # cancel its job (a running one stops at its next step), then delete
        with services.jobs_lock, store.session() as s:  # no new job can slip in meanwhile
            job = active_job(s, coll.id)
            if job is None:
                images = {
                    (sha, ext)
                    for table in (Example, PoolImage)
                    for sha, ext in s.execute(
                        select(table.image_sha256, table.image_ext).where(
                            table.collection_id == coll.id
                        )
                    )
                }
                row = s.get(Collection, coll.id)
                if row is not None:
                    s.delete(row)
                break
        cancel_jobs(services, [job.id])
        if time.monotonic() > deadline:
            raise ApiError(
                409,
                f"the collection's running job {job.id} is being cancelled; retry shortly",
                "job_cancelling",
                headers={"Retry-After": "5"},
            )
        time.sleep(0.1)  # without the lock: other collections' requests go on
    shutil.rmtree(store.data_dir / "models" / coll.id, ignore_errors=True)
    for sha, ext in images:
        store.drop_image_if_unused(sha, ext)
    forget_models(services, coll.id)
    return Response(status_code=204)
