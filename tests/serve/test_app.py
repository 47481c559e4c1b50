"""The app as a whole: health, the offline API docs, the in-flight bound, the web page."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from fastapi.testclient import TestClient

from tests.serve._client import (
    FAST_AUTO,
    csp_violations,
    live_server,
    make_keys,
    pattern,
    settings_for,
)
from transferlab.serve import Settings, create_app


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


def test_web_page_end_to_end(tmp_path: Path) -> None:
    """The page at / in headless Chromium: create, add examples per label, train (auto),
    predict."""
    import shutil

    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

    expect = playwright.expect

    def starts(locator: Any, text: str, timeout: int) -> None:
        """Wait for `locator`'s text to start with `text` (Playwright's own polling, which a
        page's Content-Security-Policy does not block, unlike wait_for_function's eval)."""
        expect(locator).to_have_text(re.compile("^" + re.escape(text)), timeout=timeout)

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")

    (a,) = make_keys(tmp_path / "data", "alice")
    for kind in ("hstripes", "vstripes"):
        for i in range(3):
            (tmp_path / f"{kind}{i}.png").write_bytes(pattern(kind, 300 + i))
    (tmp_path / "query.png").write_bytes(pattern("vstripes", 999))
    for i in range(4):
        (tmp_path / f"pool{i}.png").write_bytes(pattern(("hstripes", "vstripes")[i % 2], 500 + i))
    with (
        live_server(create_app(settings_for(tmp_path / "data", **FAST_AUTO))) as url,
        playwright.sync_playwright() as p,
    ):
        browser = p.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            # the page runs under its own Content-Security-Policy: nothing of it is blocked
            blocked = csp_violations(page)
            page.goto(f"{url}/")
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
                starts(zone.locator(".count"), "3 ", 30_000)
            # label next: unlabelled images into the pool, the suggestions as cards with a
            # button per label; labelling one makes it an example
            page.set_input_files("#pool-file", [str(tmp_path / f"pool{i}.png") for i in range(4)])
            page.wait_for_selector("#suggestions .card img[src^='blob:']", timeout=30_000)
            assert "4 images in the pool" in page.text_content("#pool-status")
            page.locator("#suggestions .card").first.locator("button", has_text="vstripes").click()
            starts(page.locator("#summary"), "7 examples", 30_000)
            assert page.locator("#suggestions .card").count() == 3
            page.click("#audit")
            starts(page.locator("#audit-status"), "7 examples", 30_000)
            # the button trains kind='auto' (the default choice), within the budget given
            assert page.input_value("#train-kind") == "auto"
            assert page.locator("#train-kind option[value=linear_probe]").count() == 1
            page.fill("#budget", "90")
            page.click("#train")
            starts(page.locator("#job-status"), "succeeded", 120_000)
            # what auto kept is shown when the job ends, and in the collection's summary
            assert "chose probe test_resnet/" in page.text_content("#job-status")
            expect(page.locator("#summary")).to_contain_text("chosen: probe", timeout=30_000)
            page.wait_for_selector("#confusion td", timeout=30_000)
            page.set_input_files("#predict-file", str(tmp_path / "query.png"))
            page.wait_for_selector("#prediction b", timeout=30_000)
            assert page.text_content("#prediction b") == "prediction: vstripes"
            assert page.locator("#prediction .bar").count() == 2
            assert page.text_content("#error") == ""
            assert not blocked, blocked
            # /docs renders Swagger UI from the server's own files: no CDN reachable here
            docs = browser.new_page()
            docs.goto(f"{url}/docs")
            docs.wait_for_selector("#swagger-ui .info .title", timeout=30_000)
            assert "transferlab" in docs.text_content("#swagger-ui .info .title")
            assert docs.locator("#swagger-ui .opblock").count() >= 5  # the operations
        finally:
            browser.close()


def test_openapi_operations_are_stable(tmp_path: Path) -> None:
    """The routers may be split and moved; the URLs, methods and operation ids clients generate
    code from stay exactly these (the operations of the service before the split)."""
    expected = {
        ("GET", "/health", "health_health_get"),
        ("GET", "/v1/collections", "list_collections_v1_collections_get"),
        ("POST", "/v1/collections", "create_collection_v1_collections_post"),
        (
            "DELETE",
            "/v1/collections/{collection_id}",
            "delete_collection_v1_collections__collection_id__delete",
        ),
        ("GET", "/v1/collections/{collection_id}", "get_one_v1_collections__collection_id__get"),
        (
            "GET",
            "/v1/collections/{collection_id}/examples",
            "list_examples_v1_collections__collection_id__examples_get",
        ),
        (
            "POST",
            "/v1/collections/{collection_id}/examples",
            "add_example_v1_collections__collection_id__examples_post",
        ),
        (
            "DELETE",
            "/v1/collections/{collection_id}/examples/{example_id}",
            "delete_example_v1_collections__collection_id__examples__example_id__delete",
        ),
        (
            "GET",
            "/v1/collections/{collection_id}/metrics",
            "metrics_v1_collections__collection_id__metrics_get",
        ),
        (
            "GET",
            "/v1/collections/{collection_id}/model",
            "export_model_v1_collections__collection_id__model_get",
        ),
        (
            "POST",
            "/v1/collections/{collection_id}/predict",
            "predict_v1_collections__collection_id__predict_post",
        ),
        (
            "POST",
            "/v1/collections/{collection_id}/train",
            "train_v1_collections__collection_id__train_post",
        ),
        ("POST", "/v1/features", "features_v1_features_post"),
        ("GET", "/v1/jobs/{job_id}", "get_job_v1_jobs__job_id__get"),
    }
    C = "/v1/collections/{collection_id}"
    expected |= {  # issue 19: the pool, suggestions, the audit and the image files
        ("POST", f"{C}/pool", "add_to_pool_v1_collections__collection_id__pool_post"),
        ("GET", f"{C}/pool", "list_pool_v1_collections__collection_id__pool_get"),
        ("DELETE", f"{C}/pool/{{image_id}}",
         "delete_pool_image_v1_collections__collection_id__pool__image_id__delete"),
        ("POST", f"{C}/pool/{{image_id}}/label",
         "label_pool_image_v1_collections__collection_id__pool__image_id__label_post"),
        ("GET", f"{C}/pool/{{image_id}}/image",
         "pool_image_file_v1_collections__collection_id__pool__image_id__image_get"),
        ("GET", f"{C}/examples/{{example_id}}/image",
         "example_image_file_v1_collections__collection_id__examples__example_id__image_get"),
        ("GET", f"{C}/suggestions", "suggestions_v1_collections__collection_id__suggestions_get"),
        ("GET", f"{C}/audit", "audit_v1_collections__collection_id__audit_get"),
    }  # fmt: skip
    # issue 21: cancelling a job
    expected |= {
        ("DELETE", "/v1/jobs/{job_id}", "cancel_job_v1_jobs__job_id__delete"),
        ("POST", "/v1/setup", "setup_v1_setup_post"),
        ("DELETE", f"{C}/labels/{{label}}",
         "delete_label_v1_collections__collection_id__labels__label__delete"),
    }  # fmt: skip
    schema = create_app(Settings(data_dir=tmp_path)).openapi()  # no lifespan: nothing loaded
    got = {
        (method.upper(), path, op["operationId"])
        for path, ops in schema["paths"].items()
        for method, op in ops.items()
    }
    assert got == expected
    for path, ops in schema["paths"].items():  # every path parameter is declared, as a string
        for op in ops.values():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (path, op["operationId"])


def test_int8_precision_setting(tmp_path, monkeypatch):
    """TRANSFERLAB_PRECISION is checked when the settings load, and an int8 service needs a
    calibration folder that holds images (a clear error at start-up, not at the first request)."""
    import pydantic

    from transferlab.exceptions import InvalidParameterError
    from transferlab.serve.app import _calibration_images

    monkeypatch.setenv("TRANSFERLAB_PRECISION", "int8")
    monkeypatch.setenv("TRANSFERLAB_CALIBRATION_DIR", str(tmp_path))
    s = Settings(data_dir=tmp_path)
    assert s.precision == "int8" and s.calibration_dir == tmp_path
    with pytest.raises(InvalidParameterError, match="holds no images"):
        _calibration_images(s.calibration_dir)
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    assert _calibration_images(tmp_path) == [str(tmp_path / "a.png")]
    assert _calibration_images(None) is None
    monkeypatch.setenv("TRANSFERLAB_PRECISION", "int4")
    with pytest.raises(pydantic.ValidationError):
        Settings(data_dir=tmp_path)
