"""The web page for someone who never used a terminal (issue 21), in headless Chromium with its
fake camera: the first key from the link `serve` printed, examples captured from the camera
into per-label cards with thumbnails, train, the model shown out of date after a change, live
predictions from the camera, deleting an example and a label, and downloading the ONNX model.
A screenshot of the page is written (``TRANSFERLAB_SCREENSHOT`` names where, to look at)."""

from __future__ import annotations

import io
import os
import re
import shutil
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from tests.serve._client import csp_violations, live_server, settings_for


def test_first_time_user_with_a_camera(tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    from transferlab.serve import create_app

    expect = playwright.expect
    settings = settings_for(tmp_path / "data", setup_token="first-run-token")
    with live_server(create_app(settings)) as url, playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
            ],
        )
        try:
            context = browser.new_context(accept_downloads=True)
            context.grant_permissions(["camera"], origin=url)
            page = context.new_page()
            blocked = csp_violations(page)
            # 1. the first key, from the printed link, with no terminal
            page.goto(f"{url}/?setup=first-run-token")
            expect(page.locator("#setup-box")).to_be_visible()
            page.click("#setup")
            expect(page.locator("#setup-box")).to_be_hidden(timeout=15_000)
            assert "setup=" not in page.url  # the spent token left the address bar
            assert page.evaluate("localStorage.getItem('transferlab-key')").startswith("tl_")
            # the link works once
            again = context.request.post(f"{url}/v1/setup", data={"token": "first-run-token"})
            assert again.status == 409
            # 2. a collection, two labels, examples from the camera
            page.fill("#new-name", "desk")
            page.click("#create")
            for label in ("mug", "pen"):
                page.fill("#new-label", label)
                page.click("#add-label")
            page.click("#camera")
            expect(page.locator("#camera-status")).to_contain_text("camera on", timeout=20_000)
            for label in ("mug", "pen"):
                zone = page.locator(f'.drop[data-label="{label}"]')
                for i in range(3):
                    zone.locator(".capture").click()
                    expect(zone.locator(".count")).to_have_text(f"{i + 1} images", timeout=30_000)
                expect(zone.locator(".thumb img[src^='blob:']")).to_have_count(3, timeout=30_000)
            # 3. train (the fast probe); then one more picture makes the model out of date
            page.select_option("#train-kind", "linear_probe")
            page.click("#train")
            expect(page.locator("#job-status")).to_have_text(
                re.compile("^succeeded"), timeout=120_000
            )
            expect(page.locator("#summary")).to_contain_text("trained")
            assert "desk (6 images)" in page.text_content("#collections")  # counts kept up
            assert page.locator("#summary .stale").count() == 0
            page.locator('.drop[data-label="mug"] .capture').click()
            expect(page.locator("#summary .stale")).to_contain_text("out of date", timeout=30_000)
            assert "out of date" in page.text_content("#train")
            # 4. live predictions from the camera, with a bar per label
            page.check("#live")
            expect(page.locator("#prediction b")).to_have_text(
                re.compile("^live prediction: (mug|pen)$"), timeout=30_000
            )
            assert page.locator("#prediction .bar").count() == 2
            page.uncheck("#live")
            # 5. the model to take away: ONNX + preprocessing
            with page.expect_download(timeout=120_000) as dl:
                page.click("#export")
            data = Path(dl.value.path()).read_bytes()
            names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
            assert {"model.onnx", "preprocessing.json"} <= names
            shot = os.environ.get("TRANSFERLAB_SCREENSHOT") or str(tmp_path / "page.png")
            page.screenshot(path=shot, full_page=True)
            # 6. delete one example, then a whole label
            mug = page.locator('.drop[data-label="mug"]')
            mug.locator(".thumb button").first.click()
            expect(mug.locator(".count")).to_have_text("3 images", timeout=30_000)
            page.once("dialog", lambda d: d.accept())
            page.locator('.drop[data-label="pen"] .del-label').click()
            expect(page.locator('.drop[data-label="pen"]')).to_have_count(0, timeout=30_000)
            expect(page.locator("#summary")).to_contain_text("3 examples", timeout=30_000)
            assert page.text_content("#error") == ""
            assert not blocked, blocked
        finally:
            browser.close()
