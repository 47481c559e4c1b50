"""Know your data in the service (issue 19): the pool of unlabelled images, suggestions,
labelling from the pool, the audit, and the image files (per key, per collection)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from fastapi.testclient import TestClient

from tests.serve._client import add_example, auth, pattern

KINDS = ("hstripes", "vstripes")


def _collection(client: TestClient, key: str, name: str) -> str:
    return client.post("/v1/collections", headers=auth(key), json={"name": name}).json()["id"]


def _upload(client: TestClient, cid: str, key: str, items: list[tuple[str, bytes]]) -> object:
    return client.post(
        f"/v1/collections/{cid}/pool",
        headers=auth(key),
        files=[("files", (name, data, "image/png")) for name, data in items],
    )


def test_pool_upload_is_per_file_and_suggestions_rank_it(
    server: tuple[TestClient, list[str]],
) -> None:
    client, (a, b, _) = server
    cid = _collection(client, a, "pool")
    for i, kind in enumerate(KINDS):
        assert add_example(client, cid, a, pattern(kind, 100 + i), kind).status_code == 201
    items = [(f"{k}_{i}.png", pattern(k, 200 + i)) for i in range(6) for k in KINDS]
    for chunk in (items[:4], items[4:8]):  # the test server takes 4 files per request
        assert _upload(client, cid, a, chunk).status_code == 201
    r = _upload(client, cid, a, [*items[8:11], ("broken.png", b"\x89PNG not really")])
    assert r.status_code == 201, r.text
    body = r.json()
    assert len(body["added"]) == 3 and [f["name"] for f in body["failed"]] == ["broken.png"]
    assert "not an image" in body["failed"][0]["error"]
    assert _upload(client, cid, a, items[11:]).status_code == 201
    assert _upload(client, cid, a, items[:5]).status_code == 413  # over the per-request limit
    # all bad: 400 naming the file, nothing stored
    r = _upload(client, cid, a, [("bad.png", b"nope")])
    assert r.status_code == 400 and "bad.png" in r.json()["detail"]
    pool = client.get(f"/v1/collections/{cid}/pool", headers=auth(a)).json()
    assert len(pool) == 12

    s = client.get(f"/v1/collections/{cid}/suggestions?n=4", headers=auth(a)).json()
    assert s["strategy"] == "typical" and s["n_pool"] == 12 and s["n_examples"] == 2
    ids = [x["pool_image_id"] for x in s["suggestions"]]
    assert len(set(ids)) == 4 and set(ids) <= {p["id"] for p in pool}
    assert [x["rank"] for x in s["suggestions"]] == [1, 2, 3, 4]
    assert client.get(f"/v1/collections/{cid}/suggestions?n=0", headers=auth(a)).status_code == 422

    # label the first suggestion: it leaves the pool and becomes an example, features kept
    first = s["suggestions"][0]
    kind = "hstripes" if first["name"].startswith("h") else "vstripes"
    r = client.post(f"/v1/collections/{cid}/pool/{first['pool_image_id']}/label",
                    headers=auth(a), json={"labels": [kind]})  # fmt: skip
    assert r.status_code == 201 and r.json()["labels"] == [kind] and r.json()["dim"] == 1280
    assert len(client.get(f"/v1/collections/{cid}/pool", headers=auth(a)).json()) == 11
    ex = client.get(f"/v1/collections/{cid}/examples", headers=auth(a)).json()
    assert len(ex) == 3
    again = client.post(f"/v1/collections/{cid}/pool/{first['pool_image_id']}/label",
                        headers=auth(a), json={"labels": [kind]})  # fmt: skip
    assert again.status_code == 404

    # the image files behind both, for thumbnails; another key sees nothing
    img = client.get(f"/v1/collections/{cid}/pool/{pool[1]['id']}/image", headers=auth(a))
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert img.content[:4] == b"\x89PNG"
    exi = client.get(f"/v1/collections/{cid}/examples/{ex[0]['id']}/image", headers=auth(a))
    assert exi.status_code == 200
    for url in (f"/v1/collections/{cid}/pool", f"/v1/collections/{cid}/suggestions",
                f"/v1/collections/{cid}/audit", f"/v1/collections/{cid}/pool/{pool[1]['id']}/image"):  # fmt: skip
        assert client.get(url, headers=auth(b)).status_code == 404
    assert _upload(client, cid, b, items[:1]).status_code == 404

    # deleting the collection removes the pool's files too
    store = client.app.state.services.store  # type: ignore[attr-defined]
    sha = pool[1]["image_sha256"]
    assert store.image_path(sha, "png").exists()
    assert client.delete(f"/v1/collections/{cid}", headers=auth(a)).status_code == 204
    assert not store.image_path(sha, "png").exists()


def test_audit_finds_a_twice_added_image_and_a_wrong_label(
    server: tuple[TestClient, list[str]],
) -> None:
    client, (a, _, _) = server
    cid = _collection(client, a, "audit")
    for i in range(8):
        for kind in KINDS:
            assert add_example(client, cid, a, pattern(kind, 300 + i), kind).status_code == 201
    twice = pattern("hstripes", 300)
    assert (
        add_example(client, cid, a, twice, "vstripes").status_code == 201
    )  # same file, other label
    wrong = add_example(client, cid, a, pattern("hstripes", 999), "vstripes").json()
    r = client.get(f"/v1/collections/{cid}/audit", headers=auth(a))
    assert r.status_code == 200, r.text
    m = r.json()
    assert m["n_examples"] == 18 and m["label_counts"] == {"hstripes": 8, "vstripes": 10}
    same = [g for g in m["duplicates"] if g["kind"] == "same file"]
    assert len(same) == 1 and same[0]["label_conflict"] and len(same[0]["example_ids"]) == 2
    flagged = {i["example_id"]: i for i in m["label_issues"]}
    assert wrong["id"] in flagged and flagged[wrong["id"]]["suggested"] == "hstripes"
    assert "cleanlab" in m["label_issues_note"]
    # an empty collection: nothing to say, no error
    empty = _collection(client, a, "empty")
    e = client.get(f"/v1/collections/{empty}/audit", headers=auth(a)).json()
    assert (
        e["n_examples"] == 0
        and e["label_issues"] == []
        and "fewer than 3" in e["label_issues_note"]
    )
    s = client.get(f"/v1/collections/{empty}/suggestions", headers=auth(a)).json()
    assert s["suggestions"] == [] and "pool is empty" in s["why"]
