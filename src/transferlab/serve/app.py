"""`create_app(settings)`: the FastAPI application, its lifespan and middleware.

Nothing is built at import time: the database, the backbone (loaded once), the feature batcher
and the job runner are created in the lifespan and shared through ``app.state.services``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from transferlab.serve.errors import install_error_handlers
from transferlab.serve.settings import Settings

__all__ = ["JsonFormatter", "configure_logging", "create_app"]

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
        from transferlab.serve.deps import Services
        from transferlab.serve.jobs import FeatureBatcher, JobRunner
        from transferlab.store import Store

        t0 = time.perf_counter()
        store = Store(settings.data_dir, settings.db_url)
        store.recover_jobs()  # before the runner starts: nothing of ours is running yet
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
        ).fit()
        batcher = FeatureBatcher(
            extractor,
            settings.batch_size,
            settings.batch_wait_ms / 1000,
            settings.feature_queue_size,
        )
        runner = JobRunner(store, batcher, settings.queue_size)
        app.state.services = Services(settings, store, extractor, batcher, runner)
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

    app = FastAPI(
        title="transferlab",
        summary="Image features and custom classifiers from a few labelled examples.",
        version=_version(),
        lifespan=lifespan,
        docs_url="/docs",
    )
    install_error_handlers(app)

    # Whole-request cap: the largest legitimate request plus room for the form fields.
    max_body = settings.max_upload_bytes * max(settings.max_images_per_request, 1) * 4 // 3 + (
        1 << 20
    )

    @app.middleware("http")
    async def log_and_limit(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex[:12]
        t0 = time.perf_counter()
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body):
            response: Response = JSONResponse(
                {"error": "too_large", "detail": f"request body exceeds {max_body:,} bytes"}, 413
            )
        else:
            response = await call_next(request)
        response.headers["X-Request-ID"] = rid
        logger.info(
            "request",
            extra={
                "request_id": rid,
                "method": request.method,
                "path": request.url.path,
                "status": response.status_code,
                "ms": round((time.perf_counter() - t0) * 1000, 1),
            },
        )
        return response

    from transferlab.serve.routers import collections, features, health, jobs

    app.include_router(health.router)
    app.include_router(features.router)
    app.include_router(collections.router)
    app.include_router(jobs.router)

    @app.get("/", include_in_schema=False, response_model=None)
    def index() -> Response:
        page = STATIC / "index.html"
        if not page.is_file():
            return JSONResponse(
                {"error": "not_implemented", "detail": "the web page is not implemented yet"},
                501,
            )
        return FileResponse(page, media_type="text/html")

    return app


def _version() -> str:
    from transferlab import __version__

    return __version__
