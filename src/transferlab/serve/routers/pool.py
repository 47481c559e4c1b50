"""Know your data in the service (issue 19): a collection's pool of unlabelled images, the
suggestions of which to label next, labelling one (it becomes an example), the audit of the
examples, and the image files behind examples and pool images (thumbnails for the page)."""

from __future__ import annotations

import mimetypes
from collections import Counter
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Query, Response, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel
from sqlalchemy import select

from transferlab.serve.deps import OwnedCollection, ServicesDep, one_or_404
from transferlab.serve.errors import ApiError
from transferlab.serve.images import read_limited, store_image
from transferlab.serve.routers._common import check_backbone
from transferlab.serve.routers.examples import _parse_labels
from transferlab.serve.schemas import (
    AuditResponse,
    ExamplePublic,
    PoolImagePublic,
    PoolLabel,
    Suggestion,
    SuggestionsResponse,
)
from transferlab.serve.store import Collection, Example, PoolImage

__all__ = ["router"]

router = APIRouter(prefix="/v1/collections", tags=["know your data"])

#: a pool is for choosing from, not for storage: beyond this, label some first
MAX_POOL = 5000


class PoolFailure(BaseModel):
    name: str
    error: str


class PoolUpload(BaseModel):
    """Per file: added to the pool, or why not (one bad file fails only itself)."""

    added: list[PoolImagePublic]
    failed: list[PoolFailure]


@router.post("/{collection_id}/pool", status_code=201, response_model=PoolUpload)
def add_to_pool(
    coll: OwnedCollection,
    services: ServicesDep,
    files: Annotated[list[UploadFile], File(description="unlabelled images")],
) -> PoolUpload:
    """Store unlabelled images (features computed once) for `suggestions` to choose from."""
    check_backbone(services, coll)
    settings, store = services.settings, services.store
    if len(files) > settings.max_images_per_request:
        raise ApiError(413, f"at most {settings.max_images_per_request} files per request")
    with store.session() as s:
        have = len(s.scalars(select(PoolImage.id).where(PoolImage.collection_id == coll.id)).all())
    if have + len(files) > MAX_POOL:
        raise ApiError(409, f"the pool holds {have} images (at most {MAX_POOL}); label some first")
    stored: list[tuple[str, str, str, Any]] = []
    failed: list[PoolFailure] = []
    for f in files:
        name = (f.filename or "file")[:200]
        try:
            data = read_limited(f.file, settings.max_upload_bytes, name)
            sha, ext, path = store_image(store, data, name, settings.max_pixels)
        except ApiError as e:
            failed.append(PoolFailure(name=name, error=e.detail))
            continue
        stored.append((name, sha, ext, path))
    added: list[PoolImage] = []
    if stored:
        try:
            res = services.batcher.extract(
                [str(p) for *_, p in stored], [coll.layer], settings.request_timeout_s
            )
            bad = {e.path: e.reason for e in res.failures}
            rows = iter(res.features[coll.layer])
            with store.session() as s:
                if s.get(Collection, coll.id) is None:
                    raise ApiError(404, f"collection {coll.id!r} not found")
                for name, sha, ext, path in stored:
                    if str(path) in bad:
                        failed.append(
                            PoolFailure(name=name, error=f"cannot decode: {bad[str(path)]}")
                        )
                        continue
                    vec = np.ascontiguousarray(next(rows), dtype=np.float32)
                    row = PoolImage(collection_id=coll.id, name=name, image_sha256=sha,
                                    image_ext=ext, feature=vec.tobytes(), dim=int(vec.shape[0]))  # fmt: skip
                    s.add(row)
                    added.append(row)
        except BaseException:
            for _, sha, ext, _ in stored:
                store.drop_image_if_unused(sha, ext)
            raise
        for _, sha, ext, _ in stored:
            if not any(r.image_sha256 == sha for r in added):
                store.drop_image_if_unused(sha, ext)
    if not added:
        raise ApiError(400, f"no image added: {failed[0].name}: {failed[0].error}", "bad_image")
    return PoolUpload(
        added=[PoolImagePublic.model_validate(r, from_attributes=True) for r in added],
        failed=failed,
    )


