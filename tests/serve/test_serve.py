"""The HTTP service through FastAPI's TestClient: every endpoint, the errors, ownership, restarts."""

from __future__ import annotations

import base64
import io
import itertools
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests._helpers import make_pattern_image

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from fastapi.testclient import TestClient

from transferlab.serve import Settings, create_app
from transferlab.serve.store import (
    Collection,
    Example,
    Job,
    Store,
    check_schema,
    hash_key,
)


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def pattern(kind: str, seed: int) -> bytes:
    return png_bytes(make_pattern_image(kind, np.random.default_rng(seed)))


def settings_for(data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        max_upload_bytes=300_000,
        max_pixels=1_000_000,
        max_images_per_request=4,
        queue_size=2,
        batch_wait_ms=2,
    )


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_keys(data_dir: Path, *names: str) -> list[str]:
    store = Store(data_dir)
    try:
        return [store.create_key(n)[1] for n in names]
    finally:
        store.close()


def wait_job(client: TestClient, job_id: str, key: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/v1/jobs/{job_id}", headers=auth(key))
        assert r.status_code == 200, r.text
        job = r.json()
        if job["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def add_example(client: TestClient, cid: str, key: str, data: bytes, label: str) -> Any:
    return client.post(
        f"/v1/collections/{cid}/examples",
        headers=auth(key),
        files={"file": ("x.png", data, "image/png")},
        data={"label": label},
    )


def trained_collection(client: TestClient, key: str, n: int = 4) -> str:
    r = client.post("/v1/collections", headers=auth(key), json={"name": "stripes"})
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    for i in range(n):
        for kind in ("hstripes", "vstripes"):
            r = add_example(client, cid, key, pattern(kind, 100 + i), kind)
            assert r.status_code == 201, r.text
    r = client.post(f"/v1/collections/{cid}/train", headers=auth(key))
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"], key)
    assert job["status"] == "succeeded", job
    return cid


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, list[str]]]:
    """One running app for the tests that do not restart it; keys A, B and C (C gets revoked)."""
    data_dir = tmp_path_factory.mktemp("serve")
    keys = make_keys(data_dir, "alice", "bob", "carol")
    with TestClient(create_app(settings_for(data_dir))) as client:
        yield client, keys


@pytest.fixture(scope="module")
def trained(server: tuple[TestClient, list[str]]) -> str:
    client, (a, _, _) = server
    return trained_collection(client, a)


