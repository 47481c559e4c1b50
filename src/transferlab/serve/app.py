"""`create_app(settings)`: the FastAPI application, its lifespan and middleware.

Nothing is built at import time: the database, the backbone (loaded once), the feature batcher
and the job runner are created in the lifespan and shared through ``app.state.services``.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from transferlab.serve.errors import BodyTooLarge, install_error_handlers
from transferlab.serve.openapi import install_openapi
from transferlab.serve.settings import Settings

__all__ = ["GuardMiddleware", "JsonFormatter", "configure_logging", "create_app"]

logger = logging.getLogger("transferlab.serve")
STATIC = Path(__file__).parent / "static"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    _SKIP = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
        "message",
        "color_message",
    }

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in self._SKIP})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "INFO") -> None:
    """JSON logs on stderr for the server process (the CLI calls this; tests need not)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. `settings` default: from ``TRANSFERLAB_*`` environment variables."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from transferlab.features import FeatureExtractor
        from transferlab.serve.batcher import FeatureBatcher
        from transferlab.serve.deps import Services
        from transferlab.serve.jobs import JobRunner
        from transferlab.serve.store import Store

        t0 = time.perf_counter()
        store = Store(settings.data_dir, settings.db_url)
        store.recover_jobs()  # before the runner starts: nothing of ours is running yet
        store.sweep_orphans()  # image files a killed upload left without a row
        extractor = FeatureExtractor(
            settings.backbone,
            layer=settings.layer,
            weights=settings.weights,
            device=settings.device,
            batch_size=settings.batch_size,
            num_workers=0,
            cache=False,  # examples keep their vectors in the database
            progress=False,
            max_pixels=settings.max_pixels,
            precision=settings.precision,
            calibration=_calibration_images(settings.calibration_dir),
        ).prepare()  # ONNX Runtime on CPU from the first request (exported once per weights)
        batcher = FeatureBatcher(
            extractor,
            settings.batch_size,
            settings.batch_wait_ms / 1000,
            settings.feature_queue_size,
        )
        runner = JobRunner(store, batcher, settings.queue_size, settings.device)
        app.state.services = Services(settings, store, extractor, batcher, runner)
        if settings.setup_token and not store.list_keys():
            app.state.services.setup_token = settings.setup_token
        logger.info(
            "service ready",
            extra={
                "backbone": settings.backbone,
                "data_dir": str(store.data_dir),
                "db": store.engine.url.render_as_string(hide_password=True),
                "startup_s": round(time.perf_counter() - t0, 3),
            },
        )
        try:
            yield
        finally:
            runner.stop()
            batcher.stop()
            store.close()

    docs_assets = _offline_docs_assets()
    app = FastAPI(
        title="transferlab",
        summary="Image features and custom classifiers from a few labelled examples.",
        version=_version(),
        lifespan=lifespan,
        docs_url=None if docs_assets is not None else "/docs",  # FastAPI's: from a CDN
        redoc_url=None if docs_assets is not None else "/redoc",
    )
    if docs_assets is not None:
        _offline_docs(app, docs_assets)
    install_error_handlers(app)
    install_openapi(app)

    app.add_middleware(GuardMiddleware, settings=settings)

    from transferlab.serve.routers import (
        collections,
        examples,
        features,
        health,
        jobs,
        pool,
        predictions,
        setup,
        training,
    )

    # in this order: the OpenAPI document lists the operations as they are included
    for module in (
        health,
        setup,
        features,
        collections,
        examples,
        pool,
        training,
        predictions,
        jobs,
    ):
        app.include_router(module.router)

    @app.get("/", include_in_schema=False, response_model=None)
    def index() -> Response:
        page = STATIC / "index.html"
        if not page.is_file():
            return JSONResponse(
                {"error": "not_implemented", "detail": "the web page is not implemented yet"},
                501,
            )
        html = page.read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Content-Security-Policy": page_csp(html)})

    return app


#: on every response: no MIME sniffing, no framing (clickjacking), no referrer to other sites
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


