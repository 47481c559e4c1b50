"""The HTML reports open in a real headless browser with every image loaded."""

from __future__ import annotations

import shutil

import pytest

from tests._helpers import build_image_folder
from transferlab.pipeline import EvaluateConfig, FitConfig, run_evaluate, run_fit

CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]


def open_report(html_path, screenshot=None):
    """Load the page in headless Chromium; return (complete, naturalWidth) of each <img>."""
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.goto(html_path.resolve().as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate(
                "() => Array.from(document.images).map(i => [i.complete, i.naturalWidth])"
            )
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return images


def test_fit_and_evaluate_reports_load_every_image(tmp_path):
    root = tmp_path / "data"
    build_image_folder(root / "train", n_per_class=6, seed=1)
    build_image_folder(root / "val", n_per_class=4, seed=2)
    res = run_fit(FitConfig(data=str(root), out=str(tmp_path / "fit"), progress=False))
    ev = run_evaluate(
        EvaluateConfig(model_dir=res.model_dir, data=root, out=tmp_path / "eval", progress=False)
    )
    for report, expected in ((res.report, 4), (ev.report, 5)):
        images = open_report(report, tmp_path / "shot.png")
        assert len(images) >= expected, report
        assert all(complete and width > 0 for complete, width in images), images
    assert (tmp_path / "shot.png").stat().st_size > 10_000