@router.get("/{collection_id}/pool", response_model=list[PoolImagePublic])
def list_pool(
    coll: OwnedCollection,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[PoolImagePublic]:
    with services.store.session() as s:
        rows = s.scalars(
            select(PoolImage)
            .where(PoolImage.collection_id == coll.id)
            .order_by(PoolImage.created, PoolImage.id)
            .limit(limit)
            .offset(offset)
        ).all()
    return [PoolImagePublic.model_validate(r, from_attributes=True) for r in rows]


def _pool_row(s: Any, coll: Collection, image_id: str) -> PoolImage:
    return one_or_404(
        s,
        select(PoolImage).where(PoolImage.id == image_id, PoolImage.collection_id == coll.id),
        f"pool image {image_id!r} not found in this collection",
    )


@router.delete("/{collection_id}/pool/{image_id}", status_code=204)
def delete_pool_image(coll: OwnedCollection, image_id: str, services: ServicesDep) -> Response:
    with services.store.session() as s:
        row = _pool_row(s, coll, image_id)
        sha, ext = row.image_sha256, row.image_ext
        s.delete(row)
    services.store.drop_image_if_unused(sha, ext)
    return Response(status_code=204)


@router.post(
    "/{collection_id}/pool/{image_id}/label", status_code=201, response_model=ExamplePublic
)
def label_pool_image(
    coll: OwnedCollection, image_id: str, body: PoolLabel, services: ServicesDep
) -> ExamplePublic:
    """Give a pool image its label(s): it leaves the pool and becomes an example (its stored
    features move with it; nothing is recomputed)."""
    names = _parse_labels(coll, body.labels, None)
    with services.store.session() as s:
        row = _pool_row(s, coll, image_id)
        ex = Example(collection_id=coll.id, labels=names, image_sha256=row.image_sha256,
                     image_ext=row.image_ext, feature=row.feature, dim=row.dim)  # fmt: skip
        s.add(ex)
        s.delete(row)
    return ExamplePublic.model_validate(ex, from_attributes=True)


def _image(services: Any, sha: str, ext: str) -> FileResponse:
    path = services.store.image_path(sha, ext)
    if not path.exists():
        raise ApiError(404, "the image file is gone from the store")
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media,
                        headers={"Cache-Control": "private, max-age=86400"})  # fmt: skip


@router.get(
    "/{collection_id}/pool/{image_id}/image",
    response_class=FileResponse,
    responses={200: {"content": {"image/*": {}}, "description": "the stored image file"}},
)
def pool_image_file(coll: OwnedCollection, image_id: str, services: ServicesDep) -> FileResponse:
    with services.store.session() as s:
        row = _pool_row(s, coll, image_id)
        sha, ext = row.image_sha256, row.image_ext
    return _image(services, sha, ext)


@router.get(
    "/{collection_id}/examples/{example_id}/image",
    response_class=FileResponse,
    responses={200: {"content": {"image/*": {}}, "description": "the stored image file"}},
)
def example_image_file(
    coll: OwnedCollection, example_id: str, services: ServicesDep
) -> FileResponse:
    with services.store.session() as s:
        ex = one_or_404(
            s,
            select(Example).where(Example.id == example_id, Example.collection_id == coll.id),
            f"example {example_id!r} not found in this collection",
        )
        sha, ext = ex.image_sha256, ex.image_ext
    return _image(services, sha, ext)


def _examples(services: Any, coll: Collection) -> tuple[list[Example], np.ndarray]:
    with services.store.session() as s:
        rows = s.scalars(
            select(Example)
            .where(Example.collection_id == coll.id)
            .order_by(Example.created, Example.id)
        ).all()
    X = np.stack([np.frombuffer(r.feature, dtype=np.float32) for r in rows]) if rows else None
    return list(rows), X if X is not None else np.zeros((0, 0), np.float32)


