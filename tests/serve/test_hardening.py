"""The service's files and page under hostile conditions (issue 21): data private to the
server's user, security headers and a page policy that admits only its own script, image files
a killed upload left behind swept at start-up."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from fastapi.testclient import TestClient

from tests.serve._client import add_example, auth, make_keys, pattern, settings_for


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_is_private_to_the_servers_user(tmp_path: Path) -> None:
    from transferlab.serve.store import Store

    data = tmp_path / "srv"
    store = Store(data)
    try:
        sha, image = store.put_image(pattern("checker", 1), "png")
    finally:
        store.close()
    assert _mode(data) == 0o700
    assert all(_mode(data / sub) == 0o700 for sub in ("images", "models", "tmp"))
    assert _mode(data / "transferlab.sqlite") == 0o600
    assert _mode(image) == 0o600 and sha in image.name
    # an existing world-readable folder of ours is closed on the next start
    os.chmod(data, 0o755)
    Store(data).close()
    assert _mode(data) == 0o700


def test_page_and_api_send_security_headers(server: tuple[TestClient, list[str]]) -> None:
    client, _ = server
    page = client.get("/")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    scripts = re.findall(r"<script>(.*?)</script>", page.text, flags=re.S)
    assert scripts, "the page has its script inline"
    for s in scripts:  # exactly the page's own script may run
        digest = base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp
    assert "'unsafe-inline'" not in csp.split("script-src", 1)[1].split(";")[0]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    for r in (page, client.get("/v1/health")):
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"


def test_orphan_images_are_swept_at_start_up(tmp_path: Path) -> None:
    """A file no example refers to (an upload killed between its file and its row) goes at
    the next start once old; a young one (an upload in flight elsewhere) and every image an
    example uses stay."""
    from transferlab.serve import create_app
    from transferlab.serve.store import Store

    data = tmp_path / "srv"
    (key,) = make_keys(data, "alice")
    settings = settings_for(data)
    with TestClient(create_app(settings)) as client:
        cid = client.post("/v1/collections", headers=auth(key), json={"name": "c"}).json()["id"]
        r = add_example(client, cid, key, pattern("hstripes", 1), "hstripes")
        assert r.status_code == 201, r.text
    store = Store(data)
    try:
        _, orphan = store.put_image(pattern("vstripes", 2), "png")
        _, young = store.put_image(pattern("checker", 3), "png")
        leftover = data / "tmp" / "upload.png"
        leftover.write_bytes(b"partial")
    finally:
        store.close()
    used = [p for p in (data / "images").glob("*/*") if p not in (orphan, young)]
    assert len(used) == 1
    old = time.time() - 3600
    for p in (orphan, leftover, used[0]):
        os.utime(p, (old, old))
    with TestClient(create_app(settings)) as client:
        r = client.get(f"/v1/collections/{cid}/examples", headers=auth(key))
        assert r.status_code == 200 and len(r.json()) == 1
    assert not orphan.exists() and not leftover.exists()
    assert young.exists() and used[0].exists()


def test_first_run_token_makes_one_key_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transferlab.cli.serve import _first_run
    from transferlab.serve import create_app

    data = tmp_path / "srv"
    settings = _first_run(settings_for(data), "0.0.0.0", 8123)
    printed = capsys.readouterr().out
    token = settings.setup_token
    assert token and f"http://127.0.0.1:8123/?setup={token}" in printed
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/setup", json={"token": "guess"}).status_code == 403
        r = client.post("/v1/setup", json={"token": token, "name": "me"})
        assert r.status_code == 201 and r.json()["key"].startswith("tl_")
        key = r.json()["key"]
        assert client.get("/v1/collections", headers=auth(key)).status_code == 200
        spent = client.post("/v1/setup", json={"token": token})
        assert spent.status_code == 409 and spent.json()["error"] == "no_setup"
    # a server that has keys makes no token
    assert _first_run(settings_for(data), "127.0.0.1", 8123).setup_token is None
