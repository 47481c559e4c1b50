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


def test_loading_a_model_never_runs_code_from_it(data, tmp_path):
    """No pickle in a saved model; a planted pickle is refused before it is read, so its code
    never runs; a probe file naming a class that is no probe part is refused too (issue 21)."""
    import pickle
    import zipfile

    run_fit(FitConfig(data=str(data), out=str(tmp_path / "run"), progress=False))
    model_dir = tmp_path / "run" / "model"
    names = {p.name for p in model_dir.iterdir()}
    assert "probe.zip" in names and not any(
        n.endswith((".joblib", ".pkl", ".pickle")) for n in names
    )
    good = load_model(model_dir)

    planted = tmp_path / "planted"
    shutil.copytree(model_dir, planted)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("code ran",))

    (planted / "probe.joblib").write_bytes(pickle.dumps(Payload()))
    meta = json.loads((planted / "model.json").read_text())
    meta["probe"]["file"] = "probe.joblib"
    (planted / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match=r"is a pickle.*refused"):
        load_model(planted)
    res = runner.invoke(app, ["predict", str(planted), str(next((data / "val").rglob("*.png")))])
    assert res.exit_code == 2 and "pickle" in res.output and "Traceback" not in res.output
    assert not marker.exists()

    # a probe file whose tree names another class (here: subprocess.Popen): named and refused
    with zipfile.ZipFile(model_dir / "probe.zip") as z:
        arrays = z.read("arrays.npz")
    evil = {
        "format": "transferlab-probe-1",
        "probe": {"object": "subprocess.Popen", "state": {"dict": []}},
    }
    with zipfile.ZipFile(planted / "probe.zip", "w") as z:
        z.writestr("tree.json", json.dumps(evil))
        z.writestr("arrays.npz", arrays)
    meta["probe"]["file"] = "probe.zip"
    (planted / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match=r"subprocess\.Popen.*not a transferlab probe part"):
        load_model(planted)

    # a model of an older version (a real joblib probe) converts where its owner allows it
    import joblib

    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    (old / "probe.zip").unlink()
    joblib.dump(good.probe, old / "probe.joblib")
    meta = json.loads((old / "model.json").read_text())
    meta["probe"]["file"] = "probe.joblib"
    (old / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="allow_pickle=True"):
        load_model(old)
    converted = load_model(old, allow_pickle=True).save(tmp_path / "converted")
    again = load_model(converted)
    paths = [str(p) for p in sorted((data / "val").rglob("*.png"))[:3]]
    assert [p.label for p in again.predict_paths(paths)] == [
        p.label for p in good.predict_paths(paths)
    ]
