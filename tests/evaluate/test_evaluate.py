"""Evaluation: metrics, calibration, interpretation, plots, the evaluate command, thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tests._helpers import build_image_folder
from transferlab.cli import app
from transferlab.evaluate import (
    Interpretation,
    TemperatureScaler,
    accuracy_coverage,
    calibrate,
    expected_calibration_error,
    top_k_accuracy,
)
from transferlab.evaluate._plots import (
    AccuracyCoverageDisplay,
    ImageGridDisplay,
    ReliabilityDisplay,
)
from transferlab.pipeline import FitConfig, run_fit

runner = CliRunner()


def _overconfident(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), y] += 1.5
    logits *= 6  # far too sharp for how often it is right
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), y


def test_temperature_scaling_lowers_ece_and_keeps_argmax():
    p, y = _overconfident()
    ts = TemperatureScaler().fit(p[:1000], y[:1000])
    assert ts.temperature_ > 1.5
    after = ts.transform(p[1000:])
    assert (after.argmax(1) == p[1000:].argmax(1)).all()
    np.testing.assert_allclose(after.sum(1), 1, atol=1e-9)
    assert expected_calibration_error(after, y[1000:]) < 0.5 * expected_calibration_error(
        p[1000:], y[1000:]
    )


def test_calibrate_is_the_scaler_fit_plus_ece_and_log_loss_per_split():
    """The one temperature fit (pipeline runs and the service call it): T is exactly
    TemperatureScaler's, and each split's scores are sklearn's log loss and our ECE."""
    from sklearn.metrics import log_loss

    p, y = _overconfident()
    val, test = (p[:1000], y[:1000]), (p[1000:], y[1000:])
    cal = calibrate(*val, also={"test": test})
    ts = TemperatureScaler().fit(*val)
    assert cal.temperature == ts.temperature_ and cal.n == 1000
    d = cal.to_dict()
    assert list(d) == ["temperature", "fitted_on", "val", "test"]
    assert d["fitted_on"] == "validation"
    for name, (pp, yy) in (("val", val), ("test", test)):
        after = ts.transform(pp)
        assert d[name] == {
            "ece_before": expected_calibration_error(pp, yy),
            "ece_after": expected_calibration_error(after, yy),
            "log_loss_before": float(log_loss(yy, np.clip(pp, 1e-15, 1), labels=range(3))),
            "log_loss_after": float(log_loss(yy, np.clip(after, 1e-15, 1), labels=range(3))),
        }
    np.testing.assert_array_equal(cal.transform(test[0]), ts.transform(test[0]))
    assert calibrate(*val, fitted_on="out-of-fold").to_dict()["fitted_on"] == "out-of-fold"


def test_accuracy_coverage_is_monotone_in_coverage():
    p, y = _overconfident()
    c = accuracy_coverage(p, y, np.array([0.0, 0.5, 0.9, 0.999]))
    assert c["coverage"][0] == 1.0
    assert (np.diff(c["coverage"]) <= 0).all()
    assert c["kept"][0] == len(y)


def test_top_k_and_interpretation():
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    y = np.array([0, 1, 1, 1])
    assert top_k_accuracy(y, p, 1) == 0.5
    assert top_k_accuracy(y, p, 2) == 1.0
    it = Interpretation.from_predictions(list("abcd"), ["x", "y", "y", "y"], p, ["x", "y", "z"])
    top = it.top_losses(2)
    assert [r["path"] for r in top] == ["b", "c"]  # p(true) 0.2 and 0.3
    assert top[0]["predicted"] == "z" and top[0]["p_true"] == pytest.approx(0.2)
    assert it.most_confused() == [("y", "x", 1), ("y", "z", 1)]


def test_displays_draw_on_given_axes(tmp_path):
    import matplotlib.pyplot as plt

    p, y = _overconfident(100)
    fig, ax = plt.subplots()
    d = ReliabilityDisplay.from_predictions(p, y, TemperatureScaler().fit(p, y).transform(p)).plot(
        ax=ax
    )
    assert d.ax_ is ax and len(ax.lines) == 3
    d2 = AccuracyCoverageDisplay.from_predictions(p, y, threshold=0.9).plot()
    assert d2.figure_ is not fig
    img = build_image_folder(tmp_path / "i", n_per_class=1) / "hstripes" / "hstripes_0.png"
    rows = [{"path": str(img), "true": "a", "predicted": "b", "p_predicted": 0.9, "p_true": 0.1}]
    g = ImageGridDisplay(rows).plot()
    assert g.axes_.shape == (1, 1)
    plt.close("all")


@pytest.fixture
def fitted(tmp_path):
    root = tmp_path / "data"
    build_image_folder(root / "train", n_per_class=8, seed=1)
    build_image_folder(root / "val", n_per_class=4, seed=2)
    build_image_folder(root / "test", n_per_class=5, seed=3)
    res = run_fit(FitConfig(data=str(root), out=str(tmp_path / "run"), progress=False))
    return root, res


def test_fit_stores_a_temperature_and_calibration_metrics(fitted):
    _, res = fitted
    cal = res.metrics["calibration"]
    assert cal["temperature"] > 0 and cal["fitted_on"] == "validation"
    assert {"ece_before", "ece_after"} <= set(cal["val"]) and "test" in cal
    meta = json.loads((res.model_dir / "model.json").read_text())
    assert meta["calibration"]["temperature"] == pytest.approx(cal["temperature"])


