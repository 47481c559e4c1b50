"""Open a transferlab report in headless Chromium, check every image loaded, save a screenshot.

python benchmarks/screenshot_report.py runs/hym-eval/report.html benchmarks/hymenoptera_evaluate_report.png
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    report, shot = Path(sys.argv[1]), Path(sys.argv[2])
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium found (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.goto(report.resolve().as_uri())
        page.wait_for_load_state("load")
        imgs = page.evaluate(
            "() => Array.from(document.images).map(i => [i.complete, i.naturalWidth])"
        )
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    ok = sum(1 for c, w in imgs if c and w > 0)
    print(f"images_loaded={ok}/{len(imgs)} screenshot={shot}")


if __name__ == "__main__":
    main()
