"""Persistence for the service: API keys, collections, examples, models and jobs (SQLAlchemy 2).

SQLite by default (WAL journal, foreign keys on); any SQLAlchemy URL works, PostgreSQL included.
Images live on disk, content-addressed (``data_dir/images/ab/<sha256>.<ext>``): a path is never
built from anything a user typed, and the same picture uploaded twice is stored once.

Schema versions: a small migration runner keeps a ``schema_version`` table and applies, in order,
every function in `MIGRATIONS` newer than the version recorded there, each in one transaction.
Migration 1 creates the tables from a *frozen* copy of the v1 schema (not from the ORM models, which
move on); a change to the models ships as migration N+1 (``ALTER TABLE ...``) plus the model edit,
and `check_schema` (run by the tests) proves that the two agree.

A server that dies (SIGKILL, power cut) leaves its jobs ``queued``/``running``; `recover_jobs`,
called at startup, marks them ``failed`` with a message saying so. Examples are committed one per
request before the response, so a crash loses none, and the job can be posted again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
    create_engine,
    event,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

from transferlab.exceptions import InvalidParameterError

__all__ = [
    "JOB_STATUSES",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "ApiKey",
    "Base",
    "Collection",
    "Example",
    "Job",
    "Store",
    "StoredModel",
    "hash_key",
]

logger = logging.getLogger(__name__)

JOB_STATUSES = ("queued", "running", "succeeded", "failed")
KEY_PREFIX = "tl_"
#: Image formats accepted (as Pillow names them) and the file extension each is stored under.
IMAGE_FORMATS = {
    "JPEG": "jpg",
    "PNG": "png",
    "GIF": "gif",
    "BMP": "bmp",
    "WEBP": "webp",
    "TIFF": "tif",
}
INTERRUPTED = (
    "interrupted: the server stopped before this job finished (restart, crash or kill); "
    "no examples were lost. POST the train request again to re-run it"
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def new_id() -> str:
    return uuid.uuid4().hex


def hash_key(raw: str) -> str:
    """SHA-256 of an API key: what the database keeps (a leaked database leaks no key).

    Keys are 256-bit random tokens, so a plain hash suffices; a slow hash protects only guessable
    secrets such as passwords.
    """
    return hashlib.sha256(raw.encode()).hexdigest()


# -- ORM models (the current schema) -----------------------------------------------------------
class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    revoked: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True, default=None)


class Collection(Base):
    __tablename__ = "collections"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    multi_label: Mapped[bool] = mapped_column(Boolean, default=False)
    backbone: Mapped[str] = mapped_column(String(200))
    layer: Mapped[str] = mapped_column(String(100))
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    examples: Mapped[list[Example]] = relationship(
        back_populates="collection", cascade="all, delete-orphan", passive_deletes=True
    )
    models: Mapped[list[StoredModel]] = relationship(
        back_populates="collection", cascade="all, delete-orphan", passive_deletes=True
    )
    jobs: Mapped[list[Job]] = relationship(
        back_populates="collection", cascade="all, delete-orphan", passive_deletes=True
    )


class Example(Base):
    __tablename__ = "examples"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    collection_id: Mapped[str] = mapped_column(
        ForeignKey("collections.id", ondelete="CASCADE"), index=True
    )
    labels: Mapped[list[str]] = mapped_column(JSON)
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    image_ext: Mapped[str] = mapped_column(String(8))
    feature: Mapped[bytes] = mapped_column(LargeBinary)
    dim: Mapped[int] = mapped_column(Integer)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    collection: Mapped[Collection] = relationship(back_populates="examples")


class StoredModel(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    collection_id: Mapped[str] = mapped_column(
        ForeignKey("collections.id", ondelete="CASCADE"), index=True
    )
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    path: Mapped[str] = mapped_column(Text)
    classes: Mapped[list[str]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    collection: Mapped[Collection] = relationship(back_populates="models")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    collection_id: Mapped[str] = mapped_column(
        ForeignKey("collections.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)
    error: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    collection: Mapped[Collection] = relationship(back_populates="jobs")


# -- migrations --------------------------------------------------------------------------------
def _migration_1(conn: Connection) -> None:
    """The v1 schema, frozen: never edit this function; add a migration instead."""
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
        Column(
            "collection_id",
            String(32),
            ForeignKey("collections.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
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
        Column(
            "collection_id",
            String(32),
            ForeignKey("collections.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
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
        Column(
            "collection_id",
            String(32),
            ForeignKey("collections.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
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


#: (version, what it does, function). Append only; each runs once, in its own transaction.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "initial schema: api_keys, collections, examples, models, jobs", _migration_1),
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


# -- the store ---------------------------------------------------------------------------------
def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _shown_url(url: str) -> str:
    """A database URL fit for a message or a log: the password masked."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return url.split("://", 1)[0] + "://..."


