"""The OpenAPI document, made to tell the truth about what the server does (issue 21).

FastAPI's generated document lists only each route's success code and a 422 in FastAPI's own
array-shaped ``HTTPValidationError``, while this server answers every error with
``{"error": code, "detail": message}`` and can answer 400, 401, 404, 409, 413, 415, 429 and
503 where the guard middleware, the key check, the rate limit or the route raise them. Here
every operation gets the codes it can return, all with the real `ErrorBody` schema, and the
document gets its security schemes (Bearer and ``X-API-Key``). Codes are assigned by rules on
the operation (authenticated, has a path parameter, takes an upload, changes state), so a new
route is documented without a list to keep in step.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

__all__ = ["ERROR_BODY", "install_openapi"]

ERROR_BODY: dict[str, Any] = {
    "type": "object",
    "title": "ErrorBody",
    "description": "Every error answer: a machine code and a message a person can act on.",
    "properties": {
        "error": {"type": "string", "description": "machine code, e.g. not_found, bad_image"},
        "detail": {"type": "string", "description": "what went wrong, naming the field or file"},
    },
    "required": ["error", "detail"],
}

_WHY = {
    "400": "bad request: a malformed header or body, an unknown layer or backbone",
    "401": "missing, invalid or revoked API key",
    "403": "a per-key quota is reached (collections)",
    "404": "not found (or not this key's: the two look the same)",
    "409": "the resource's state does not allow it (no model yet, a job running, ...)",
    "413": "too large: the body, an image's bytes, its pixels, or too many images",
    "415": "not an accepted content type or image format",
    "422": "a field is missing or invalid (named in detail)",
    "429": "too many requests or jobs for this key (see Retry-After)",
    "503": "the server is at capacity (see Retry-After)",
}
_RETRY = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
_UPLOADS = ("multipart/form-data",)
#: /v1 operations that take no key (the first run's key creation, by its one-time token)
PUBLIC = {("/v1/setup", "post")}


def _codes(path: str, method: str, op: dict[str, Any]) -> list[str]:
    if not path.startswith("/v1/"):
        return []
    codes = ["400", "413", "422", "503"]
    if (path, method) in PUBLIC:
        return sorted({*codes, "403", "409"})
    codes += ["401", "429"]
    if "{" in path:
        codes += ["404", "409"]
    if method in ("post", "put", "patch", "delete"):
        codes.append("409")
    body = op.get("requestBody", {}).get("content", {})
    if any(c in body for c in _UPLOADS) or "application/json" in body:
        codes.append("415")
    if path == "/v1/collections" and method == "post":
        codes.append("403")
    return sorted(set(codes))


def install_openapi(app: FastAPI) -> None:
    """Replace `app.openapi` with the corrected document (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            routes=app.routes,
        )
        components = doc.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas["ErrorBody"] = ERROR_BODY
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "an API key"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        ref = {"$ref": "#/components/schemas/ErrorBody"}
        for path, ops in doc.get("paths", {}).items():
            for method, op in ops.items():
                responses = op.setdefault("responses", {})
                for code in _codes(path, method, op):
                    entry: dict[str, Any] = {
                        "description": _WHY[code],
                        "content": {"application/json": {"schema": ref}},
                    }
                    if code in ("429", "503"):
                        entry["headers"] = _RETRY
                    responses[code] = entry
                if path.startswith("/v1/") and (path, method) not in PUBLIC:
                    op["security"] = [{"bearer": []}, {"apiKey": []}]
        _hoist_defs(doc, schemas)
        _require_upload_bodies(doc, schemas)
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _hoist_defs(doc: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Schemas inlined in an operation (a route's hand-written body, from pydantic's
    `model_json_schema`) keep their nested models under ``$defs`` with ``#/$defs/...`` refs,
    which do not resolve from the document's root: move them to components."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            for name, sub in node.pop("$defs", {}).items():
                schemas.setdefault(name, walk(sub))
            return {
                k: (v.replace("#/$defs/", "#/components/schemas/") if k == "$ref" else walk(v))
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    doc["paths"] = walk(doc["paths"])


def _require_upload_bodies(doc: dict[str, Any], schemas: dict[str, Any]) -> None:
    """A multipart body whose form has required fields (the image) is itself required:
    FastAPI leaves ``requestBody.required`` out, which says an empty body would do."""
    for ops in doc["paths"].values():
        for op in ops.values():
            body = op.get("requestBody")
            form = (body or {}).get("content", {}).get("multipart/form-data")
            if not form:
                continue
            schema = form.get("schema", {})
            ref = schema.get("$ref", "")
            if ref.startswith("#/components/schemas/"):
                schema = schemas.get(ref.rsplit("/", 1)[1], {})
            if schema.get("required"):
                body["required"] = True
            # a single-image field is a list on the server only to refuse a second file
            # (`one_file`); its contract is one binary part
            prop = schema.get("properties", {}).get("file", {})
            if prop.get("type") == "array" and prop.get("items", {}).get("format") == "binary":
                desc = prop.get("description", "the image (exactly one)")
                schema["properties"]["file"] = {
                    "type": "string",
                    "format": "binary",
                    "description": desc,
                }
