"""A collection's labelled examples: add (image + labels, features computed once), list, delete."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from sqlalchemy import select

from transferlab.serve.deps import OwnedCollection, ServicesDep, one_or_404
from transferlab.serve.errors import ApiError
from transferlab.serve.images import read_limited, store_image
from transferlab.serve.routers._common import check_backbone, one_file
from transferlab.serve.schemas import ExamplePublic
from transferlab.serve.store import Collection, Example

__all__ = ["router"]

router = APIRouter(prefix="/v1/collections", tags=["collections"])

MAX_LABEL_LEN = 100
MAX_LABELS = 50
UNCERTAIN = "uncertain"  # what predict answers under the threshold (models.Prediction)


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
    coll: OwnedCollection,
    services: ServicesDep,
    file: Annotated[list[UploadFile], File(description="the image (exactly one)")],
    label: Annotated[list[str] | None, Form(description="label (repeat for multi-label)")] = None,
    labels: Annotated[str | None, Form(description="';'-separated labels")] = None,
) -> ExamplePublic:
    """Store the image, compute its features once, and keep both with the label(s)."""
    upload = one_file(file)
    check_backbone(services, coll)
    names = _parse_labels(coll, label, labels)
    settings = services.settings
    store = services.store
    name = upload.filename or "file"
    data = read_limited(upload.file, settings.max_upload_bytes, name)
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
                raise ApiError(404, f"collection {coll.id!r} not found")
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
    coll: OwnedCollection,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[ExamplePublic]:
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
def delete_example(coll: OwnedCollection, example_id: str, services: ServicesDep) -> Response:
    with services.store.session() as s:
        ex = one_or_404(
            s,
            select(Example).where(Example.id == example_id, Example.collection_id == coll.id),
            f"example {example_id!r} not found in this collection",
        )
        sha, ext = ex.image_sha256, ex.image_ext
        s.delete(ex)
    services.store.drop_image_if_unused(sha, ext)
    return Response(status_code=204)


@router.delete("/{collection_id}/labels/{label}", status_code=204)
def delete_label(coll: OwnedCollection, label: str, services: ServicesDep) -> Response:
    """Delete every example with this label (in a multi-label collection: the label is taken
    off, and an example left with no label is deleted)."""
    with services.store.session() as s:
        rows = list(s.scalars(select(Example).where(Example.collection_id == coll.id)))
        hit = [e for e in rows if label in e.labels]
        if not hit:
            raise ApiError(404, f"label {label!r} has no example in this collection")
        dropped = []
        for e in hit:
            rest = [x for x in e.labels if x != label]
            if rest and coll.multi_label:
                e.labels = rest
            else:
                dropped.append((e.image_sha256, e.image_ext))
                s.delete(e)
    for sha, ext in dropped:
        services.store.drop_image_if_unused(sha, ext)
    return Response(status_code=204)
