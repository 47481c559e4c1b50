"""Persistence for the service: API keys, collections, examples, models and jobs (SQLAlchemy 2).

SQLite by default (WAL journal, foreign keys on); any SQLAlchemy URL works, PostgreSQL included.
Images live on disk, content-addressed (``data_dir/images/ab/<sha256>.<ext>``): a path is never
built from anything a user typed, and the same picture uploaded twice is stored once.

* `_models`: the ORM tables (the current schema);
* `_migrations`: the ``schema_version`` table and the migrations, applied in order at open, each
  in one transaction; migration 1 is a frozen copy of the v1 schema;
* `_db`: the `Store` (engine, sessions, keys, images).

A server that dies (SIGKILL, power cut) leaves its jobs ``queued``/``running``; `recover_jobs`,
called at startup, marks them ``failed`` with a message saying so. Examples are committed one per
request before the response, so a crash loses none, and the job can be posted again.
"""

from __future__ import annotations

from transferlab.serve.store._db import IMAGE_FORMATS as IMAGE_FORMATS
from transferlab.serve.store._db import INTERRUPTED as INTERRUPTED
from transferlab.serve.store._db import KEY_PREFIX as KEY_PREFIX
from transferlab.serve.store._db import Store as Store
from transferlab.serve.store._db import hash_key as hash_key
from transferlab.serve.store._migrations import MIGRATIONS as MIGRATIONS
from transferlab.serve.store._migrations import SCHEMA_VERSION as SCHEMA_VERSION
from transferlab.serve.store._migrations import check_schema as check_schema
from transferlab.serve.store._migrations import migrate as migrate
from transferlab.serve.store._models import JOB_STATUSES as JOB_STATUSES
from transferlab.serve.store._models import ApiKey as ApiKey
from transferlab.serve.store._models import Base as Base
from transferlab.serve.store._models import Collection as Collection
from transferlab.serve.store._models import Example as Example
from transferlab.serve.store._models import Job as Job
from transferlab.serve.store._models import PoolImage as PoolImage
from transferlab.serve.store._models import StoredModel as StoredModel
from transferlab.serve.store._models import new_id as new_id
from transferlab.serve.store._models import utcnow as utcnow

__all__ = [
    "IMAGE_FORMATS",
    "INTERRUPTED",
    "JOB_STATUSES",
    "KEY_PREFIX",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "ApiKey",
    "Base",
    "Collection",
    "Example",
    "Job",
    "PoolImage",
    "Store",
    "StoredModel",
    "check_schema",
    "hash_key",
    "migrate",
    "new_id",
    "utcnow",
]
