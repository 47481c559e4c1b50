"""Examples: deleting one removes its image; deleting the collection removes it all."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from fastapi.testclient import TestClient

from tests.serve._client import add_example, auth, pattern
from transferlab.serve.store import Store


def test_example_delete_and_collection_delete(server: tuple[TestClient, list[str]]) -> None:
    client, (a, _, _) = server
    cid = client.post("/v1/collections", headers=auth(a), json={"name": "tmp"}).json()["id"]
    ex = add_example(client, cid, a, pattern("checker", 77), "c").json()
    store: Store = client.app.state.services.store  # type: ignore[attr-defined]
    img = store.image_path(ex["image_sha256"], "png")
    assert img.is_file()
    assert (
        client.delete(f"/v1/collections/{cid}/examples/{ex['id']}", headers=auth(a)).status_code
        == 204
    )
    assert not img.exists()
    again = client.delete(f"/v1/collections/{cid}/examples/{ex['id']}", headers=auth(a))
    assert again.status_code == 404 and "not found in this collection" in again.text
    assert client.delete(f"/v1/collections/{cid}", headers=auth(a)).status_code == 204
    assert client.get(f"/v1/collections/{cid}", headers=auth(a)).status_code == 404


def test_list_examples(server: tuple[TestClient, list[str]], trained: str) -> None:
    """The examples list: every stored example with its feature dimension."""
    client, (a, _, _) = server
    cid = trained
    examples = client.get(f"/v1/collections/{cid}/examples", headers=auth(a)).json()
    assert len(examples) == 8 and examples[0]["dim"] == 1280
