"""Multi-label: CSV with ';'-separated labels, one-vs-rest probe, tuned thresholds, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from transferlab.cli import app
from transferlab.data import load_dataset
from transferlab.evaluate import evaluate_multilabel
from transferlab.exceptions import DatasetError
from transferlab.models import load_model

runner = CliRunner()
LABELS = ("red_disc", "stripes", "frame")


def _image(flags: dict[str, bool], rng: np.random.Generator) -> Image.Image:
    """Grey noise background; each label adds its own visible element."""
    arr = rng.integers(90, 160, size=(96, 96, 3)).astype(np.uint8)
    if flags["stripes"]:
        arr[::8] = 30
        arr[1::8] = 30
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    if flags["red_disc"]:
        x, y = rng.integers(15, 55, size=2)
        draw.ellipse([x, y, x + 28, y + 28], fill=(230, 20, 20))
    if flags["frame"]:
        draw.rectangle([2, 2, 93, 93], outline=(20, 200, 40), width=6)
    return img


@pytest.fixture
def multilabel_csv(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    rows = ["path,labels"]
    for i in range(72):
        flags = {lab: bool(rng.random() < 0.5) for lab in LABELS}
        _image(flags, rng).save(tmp_path / "img" / f"{i:03d}.png")
        rows.append(f"img/{i:03d}.png," + ";".join(lab for lab in LABELS if flags[lab]))
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_loading_multilabel_csv(multilabel_csv):
    ds = load_dataset(multilabel_csv, multi_label=True, val_fraction=0.3)
    assert ds.multi_label and ds.classes == sorted(LABELS)
    assert len(ds.train) + len(ds.val) == 72
    Y = ds.label_matrix(ds.train)
    assert Y.shape == (len(ds.train), 3) and set(np.unique(Y)) <= {0, 1}
    # each image's labels are the CSV row's, including the rows that list none
    rows = dict(line.split(",") for line in multilabel_csv.read_text().splitlines()[1:])
    for s in ds.train + ds.val:
        assert set(s.labels) == set(
            filter(
                None, rows[Path(s.path).relative_to(multilabel_csv.parent).as_posix()].split(";")
            )
        )
    assert [int(r) for r in Y.sum(1)] == [len(s.labels) for s in ds.train]
    with pytest.raises(DatasetError, match="--multi-label"):
        load_dataset(multilabel_csv)  # ';' in labels without the flag


def test_multilabel_fit_learns_every_label_and_predicts_sets(multilabel_csv, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        ["fit", str(multilabel_csv), "--multi-label", "--out", str(out), "--val-fraction", "0.3"],
    )
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["multi_label"] is True
    for label in LABELS:
        per = m["per_label"][label]
        prevalence = per["support"] / m["n_val"]
        # above chance: average precision clearly over the label's prevalence, F1 over a coin flip's
        assert per["average_precision"] > prevalence + 0.2, (label, per)
        assert per["f1"] > 0.6, (label, per)
    assert m["mAP"] > 0.8 and 0 < m["f1_micro"] <= 1
    assert set(m["thresholds"]) == set(LABELS)

    model = load_model(out / "model", progress=False)
    ds = load_dataset(multilabel_csv, multi_label=True, val_fraction=0.3)
    preds = model.predict_paths([s.path for s in ds.val], top_k=3)
    Y = ds.label_matrix(ds.val)
    P = np.array([[1 if c in p.labels else 0 for c in ds.classes] for p in preds])
    proba = np.array([[dict(p.top)[c] for c in ds.classes] for p in preds])
    report = evaluate_multilabel(Y, proba, ds.classes, model.probe.thresholds_)
    assert report.f1_micro == pytest.approx(m["f1_micro"])
    assert ((proba >= model.probe.thresholds_).astype(int) == P).all()
    text = runner.invoke(app, ["predict", str(out / "model"), ds.val[0].path])
    assert text.exit_code == 0 and "[" in text.stdout


def test_multilabel_from_folder_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(DatasetError, match="CSV with columns path,labels"):
        load_dataset(tmp_path, multi_label=True)


def test_multilabel_finetune_learns_every_label(multilabel_csv, tmp_path):
    out = tmp_path / "ft"
    res = runner.invoke(
        app,
        [
            "finetune",
            str(multilabel_csv),
            "--multi-label",
            "--out",
            str(out),
            "--val-fraction",
            "0.3",
            "--epochs",
            "2",
            "--freeze-epochs",
            "1",
            "--image-size",
            "96",
            "--batch-size",
            "8",
        ],
    )
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["multi_label"] and m["method"] == "finetune"
    # one name per value; the old key stays in the JSON with the same value
    assert "probe_val_score" in m and m["probe_val_map"] == m["probe_val_score"]
    for label in LABELS:
        per = m["per_label"][label]
        assert per["average_precision"] > per["support"] / m["n_val"] + 0.2, (label, per)
    model = load_model(out / "model", progress=False)
    assert model.multi_label and len(model.thresholds) == 3
    ds = load_dataset(multilabel_csv, multi_label=True, val_fraction=0.3)
    pred = model.predict_paths([ds.val[0].path], top_k=3)[0]
    assert pred.labels is not None and all(0 <= q <= 1 for _, q in pred.top)
