"""Image Features API: images in, feature vectors out (multipart files or JSON with base64)."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from transferlab.serve.deps import CurrentKey, Services, ServicesDep
from transferlab.serve.errors import ApiError
from transferlab.serve.images import read_limited, temp_image
from transferlab.serve.schemas import FeaturesJSON, FeaturesResponse, FeatureVector, ItemError

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["features"])

_OPENAPI_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "minItems": 1,
                        },
                        "layer": {"type": "string"},
                        "backbone": {"type": "string"},
                    },
                    "required": ["files"],
                }
            },
            "application/json": {"schema": FeaturesJSON.model_json_schema()},
        },
    }
}


def check_model(services: Services, backbone: str | None, layer: str | None) -> str:
    """The layer to read; 400 naming the choices for a backbone or layer this server lacks."""
    bb = services.extractor.card_  # identity and layers: no model load for them
    if backbone not in (None, "", services.settings.backbone, bb.name):
        raise ApiError(
            400,
            f"backbone {backbone!r} is not loaded by this server; it serves "
            f"{services.settings.backbone!r} (start it with TRANSFERLAB_BACKBONE to change)",
        )
    layer = layer or services.extractor.layer
    if layer not in bb.layers:
        raise ApiError(400, f"layer must be one of {', '.join(bb.layers)}, got {layer!r}")
    return layer


@router.post(
    "/features",
    response_model=FeaturesResponse,
    openapi_extra=_OPENAPI_BODY,
    summary="Feature vectors for up to max_images_per_request images",
)
async def features(request: Request, services: ServicesDep, _key: CurrentKey) -> FeaturesResponse:
    """Send ``files`` as multipart, or JSON ``{"images": [{"name", "data": base64}]}``."""
    settings = services.settings
    limit = settings.max_images_per_request
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    items: list[tuple[str, bytes]] = []
    if ctype == "application/json":
        body = await request.body()
        if len(body) > (settings.max_upload_bytes * 4 // 3 + 1024) * limit:
            raise ApiError(413, "request body too large")
        try:
            req = FeaturesJSON.model_validate(json.loads(body))
        except json.JSONDecodeError as exc:
            raise ApiError(400, f"body is not valid JSON: {exc}") from None
        except UnicodeDecodeError:
            raise ApiError(400, "body is not valid JSON: it is not UTF-8 text") from None
        except RecursionError:
            raise ApiError(400, "body is not valid JSON: nested too deeply") from None
        except ValidationError as exc:
            msg = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ApiError(422, msg) from None
        if len(req.images) > limit:
            raise ApiError(413, f"at most {limit} images per request, got {len(req.images)}")
        for i, im in enumerate(req.images):
            name = im.name or f"images[{i}]"
            try:
                data = base64.b64decode(_strip_base64(im.data), validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, f"{name}: data is not valid base64") from None
            if len(data) > settings.max_upload_bytes:
                raise ApiError(
                    413, f"{name}: image exceeds the limit of {settings.max_upload_bytes:,} bytes"
                )
            if not data:
                raise ApiError(400, f"{name}: empty image", "bad_image")
            items.append((name, data))
        backbone, layer = req.backbone, req.layer
    elif ctype == "multipart/form-data":
        form = await request.form(max_files=limit + 1, max_fields=16)
        files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        if not files:
            raise ApiError(422, "files: send at least one image in the multipart field 'files'")
        if len(files) > limit:
            raise ApiError(413, f"at most {limit} images per request, got {len(files)}")
        for i, f in enumerate(files):
            name = f.filename or f"files[{i}]"
            items.append((name, read_limited(f.file, settings.max_upload_bytes, name)))
        backbone = _field(form.get("backbone"))
        layer = _field(form.get("layer"))
    else:
        raise ApiError(
            415,
            "send multipart/form-data with 'files', or application/json with 'images' (base64)",
        )
    layer = check_model(services, backbone, layer)
    return await run_in_threadpool(_extract, services, items, layer)


def _strip_base64(text: str) -> str:
    """Base64 as clients send it: a ``data:image/...;base64,`` URL prefix and line breaks
    (MIME style) are allowed; anything else that is not base64 is still an error."""
    if text.startswith("data:") and "," in text[:200]:
        text = text.split(",", 1)[1]
    return "".join(text.split())


def _field(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _extract(services: Services, items: list[tuple[str, bytes]], layer: str) -> FeaturesResponse:
    """Vectors per item: an image that fails (its type, size, shape or decoding) gets its own
    error and the others their vectors; only when every image failed is the request itself
    answered with the (first) image's 4xx."""
    settings = services.settings
    errors: dict[int, ApiError] = {}
    paths: dict[int, Path] = {}
    try:
        for i, (name, data) in enumerate(items):
            try:
                paths[i] = temp_image(services.store, data, name, settings.max_pixels)
            except ApiError as exc:
                errors[i] = exc
        res = None
        if paths:
            fut = services.batcher.submit([str(p) for p in paths.values()], [layer])
            res = fut.result(timeout=settings.request_timeout_s)
    finally:
        for p in paths.values():
            p.unlink(missing_ok=True)
    rows: dict[int, int] = {}
    if res is not None:
        order = list(paths)
        rows = {order[int(j)]: r for r, j in enumerate(res.index)}
        failed = {f.path: f for f in res.failures}
        for i, p in paths.items():
            if i not in rows:
                why = failed[str(p)].reason if str(p) in failed else "no vector came back"
                errors[i] = ApiError(
                    400, f"{items[i][0]}: image cannot be decoded: {why}", "bad_image"
                )
    if len(errors) == len(items):  # nothing to answer with: the request fails as its image did
        raise errors[min(errors)]
    X = res.features[layer] if res is not None else None
    out = []
    for i, (name, _) in enumerate(items):
        if i in errors:
            e = errors[i]
            err = ItemError(status=e.status, error=e.code, detail=e.detail)
            out.append(FeatureVector(name=name, dim=None, vector=None, error=err))
        else:
            v = X[rows[i]]  # type: ignore[index]
            out.append(FeatureVector(name=name, dim=int(v.shape[0]), vector=v.tolist()))
    return FeaturesResponse(backbone=services.settings.backbone, layer=layer, features=out)
