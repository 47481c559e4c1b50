"""The `Store`: the database engine and sessions, API keys, job recovery, the image folder."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from transferlab.exceptions import InvalidParameterError
from transferlab.serve.store._migrations import migrate
from transferlab.serve.store._models import ApiKey, Example, Job, PoolImage, utcnow

__all__ = ["IMAGE_FORMATS", "INTERRUPTED", "KEY_PREFIX", "Store", "hash_key"]

logger = logging.getLogger("transferlab.serve.store")

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


def hash_key(raw: str) -> str:
    """SHA-256 of an API key: what the database keeps (a leaked database leaks no key).

    Keys are 256-bit random tokens, so a plain hash suffices; a slow hash protects only guessable
    secrets such as passwords.
    """
    return hashlib.sha256(raw.encode()).hexdigest()


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


def _private(path: Path, mode: int) -> None:
    """chmod `path` to `mode` when this process owns it (a shared folder is left as it is)."""
    try:
        if path.stat().st_uid == os.getuid():
            os.chmod(path, mode)
    except OSError:
        pass


class Store:
    """The service's database and image folder.

    Args:
        data_dir: folder for images, models and (by default) the SQLite file.
        url: SQLAlchemy database URL; default ``sqlite:///<data_dir>/transferlab.sqlite``.
    """

    def __init__(self, data_dir: str | os.PathLike[str], url: str | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        try:
            # private to the server's user: the images, models and keys' database inside
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            _private(self.data_dir, 0o700)
            for sub in ("images", "models", "tmp"):
                (self.data_dir / sub).mkdir(mode=0o700, exist_ok=True)
                _private(self.data_dir / sub, 0o700)
        except OSError as exc:
            raise InvalidParameterError(
                f"data dir {self.data_dir} is not writable ({exc}); choose another --data-dir"
            ) from exc
        default_db = self.data_dir / "transferlab.sqlite"
        self.url = url or f"sqlite:///{default_db}"
        is_sqlite = self.url.startswith("sqlite")
        if url is None:  # created 0600 before SQLite opens it (its -wal/-shm files follow it)
            os.close(os.open(default_db, os.O_CREAT | os.O_RDWR, 0o600))
            _private(default_db, 0o600)
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
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        return sha, path

    def sweep_orphans(self, min_age_s: float = 600.0) -> int:
        """Delete image files no example or pool image refers to (an upload cut off between
        writing its file and its row, e.g. by a SIGKILL), and leftovers in ``tmp/``, once older
        than `min_age_s` (a concurrent worker's upload in flight is younger). Returns how many."""
        import time

        with self.session() as s:
            used = set(s.scalars(select(Example.image_sha256)))
            used |= set(s.scalars(select(PoolImage.image_sha256)))
        cutoff = time.time() - min_age_s
        removed = 0
        for folder, pattern in ((self.data_dir / "images", "*/*"), (self.data_dir / "tmp", "*")):
            for path in folder.glob(pattern):
                try:
                    old = path.is_file() and path.stat().st_mtime < cutoff
                except OSError:
                    continue
                sha = path.name.split(".")[0]
                orphan = folder.name == "tmp" or path.name.startswith(".") or sha not in used
                if old and orphan:
                    path.unlink(missing_ok=True)
                    removed += 1
        if removed:
            logger.warning("removed %d image file(s) no example refers to", removed)
        return removed

    def drop_image_if_unused(self, sha256: str, ext: str) -> None:
        """Delete an image file once no example or pool image refers to it."""
        with self.session() as s:
            used = s.scalar(select(Example.id).where(Example.image_sha256 == sha256).limit(1))
            if used is None:
                used = s.scalar(
                    select(PoolImage.id).where(PoolImage.image_sha256 == sha256).limit(1)
                )
        if used is None:
            self.image_path(sha256, ext).unlink(missing_ok=True)

    def model_dir(self, collection_id: str, job_id: str) -> Path:
        # both ids are generated hex strings, not user input
        return self.data_dir / "models" / collection_id / job_id