@router.get("/{collection_id}/suggestions", response_model=SuggestionsResponse)
def suggestions(
    coll: OwnedCollection,
    services: ServicesDep,
    n: Annotated[int, Query(ge=1, le=100)] = 10,
) -> SuggestionsResponse:
    """The pool images to label next, best first (`transferlab suggest`'s measured strategy:
    typical images while a label has fewer than 3 examples, then the least sure spread out)."""
    from transferlab.diagnose import suggest_labels

    check_backbone(services, coll)
    if coll.multi_label:
        raise ApiError(409, "suggestions need a single-label collection", "multi_label")
    rows, X = _examples(services, coll)
    with services.store.session() as s:
        pool = s.scalars(
            select(PoolImage).where(PoolImage.collection_id == coll.id).order_by(PoolImage.id)
        ).all()
    if not pool:
        return SuggestionsResponse(strategy="none", why="the pool is empty: upload unlabelled "
                                   "images to /pool first", n_examples=len(rows), n_pool=0,
                                   suggestions=[])  # fmt: skip
    U = np.stack([np.frombuffer(p.feature, dtype=np.float32) for p in pool])
    y = [r.labels[0] for r in rows]
    got = suggest_labels(X if len(rows) else np.zeros((0, U.shape[1])), y, U, n)
    return SuggestionsResponse(
        strategy=got.strategy,
        why=got.why,
        n_examples=len(rows),
        n_pool=len(pool),
        suggestions=[
            Suggestion(
                rank=k + 1,
                pool_image_id=pool[i].id,
                name=pool[i].name,
                score=None if np.isnan(sc) else sc,
                predicted=pr,
            )
            for k, (i, sc, pr) in enumerate(zip(got.order, got.scores, got.predicted, strict=True))
        ],
    )


@router.get("/{collection_id}/audit", response_model=AuditResponse)
def audit(coll: OwnedCollection, services: ServicesDep) -> AuditResponse:
    """`transferlab audit` on the stored features: the same file added twice, near-identical
    examples (and whether their labels agree), likely label errors, outliers, imbalance."""
    from transferlab.data import Sample
    from transferlab.diagnose import (
        NEAR_DUPLICATE_SIMILARITY,
        label_issue_C,
        label_issues,
        near_duplicates,
        outliers,
    )

    rows, X = _examples(services, coll)
    labels = [";".join(r.labels) for r in rows]
    counts = Counter(lab for r in rows for lab in r.labels)
    groups: list[dict[str, Any]] = []
    by_sha: dict[str, list[int]] = {}
    for k, r in enumerate(rows):
        by_sha.setdefault(r.image_sha256, []).append(k)
    for ks in by_sha.values():
        if len(ks) > 1:
            groups.append({"kind": "same file", "example_ids": [rows[k].id for k in ks],
                           "labels": [labels[k] for k in ks], "similarity": 1.0,
                           "label_conflict": len({labels[k] for k in ks}) > 1})  # fmt: skip
    issues: list[dict[str, Any]] = []
    odd: list[dict[str, Any]] = []
    note = "not looked for: fewer than 3 examples"
    if len(rows) >= 3:
        samples = [(Sample(r.id, labels[k]), "examples") for k, r in enumerate(rows)]
        same = [set(g["example_ids"]) for g in groups]
        for g in near_duplicates(X, samples, threshold=NEAR_DUPLICATE_SIMILARITY):
            if set(g.paths) not in same:
                groups.append({"kind": "near (features)", "example_ids": g.paths,
                               "labels": g.labels, "similarity": g.similarity,
                               "label_conflict": g.label_conflict})  # fmt: skip
        o = outliers(X)
        odd = [{"example_id": rows[i].id, "label": labels[i], "score": round(float(o.scores[i]), 4)}
               for i in o.flagged]  # fmt: skip
        small = sorted(c for c, v in Counter(labels).items() if v < 5)
        if coll.multi_label:
            note = "not looked for: multi-label collection"
        elif len(counts) < 2 or small:
            note = "not looked for: each label needs 5+ examples (a 5-fold probe)"
        else:
            found = label_issues(X, labels)
            issues = [{"example_id": rows[i.index].id, **{k: v for k, v in i.to_dict().items() if k != "index"}}
                      for i in found]  # fmt: skip
            note = (f"{len(issues)} of {len(rows)} examples flagged by cleanlab on 5-fold "
                    f"out-of-fold probabilities (C={label_issue_C(len(rows)):.3g})")  # fmt: skip
    with services.store.session() as s:
        in_pool = s.scalars(
            select(PoolImage.id).where(
                PoolImage.collection_id == coll.id,
                PoolImage.image_sha256.in_(list(by_sha)),
            )
        ).all()
    return AuditResponse(
        n_examples=len(rows),
        label_counts=dict(sorted(counts.items())),
        imbalance_ratio=round(max(counts.values()) / min(counts.values()), 3) if counts else None,
        duplicates=sorted(groups, key=lambda g: (not g["label_conflict"], -len(g["example_ids"]))),
        pool_already_labelled=list(in_pool),
        label_issues=issues,
        label_issues_note=note,
        outliers=odd,
    )
