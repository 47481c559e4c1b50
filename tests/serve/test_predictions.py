"""Predictions from a collection's trained model, and the model exported as a zip."""

from __future__ import annotations

import io
import zipfile

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from fastapi.testclient import TestClient

from tests.serve._client import auth, pattern


def test_predict_labels_and_uncertain(server: tuple[TestClient, list[str]], trained: str) -> None:
    """The right label with probabilities summing to 1; ``uncertain`` under the threshold."""
    client, (a, _, _) = server
    cid = trained
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


def test_export_is_a_model_zip(server: tuple[TestClient, list[str]], trained: str) -> None:
    """GET .../model is the probe's model directory as a zip."""
    client, (a, _, _) = server
    cid = trained
    r = client.get(f"/v1/collections/{cid}/model", headers=auth(a))
    assert r.status_code == 200
    assert {"model.json", "probe.zip"} <= set(zipfile.ZipFile(io.BytesIO(r.content)).namelist())
