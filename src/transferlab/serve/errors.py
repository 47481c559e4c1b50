"""One JSON error shape for every failure: ``{"error": code, "detail": message}``.

Library errors (`TransferlabError`) become 4xx here, in one place; anything unexpected is logged
with its traceback and answered 500 without internals.
"""

from __future__ import annotations

import concurrent.futures
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from transferlab.exceptions import DatasetError, ImageLoadError, TransferlabError

__all__ = ["ApiError", "BodyTooLarge", "install_error_handlers"]

logger = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    501: "not_implemented",
    503: "unavailable",
}


class ApiError(Exception):
    """An HTTP error with a machine code and a message a person can act on."""

    def __init__(
        self,
        status: int,
        detail: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code or _CODES.get(status, "error")
        self.headers = headers


#: the kinds of TrainRequest (`serve.schemas`), which validation errors name as the kind,
#: and which kind each of its own fields belongs to (for the message)
TRAIN_KINDS = ("linear_probe", "finetune", "auto")
TRAIN_FIELD_KIND = {"epochs": "finetune", "image_size": "finetune", "budget_s": "auto"}


class NotTrainable(DatasetError):
    """The collection's examples cannot train a model yet (none, one label, ...): a conflict
    with its current state (409), which more examples resolve, not a malformed request."""


class BodyTooLarge(StarletteHTTPException):
    """Raised while a request body streams in past the cap. An `HTTPException` so that FastAPI's
    form parsing passes it on unchanged instead of turning it into "error parsing the body"."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit:,} bytes")


def not_implemented(what: str) -> ApiError:
    return ApiError(501, f"{what} is not implemented yet", "not_implemented")


def _body(status: int, detail: str, code: str | None = None) -> dict[str, str]:
    return {"error": code or _CODES.get(status, "error"), "detail": detail}


def allowed_methods(req: Request) -> list[str]:
    """Every method the API documents at this request's path (its OpenAPI document, the one
    table of routes; FastAPI's router answers 405 naming one route's methods only)."""
    import re

    methods: set[str] = set()
    for template, ops in req.app.openapi().get("paths", {}).items():
        pattern = "^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, req.url.path):
            methods |= {m.upper() for m in ops}
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_req: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            _body(exc.status, exc.detail, exc.code), exc.status, headers=exc.headers
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # Starlette names the first matching route's methods only
            headers["Allow"] = ", ".join(allowed_methods(req)) or headers.get("Allow", "")
        return JSONResponse(
            _body(exc.status_code, str(exc.detail)), exc.status_code, headers=headers or None
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            where = [str(x) for x in e.get("loc", ()) if x != "body"]
            # a one-shape-per-kind body (TrainRequest) puts its kind into the location
            kind = next((x for x in where if x in TRAIN_KINDS), None)
            loc = ".".join(x for x in where if x not in TRAIN_KINDS) or "request"
            msg = e.get("msg", "invalid")
            if e.get("type") == "extra_forbidden":
                msg = f"not a field of kind={kind!r}" if kind else "not a field of this request"
                owner = TRAIN_FIELD_KIND.get(loc)
                if kind and owner:
                    msg += f"; {loc} applies to kind={owner!r} only"
            parts.append(f"{loc}: {msg}")
        return JSONResponse(_body(422, "; ".join(parts) or "invalid request"), 422)

    @app.exception_handler(NotTrainable)
    async def _not_trainable(_req: Request, exc: NotTrainable) -> JSONResponse:
        return JSONResponse(_body(409, str(exc), "not_trainable"), 409)

    @app.exception_handler(ImageLoadError)
    async def _image(_req: Request, exc: ImageLoadError) -> JSONResponse:
        return JSONResponse(_body(400, f"image cannot be used: {exc.reason}", "bad_image"), 400)

    @app.exception_handler(TransferlabError)
    async def _library(_req: Request, exc: TransferlabError) -> JSONResponse:
        return JSONResponse(_body(400, str(exc)), 400)

    async def _timeout(_req: Request, exc: Exception) -> JSONResponse:
        # a future that did not resolve within request_timeout_s: the server is saturated
        return JSONResponse(
            _body(503, "the server is busy and did not finish in time; retry later", "timeout"),
            503,
            headers={"Retry-After": "5"},
        )

    # concurrent.futures.TimeoutError is the builtin only from Python 3.11
    for timeout_type in {TimeoutError, concurrent.futures.TimeoutError}:
        app.add_exception_handler(timeout_type, _timeout)

    @app.exception_handler(Exception)
    async def _unexpected(req: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", req.method, req.url.path)
        return JSONResponse(
            _body(500, f"internal error ({type(exc).__name__}); see the server log", "internal"),
            500,
        )
