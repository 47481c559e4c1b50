"""The on-disk feature cache: a SQLite file of vectors keyed by image content and model.

The key is the image file's content hash + a namespace (backbone fingerprint, layer, pooling,
preprocessing). Renaming or moving a file keeps its entry; editing it makes a new one. Entries
are written in SQLite transactions, one per batch, so an interrupted run leaves only whole
entries behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.exceptions import ImageLoadError, InvalidParameterError

__all__ = ["FeatureCache", "default_cache_dir", "file_digest"]


#: Bump when the meaning of a stored vector changes (pooling code, dtype...): old entries then miss.
FEATURE_FORMAT = 1


def default_cache_dir() -> Path:
    """`$TRANSFERLAB_CACHE_DIR`, else the platform's user cache dir (e.g. ~/.cache/transferlab)."""
    env = os.environ.get("TRANSFERLAB_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("transferlab"))


def cache_setting(cache_dir: str | os.PathLike[str] | None, no_cache: bool) -> Any:
    """`FeatureExtractor`'s ``cache`` for the CLI's ``--cache-dir``/``--no-cache``: with both,
    vectors are not cached but exports and cards still live in `cache_dir`."""
    if no_cache:
        return FeatureCache(cache_dir, vectors=False) if cache_dir else False
    return cache_dir or True


def file_digest(path: str | os.PathLike[str]) -> str:
    """BLAKE2b digest of the file's bytes: the image part of a cache key.

    Raises:
        ImageLoadError: the file is missing or unreadable (named in the message).
    """
    h = hashlib.blake2b(digest_size=20)
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found (or a broken link)") from None
    except IsADirectoryError:
        raise ImageLoadError(path, "not a regular file") from None
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read: {exc.strerror or exc}") from None
    return h.hexdigest()


class FeatureCache:
    """A SQLite file of feature vectors keyed by (namespace, image digest).

    A namespace identifies backbone weights + layer + pooling + preprocessing. Safe to share between
    processes (SQLite locking) and to interrupt (each batch is one transaction).

    Args:
        directory: folder holding ``features.sqlite``; default `default_cache_dir()`.
        vectors: False keeps no vectors (``--no-cache``) while the folder still holds what is
            not vectors: backbone cards and ONNX exports (`FeatureExtractor` skips the cache).
    """

    FILENAME = "features.sqlite"

    def __init__(
        self, directory: str | os.PathLike[str] | None = None, *, vectors: bool = True
    ) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.vectors = vectors
        self.path = self.directory / self.FILENAME
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=60)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS features (namespace TEXT NOT NULL, key TEXT NOT NULL, "
                    "dim INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (namespace, key)) WITHOUT ROWID"
                )
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS namespaces (namespace TEXT PRIMARY KEY, "
                    "description TEXT NOT NULL, created REAL NOT NULL)"
                )
                conn.commit()
            except sqlite3.DatabaseError as exc:
                raise InvalidParameterError(
                    f"feature cache {self.path} cannot be opened ({exc}); delete it or choose another "
                    "--cache-dir"
                ) from exc
            except OSError as exc:
                raise InvalidParameterError(
                    f"feature cache directory {self.directory} is not writable ({exc}); set "
                    "TRANSFERLAB_CACHE_DIR or --cache-dir"
                ) from exc
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __getstate__(self) -> dict[str, Any]:  # connections do not pickle; reopen lazily
        return {**self.__dict__, "_conn": None}

    def register(self, namespace: str, description: dict[str, Any]) -> None:
        conn = self._connect()
        with conn:
            conn.execute(
                "INSERT OR IGNORE INTO namespaces VALUES (?, ?, ?)",
                (namespace, json.dumps(description, sort_keys=True), time.time()),
            )

    def get_many(self, namespace: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among `keys` (missing keys are absent from the result)."""
        conn = self._connect()
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT key, dim, data FROM features WHERE namespace = ? AND key IN ({marks})",
                (namespace, *chunk),
            )
            for key, dim, blob in rows:
                vec = np.frombuffer(blob, dtype=np.float32)
                if vec.shape[0] == dim:  # a partial blob cannot be written, but check anyway
                    found[key] = vec
        return found

    def put_many(self, namespace: str, items: dict[str, np.ndarray]) -> None:
        """Store vectors in one transaction: all of them or none."""
        conn = self._connect()
        with conn:
            conn.executemany(
                "INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?)",
                [
                    (
                        namespace,
                        k,
                        int(v.shape[0]),
                        np.ascontiguousarray(v, dtype=np.float32).tobytes(),
                    )
                    for k, v in items.items()
                ],
            )

    def info(self) -> dict[str, Any]:
        """Path, size on disk, entry count, and entries per namespace (with what it stands for)."""
        if not self.path.exists():
            return {"path": str(self.path), "bytes": 0, "entries": 0, "namespaces": []}
        conn = self._connect()
        rows = conn.execute(
            "SELECT n.namespace, n.description, COUNT(f.key) FROM namespaces n "
            "LEFT JOIN features f ON f.namespace = n.namespace GROUP BY n.namespace ORDER BY n.created"
        ).fetchall()
        size = sum(
            p.stat().st_size for p in self.directory.glob(self.FILENAME + "*") if p.is_file()
        )
        spaces = [{"namespace": ns, **json.loads(desc), "entries": n} for ns, desc, n in rows]
        total = conn.execute("SELECT COUNT(*) FROM features").fetchone()[0]
        return {"path": str(self.path), "bytes": size, "entries": total, "namespaces": spaces}

    def clear(self) -> int:
        """Delete every entry and shrink the file; returns how many entries were removed."""
        if not self.path.exists():
            return 0
        conn = self._connect()
        with conn:
            n = conn.execute("SELECT COUNT(*) FROM features").fetchone()[0]
            conn.execute("DELETE FROM features")
            conn.execute("DELETE FROM namespaces")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(n)
