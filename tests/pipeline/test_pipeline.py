"""fit -> saved model -> predict through the library, on small generated data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests._helpers import shared_dataset
from tests.pipeline._data import add_broken_files, make_data
from transferlab.exceptions import ImageLoadError
from transferlab.models import load_model
from transferlab.pipeline import FitConfig, run_fit


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path / "data")


def test_fit_then_predict_round_trip(data, tmp_path):
    out = tmp_path / "run"
    result = run_fit(FitConfig(data=str(data), out=str(out), progress=False))
    m = json.loads((out / "metrics.json").read_text())
    for key in (
        "accuracy",
        "balanced_accuracy",
        "n_train",
        "n_val",
        "n_skipped",
        "classes",
        "per_class",
        "backbone",
        "layer",
        "seconds",
    ):
        assert key in m, key
    assert m["n_train"] == 16 and m["n_val"] == 8 and m["n_skipped"] == 0
    assert m["classes"] == ["hstripes", "vstripes"]
    assert m["accuracy"] >= 0.875  # stripes vs stripes-turned-90°: easy for ImageNet features
    assert set(m["per_class"]["hstripes"]) == {"precision", "recall", "f1", "support"}
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "validation accuracy" in html

    model = load_model(result.model_dir, progress=False)
    val_images = sorted((data / "val").rglob("*.png"))
    preds = model.predict_paths(val_images, top_k=2)
    acc = np.mean([p.label == Path(p.path).parent.name for p in preds])
    assert acc == pytest.approx(m["accuracy"])
    assert all(len(p.top) == 2 and abs(sum(q for _, q in p.top) - 1) < 1e-6 for p in preds)


def test_library_strict_raises_image_load_error(data, tmp_path):
    add_broken_files(data / "val" / "vstripes")
    with pytest.raises(ImageLoadError, match="a_zero"):
        run_fit(FitConfig(data=str(data), out=str(tmp_path / "r"), strict=True, progress=False))


@pytest.mark.slow
def test_hymenoptera_probe_accuracy(tmp_path):
    data = shared_dataset("hymenoptera")
    result = run_fit(FitConfig(data=str(data), out=str(tmp_path / "run"), progress=False))
    assert result.metrics["accuracy"] >= 0.94
