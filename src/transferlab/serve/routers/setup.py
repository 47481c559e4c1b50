"""First run without a terminal: the page creates the first API key with a one-time token that
`transferlab serve` prints as a link (``/?setup=TOKEN``) when the database has no key."""

from __future__ import annotations

import secrets

from fastapi import APIRouter
from pydantic import BaseModel, Field

from transferlab.serve.deps import ServicesDep
from transferlab.serve.errors import ApiError

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["keys"])


class SetupRequest(BaseModel):
    token: str = Field(min_length=1, max_length=200, description="the token in the printed link")
    name: str = Field(default="web page", min_length=1, max_length=200)


class SetupResponse(BaseModel):
    key: str = Field(description="the new API key: shown once, stored only hashed")
    name: str


@router.post("/setup", status_code=201, response_model=SetupResponse)
def setup(body: SetupRequest, services: ServicesDep) -> SetupResponse:
    """Create the first API key with the one-time setup token (then the token is spent)."""
    token = services.setup_token
    if token is None:
        raise ApiError(
            409,
            "no first-run setup is pending on this server; create keys with "
            "`transferlab keys create NAME`",
            "no_setup",
        )
    if not secrets.compare_digest(body.token.encode(), token.encode()):
        raise ApiError(
            403, "wrong setup token: use the link `transferlab serve` printed", "bad_token"
        )
    services.setup_token = None  # one time only, even if the key creation below fails
    name = body.name.strip()
    if not name.isprintable() or not name:
        raise ApiError(422, "name: must be printable text")
    _, raw = services.store.create_key(name)
    return SetupResponse(key=raw, name=name)