def test_health_and_docs(server: tuple[TestClient, list[str]]) -> None:
    client, _ = server
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json()["backbone"] == "efficientnet_lite0"
    assert "pre_logits" in r.json()["layers"]
    docs = client.get("/docs")
    assert docs.status_code == 200
    # Swagger UI from this server's own files (works offline), not from a CDN
    assert "/docs-static/swagger-ui-bundle.js" in docs.text and "cdn." not in docs.text
    js = client.get("/docs-static/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    redoc = client.get("/redoc")
    assert redoc.status_code == 200 and "/docs-static/redoc.standalone.js" in redoc.text
    assert "fonts.googleapis" not in redoc.text and "cdn." not in redoc.text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/features", "/v1/collections", "/v1/jobs/{job_id}"} <= set(paths)
    assert r.headers["X-Request-ID"]


def test_metrics_are_cached_until_the_examples_change(
    server: tuple[TestClient, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """/metrics cross-validates once per set of examples: repeated reads are served from memory,
    a new example makes the next read recompute."""
    import transferlab.serve.routers.collections as routes

    client, (a, _, _) = server
    cid = trained_collection(client, a, n=3)
    calls = []
    real = routes.collection_metrics
    monkeypatch.setattr(routes, "collection_metrics", lambda *args: calls.append(1) or real(*args))
    url = f"/v1/collections/{cid}/metrics"
    first = client.get(url, headers=auth(a)).json()
    assert client.get(url, headers=auth(a)).json() == first
    assert len(calls) == 1 and np.sum(first["confusion"]) == 6
    assert add_example(client, cid, a, pattern("hstripes", 150), "hstripes").status_code == 201
    again = client.get(url, headers=auth(a)).json()
    assert len(calls) == 2 and np.sum(again["confusion"]) == 7


def test_features_equal_library(server: tuple[TestClient, list[str]], tmp_path: Path) -> None:
    from transferlab.features import FeatureExtractor

    client, (a, _, _) = server
    images = [pattern("hstripes", 1), pattern("checker", 2)]
    paths = []
    for i, data in enumerate(images):
        p = tmp_path / f"{i}.png"
        p.write_bytes(data)
        paths.append(str(p))
    expected = FeatureExtractor(cache=False, progress=False).transform(paths)

    r = client.post(
        "/v1/features",
        headers=auth(a),
        files=[("files", (f"{i}.png", d, "image/png")) for i, d in enumerate(images)],
    )
    assert r.status_code == 200, r.text
    got = np.array([f["vector"] for f in r.json()["features"]], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [f["name"] for f in r.json()["features"]] == ["0.png", "1.png"]

    body = {"images": [{"name": "b64", "data": base64.b64encode(images[1]).decode()}]}
    r = client.post("/v1/features", headers={"X-API-Key": a}, json=body)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["features"][0]["vector"], expected[1], atol=1e-5)

    r = client.post("/v1/features", headers=auth(a), json={**body, "layer": "stage3"})
    assert r.status_code == 200 and r.json()["features"][0]["dim"] == 40


def test_collection_lifecycle(server: tuple[TestClient, list[str]], trained: str) -> None:
    client, (a, _, _) = server
    cid = trained
    coll = client.get(f"/v1/collections/{cid}", headers=auth(a)).json()
    assert coll["n_examples"] == 8 and coll["labels"] == {"hstripes": 4, "vstripes": 4}
    assert coll["model"]["classes"] == ["hstripes", "vstripes"]
    assert cid in [c["id"] for c in client.get("/v1/collections", headers=auth(a)).json()]

    for kind, seed in (("hstripes", 900), ("vstripes", 901)):
        r = client.post(
            f"/v1/collections/{cid}/predict",
            headers=auth(a),
            files={"file": ("q.png", pattern(kind, seed), "image/png")},
            data={"top_k": "2"},
        )
        assert r.status_code == 200, r.text
        pred = r.json()
        assert pred["label"] == kind and not pred["uncertain"]
        assert len(pred["top"]) == 2
        assert abs(sum(t["probability"] for t in pred["top"]) - 1) < 1e-6

    r = client.post(
        f"/v1/collections/{cid}/predict",
        headers=auth(a),
        files={"file": ("q.png", pattern("checker", 5), "image/png")},
        data={"threshold": "1.0"},
    )
    assert r.status_code == 200 and r.json()["uncertain"] and r.json()["label"] == "uncertain"

    m = client.get(f"/v1/collections/{cid}/metrics", headers=auth(a)).json()
    assert m["classes"] == ["hstripes", "vstripes"] and m["accuracy"] >= 0.75
    assert np.sum(m["confusion"]) == 8

    r = client.get(f"/v1/collections/{cid}/model", headers=auth(a))
    assert r.status_code == 200
    assert {"model.json", "probe.joblib"} <= set(zipfile.ZipFile(io.BytesIO(r.content)).namelist())

    examples = client.get(f"/v1/collections/{cid}/examples", headers=auth(a)).json()
    assert len(examples) == 8 and examples[0]["dim"] == 1280


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
    assert client.delete(f"/v1/collections/{cid}", headers=auth(a)).status_code == 204
    assert client.get(f"/v1/collections/{cid}", headers=auth(a)).status_code == 404


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


def test_bad_inputs_are_4xx_json(server: tuple[TestClient, list[str]], trained: str) -> None:
    client, (a, _, _) = server
    h = auth(a)
    single = client.post("/v1/collections", headers=h, json={"name": "one"}).json()["id"]
    assert add_example(client, single, a, pattern("hstripes", 1), "h").status_code == 201
    huge = png_bytes(Image.new("L", (1200, 1000)))  # 1.2 Mpx > the 1 Mpx limit, few bytes
    big = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    too_big = png_bytes(Image.fromarray(big))  # > 300 kB
    truncated = pattern("vstripes", 1)[:200]
    good = pattern("vstripes", 1)

    def example(data: bytes, name: str = "x.jpg", **form: str) -> Any:
        return client.post(
            f"/v1/collections/{single}/examples",
            headers=h,
            files={"file": (name, data, "image/jpeg")},
            data=form or {"label": "v"},
        )

    cases = {
        "empty file": (example(b""), 400, "empty"),
        "text renamed .jpg": (example(b"hello, not an image\n" * 10), 415, "not an image"),
        "huge dimensions": (example(huge), 413, "pixels"),
        "upload too large": (example(too_big), 413, "limit"),
        "truncated image": (example(truncated), 400, "x.jpg"),
        "missing label": (example(good, label=" "), 422, "label"),
        "two labels, single-label": (example(good, labels="a;b"), 422, "single-label"),
        "missing file": (
            client.post(f"/v1/collections/{single}/examples", headers=h, data={"label": "a"}),
            422,
            "file",
        ),
        "unknown collection": (client.get("/v1/collections/nope", headers=h), 404, "nope"),
        "unknown job": (client.get("/v1/jobs/nope", headers=h), 404, "nope"),
        "train with one class": (
            client.post(f"/v1/collections/{single}/train", headers=h),
            400,
            "at least 2",
        ),
        "metrics with one class": (
            client.get(f"/v1/collections/{single}/metrics", headers=h),
            400,
            "at least 2",
        ),
        "predict before training": (
            client.post(
                f"/v1/collections/{single}/predict",
                headers=h,
                files={"file": ("q.png", good, "image/png")},
            ),
            409,
            "train",
        ),
        "export before training": (
            client.get(f"/v1/collections/{single}/model", headers=h),
            409,
            "trained",
        ),
        "finetune options on a probe": (
            client.post(f"/v1/collections/{trained}/train", headers=h, json={"epochs": 2}),
            422,
            "finetune",
        ),
        "finetune epochs out of range": (
            client.post(
                f"/v1/collections/{trained}/train",
                headers=h,
                json={"kind": "finetune", "epochs": 0},
            ),
            422,
            "epochs",
        ),
        "unknown train field": (
            client.post(f"/v1/collections/{trained}/train", headers=h, json={"lr": 1}),
            422,
            "lr",
        ),
        "bad top_k": (
            client.post(
                f"/v1/collections/{trained}/predict",
                headers=h,
                files={"file": ("q.png", good, "image/png")},
                data={"top_k": "0"},
            ),
            422,
            "top_k",
        ),
        "predict on text": (
            client.post(
                f"/v1/collections/{trained}/predict",
                headers=h,
                files={"file": ("q.png", b"GIF89a nope", "image/png")},
            ),
            415,
            "q.png",
        ),
        "bad base64": (
            client.post("/v1/features", headers=h, json={"images": [{"data": "@@not base64@@"}]}),
            400,
            "base64",
        ),
        "base64 of text": (
            client.post(
                "/v1/features",
                headers=h,
                json={"images": [{"data": base64.b64encode(b"plain text").decode()}]},
            ),
            415,
            "not an image",
        ),
        "bad JSON": (
            client.post(
                "/v1/features",
                headers={**h, "Content-Type": "application/json"},
                content=b"{nope",
            ),
            400,
            "JSON",
        ),
        "no images": (client.post("/v1/features", headers=h, json={"images": []}), 422, "images"),
        "too many images": (
            client.post(
                "/v1/features",
                headers=h,
                files=[("files", (f"{i}.png", good, "image/png")) for i in range(5)],
            ),
            413,
            "at most 4",
        ),
        "unsupported content type": (
            client.post("/v1/features", headers={**h, "Content-Type": "text/plain"}, content=b"x"),
            415,
            "multipart",
        ),
        "unknown layer": (
            client.post("/v1/collections", headers=h, json={"name": "x", "layer": "stage99"}),
            400,
            "layer",
        ),
        "unknown backbone": (
            client.post(
                "/v1/features",
                headers=h,
                json={"images": [{"data": base64.b64encode(good).decode()}], "backbone": "vit_9"},
            ),
            400,
            "vit_9",
        ),
        "empty collection name": (
            client.post("/v1/collections", headers=h, json={"name": ""}),
            422,
            "name",
        ),
        "unknown route": (client.get("/v1/nothing", headers=h), 404, "Not Found"),
    }
    for what, (r, status, needle) in cases.items():
        assert r.status_code == status, (what, r.status_code, r.text)
        body = r.json()
        assert isinstance(body["detail"], str) and body["detail"], what
        assert needle.lower() in body["detail"].lower(), (what, body)
    # nothing above left an image behind
    store: Store = client.app.state.services.store  # type: ignore[attr-defined]
    assert not list((store.data_dir / "tmp").iterdir())


def test_odd_inputs_are_4xx_not_500(
    server: tuple[TestClient, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inputs a review found answered 500 (or accepted when they must not be), now 4xx JSON."""
    client, (a, _, _) = server
    h = auth(a)
    good = pattern("hstripes", 8)
    cid = client.post("/v1/collections", headers=h, json={"name": "odd"}).json()["id"]
    as_json = {**h, "Content-Type": "application/json"}
    cases = {
        "non-UTF-8 JSON": (
            client.post("/v1/features", headers=as_json, content=b"\xff\xfe{"),
            400,
            "utf-8",
        ),
        "JSON nested too deeply": (
            client.post("/v1/features", headers=as_json, content=b"[" * 100_000 + b"]" * 100_000),
            400,
            "deeply",
        ),
        "offset past any integer column": (
            client.get(f"/v1/collections/{cid}/examples?offset={10**30}", headers=h),
            422,
            "offset",
        ),
        "control characters in a name": (
            client.post("/v1/collections", headers=h, json={"name": "a\x00b"}),
            422,
            "printable",
        ),
        "the reserved label": (add_example(client, cid, a, good, "uncertain"), 422, "reserved"),
        "streamed body past the cap": (
            client.post(
                "/v1/features",
                headers=as_json,
                content=iter([b" " * 1_000_000] * 4),  # chunked: no Content-Length to check
            ),
            413,
            "exceeds",
        ),
        "Content-Length past the cap": (
            client.post(
                "/v1/features", headers={**as_json, "Content-Length": str(10**12)}, content=b"{}"
            ),
            413,
            "exceeds",
        ),
        "streamed multipart past the cap": (
            client.post(
                f"/v1/collections/{cid}/examples",
                headers={**h, "Content-Type": "multipart/form-data; boundary=b"},
                content=iter([b"--b\r\n"] + [b"x" * 1_000_000] * 4),
            ),
            413,
            "exceeds",
        ),
    }
    for what, (r, status, needle) in cases.items():
        assert r.status_code == status, (what, r.status_code, r.text)
        assert needle.lower() in r.json()["detail"].lower(), (what, r.json())

    # base64 as browsers and mail tools write it: a data: URL prefix, MIME line breaks
    for data in (
        "data:image/png;base64," + base64.b64encode(good).decode(),
        base64.encodebytes(good).decode(),
    ):
        r = client.post("/v1/features", headers=h, json={"images": [{"data": data}]})
        assert r.status_code == 200, r.text

    # a result that does not come back in time is a 503 with Retry-After, not a 500
    services = client.app.state.services  # type: ignore[attr-defined]
    monkeypatch.setattr(services.settings, "request_timeout_s", 1e-6)
    r = client.post("/v1/features", headers=h, files=[("files", ("a.png", good, "image/png"))])
    assert r.status_code == 503 and r.headers["Retry-After"], r.text
    monkeypatch.undo()

    # a collection whose features came from another backbone is refused, not mixed
    store: Store = services.store
    with store.session() as s:
        s.get(Collection, cid).backbone = "resnet18"  # type: ignore[union-attr]
    r = add_example(client, cid, a, good, "h")
    assert r.status_code == 409 and "resnet18" in r.json()["detail"], r.text
    assert client.post(f"/v1/collections/{cid}/train", headers=h).status_code == 409
    assert not list((store.data_dir / "tmp").iterdir())


def test_simultaneous_train_requests_start_one_job(server: tuple[TestClient, list[str]]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client, (a, _, _) = server
    cid = client.post("/v1/collections", headers=auth(a), json={"name": "race"}).json()["id"]
    for i, kind in enumerate(("hstripes", "vstripes", "hstripes", "vstripes")):
        assert add_example(client, cid, a, pattern(kind, 600 + i), kind).status_code == 201
    with ThreadPoolExecutor(6) as pool:
        codes = list(
            pool.map(
                lambda _: client.post(f"/v1/collections/{cid}/train", headers=auth(a)).status_code,
                range(6),
            )
        )
    assert set(codes) <= {202, 409} and 202 in codes, codes
    store: Store = client.app.state.services.store  # type: ignore[attr-defined]
    from sqlalchemy import select

    with store.session() as s:
        ids = list(s.scalars(select(Job.id).where(Job.collection_id == cid)))
    assert len(ids) == codes.count(202)  # each 202 is one job; each 409 added none
    for job_id in ids:
        assert wait_job(client, job_id, a)["status"] == "succeeded"
    with store.session() as s:
        jobs = sorted(
            s.scalars(select(Job).where(Job.collection_id == cid)), key=lambda j: j.created
        )
    # a later job was accepted only after the earlier one had ended
    for before, after in itertools.pairwise(jobs):
        assert after.created >= before.updated, (before.updated, after.created)


def test_inflight_bound_answers_503_at_once() -> None:
    """More simultaneous /v1 requests than max_inflight: the extra ones get 503 + Retry-After
    immediately (nothing queues in memory); /health is not counted; the bound frees up again."""
    import asyncio

    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from transferlab.serve.app import GuardMiddleware

    async def main() -> None:
        gate = asyncio.Event()

        async def slow(_request: Any) -> PlainTextResponse:
            await gate.wait()
            return PlainTextResponse("done")

        inner = Starlette(routes=[Route("/v1/slow", slow), Route("/health", slow)])
        app = GuardMiddleware(inner, Settings(data_dir=Path("."), max_inflight=2))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            held = [asyncio.create_task(c.get("/v1/slow")) for _ in range(2)]
            await asyncio.sleep(0.05)
            refused = await asyncio.wait_for(c.get("/v1/slow"), 5)
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            assert refused.json()["error"] == "overloaded"
            health = asyncio.create_task(c.get("/health"))  # not counted: it is admitted
            await asyncio.sleep(0.05)
            gate.set()
            assert [r.status_code for r in await asyncio.gather(*held, health)] == [200] * 3
            assert (await c.get("/v1/slow")).status_code == 200
            assert app.inflight == 0

    asyncio.run(main())


def test_multi_label_collection(server: tuple[TestClient, list[str]]) -> None:
    client, (a, _, _) = server
    r = client.post("/v1/collections", headers=auth(a), json={"name": "ml", "multi_label": True})
    cid = r.json()["id"]
    assert r.json()["multi_label"] is True
    sets = {"hstripes": "h", "vstripes": "v", "checker": "h;v"}
    for i in range(2):
        for kind, labels in sets.items():
            r = client.post(
                f"/v1/collections/{cid}/examples",
                headers=auth(a),
                files={"file": ("x.png", pattern(kind, 40 + i), "image/png")},
                data={"labels": labels},
            )
            assert r.status_code == 201, r.text
    assert r.json()["labels"] == ["h", "v"]
    r = client.post(f"/v1/collections/{cid}/train", headers=auth(a))
    assert r.status_code == 202, r.text
    assert wait_job(client, r.json()["id"], a)["status"] == "succeeded"
    r = client.post(
        f"/v1/collections/{cid}/predict",
        headers=auth(a),
        files={"file": ("q.png", pattern("hstripes", 77), "image/png")},
    )
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["labels"], list) and len(r.json()["top"]) == 2
    m = client.get(f"/v1/collections/{cid}/metrics", headers=auth(a))
    assert m.status_code == 200 and "mAP" in m.json()

    # fine-tuned the multi-label way: sigmoid head, per-label thresholds tuned on held-out images
    r = client.post(
        f"/v1/collections/{cid}/train",
        headers=auth(a),
        json={"kind": "finetune", "epochs": 1, "image_size": 64},
    )
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"], a, timeout=300)
    assert job["status"] == "succeeded", job
    r = client.post(
        f"/v1/collections/{cid}/predict",
        headers=auth(a),
        files={"file": ("q.png", pattern("checker", 78), "image/png")},
    )
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["labels"], list) and len(r.json()["top"]) == 2
    assert (
        r.json()["model_id"]
        == client.get(f"/v1/collections/{cid}", headers=auth(a)).json()["model"]["id"]
    )


def test_finetune_job(server: tuple[TestClient, list[str]]) -> None:
    """kind='finetune' trains the backbone itself (tiny here: 64 px, 1 epoch), reports progress,
    and leaves a model that predict and export use like a probe's."""
    client, (a, b, _) = server
    cid = client.post("/v1/collections", headers=auth(a), json={"name": "ft"}).json()["id"]
    for i in range(4):
        for kind in ("hstripes", "vstripes"):
            assert add_example(client, cid, a, pattern(kind, 500 + i), kind).status_code == 201
    r = client.post(
        f"/v1/collections/{cid}/train",
        headers=auth(a),
        json={"kind": "finetune", "epochs": 1, "image_size": 64},
    )
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "finetune"
    job_id = r.json()["id"]
    seen = set()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=auth(a)).json()
        seen.add(job["progress"])
        if job["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.05)
    assert job["status"] == "succeeded", job
    assert job["progress"] == 1.0 and len(seen) >= 2  # it moved, not only 0 -> 1
    coll = client.get(f"/v1/collections/{cid}", headers=auth(a)).json()
    assert coll["model"]["job_id"] == job_id and coll["model"]["classes"] == [
        "hstripes",
        "vstripes",
    ]

    r = client.post(
        f"/v1/collections/{cid}/predict",
        headers=auth(a),
        files={"file": ("q.png", pattern("vstripes", 901), "image/png")},
        data={"top_k": "2"},
    )
    assert r.status_code == 200, r.text
    pred = r.json()
    assert pred["label"] in ("hstripes", "vstripes") and len(pred["top"]) == 2
    assert abs(sum(t["probability"] for t in pred["top"]) - 1) < 1e-6
    r = client.post(
        f"/v1/collections/{cid}/predict",
        headers=auth(a),
        files={"file": ("q.png", b"not an image at all", "image/png")},
    )
    assert r.status_code == 415

    r = client.get(f"/v1/collections/{cid}/model", headers=auth(a))
    assert r.status_code == 200
    names = set(zipfile.ZipFile(io.BytesIO(r.content)).namelist())
    assert {"model.json", "weights.safetensors", "metrics.json"} <= names
    # the export is a model directory the library loads and predicts with
    from transferlab.models import FinetunedModel, load_model

    out = Path(client.app.state.services.store.data_dir) / "tmp" / "export-test"  # type: ignore[attr-defined]
    zipfile.ZipFile(io.BytesIO(r.content)).extractall(out)
    try:
        model = load_model(out, progress=False)
        assert isinstance(model, FinetunedModel) and model.image_size == 64
    finally:
        import shutil

        shutil.rmtree(out)
    assert client.get(f"/v1/jobs/{job_id}", headers=auth(b)).status_code == 404


def test_split_examples_holds_out_each_label() -> None:
    from transferlab.serve.jobs import split_examples

    ex = [Example(labels=[lab]) for lab in "aaaaabbbc"]
    train, val, note = split_examples(ex, multi_label=False)
    assert sorted(e.labels[0] for e in val) == ["a", "b"]  # 'c' has one image: kept for training
    assert len(train) + len(val) == 9 and "validation" in note
    train, val, note = split_examples([ex[0], ex[5]], multi_label=False)
    assert "training images" in note and len(val) == 2  # nothing to hold out: said so
    # multi-label: a label on one example only must stay in training, whatever the draw
    for seed in range(20):
        ml = [Example(labels=["a"]), Example(labels=["a", "b"]), Example(labels=["a"]),
              Example(labels=["c"]), Example(labels=["a", "c"])]  # fmt: skip
        train, val, note = split_examples(ml, multi_label=True, seed=seed)
        assert {lab for e in train for lab in e.labels} == {"a", "b", "c"}, seed
        # held out at random, or (nothing could be) validated on the training images, and said so
        assert len(train) + len(val) == 5 if "held out" in note else len(val) == 5, note


def test_full_queues_refuse_instead_of_growing() -> None:
    """Bounded queues: a full feature queue is 503, a full training queue 429."""
    import queue
    import threading

    from transferlab.serve.errors import ApiError
    from transferlab.serve.jobs import FeatureBatcher, JobRunner

    release = threading.Event()

    class SlowExtractor:
        pool = "avg"

        def extract(self, paths: list[str], **_: Any) -> Any:
            release.wait(10)
            raise RuntimeError("stub")

    batcher = FeatureBatcher(SlowExtractor(), max_batch=1, wait_s=0, queue_size=1)  # type: ignore[arg-type]
    first = batcher.submit(["a"], ["pre_logits"])
    deadline = time.monotonic() + 5
    while batcher._queue.qsize() and time.monotonic() < deadline:
        time.sleep(0.01)  # the worker has taken the first request and is stuck in it
    batcher.submit(["b"], ["pre_logits"])
    with pytest.raises(ApiError) as err:
        batcher.submit(["c"], ["pre_logits"])
    assert err.value.status == 503
    release.set()
    with pytest.raises(RuntimeError):
        first.result(timeout=10)  # the extractor's failure reaches the waiting request
    batcher.stop()

    runner = JobRunner.__new__(JobRunner)  # the queue alone, no worker draining it
    runner._queue = queue.Queue(maxsize=1)
    runner.submit("job-1")
    with pytest.raises(ApiError) as err:
        runner.submit("job-2")
    assert err.value.status == 429


def test_restart_keeps_everything(tmp_path: Path) -> None:
    (a,) = make_keys(tmp_path, "alice")
    with TestClient(create_app(settings_for(tmp_path))) as client:
        cid = trained_collection(client, a, n=3)
        before = client.get(f"/v1/collections/{cid}", headers=auth(a)).json()
        examples = client.get(f"/v1/collections/{cid}/examples", headers=auth(a)).json()
    with TestClient(create_app(settings_for(tmp_path))) as client:
        after = client.get(f"/v1/collections/{cid}", headers=auth(a)).json()
        assert after == before
        assert client.get(f"/v1/collections/{cid}/examples", headers=auth(a)).json() == examples
        job = client.get(f"/v1/jobs/{before['model']['job_id']}", headers=auth(a)).json()
        assert job["status"] == "succeeded" and job["progress"] == 1.0
        r = client.post(
            f"/v1/collections/{cid}/predict",
            headers=auth(a),
            files={"file": ("q.png", pattern("vstripes", 555), "image/png")},
        )
        assert r.status_code == 200 and r.json()["label"] == "vstripes"


def test_interrupted_job_is_failed_and_rerunnable(tmp_path: Path) -> None:
    store = Store(tmp_path)
    key, raw = store.create_key("alice")
    rng = np.random.default_rng(0)
    with store.session() as s:
        coll = Collection(
            owner_id=key.id,
            name="c",
            multi_label=False,
            backbone="efficientnet_lite0",
            layer="pre_logits",
        )
        s.add(coll)
        s.flush()
        for i in range(6):
            vec = (rng.normal(size=1280) + (3 if i % 2 else -3)).astype(np.float32)
            s.add(
                Example(
                    collection_id=coll.id,
                    labels=["a" if i % 2 else "b"],
                    image_sha256=f"{i:064x}",
                    image_ext="png",
                    feature=vec.tobytes(),
                    dim=1280,
                )
            )
        job = Job(
            collection_id=coll.id, kind="linear_probe", status="running", progress=0.5, params={}
        )
        s.add(job)
    store.close()
    with TestClient(create_app(settings_for(tmp_path))) as client:
        got = client.get(f"/v1/jobs/{job.id}", headers=auth(raw)).json()
        assert got["status"] == "failed" and "interrupted" in got["error"]
        r = client.post(f"/v1/collections/{coll.id}/train", headers=auth(raw))
        assert r.status_code == 202
        assert wait_job(client, r.json()["id"], raw)["status"] == "succeeded"


def test_shutdown_interrupts_a_running_finetune(tmp_path: Path) -> None:
    """A graceful stop (Ctrl+C, SIGTERM) does not wait for a long fine-tune: it stops at the next
    batch and the job reads failed/interrupted, re-runnable, exactly as after a crash."""
    (a,) = make_keys(tmp_path, "alice")
    with TestClient(create_app(settings_for(tmp_path))) as client:
        cid = client.post("/v1/collections", headers=auth(a), json={"name": "s"}).json()["id"]
        for i in range(3):
            for kind in ("hstripes", "vstripes"):
                assert add_example(client, cid, a, pattern(kind, 70 + i), kind).status_code == 201
        r = client.post(
            f"/v1/collections/{cid}/train",
            headers=auth(a),
            json={"kind": "finetune", "epochs": 50, "image_size": 64},
        )
        job_id = r.json()["id"]
        deadline = time.monotonic() + 120
        while (j := client.get(f"/v1/jobs/{job_id}", headers=auth(a)).json())["progress"] <= 0.1:
            assert j["status"] in ("queued", "running") and time.monotonic() < deadline, j
            time.sleep(0.05)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 30  # the lifespan's end did not run 50 epochs
    store = Store(tmp_path)
    with store.session() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "failed" and "interrupted" in (job.error or "")
    store.close()


def test_keys_stored_hashed_and_schema_versioned(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _, raw = store.create_key("alice")
    assert store.authenticate(raw) is not None
    assert check_schema(store.engine) == []
    from sqlalchemy import text

    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT MAX(version) FROM schema_version")).scalar() == 1
    store.close()
    Store(tmp_path).close()  # a second open migrates nothing and keeps the data
    blobs = b"".join(p.read_bytes() for p in tmp_path.glob("transferlab.sqlite*"))
    assert raw.encode() not in blobs
    assert hash_key(raw).encode() in blobs


def test_keys_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from transferlab.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["keys", "create", "bot", "--data-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    raw = r.output.strip().splitlines()[-1]
    assert raw.startswith("tl_")
    r = runner.invoke(app, ["keys", "list", "--data-dir", str(tmp_path), "--json"])
    assert r.exit_code == 0 and '"bot"' in r.output and raw not in r.output
    assert runner.invoke(app, ["keys", "revoke", "1", "--data-dir", str(tmp_path)]).exit_code == 0
    assert Store(tmp_path).authenticate(raw) is None
    assert runner.invoke(app, ["keys", "revoke", "7", "--data-dir", str(tmp_path)]).exit_code == 2
    assert runner.invoke(app, ["serve", "--help"]).exit_code == 0


def test_web_page_end_to_end(tmp_path: Path) -> None:
    """The page at / in headless Chromium: create, add examples per label, train, predict."""
    import shutil
    import socket
    import threading

    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    import uvicorn

    (a,) = make_keys(tmp_path / "data", "alice")
    for kind in ("hstripes", "vstripes"):
        for i in range(3):
            (tmp_path / f"{kind}{i}.png").write_bytes(pattern(kind, 300 + i))
    (tmp_path / "query.png").write_bytes(pattern("vstripes", 999))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings_for(tmp_path / "data")),
            host="127.0.0.1",
            port=port,
            log_config=None,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.1)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=chromium, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/")
                page.fill("#key", a)
                page.click("#save-key")
                page.fill("#new-name", "stripes")
                page.click("#create")
                for kind in ("hstripes", "vstripes"):
                    page.fill("#new-label", kind)
                    page.click("#add-label")
                    zone = page.locator(f'.drop[data-label="{kind}"]')
                    zone.locator("input[type=file]").set_input_files(
                        [str(tmp_path / f"{kind}{i}.png") for i in range(3)]
                    )
                    page.wait_for_function(
                        f"document.querySelector('.drop[data-label=\"{kind}\"] .count')"
                        ".textContent.startsWith('3 ')",
                        timeout=30_000,
                    )
                page.click("#train")
                page.wait_for_function(
                    "document.getElementById('job-status').textContent.startsWith('succeeded')",
                    timeout=60_000,
                )
                page.wait_for_selector("#confusion td", timeout=30_000)
                page.set_input_files("#predict-file", str(tmp_path / "query.png"))
                page.wait_for_selector("#prediction b", timeout=30_000)
                assert page.text_content("#prediction b") == "prediction: vstripes"
                assert page.locator("#prediction .bar").count() == 2
                assert page.text_content("#error") == ""
                # /docs renders Swagger UI from the server's own files: no CDN reachable here
                docs = browser.new_page()
                docs.goto(f"http://127.0.0.1:{port}/docs")
                docs.wait_for_selector("#swagger-ui .info .title", timeout=30_000)
                assert "transferlab" in docs.text_content("#swagger-ui .info .title")
                assert docs.locator("#swagger-ui .opblock").count() >= 5  # the operations
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _start_server(data_dir: Path, port: int) -> Any:
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRANSFERLAB_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "transferlab.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("the server did not come up in 120 s")


def test_sigkill_during_training_loses_no_examples(tmp_path: Path) -> None:
    """A real `transferlab serve` process killed with SIGKILL right after a training job is
    accepted: after a restart every example is there, the job is either finished or marked failed
    as interrupted, and training again succeeds."""
    import signal
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    key = make_keys(tmp_path, "alice")[0]
    proc = _start_server(tmp_path, port)
    try:
        with httpx.Client(base_url=base, headers=auth(key), timeout=60) as c:
            cid = c.post("/v1/collections", json={"name": "kill"}).json()["id"]
            for i in range(5):
                for kind in ("hstripes", "vstripes"):
                    r = c.post(
                        f"/v1/collections/{cid}/examples",
                        files={"file": ("x.png", pattern(kind, 300 + i), "image/png")},
                        data={"label": kind},
                    )
                    assert r.status_code == 201, r.text
            # a fine-tune long enough to be caught mid-run: killed once it reports progress
            r = c.post(
                f"/v1/collections/{cid}/train",
                json={"kind": "finetune", "epochs": 50, "image_size": 64},
            )
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            deadline = time.monotonic() + 120
            while (j := c.get(f"/v1/jobs/{job_id}").json())["progress"] <= 0.1:
                assert j["status"] in ("queued", "running"), j
                assert time.monotonic() < deadline, j
                time.sleep(0.1)
            proc.send_signal(signal.SIGKILL)  # mid-training; no shutdown handler runs
            proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc = _start_server(tmp_path, port)
    try:
        with httpx.Client(base_url=base, headers=auth(key), timeout=60) as c:
            examples = c.get(f"/v1/collections/{cid}/examples").json()
            items = examples["items"] if isinstance(examples, dict) else examples
            assert len(items) == 10
            job = c.get(f"/v1/jobs/{job_id}").json()
            assert job["status"] == "failed" and "interrupted" in job["error"], job
            assert c.get(f"/v1/collections/{cid}").json()["model"] is None  # nothing half-saved
            r = c.post(f"/v1/collections/{cid}/train")
            assert r.status_code == 202, r.text
            deadline = time.monotonic() + 60
            while (j := c.get(f"/v1/jobs/{r.json()['id']}").json())["status"] not in (
                "succeeded",
                "failed",
            ) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert j["status"] == "succeeded", j
            p = c.post(
                f"/v1/collections/{cid}/predict",
                files={"file": ("q.png", pattern("vstripes", 999), "image/png")},
            )
            assert p.status_code == 200, p.text
    finally:
        proc.kill()
        proc.wait(timeout=30)


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


def test_postgresql_service_and_restart(pg_url: str, tmp_path: Path) -> None:
    """The whole flow against PostgreSQL: examples, training, predict, metrics, isolation
    between keys, and a restart that keeps everything."""
    store = Store(tmp_path, pg_url)
    a, b = (store.create_key(n)[1] for n in ("alice", "bob"))
    store.close()
    settings = settings_for(tmp_path).model_copy(update={"db_url": pg_url})
    with TestClient(create_app(settings)) as client:
        cid = trained_collection(client, a, n=3)
        before = client.get(f"/v1/collections/{cid}", headers=auth(a)).json()
        assert client.get(f"/v1/collections/{cid}", headers=auth(b)).status_code == 404
        assert client.get("/v1/collections", headers=auth(b)).json() == []
        m = client.get(f"/v1/collections/{cid}/metrics", headers=auth(a))
        assert m.status_code == 200 and np.sum(m.json()["confusion"]) == 6
    with TestClient(create_app(settings)) as client:
        assert client.get(f"/v1/collections/{cid}", headers=auth(a)).json() == before
        r = client.post(
            f"/v1/collections/{cid}/predict",
            headers=auth(a),
            files={"file": ("q.png", pattern("vstripes", 555), "image/png")},
        )
        assert r.status_code == 200 and r.json()["label"] == "vstripes", r.text
        assert client.delete(f"/v1/collections/{cid}", headers=auth(a)).status_code == 204


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
