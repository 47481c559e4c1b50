"""Every bad input is a 4xx JSON error naming the problem, never a 500."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from fastapi.testclient import TestClient

from tests.serve._client import add_example, auth, pattern, png_bytes
from transferlab.serve.store import Collection, Store


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
            409,  # the collection's state, not the request, is what is wrong
            "at least 2",
        ),
        "metrics with one class": (
            client.get(f"/v1/collections/{single}/metrics", headers=h),
            409,
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
