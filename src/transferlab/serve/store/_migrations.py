"""Schema versions: a ``schema_version`` table and the migrations newer than it, in order.

Migration 1 creates the tables from a *frozen* copy of the v1 schema (not from the ORM models, which
move on); a change to the models ships as migration N+1 (``ALTER TABLE ...``) plus the model edit,
and `check_schema` (run by the tests) proves that the two agree.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    text,
)
from sqlalchemy.engine import Connection, Engine

from transferlab.exceptions import InvalidParameterError
from transferlab.serve.store._models import Base, utcnow

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "check_schema", "migrate"]

logger = logging.getLogger("transferlab.serve.store")


def _v1_collection_id() -> Column[str]:
    """Part of the frozen v1 schema (see `_migration_1`): the ``collection_id`` column that
    examples, models and jobs share. A new Column each call: a column belongs to one table."""
    return Column(
        "collection_id",
        String(32),
        ForeignKey("collections.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    )


def _migration_1(conn: Connection) -> None:
    """The v1 schema, frozen: never change the DDL it emits (tests/serve/test_store.py holds a
    copy of it); a schema change is a new migration instead."""
    md = MetaData()
    Table(
        "api_keys",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("name", String(200), nullable=False),
        Column("key_hash", String(64), nullable=False, unique=True, index=True),
        Column("prefix", String(16), nullable=False),
        Column("created", DateTime, nullable=False),
        Column("revoked", DateTime, nullable=True),
    )
    Table(
        "collections",
        md,
        Column("id", String(32), primary_key=True),
        Column(
            "owner_id",
            Integer,
            ForeignKey("api_keys.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        Column("name", String(200), nullable=False),
        Column("multi_label", Boolean, nullable=False),
        Column("backbone", String(200), nullable=False),
        Column("layer", String(100), nullable=False),
        Column("created", DateTime, nullable=False),
    )
    Table(
        "examples",
        md,
        Column("id", String(32), primary_key=True),
        _v1_collection_id(),
        Column("labels", JSON, nullable=False),
        Column("image_sha256", String(64), nullable=False, index=True),
        Column("image_ext", String(8), nullable=False),
        Column("feature", LargeBinary, nullable=False),
        Column("dim", Integer, nullable=False),
        Column("created", DateTime, nullable=False),
    )
    Table(
        "models",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        _v1_collection_id(),
        Column("job_id", String(32), nullable=True),
        Column("path", Text, nullable=False),
        Column("classes", JSON, nullable=False),
        Column("metrics", JSON, nullable=False),
        Column("created", DateTime, nullable=False),
    )
    Table(
        "jobs",
        md,
        Column("id", String(32), primary_key=True),
        _v1_collection_id(),
        Column("kind", String(32), nullable=False),
        Column("status", String(16), nullable=False, index=True),
        Column("progress", Float, nullable=False),
        Column("message", Text, nullable=True),
        Column("error", Text, nullable=True),
        Column("params", JSON, nullable=False),
        Column("created", DateTime, nullable=False),
        Column("updated", DateTime, nullable=False),
    )
    md.create_all(conn)


def _migration_2(conn: Connection) -> None:
    """Unlabelled pool images (issue 19), frozen like `_migration_1`."""
    md = MetaData()
    Table("collections", md, Column("id", String(32), primary_key=True))  # for the foreign key
    Table(
        "pool_images",
        md,
        Column("id", String(32), primary_key=True),
        _v1_collection_id(),
        Column("name", String(200), nullable=False),
        Column("image_sha256", String(64), nullable=False, index=True),
        Column("image_ext", String(8), nullable=False),
        Column("feature", LargeBinary, nullable=False),
        Column("dim", Integer, nullable=False),
        Column("created", DateTime, nullable=False),
    )
    md.tables["pool_images"].create(conn)


#: (version, what it does, function). Append only; each runs once, in its own transaction.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "initial schema: api_keys, collections, examples, models, jobs", _migration_1),
    (2, "pool_images: unlabelled images for label suggestions", _migration_2),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _schema_version(conn: Connection) -> int:
    conn.execute(
        text(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
            "description TEXT NOT NULL, applied TIMESTAMP NOT NULL)"
        )
    )
    got = conn.execute(text("SELECT MAX(version) FROM schema_version")).scalar()
    return int(got or 0)


def migrate(engine: Engine) -> int:
    """Bring the database to `SCHEMA_VERSION`; returns the version it was at before.

    Raises:
        InvalidParameterError: the database was written by a newer transferlab.
    """
    with engine.begin() as conn:
        before = _schema_version(conn)
    if before > SCHEMA_VERSION:
        raise InvalidParameterError(
            f"database schema version {before} is newer than this transferlab understands "
            f"({SCHEMA_VERSION}); upgrade transferlab or point --db at another database"
        )
    for version, description, func in MIGRATIONS:
        if version <= before:
            continue
        with engine.begin() as conn:
            func(conn)
            conn.execute(
                text("INSERT INTO schema_version VALUES (:v, :d, :t)"),
                {"v": version, "d": description, "t": utcnow()},
            )
        logger.info("database migrated to schema version %d (%s)", version, description)
    return before


def check_schema(engine: Engine) -> list[str]:
    """Differences between the migrated database and the ORM models (empty when they agree)."""
    insp = inspect(engine)
    problems = []
    for table in Base.metadata.sorted_tables:
        if not insp.has_table(table.name):
            problems.append(f"table {table.name} missing")
            continue
        have = {c["name"] for c in insp.get_columns(table.name)}
        want = {c.name for c in table.columns}
        if have != want:
            problems.append(f"{table.name}: database {sorted(have)} vs models {sorted(want)}")
    return problems
