"""precision='int8': static quantisation of the ONNX export, calibrated on the user's images,
its fidelity measured and carried with the vectors, the model and the export (issue 17)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests._helpers import shared_dataset
from transferlab.exceptions import InvalidParameterError
from transferlab.features import FeatureExtractor


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def hym():
    root = shared_dataset("hymenoptera")
    train = sorted(str(p) for p in root.glob("train/*/*"))[::6]  # 41 images
    val = sorted(str(p) for p in root.glob("val/*/*"))[::8]  # 20 images
    return root, train, val


def test_int8_vectors_are_close_to_fp32_and_say_so(hym, tmp_path):
    """Calibrated on training images, the int8 vectors of other images keep a mean cosine of
    at least 0.98 to fp32; the measured fidelity is stored beside the export and read back by a
    later extractor, which reuses the export (no second calibration) and gives the same vectors."""
    _, train, val = hym
    cache = tmp_path / "cache"
    fx = FeatureExtractor(precision="int8", calibration=train, cache=cache, progress=False)
    res = fx.extract(val)
    assert res.engine == "onnxruntime-int8"
    ref = FeatureExtractor(cache=cache, progress=False).extract(val)
    assert ref.engine == "onnxruntime-fp32"
    cos = _cos(res.features["pre_logits"], ref.features["pre_logits"])
    assert cos.mean() >= 0.98 and cos.min() > 0.95
    assert not np.allclose(res.features["pre_logits"], ref.features["pre_logits"], atol=1e-4)
    q = fx.quantization_
    assert q["quantization"]["calibration_images"] == len(train)
    assert q["quantization"]["per_channel"] is True
    assert q["fidelity"]["mean_cosine"]["pre_logits"] >= 0.98
    records = list((cache / "onnx").glob("*-int8.onnx.json"))
    assert len(records) == 1 and json.loads(records[0].read_text()) == q

    again = FeatureExtractor(precision="int8", cache=cache, progress=False)
    res2 = again.extract(val)  # no calibration given: the stored export is used as it is
    assert res2.n_cached == len(val)  # its cache namespace is the same export's
    np.testing.assert_array_equal(res2.features["pre_logits"], res.features["pre_logits"])
    assert again.quantization_ == q
    # fp32 and int8 vectors never mix in the cache
    assert fx.namespace()[0] != FeatureExtractor(cache=cache).namespace()[0]


def test_int8_needs_the_onnx_engine_and_images_to_calibrate_on(tmp_path):
    with pytest.raises(InvalidParameterError, match="int8"):
        FeatureExtractor(precision="int8", engine="torch").fit()
    # a service preparing int8 with no export yet and no images: told what to pass, not a crash
    with pytest.raises(InvalidParameterError, match="calibrat"):
        FeatureExtractor(precision="int8", cache=tmp_path / "c", progress=False).prepare()


def test_fit_int8_model_round_trip_and_export(hym, tmp_path):
    """`fit --precision int8` reports its fidelity, saves the int8 export inside the model, and
    the loaded model predicts as the fitted one did; `export --quantize int8` writes an int8
    graph with its measured agreement with fp32."""
    root, _, _ = hym
    small = tmp_path / "data"
    for split, step in (("train", 6), ("val", 8)):
        for p in sorted(root.glob(f"{split}/*/*"))[::step]:
            (small / split / p.parent.name).mkdir(parents=True, exist_ok=True)
            (small / split / p.parent.name / p.name).symlink_to(p)
    env_cache = str(tmp_path / "cache")
    run = subprocess.run(
        [sys.executable, "-m", "transferlab", "fit", str(small), "--out", str(tmp_path / "run"),
         "--precision", "int8", "--cache-dir", env_cache],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "int8 features: mean cosine to fp32" in run.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["precision"] == "int8" and metrics["int8"]["mean_cosine_to_fp32"] >= 0.98
    assert metrics["accuracy"] >= 0.8
    # the same probe on the val images' fp32 vectors: how often int8 changes its answer
    assert 0.9 <= metrics["int8"]["probe_agreement_val"] <= 1.0
    assert "same answer for" in run.stdout
    model_dir = tmp_path / "run" / "model"
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["precision"] == "int8" and (model_dir / meta["int8_model"]).is_file()

    from transferlab.models import load_model

    model = load_model(model_dir, progress=False)
    assert model.extractor.precision == "int8"
    val = sorted(str(p) for p in small.glob("val/*/*"))
    proba, _, errors = model.predict_proba_paths(val)
    assert proba.shape == (len(val), 2) and not errors
    # the same vectors as the fit's own validation pass: the saved export, not a new one
    assert (proba.argmax(1) == [model.classes.index(p.split("/")[-2]) for p in val]).mean() >= 0.8

    exp = subprocess.run(
        [sys.executable, "-m", "transferlab", "export", str(model_dir), "--quantize", "int8",
         "--out", str(tmp_path / "onnx")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert exp.returncode == 0, exp.stderr
    spec = json.loads((tmp_path / "onnx" / "preprocessing.json").read_text())
    assert (tmp_path / "onnx" / "model-int8.onnx").is_file()
    assert spec["int8"]["top1_agreement_with_fp32"] >= 0.9
    assert spec["int8"]["calibration_images"] > 0
