"""The CLI over the fit run: fit, predict, extract, backbones, cache, demo; errors are one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests._helpers import build_image_folder
from tests.pipeline._data import add_broken_files, make_data
from transferlab.cli import app
from transferlab.models import load_model
from transferlab.pipeline import FitConfig, run_fit

runner = CliRunner()

#: the CLI uses the typed runs: a deprecated name used by our own code fails these tests
pytestmark = pytest.mark.filterwarnings("error::DeprecationWarning:transferlab")


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path / "data")


def test_fit_skips_each_broken_kind_and_strict_names_the_first(data, tmp_path):
    broken = add_broken_files(data / "train" / "hstripes")
    res = runner.invoke(
        app, ["fit", str(data), "--out", str(tmp_path / "run"), "--max-pixels", "1000000"]
    )
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["n_skipped"] == len(broken)
    skipped = {s["path"] for s in m["skipped"]}
    assert skipped == {str(p) for p in broken.values()}
    for p in broken.values():
        assert str(p) in res.output  # each broken file is listed
    assert m["n_train"] == 16

    res = runner.invoke(
        app,
        [
            "fit",
            str(data),
            "--out",
            str(tmp_path / "strict"),
            "--strict",
            "--max-pixels",
            "1000000",
        ],
    )
    assert res.exit_code != 0
    assert "a_zero.jpg" in res.output and "empty file" in res.output
    assert "Traceback" not in res.output


def test_cli_fit_warm_cache_and_predict(data, tmp_path):
    first = runner.invoke(app, ["fit", str(data), "--out", str(tmp_path / "a"), "--json"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, ["fit", str(data), "--out", str(tmp_path / "b"), "--json"])
    m2 = json.loads(second.stdout)
    assert m2["n_cached"] == m2["n_train"] + m2["n_val"]
    img = sorted((data / "val" / "vstripes").glob("*.png"))[0]
    res = runner.invoke(
        app, ["predict", str(tmp_path / "a" / "model"), str(img), "--json", "--top-k", "2"]
    )
    assert res.exit_code == 0, res.output
    pred = json.loads(res.stdout)[0]
    assert pred["path"] == str(img) and len(pred["top"]) == 2
    # a vertical-stripes image: the model (>= 0.875 on these) names its class, most probable first
    assert pred["label"] == "vstripes" and pred["top"][0]["label"] == "vstripes"
    assert {t["label"] for t in pred["top"]} == {"hstripes", "vstripes"}
    text = runner.invoke(app, ["predict", str(tmp_path / "a" / "model"), str(data / "val")])
    assert text.exit_code == 0 and text.stdout.count("\n") == 8


def test_predict_reports_broken_images_and_exits_1(data, tmp_path):
    run_fit(FitConfig(data=str(data), out=str(tmp_path / "run"), progress=False))
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    good = sorted((data / "val" / "hstripes").glob("*.png"))[0]
    res = runner.invoke(app, ["predict", str(tmp_path / "run" / "model"), str(good), str(bad)])
    assert res.exit_code == 1
    assert "bad.jpg" in res.stdout and "not an image" in res.stdout
    good_line = next(line for line in res.stdout.splitlines() if good.name in line)
    assert "hstripes" in good_line and "vstripes" not in good_line  # the right class, for it


def test_out_dir_with_earlier_run_is_not_overwritten(data, tmp_path):
    out = tmp_path / "run"
    run_fit(FitConfig(data=str(data), out=str(out), progress=False))
    before = (out / "model" / "probe.zip").read_bytes()
    res = runner.invoke(app, ["fit", str(data), "--out", str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert (out / "model" / "probe.zip").read_bytes() == before
    res = runner.invoke(
        app, ["fit", str(data), "--out", str(out), "--overwrite", "--classifier", "centroid"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((out / "metrics.json").read_text())["classifier"] == "centroid"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["fit", "/no/such/dir"], "does not exist"),
        (["fit", "{data}", "--backbone", "efficientnet_lite9"], "unknown backbone"),
        (["fit", "{data}", "--layer", "stage99"], "has no layer 'stage99'"),
        (["fit", "{data}", "--pool", "median"], "pool must be one of"),
        (["fit", "{data}", "--C", "lots"], "--C must be a positive number"),
        (["fit", "{data}", "--classifier", "knn"], "classifier must be one of"),
        (["predict", "/no/model", "x.jpg"], "model directory not found"),
        (["extract", "{data}", "--out", "{tmp}/f.csv"], "--out must end in .npz or .parquet"),
    ],
)
def test_cli_errors_are_one_clear_line(data, tmp_path, args, expected):
    args = [a.format(data=data, tmp=tmp_path) for a in args]
    if args[0] == "fit" and "--out" not in args:
        args += ["--out", str(tmp_path / "run")]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    # a handled error: the CLI exits on purpose (SystemExit), it does not crash with an exception
    assert isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output and 'File "' not in res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert any(expected in line for line in lines), res.output


def test_cli_dataset_errors(tmp_path):
    one = build_image_folder(tmp_path / "one", classes=("hstripes",))
    res = runner.invoke(app, ["fit", str(one), "--out", str(tmp_path / "r1")])
    assert res.exit_code == 2 and "at least 2 classes" in res.output
    empty = build_image_folder(tmp_path / "empty")
    (empty / "nothing_here").mkdir()
    res = runner.invoke(app, ["fit", str(empty), "--out", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "nothing_here" in res.output
    csv = tmp_path / "bad.csv"
    csv.write_text("file_name,category\na.png,x\n")
    res = runner.invoke(app, ["fit", str(csv), "--out", str(tmp_path / "r3")])
    assert res.exit_code == 2 and "'label'" in res.output


@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
def test_cli_extract_writes_vectors_with_paths_and_labels(data, tmp_path, suffix):
    from transferlab.features import load_features

    out = tmp_path / f"feats{suffix}"
    res = runner.invoke(app, ["extract", str(data), "--layer", "stage4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    f = load_features(out)
    assert f["X"].shape == (24, 80)
    assert sorted(set(f["labels"])) == ["hstripes", "vstripes"]
    assert f["splits"].count("train") == 16 and f["splits"].count("val") == 8
    assert f["meta"]["layer"] == "stage4"


def test_cli_backbones_lists_taps_and_sizes():
    res = runner.invoke(app, ["backbones", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert set(rows) == {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
    lite2 = rows["efficientnet_lite2"]
    assert lite2["preprocessing"]["input_size"] == [3, 260, 260]
    assert lite2["weights"] == "packaged (offline)"
    assert [t["name"] for t in lite2["taps"]][-2:] == ["pre_logits", "logits"]
    table = runner.invoke(app, ["backbones"], env={"COLUMNS": "200"})
    assert "efficientnet_lite1" in table.stdout and "pre_logits(1280)" in table.stdout


def test_cli_cache_info_and_clear(data, tmp_path):
    cache = tmp_path / "cache"
    runner.invoke(app, ["fit", str(data), "--out", str(tmp_path / "r"), "--cache-dir", str(cache)])
    info = json.loads(
        runner.invoke(app, ["cache", "info", "--cache-dir", str(cache), "--json"]).stdout
    )
    assert info["entries"] == 24
    assert info["parts"]["cards"]["files"] == 1 and info["parts"]["runs"]["files"] > 0
    res = runner.invoke(app, ["cache", "clear", "--cache-dir", str(cache), "--yes"])
    assert res.exit_code == 0 and "removed 24" in res.stdout
    assert not (cache / "runs").exists() and (cache / "cards").is_dir()  # memos go, cards stay
    again = runner.invoke(
        app, ["fit", str(data), "--out", str(tmp_path / "r2"), "--cache-dir", str(cache)]
    )
    assert again.exit_code == 0 and "reused_run" not in json.loads(
        (tmp_path / "r2" / "metrics.json").read_text()
    )
    res = runner.invoke(app, ["cache", "clear", "--cache-dir", str(cache), "--yes", "--all"])
    assert res.exit_code == 0 and not (cache / "cards").exists() and not (cache / "onnx").exists()


def test_help_has_examples():
    for cmd in ("fit", "predict", "extract", "backbones", "demo"):
        res = runner.invoke(app, [cmd, "--help"])
        assert res.exit_code == 0 and "Example" in res.stdout, cmd


def test_demo_runs_on_built_in_sample(tmp_path):
    res = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "demo" / "run" / "metrics.json").read_text())
    assert m["classes"] == ["brick", "grass", "gravel"]
    assert m["n_train"] == 60 and m["n_val"] == 30
    assert m["accuracy"] >= 0.9
    assert "report:" in res.stdout and "report.html" in res.stdout


def test_fit_adapt_bn_keeps_the_adapted_backbone_in_the_model(data, tmp_path):
    """`fit --adapt-bn` re-estimates BatchNorm statistics on the training images; the model folder
    carries those weights, so it predicts the same after being moved, and they differ from the
    pretrained ones."""
    from transferlab.backbones import load_backbone

    r = runner.invoke(
        app, ["fit", str(data), "--out", str(tmp_path / "run"), "--adapt-bn", "--json"]
    )
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    assert m["adapt_bn"] == {"images": 16}
    assert m["weights_sha256"] != load_backbone("efficientnet_lite0").weights_sha256
    meta = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert meta["backbone"]["weights_source"] == "file:backbone.safetensors"
    moved = tmp_path / "elsewhere"
    shutil.move(str(tmp_path / "run" / "model"), moved)
    model = load_model(moved, progress=False)
    assert model.extractor.backbone_.weights_sha256 == m["weights_sha256"]
    val_images = sorted((data / "val").rglob("*.png"))
    acc = np.mean([p.label == Path(p.path).parent.name for p in model.predict_paths(val_images)])
    assert acc == pytest.approx(m["accuracy"])
