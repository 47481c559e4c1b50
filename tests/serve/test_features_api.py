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
