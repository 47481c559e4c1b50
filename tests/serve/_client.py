"""Request helpers for the service tests: images, settings, keys, and the calls most tests make.

Kept here, not shared with benchmarks/bench_serve.py: the benchmark is a stand-alone script that
talks to a real server with its own client (log file, exit on failure); a test never imports a
benchmark and a benchmark never imports the tests.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from tests._helpers import make_pattern_image
from transferlab.serve import Settings
from transferlab.serve.store import Store

__all__ = [
    "FAST_AUTO",
    "add_example",
    "auth",
    "make_keys",
    "pattern",
    "png_bytes",
    "settings_for",
    "start_server",
    "trained_collection",
    "wait_job",
]


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def pattern(kind: str, seed: int) -> bytes:
    return png_bytes(make_pattern_image(kind, np.random.default_rng(seed)))


def settings_for(data_dir: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "max_upload_bytes": 300_000,
        "max_pixels": 1_000_000,
        "max_images_per_request": 4,
        "queue_size": 2,
        "batch_wait_ms": 2,
    }
    return Settings(data_dir=data_dir, **{**base, **overrides})


#: kind='auto' on a random-weight test network: seconds per job on a CPU, where the packaged
#: efficientnet_lite0 spends about a minute on its BatchNorm-shift measurement alone
FAST_AUTO = {"auto_backbones": ["test_resnet"], "auto_weights": "random"}


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


def start_server(data_dir: Path, port: int) -> Any:
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


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """`app` served by uvicorn on a free loopback port in a thread (for a browser or a client
    that needs real HTTP); yields its base URL and stops it afterwards."""
    import socket
    import threading

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def csp_violations(page: Any) -> list[str]:
    """The console messages of `page` that report something its Content-Security-Policy
    blocked, collected as they come (an empty list at the end: the page ran whole)."""
    blocked: list[str] = []
    page.on(
        "console",
        lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None,
    )
    return blocked