class Store:
    """The service's database and image folder.

    Args:
        data_dir: folder for images, models and (by default) the SQLite file.
        url: SQLAlchemy database URL; default ``sqlite:///<data_dir>/transferlab.sqlite``.
    """

    def __init__(self, data_dir: str | os.PathLike[str], url: str | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        try:
            for sub in ("images", "models", "tmp"):
                (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidParameterError(
                f"data dir {self.data_dir} is not writable ({exc}); choose another --data-dir"
            ) from exc
        self.url = url or f"sqlite:///{self.data_dir / 'transferlab.sqlite'}"
        is_sqlite = self.url.startswith("sqlite")
        try:
            self.engine = create_engine(
                self.url,
                connect_args={"check_same_thread": False, "timeout": 30} if is_sqlite else {},
                pool_pre_ping=not is_sqlite,  # a server restarted under us is reconnected
            )
            if is_sqlite:
                event.listen(self.engine, "connect", _sqlite_pragmas)
            self._sessions = sessionmaker(self.engine, expire_on_commit=False)
            migrate(self.engine)
        # bad URL (a non-numeric port is a ValueError), missing driver, server down
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            shown = _shown_url(self.url)
            raise InvalidParameterError(
                f"cannot open the database {shown!r}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on error."""
        with self._sessions() as s, s.begin():
            yield s

    # -- keys ------------------------------------------------------------------------------
    def create_key(self, name: str) -> tuple[ApiKey, str]:
        """A new key: the row and the raw key (shown once; only its hash is kept)."""
        name = name.strip()
        if not name:
            raise InvalidParameterError("key name must not be empty")
        raw = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(name=name, key_hash=hash_key(raw), prefix=raw[:10])
        with self.session() as s:
            s.add(row)
        return row, raw

    def list_keys(self) -> list[ApiKey]:
        with self.session() as s:
            return list(s.scalars(select(ApiKey).order_by(ApiKey.id)))

    def revoke_key(self, key_id: int) -> ApiKey:
        with self.session() as s:
            row = s.get(ApiKey, key_id)
            if row is None:
                raise InvalidParameterError(f"no API key with id {key_id} (see `keys list`)")
            if row.revoked is None:
                row.revoked = utcnow()
            return row

    def authenticate(self, raw: str) -> ApiKey | None:
        """The active key matching `raw`, or None (unknown or revoked)."""
        with self.session() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(raw)))
            return row if row is not None and row.revoked is None else None

    # -- jobs ------------------------------------------------------------------------------
    def recover_jobs(self) -> int:
        """Mark jobs a dead server left queued/running as failed; returns how many."""
        with self.session() as s:
            result = s.execute(
                update(Job)
                .where(Job.status.in_(("queued", "running")))
                .values(status="failed", error=INTERRUPTED, message=INTERRUPTED, updated=utcnow())
            )
            n = int(getattr(result, "rowcount", 0) or 0)
        if n:
            logger.warning("marked %d interrupted job(s) as failed", n)
        return n

    # -- images ----------------------------------------------------------------------------
    def image_path(self, sha256: str, ext: str) -> Path:
        """Where an image with this digest lives; both parts are checked, never taken raw."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise InvalidParameterError(f"not a sha256 hex digest: {sha256!r}")
        if ext not in IMAGE_FORMATS.values():
            raise InvalidParameterError(f"image extension must be one of {IMAGE_FORMATS}")
        return self.data_dir / "images" / sha256[:2] / f"{sha256}.{ext}"

    def put_image(self, data: bytes, ext: str) -> tuple[str, Path]:
        """Store bytes under their SHA-256 (atomically; a no-op when already there)."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.image_path(sha, ext)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        return sha, path

    def drop_image_if_unused(self, sha256: str, ext: str) -> None:
        """Delete an image file once no example refers to it."""
        with self.session() as s:
            used = s.scalar(select(Example.id).where(Example.image_sha256 == sha256).limit(1))
        if used is None:
            self.image_path(sha256, ext).unlink(missing_ok=True)

    def model_dir(self, collection_id: str, job_id: str) -> Path:
        # both ids are generated hex strings, not user input
        return self.data_dir / "models" / collection_id / job_id
