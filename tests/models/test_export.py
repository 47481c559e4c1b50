"""ONNX export of saved models: the graph reproduces the library's predictions; the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tests._helpers import build_image_folder
from transferlab.cli import app
from transferlab.models import load_model

runner = CliRunner()


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    build_image_folder(root / "train", n_per_class=8, seed=1)
    build_image_folder(root / "val", n_per_class=4, seed=2)
    return root


@pytest.mark.parametrize("kind", ["finetune", "logreg", "svm", "centroid"])
def test_onnx_export_matches_pytorch(data, tmp_path, kind):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from transferlab.models.export import export_onnx
    from transferlab.pipeline import FitConfig, run_fit

    out = tmp_path / "run"
    if kind == "finetune":
        res = runner.invoke(
            app,
            [
                "finetune",
                str(data),
                "--out",
                str(out),
                "--backbone",
                "test_resnet",
                "--weights",
                "random",
                "--image-size",
                "48",
                "--epochs",
                "1",
                "--freeze-epochs",
                "0",
                "--batch-size",
                "4",
            ],
        )
        assert res.exit_code == 0, res.output
    else:
        run_fit(
            FitConfig(
                data=str(data),
                out=str(out),
                backbone="test_resnet",
                weights="random",
                classifier=kind,
                progress=False,
            )
        )
    model = load_model(out / "model", device="cpu", progress=False)
    written = export_onnx(model, tmp_path / "onnx")
    spec = json.loads((tmp_path / "onnx" / "preprocessing.json").read_text())
    assert spec["output"]["classes"] == ["hstripes", "vstripes"]
    assert written["max_abs_diff"] < 1e-4
    # the exported graph, fed as preprocessing.json says, reproduces the library's predictions
    from PIL import Image
    from torchvision import transforms as T

    p = spec["preprocessing"]
    tf = T.Compose(
        [
            T.Resize(
                p["resize_shorter_side"], interpolation=T.InterpolationMode(p["interpolation"])
            ),
            T.CenterCrop(p["center_crop"]),
            T.ToTensor(),
            T.Normalize(p["mean"], p["std"]),
        ]
    )
    imgs = sorted((data / "val").rglob("*.png"))
    x = np.stack([tf(Image.open(i).convert("RGB")).numpy() for i in imgs])
    onnx_p = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx")).run(None, {"image": x})[0]
    lib = model.predict_paths(imgs, top_k=2)
    lib_p = np.array([[dict(q.top)[c] for c in spec["output"]["classes"]] for q in lib])
    np.testing.assert_allclose(onnx_p, lib_p, atol=1e-4)


def test_cli_export(data, tmp_path):
    from transferlab.pipeline import FitConfig, run_fit

    run_fit(
        FitConfig(
            data=str(data),
            out=str(tmp_path / "run"),
            backbone="test_resnet",
            weights="random",
            progress=False,
        )
    )
    res = runner.invoke(app, ["export", str(tmp_path / "run" / "model"), "--format", "onnx"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "model" / "export-onnx" / "model.onnx").exists()
    res = runner.invoke(app, ["export", str(tmp_path / "run" / "model"), "--format", "tflite"])
    assert res.exit_code == 2 and "--format must be one of onnx" in res.output
