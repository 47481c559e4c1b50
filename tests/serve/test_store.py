"""The store: hashed keys, schema versions, PostgreSQL, bad database URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from transferlab.serve.store import Collection, Job, Store, check_schema, hash_key


def test_keys_stored_hashed_and_schema_versioned(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _, raw = store.create_key("alice")
    assert store.authenticate(raw) is not None
    assert check_schema(store.engine) == []
    from sqlalchemy import text

    with store.engine.connect() as conn:
        got = conn.execute(text("SELECT MAX(version) FROM schema_version")).scalar()
    from transferlab.serve.store import SCHEMA_VERSION

    assert got == SCHEMA_VERSION == 2
    store.close()
    Store(tmp_path).close()  # a second open migrates nothing and keeps the data
    blobs = b"".join(p.read_bytes() for p in tmp_path.glob("transferlab.sqlite*"))
    assert raw.encode() not in blobs
    assert hash_key(raw).encode() in blobs


def test_postgresql_store(pg_url: str, tmp_path: Path) -> None:
    store = Store(tmp_path, pg_url)
    assert store.engine.dialect.name == "postgresql"
    assert check_schema(store.engine) == []
    key, raw = store.create_key("alice")
    assert store.authenticate(raw) is not None
    with store.session() as s:
        coll = Collection(
            owner_id=key.id, name="c", multi_label=False, backbone="b", layer="pre_logits"
        )
        s.add(coll)
        s.flush()
        s.add(Job(collection_id=coll.id, kind="linear_probe", status="running", params={}))
    assert store.recover_jobs() == 1
    store.close()
    store = Store(tmp_path, pg_url)  # reopening migrates nothing and keeps the rows
    assert [k.name for k in store.list_keys()] == ["alice"]
    store.revoke_key(key.id)
    assert store.authenticate(raw) is None
    store.close()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://user:s3cret@localhost:notaport/db",  # ValueError in the URL parser
        "nosuchdialect://x/y",  # unknown dialect
    ],
)
def test_unopenable_database_url_is_one_clear_error(url: str, tmp_path: Path) -> None:
    """A bad --db URL is an InvalidParameterError naming the URL (password masked), never a
    traceback from SQLAlchemy's parser."""
    from transferlab.exceptions import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="cannot open the database") as info:
        Store(tmp_path, url)
    assert "s3cret" not in str(info.value)


def test_migration_1_emits_the_frozen_schema(tmp_path: Path) -> None:
    """Migration 1 is frozen: its DDL (for SQLite and PostgreSQL) and the schema SQLite keeps
    are exactly what v1 shipped, recorded in migration_1_schema.json before any refactor."""
    import json

    from sqlalchemy import create_mock_engine, text

    from transferlab.serve.store._migrations import _migration_1

    recorded = json.loads((Path(__file__).parent / "migration_1_schema.json").read_text())

    def ddl(url: str) -> list[str]:
        emitted: list[str] = []
        engine = create_mock_engine(
            url, lambda sql, *_, **__: emitted.append(str(sql.compile(dialect=engine.dialect)))
        )
        _migration_1(engine)  # type: ignore[arg-type]
        return sorted(s.strip() for s in emitted)

    assert ddl("postgresql+psycopg://") == recorded["postgresql"]
    assert ddl("sqlite://") == recorded["sqlite"]
    store = Store(tmp_path)
    with store.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT type, name, tbl_name, sql FROM sqlite_master "
                "WHERE name != 'schema_version' AND tbl_name != 'pool_images' "
                "ORDER BY type, name"
            )
        ).all()
    store.close()
    assert [list(r) for r in rows] == recorded["sqlite_master"]


def test_a_v1_database_migrates_to_v2_and_keeps_its_rows(tmp_path: Path) -> None:
    """A database written before the pool (schema 1) gains pool_images and loses nothing."""
    from sqlalchemy import create_engine, text

    from transferlab.serve.store import check_schema
    from transferlab.serve.store._migrations import _migration_1
    from transferlab.serve.store._models import utcnow

    tmp_path.mkdir(exist_ok=True)
    engine = create_engine(f"sqlite:///{tmp_path / 'transferlab.sqlite'}")
    with engine.begin() as conn:
        _migration_1(conn)
        conn.execute(text("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
                          "description TEXT NOT NULL, applied TIMESTAMP NOT NULL)"))  # fmt: skip
        conn.execute(text("INSERT INTO schema_version VALUES (1, 'initial', :t)"), {"t": utcnow()})
        conn.execute(text("INSERT INTO api_keys (name, key_hash, prefix, created) "
                          "VALUES ('old', 'h', 'tl_', :t)"), {"t": utcnow()})  # fmt: skip
    engine.dispose()
    store = Store(tmp_path)
    assert check_schema(store.engine) == []
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT MAX(version) FROM schema_version")).scalar() == 2
        assert conn.execute(text("SELECT name FROM api_keys")).scalars().all() == ["old"]
        assert conn.execute(text("SELECT COUNT(*) FROM pool_images")).scalar() == 0
    store.close()
