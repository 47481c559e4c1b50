"""Fixtures for the service tests: one running app with three keys, a trained collection on it,
and a PostgreSQL database when ``TRANSFERLAB_TEST_PG_URL`` names a server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # the service's dependencies are optional: the tests import them or skip
    from fastapi.testclient import TestClient


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, list[str]]]:
    """One running app for the tests that do not restart it; keys A, B and C (C gets revoked)."""
    from fastapi.testclient import TestClient

    from tests.serve._client import make_keys, settings_for
    from transferlab.serve import create_app

    data_dir = tmp_path_factory.mktemp("serve")
    keys = make_keys(data_dir, "alice", "bob", "carol")
    with TestClient(create_app(settings_for(data_dir))) as client:
        yield client, keys


@pytest.fixture(scope="package")
def trained(server: tuple[TestClient, list[str]]) -> str:
    from tests.serve._client import trained_collection

    client, (a, _, _) = server
    return trained_collection(client, a)


# -- PostgreSQL: the same store and service on a real server, when one is given ----------------
@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty database on the server named by ``TRANSFERLAB_TEST_PG_URL``
    (e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``), dropped afterwards."""
    import os
    import uuid

    url = os.environ.get("TRANSFERLAB_TEST_PG_URL")
    if not url:
        pytest.skip(
            "set TRANSFERLAB_TEST_PG_URL to a PostgreSQL server to run the PostgreSQL tests"
        )
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"transferlab_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
