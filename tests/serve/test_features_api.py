"""Image Features API: /v1/features answers what the library computes."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from fastapi.testclient import TestClient

from tests.serve._client import auth, pattern


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


def _thin_png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def test_a_bad_image_fails_only_itself(server: tuple[TestClient, list[str]]) -> None:
    """A strip within the pixel limit whose resize would not be (issue 21) is refused by its
    shape, as its own item: the good image of the same request gets its vector, and requests
    sent at the same moment are all answered."""
    from concurrent.futures import ThreadPoolExecutor

    client, (a, _, _) = server
    thin = _thin_png(4, 200_000)  # 800,000 pixels, under the test server's 1,000,000
    good = pattern("checker", 5)
    r = client.post(
        "/v1/features",
        headers=auth(a),
        files=[
            ("files", ("good.png", good, "image/png")),
            ("files", ("thin.png", thin, "image/png")),
        ],
    )
    assert r.status_code == 200, r.text
    ok, bad = r.json()["features"]
    assert ok["name"] == "good.png" and ok["dim"] == len(ok["vector"]) and ok["error"] is None
    assert bad["name"] == "thin.png" and bad["vector"] is None
    assert bad["error"]["status"] == 413 and "aspect ratio" in bad["error"]["detail"]
    assert "thin.png" in bad["error"]["detail"]
    alone = client.post(
        "/v1/features", headers=auth(a), files=[("files", ("thin.png", thin, "image/png"))]
    )
    assert alone.status_code == 413 and "thin.png" in alone.json()["detail"]

    def one(i: int) -> int:
        files = [("files", (f"{i}.png", pattern("hstripes", 10 + i), "image/png"))]
        if i == 0:
            files = [("files", ("thin.png", _thin_png(64, 15_000), "image/png"))]
        return client.post("/v1/features", headers=auth(a), files=files).status_code

    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(one, range(4)))
    assert codes == [413, 200, 200, 200]
