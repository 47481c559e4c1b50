"""Training images against val images of another domain (issue 22, deliverable 1): photos for
training, edge-map "sketches" of other photos for validation, from hymenoptera."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests._helpers import build_photos_vs_edges
from transferlab.cli import app

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "hymenoptera"
runner = CliRunner()


def _build(root: Path, val_as_edges: bool) -> Path:
    return build_photos_vs_edges(root, 20, 12, val_as_edges=val_as_edges, autocontrast=False)


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not found")
def test_diagnose_names_a_train_val_domain_split_first(tmp_path: Path) -> None:
    data = _build(tmp_path / "edges", val_as_edges=True)
    out = tmp_path / "diag"
    r = runner.invoke(app, ["diagnose", str(data), "--out", str(out), "--adabn", "off"])
    assert r.exit_code == 0, r.output
    d = json.loads((out / "diagnosis.json").read_text())
    first = d["findings"][0]
    assert first["code"] == "split_domain_shift" and "another domain" in first["title"]
    ev = first["evidence"]
    within, cross = ev["within_domain_accuracy"], ev["cross_domain_accuracy"]
    assert within["pre_logits"] > cross["pre_logits"] + 0.1  # the training figure overstates
    assert max(ev["domain_accuracy"].values()) >= 0.95
    assert "prefer_probe" not in {f["code"] for f in d["findings"]}
    # the remedy measured best for colourless drawings of colour photos, with its command
    remedy = d["split_shift"]["remedy"]
    assert remedy["remedy"] == "style" and "--remedy style" in remedy["command"]
    assert remedy["command"] in first["commands"] and "style" in first["recommendation"]
    report = (out / "report.html").read_text()
    assert "Training images against val" in report and "another domain" in report
    # the same photos with ordinary val photos: one domain, no such finding
    plain = _build(tmp_path / "plain", val_as_edges=False)
    r = runner.invoke(
        app, ["diagnose", str(plain), "--out", str(tmp_path / "d2"), "--adabn", "off"]
    )
    assert r.exit_code == 0, r.output
    d2 = json.loads((tmp_path / "d2" / "diagnosis.json").read_text())
    assert not d2["split_shift"]["shifted"]
    assert max(v["domain_accuracy"] for v in d2["split_shift"]["layers"].values()) < 0.8
    assert "split_domain_shift" not in {f["code"] for f in d2["findings"]}


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not found")
def test_diagnose_target_folder_of_unlabelled_images(tmp_path: Path) -> None:
    data = _build(tmp_path / "plain", val_as_edges=False)
    sketches = _build(tmp_path / "sk", val_as_edges=True) / "val"
    out = tmp_path / "diag"
    r = runner.invoke(
        app, ["diagnose", str(data), "--target", str(sketches), "--out", str(out), "--adabn", "off"]
    )
    assert r.exit_code == 0, r.output
    d = json.loads((out / "diagnosis.json").read_text())
    assert d["split_shift"]["other"] == "target" and d["split_shift"]["shifted"]
    assert d["findings"][0]["code"] == "split_domain_shift"
    assert "within_domain_accuracy" not in d["findings"][0]["evidence"]  # no target labels
    bad = runner.invoke(app, ["diagnose", str(data), "--target", str(tmp_path / "nope")])
    assert bad.exit_code != 0 and "not a folder" in bad.output
