"""Collections: a trained one read back, and isolation between API keys."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from fastapi.testclient import TestClient

from tests.serve._client import auth, pattern
from transferlab.serve.store import Store


def test_collection_lifecycle(server: tuple[TestClient, list[str]], trained: str) -> None:
    """A trained collection reads back its examples per label and its model."""
    client, (a, _, _) = server
    cid = trained
    coll = client.get(f"/v1/collections/{cid}", headers=auth(a)).json()
    assert coll["n_examples"] == 8 and coll["labels"] == {"hstripes": 4, "vstripes": 4}
    assert coll["model"]["classes"] == ["hstripes", "vstripes"]
    assert cid in [c["id"] for c in client.get("/v1/collections", headers=auth(a)).json()]


def test_key_isolation(server: tuple[TestClient, list[str]], trained: str) -> None:
    client, (a, b, c) = server
    cid = trained
    job_id = client.get(f"/v1/collections/{cid}", headers=auth(a)).json()["model"]["job_id"]
    img = {"file": ("x.png", pattern("hstripes", 3), "image/png")}
    attempts = [
        client.get(f"/v1/collections/{cid}", headers=auth(b)),
        client.get(f"/v1/collections/{cid}/examples", headers=auth(b)),
        client.post(
            f"/v1/collections/{cid}/examples", headers=auth(b), files=img, data={"label": "x"}
        ),
        client.post(f"/v1/collections/{cid}/train", headers=auth(b)),
        client.post(f"/v1/collections/{cid}/predict", headers=auth(b), files=img),
        client.get(f"/v1/collections/{cid}/metrics", headers=auth(b)),
        client.get(f"/v1/collections/{cid}/model", headers=auth(b)),
        client.delete(f"/v1/collections/{cid}", headers=auth(b)),
        client.get(f"/v1/jobs/{job_id}", headers=auth(b)),
    ]
    for r in attempts:
        assert r.status_code == 404, (r.request.method, r.request.url, r.text)
        assert r.json()["error"] == "not_found"
    assert cid not in [x["id"] for x in client.get("/v1/collections", headers=auth(b)).json()]
    assert client.get(f"/v1/collections/{cid}", headers=auth(a)).status_code == 200  # untouched

    assert client.get("/v1/collections", headers=auth(c)).status_code == 200
    store: Store = client.app.state.services.store  # type: ignore[attr-defined]
    key_c = next(k for k in store.list_keys() if k.name == "carol")
    store.revoke_key(key_c.id)
    r = client.get("/v1/collections", headers=auth(c))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert client.get("/v1/collections").status_code == 401
    assert client.get("/v1/collections", headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.get("/v1/collections", headers=auth("tl_wrong")).status_code == 401


def test_ownership_is_checked_before_the_request_body(
    server: tuple[TestClient, list[str]], trained: str
) -> None:
    """`OwnedCollection` runs before the body is validated: another key's collection answers 404
    even to a request that is invalid as well, so nothing about it can be learnt."""
    client, (a, b, _) = server
    for key, status in ((b, 404), (a, 422)):
        r = client.post(f"/v1/collections/{trained}/examples", headers=auth(key), data={})
        assert r.status_code == status, r.text
        r = client.post(
            f"/v1/collections/{trained}/predict",
            headers=auth(key),
            files={"file": ("q.png", pattern("hstripes", 1), "image/png")},
            data={"top_k": "0"},
        )
        assert r.status_code == status, r.text
