"""The views every training run's report shows (`pipeline._views.training_views`): confusion,
calibration, top losses and the embedding map, in fit (cold and restored) and finetune."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests._helpers import build_image_folder
from tests.pipeline._data import make_data
from transferlab.exceptions import InvalidParameterError
from transferlab.pipeline import FitConfig, _views, run_fit

VIEWS = [f for f, _ in _views.VIEW_FILES]  # confusion, calibration, top losses, map


def _embedded(html: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def _assert_report_shows(out: Path, files: list[str]) -> str:
    """Each file is a valid PNG and report.html embeds exactly its bytes, under its caption."""
    html = (out / "report.html").read_text()
    embedded = _embedded(html)
    for name in files:
        with Image.open(out / name) as img:
            assert img.format == "PNG" and min(img.size) > 200, name
            img.verify()
        assert (out / name).read_bytes() in embedded, f"{name} is not embedded in report.html"
    captions = dict(_views.VIEW_FILES)
    for name in files:
        if name in captions:
            assert captions[name].format(split="validation") in html, name
    return html


def test_fit_report_embeds_every_view_and_a_restored_fit_shows_them_again(tmp_path):
    data = make_data(tmp_path / "data")
    cfg = {"data": str(data), "cache_dir": str(tmp_path / "cache"), "progress": False}
    cold = run_fit(FitConfig(out=str(tmp_path / "cold"), **cfg))
    html = _assert_report_shows(tmp_path / "cold", VIEWS)
    assert len(_embedded(html)) == 4
    assert "Top losses" in html and "Embedding map" in html and "(validation)" in html
    assert cold.confusion_png == tmp_path / "cold" / "confusion_matrix.png"
    assert not (tmp_path / "cold" / "predictions_grid.png").exists()  # evaluate's, not fit's

    warm = run_fit(FitConfig(out=str(tmp_path / "warm"), **cfg))
    assert warm.metrics.reused_run  # restored from the memo: the views come back with it
    _assert_report_shows(tmp_path / "warm", VIEWS)
    for name in VIEWS:
        assert (tmp_path / "warm" / name).read_bytes() == (tmp_path / "cold" / name).read_bytes()
    assert warm.confusion_png == tmp_path / "warm" / "confusion_matrix.png"


def test_finetune_report_embeds_curves_and_every_view(tmp_path):
    from tests.finetune._data import FAST
    from transferlab.finetune import FinetuneConfig
    from transferlab.pipeline import FinetuneRunConfig, run_finetune

    data = make_data(tmp_path / "data")
    out = tmp_path / "ft"
    res = run_finetune(
        FinetuneRunConfig(
            data=str(data),
            out=str(out),
            finetune=FinetuneConfig(**FAST, epochs=1, freeze_epochs=0),
            progress=False,
        )
    )
    html = _assert_report_shows(out, ["training_curves.png", *VIEWS])
    assert len(_embedded(html)) == 5
    assert res.confusion_png == out / "confusion_matrix.png"


@pytest.fixture
def scored(tmp_path):
    """12 images of two classes, probabilities with two errors, features that separate them."""
    root = build_image_folder(tmp_path / "imgs", n_per_class=6)
    paths = sorted(str(p) for p in root.rglob("*.png"))
    labels = [Path(p).parent.name for p in paths]
    y = np.array([lab == "vstripes" for lab in labels], dtype=int)
    p1 = np.where(y == 1, 0.8, 0.2)
    p1[[0, 7]] = 1 - p1[[0, 7]]  # one error per class
    raw = np.c_[1 - p1, p1]
    feats = np.random.default_rng(0).normal(size=(12, 8)) + 3 * y[:, None]
    return tmp_path / "out", paths, labels, raw, feats


def test_views_without_features_or_with_few_images_draw_no_map(scored):
    out, paths, labels, raw, feats = scored
    out.mkdir()
    views = _views.training_views(out, paths, labels, raw, ["hstripes", "vstripes"])
    assert [p.name for _, p in views] == VIEWS[:3]
    assert all(p.is_file() for _, p in views)
    few = out / "few"
    few.mkdir()
    pick = [0, 6]
    views = _views.training_views(
        few,
        [paths[i] for i in pick],
        [labels[i] for i in pick],
        raw[pick],
        ["hstripes", "vstripes"],
        features=feats[pick],
    )
    assert "feature_map.png" not in [p.name for _, p in views]
    assert _views.written_views(few) == views  # what a restored run lists: the same


def test_map_draws_a_stratified_capped_sample_and_drops_unreadable_rows(scored, monkeypatch):
    out, paths, labels, raw, feats = scored
    out.mkdir()
    monkeypatch.setattr(_views, "MAP_POINTS", 6)
    asked = []

    def features(rows):
        asked.append(rows)
        X = feats[rows].copy()
        X[0] = np.nan  # an image that no longer decodes
        return X

    views = _views.training_views(
        out, paths, labels, raw, ["hstripes", "vstripes"], temperature=2.0, features=features
    )
    assert len(asked) == 1 and len(asked[0]) == 6  # computed only for the map's sample
    assert sorted(labels[i] for i in asked[0]) == ["hstripes"] * 3 + ["vstripes"] * 3
    assert [p.name for _, p in views] == VIEWS
    # the same draw again: seeded
    _views.training_views(out, paths, labels, raw, ["hstripes", "vstripes"], features=features)
    assert asked[1].tolist() == asked[0].tolist()


def test_views_refuse_mismatched_inputs(scored):
    out, paths, labels, raw, _ = scored
    with pytest.raises(InvalidParameterError, match="12 paths, 11 labels and 12 rows"):
        _views.training_views(out, paths, labels[:-1], raw, ["hstripes", "vstripes"])
