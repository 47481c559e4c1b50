"""Liveness and what this server runs; no key needed."""

from __future__ import annotations

from fastapi import APIRouter

from transferlab.serve.deps import ServicesDep
from transferlab.serve.schemas import HealthResponse
from transferlab.serve.store import SCHEMA_VERSION

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse)
def health(services: ServicesDep) -> HealthResponse:
    from transferlab._version import __version__

    bb = services.extractor.card_  # identity and layers: no model load for them
    return HealthResponse(
        version=__version__,
        backbone=services.settings.backbone,
        layers=list(bb.layers),
        schema_version=SCHEMA_VERSION,
    )