def test_evaluate_command_writes_metrics_plots_and_report(fitted, tmp_path):
    root, res = fitted
    out = tmp_path / "eval"
    r = runner.invoke(
        app, ["evaluate", str(res.model_dir), str(root), "--out", str(out), "--threshold", "0.8"]
    )
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == "test" and m["n"] == 10
    for key in (
        "accuracy",
        "balanced_accuracy",
        "top_k_accuracy",
        "log_loss",
        "per_class",
        "macro",
        "micro",
        "ece",
        "most_confused",
        "top_losses",
        "accuracy_coverage",
        "threshold",
    ):
        assert key in m, key
    t = m["threshold"]
    assert t["kept"] + t["uncertain"] == 10
    for f in (
        "confusion_matrix.png",
        "calibration.png",
        "top_losses.png",
        "predictions_grid.png",
        "predictions.csv",
        "report.html",
    ):
        assert (out / f).stat().st_size > 0, f
    assert (out / "feature_map.png").stat().st_size > 0
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5
    rows = (out / "predictions.csv").read_text().strip().splitlines()
    assert len(rows) == 11 and rows[0].startswith("path,true,predicted")


def test_evaluate_refuses_unknown_classes(fitted, tmp_path):
    _, res = fitted
    other = build_image_folder(tmp_path / "other", classes=("hstripes", "checker"), n_per_class=3)
    r = runner.invoke(
        app, ["evaluate", str(res.model_dir), str(other), "--out", str(tmp_path / "e")]
    )
    assert r.exit_code == 2 and "checker" in r.output


def test_predict_threshold_marks_uncertain(fitted):
    root, res = fitted
    imgs = sorted(str(p) for p in (root / "test").rglob("*.png"))
    plain = json.loads(runner.invoke(app, ["predict", str(res.model_dir), *imgs, "--json"]).stdout)
    probs = sorted({p["probability"] for p in plain})
    assert len(probs) >= 2
    t = (probs[0] + probs[1]) / 2  # exactly the least confident prediction falls below
    r = runner.invoke(app, ["predict", str(res.model_dir), *imgs, "--json", "--threshold", str(t)])
    preds = json.loads(r.stdout)
    for before, after in zip(plain, preds, strict=True):
        if before["probability"] < t:
            assert after["label"] == "uncertain" and after["uncertain"]
        else:
            assert after["label"] == before["label"] and not after.get("uncertain")
    assert sum(p.get("uncertain", False) for p in preds) == 1
    r = runner.invoke(app, ["predict", str(res.model_dir), imgs[0], "--threshold", "2"])
    assert r.exit_code == 2 and "--threshold" in r.output


def test_errors_come_with_their_nearest_training_images(fitted, tmp_path):
    import shutil

    root, res = fitted
    wrong = tmp_path / "wrong"
    shutil.copytree(root / "test", wrong)
    # two horizontal-stripe images filed under the other class: guaranteed "errors"
    for p in sorted((wrong / "hstripes").glob("*.png"))[:2]:
        shutil.move(str(p), wrong / "vstripes" / p.name)
    r = runner.invoke(
        app, ["evaluate", str(res.model_dir), str(wrong), "--out", str(tmp_path / "e")]
    )
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["split"] == "all" and m["accuracy"] <= 0.8
    neigh = m["error_neighbours"]
    assert len(neigh) >= 2
    first = neigh[0]
    assert first["true"] == "vstripes" and first["predicted"] == "hstripes"
    assert len(first["neighbours"]) == 3
    # the closest training images of a horizontal-stripe picture are horizontal stripes
    assert [n["label"] for n in first["neighbours"]].count("hstripes") >= 2
    assert all(-1 <= n["cosine"] <= 1 for n in first["neighbours"])
    assert (tmp_path / "e" / "error_neighbours.png").exists()


@pytest.mark.parametrize("method", ["tsne", "pca", "umap"])
def test_embed_command(tmp_path, method):
    if method == "umap":
        pytest.importorskip("umap", reason="umap-learn is not installed")
    data = build_image_folder(tmp_path / "d", n_per_class=8)
    out = tmp_path / "map"
    r = runner.invoke(
        app, ["embed", str(data), "--method", method, "--out", str(out), "--thumbnails"]
    )
    assert r.exit_code == 0, r.output
    rows = (out / "embedding.csv").read_text().strip().splitlines()
    assert len(rows) == 17 and rows[0] == "path,label,split,domain,x,y"
    xy = np.array([[float(v) for v in row.split(",")[-2:]] for row in rows[1:]])
    assert np.isfinite(xy).all() and xy.std(axis=0).min() > 0
    r = runner.invoke(app, ["embed", str(data), "--method", "mds", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "method must be one of" in r.output


def test_embed_colours_by_domain(tmp_path):
    """Another folder mapped alongside is labelled by its name; --colour domain tells them apart,
    and stripes vs checkerboards sit apart on the map."""
    from tests._helpers import make_pattern_image

    data = build_image_folder(tmp_path / "stripes", n_per_class=5)
    other = tmp_path / "checks"
    other.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        make_pattern_image("checker", rng).save(other / f"c{i}.png")
    out = tmp_path / "map"
    r = runner.invoke(
        app,
        [
            "embed",
            str(data),
            "--domain",
            str(other),
            "--colour",
            "domain",
            "--method",
            "pca",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    import csv

    rows = list(csv.DictReader((out / "embedding.csv").open()))
    assert {row["domain"] for row in rows} == {"stripes", "checks"}
    assert sum(row["domain"] == "checks" for row in rows) == 6
    assert json.loads((out / "metrics.json").read_text())["domains"] == {"stripes": 10, "checks": 6}
    r = runner.invoke(
        app, ["embed", str(data), "--domain", str(tmp_path / "nope"), "--out", str(tmp_path / "y")]
    )
    assert r.exit_code == 2 and "nope" in r.output