def page_csp(html: str) -> str:
    """The web page's Content-Security-Policy: its own inline script by hash and nothing
    else, requests to this origin only, no framing. Inline styles are allowed (style
    attributes cannot be hashed); images and the camera may come from blob: URLs."""
    import base64
    import hashlib
    import re

    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
        for s in scripts
    )
    script_src = hashes or "'none'"
    return (
        f"default-src 'none'; script-src {script_src}; "
        "style-src 'unsafe-inline'; img-src 'self' data: blob:; media-src 'self' blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def _offline_docs_assets() -> Path | None:
    """Swagger UI's files shipped by the `fastapi-offline` package (a dependency of the serve
    extra), so /docs works without internet; None when it is missing (then FastAPI's CDN page)."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    static = Path(fastapi_offline.__file__).parent / "static"
    needed = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js")
    return static if all((static / f).is_file() for f in needed) else None


def _offline_docs(app: FastAPI, static: Path) -> None:
    """/docs served from the local files in `static`, under /docs-static."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs-static", StaticFiles(directory=static), name="docs-static")

    def page(request: Request, render: Any, title: str, **files: str) -> HTMLResponse:
        """`render` (Swagger UI or ReDoc) with the schema and `files` under the app's root."""
        root = request.scope.get("root_path", "").rstrip("/")
        return render(  # type: ignore[no-any-return]
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - {title}",
            **{arg: f"{root}/docs-static/{name}" for arg, name in files.items()},
        )

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        return page(
            request,
            get_swagger_ui_html,
            "API",
            swagger_js_url="swagger-ui-bundle.js",
            swagger_css_url="swagger-ui.css",
            swagger_favicon_url="favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        return page(
            request,
            functools.partial(get_redoc_html, with_google_fonts=False),
            "API reference",
            redoc_js_url="redoc.standalone.js",
            redoc_favicon_url="favicon.png",
        )


def max_body_bytes(settings: Settings) -> int:
    """The whole-request cap: the largest legitimate request (base64 included) plus room for
    form fields, and never more than ``max_request_bytes``."""
    largest = settings.max_upload_bytes * settings.max_images_per_request * 4 // 3 + (1 << 20)
    return min(largest, settings.max_request_bytes)


class GuardMiddleware:
    """Plain ASGI middleware in front of every request: a request id, one JSON log line, and the
    limits that must hold before any route reads a byte.

    * at most ``max_inflight`` ``/v1`` requests at once; the next one is answered 503 at once
      (with ``Retry-After``) instead of queueing in memory;
    * a body larger than `max_body_bytes` is refused with 413, whether announced by
      ``Content-Length`` or streamed chunked (the byte count is checked as it arrives).
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.max_inflight = settings.max_inflight
        self.max_body = max_body_bytes(settings)
        self.inflight = 0  # the event loop is one thread: a plain counter is enough

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        rid = headers.get("x-request-id", "")[:64] or uuid.uuid4().hex[:12]
        t0 = time.perf_counter()
        status = 0
        started = False

        async def send_logged(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", rid.encode()),
                    *SECURITY_HEADERS,
                ]
            await send(message)

        async def refuse(code: int, error: str, detail: str, **extra: str) -> None:
            response = JSONResponse({"error": error, "detail": detail}, code, headers=extra)
            await response(scope, receive, send_logged)

        counted = scope["path"].startswith("/v1/")
        length = headers.get("content-length")
        try:
            if length is not None and not length.isdigit():
                await refuse(400, "bad_request", f"Content-Length must be a number, got {length!r}")
            elif length is not None and int(length) > self.max_body:
                await refuse(413, "too_large", f"request body exceeds {self.max_body:,} bytes")
            elif counted and self.inflight >= self.max_inflight:
                await refuse(
                    503,
                    "overloaded",
                    f"the server is handling {self.inflight} requests, its limit; retry shortly",
                    **{"Retry-After": "1"},
                )
            else:
                received = 0

                async def receive_limited() -> Message:
                    nonlocal received
                    message = await receive()
                    if message["type"] == "http.request":
                        received += len(message.get("body", b""))
                        if received > self.max_body:
                            raise BodyTooLarge(self.max_body)
                    return message

                self.inflight += counted
                try:
                    await self.app(scope, receive_limited, send_logged)
                except BodyTooLarge as exc:  # raised outside any route's error handling
                    if started:
                        raise
                    await refuse(413, "too_large", exc.detail)
                except Exception:
                    status = status or 500  # the outermost handler answers it
                    raise
                finally:
                    self.inflight -= counted
        finally:
            state = scope.get("state") or {}
            logger.info(
                "request",
                extra={
                    "request_id": rid,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "ms": round((time.perf_counter() - t0) * 1000, 1),
                    **({"key_id": state["key_id"]} if "key_id" in state else {}),
                },
            )


def _version() -> str:
    from transferlab._version import __version__

    return __version__


def _calibration_images(folder: Path | None) -> list[str] | None:
    """The images under TRANSFERLAB_CALIBRATION_DIR (int8 calibration), or None."""
    if folder is None:
        return None
    from transferlab.data import list_images
    from transferlab.exceptions import InvalidParameterError

    images, _ = list_images(folder)
    if not images:
        raise InvalidParameterError(f"TRANSFERLAB_CALIBRATION_DIR {folder} holds no images")
    return images
