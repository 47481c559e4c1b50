"""A saved model directory refuses other backbone weights, other versions, damaged files."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from tests.pipeline._data import make_data
from transferlab.cli import app
from transferlab.exceptions import BackboneMismatchError, ModelFormatError
from transferlab.models import load_model
from transferlab.pipeline import FitConfig, run_fit

runner = CliRunner()


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path / "data")


def test_model_refuses_other_weights_and_versions(data, tmp_path):
    run_fit(FitConfig(data=str(data), out=str(tmp_path / "run"), progress=False))
    model_dir = tmp_path / "run" / "model"
    meta = json.loads((model_dir / "model.json").read_text())

    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    meta_w = {**meta, "backbone": {**meta["backbone"], "weights_sha256": "0" * 64}}
    (other / "model.json").write_text(json.dumps(meta_w))
    with pytest.raises(BackboneMismatchError, match="re-fit"):
        load_model(other)
    res = runner.invoke(app, ["predict", str(other), str(next((data / "val").rglob("*.png")))])
    assert res.exit_code == 2 and "weights" in res.output and "Traceback" not in res.output

    meta_v = {**meta, "transferlab_version": "0.0.1"}
    (other / "model.json").write_text(json.dumps(meta_v))
    with pytest.raises(ModelFormatError, match=r"saved by transferlab 0\.0\.1"):
        load_model(other)

    meta_b = {**meta, "backbone": {**meta["backbone"], "name": "efficientnet_lite1"}}
    (other / "model.json").write_text(json.dumps(meta_b))
    with pytest.raises(BackboneMismatchError):
        load_model(other)

    (other / "model.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        load_model(other)
    with pytest.raises(ModelFormatError, match="not a transferlab model directory"):
        load_model(tmp_path)
