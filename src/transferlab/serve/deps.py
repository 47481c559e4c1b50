"""Request dependencies: the app's services, the caller's API key, an owned collection.

Ownership is checked in one place (`get_collection`, behind the `OwnedCollection` dependency):
another key's collection answers 404 exactly like a missing one, so ids cannot be probed. Rows
under a collection (examples, jobs) are looked up the same way, through `one_or_404`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from transferlab.features import FeatureExtractor
from transferlab.serve.batcher import FeatureBatcher
from transferlab.serve.errors import ApiError
from transferlab.serve.jobs import JobRunner
from transferlab.serve.settings import Settings
from transferlab.serve.store import ApiKey, Collection, Store

__all__ = [
    "CurrentKey",
    "OwnedCollection",
    "Services",
    "ServicesDep",
    "check_rate",
    "get_collection",
    "one_or_404",
    "owned_collection",
]

T = TypeVar("T")


@dataclass
class Services:
    """What the lifespan builds once and every request shares."""

    settings: Settings
    store: Store
    extractor: FeatureExtractor
    batcher: FeatureBatcher
    runner: JobRunner
    #: model id -> loaded predictor (LRU), per app: ids are only unique within one database
    models: OrderedDict[int, Any] = field(default_factory=OrderedDict)
    models_lock: threading.Lock = field(default_factory=threading.Lock)
    #: held while a collection's active job is checked and a job added (or the collection deleted)
    jobs_lock: threading.Lock = field(default_factory=threading.Lock)
    #: (collection, examples digest) -> cross-validated metrics (LRU): /metrics is read often
    #: (the web page after each change), the cross-validation only changes with the examples
    metrics: OrderedDict[tuple[str, str], Any] = field(default_factory=OrderedDict)
    metrics_lock: threading.Lock = field(default_factory=threading.Lock)
    #: the first run's one-time token for POST /v1/setup (None once used, or never set)
    setup_token: str | None = None
    #: key id -> (tokens, time of the last refill): each key's request budget (`check_rate`)
    buckets: dict[int, tuple[float, float]] = field(default_factory=dict)
    buckets_lock: threading.Lock = field(default_factory=threading.Lock)


def check_rate(services: Services, key_id: int) -> None:
    """A token bucket per key: `rate_limit_per_minute` tokens, refilled continuously; a request
    takes one, and finds none: 429 with the seconds until the next one in ``Retry-After``."""
    rate = services.settings.rate_limit_per_minute
    if rate <= 0:
        return
    import math
    import time

    now = time.monotonic()
    with services.buckets_lock:
        tokens, last = services.buckets.get(key_id, (float(rate), now))
        tokens = min(float(rate), tokens + (now - last) * rate / 60.0)
        if tokens < 1.0:
            services.buckets[key_id] = (tokens, now)
            wait = math.ceil((1.0 - tokens) * 60.0 / rate)
            raise ApiError(
                429,
                f"this key is over its {rate} requests per minute; retry in {wait} s",
                "rate_limited",
                headers={"Retry-After": str(wait)},
            )
        services.buckets[key_id] = (tokens - 1.0, now)


def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]


def get_key(request: Request, services: ServicesDep) -> ApiKey:
    """The active API key from ``Authorization: Bearer <key>`` or ``X-API-Key``; else 401."""
    raw = request.headers.get("x-api-key")
    auth = request.headers.get("authorization")
    if raw is None and auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "Authorization header must be 'Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        raw = token.strip()
    if not raw:
        raise ApiError(
            401,
            "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>' "
            "(create one with `transferlab keys create NAME`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = services.store.authenticate(raw)
    if key is None:
        raise ApiError(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    request.state.key_id = key.id  # for the request's log line (who did what)
    check_rate(services, key.id)
    return key


CurrentKey = Annotated[ApiKey, Depends(get_key)]


def one_or_404(s: Session, query: Select[tuple[T]], message: str) -> T:
    """The row `query` selects, else a 404 with `message`. The query is scoped to the caller
    (its key or its collection), so a row of someone else's answers exactly like a missing one."""
    row = s.scalar(query)
    if row is None:
        raise ApiError(404, message)
    return row


def get_collection(services: Services, key: ApiKey, collection_id: str) -> Collection:
    """The collection if `key` owns it; 404 otherwise (missing and foreign look the same)."""
    with services.store.session() as s:
        return one_or_404(
            s,
            select(Collection).where(Collection.id == collection_id, Collection.owner_id == key.id),
            f"collection {collection_id!r} not found",
        )


def owned_collection(collection_id: str, services: ServicesDep, key: CurrentKey) -> Collection:
    """The path's ``{collection_id}``, loaded for its owner (`get_collection`)."""
    return get_collection(services, key, collection_id)


#: A route parameter ``coll: OwnedCollection`` is the path's collection, owned by the caller's key.
OwnedCollection = Annotated[Collection, Depends(owned_collection)]
