"""`run_auto` (issue 18): the decision logic on small generated data: the recipe follows the
shift, a budget too small for fine-tuning keeps the probe, and no choice reads ``val/``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests._helpers import build_image_folder
from transferlab.diagnose import locate_shift, recipes_for
from transferlab.exceptions import InvalidParameterError
from transferlab.pipeline import AutoConfig, run_auto
from transferlab.pipeline._auto import parse_budget


def test_parse_budget() -> None:
    assert parse_budget("20m") == 1200
    assert parse_budget("1h30m") == 5400
    assert parse_budget("90s") == 90
    assert parse_budget("45") == 45
    for bad in ("", "ten minutes", "-5", "0"):
        with pytest.raises(InvalidParameterError, match="budget"):
            parse_budget(bad)


def test_a_weak_start_does_not_inflate_the_fine_tunes_gain() -> None:
    # trashnet, measured: a 288 px fine-tune rose from a 0.726 start to 0.798 on the inner
    # images, where the same backbone's plain probe scored 0.80: no gain over the probe
    from transferlab.pipeline._auto._run import expected_score

    assert expected_score(0.812, 0.800, 0.726, 0.798) < 0.812
    # the gain over a start at least as good as the probe counts in full
    assert expected_score(0.93, 0.90, 0.92, 0.97) == pytest.approx(0.98)
    assert expected_score(0.93, 0.90, 0.85, 0.97) == pytest.approx(1.0)
    # hymenoptera, measured: 1.000 on 49 inner images over a 0.959 start; still a score
    assert expected_score(0.9713, 0.9592, 0.9592, 1.0) == 1.0


def _bn(low: float, high: float) -> dict[str, float]:
    taps = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6"]
    return {t: (low if t in ("stem", "stage1", "stage2") else high) for t in taps}


def test_recipe_follows_the_shift() -> None:
    reference = _bn(0.2, 0.2)
    # x-ray-like: low-level taps far from the photos' statistics
    shift, n_stages = locate_shift(_bn(1.0, 0.3), reference)
    assert shift is not None and shift.low and shift.first_tap == "stem" and n_stages == 6
    low = recipes_for(shift, n_stages=n_stages, peak="stage4", min_side=28, input_size=224)
    assert [r.name for r in low] == ["partial-freeze-ema"]
    s = low[0].settings
    assert s["freeze_to"] == 5 and s["bn_policy"] == "freeze" and s["ema"] == 0.998
    assert s["image_size"] == 112  # 28 px images: no point upsampling to 224
    assert "--freeze-to 5 --bn freeze" in low[0].flags() and "--lr 1e-3" in low[0].flags()
    # only deep taps shifted
    shift, n_stages = locate_shift(_bn(0.2, 1.0), reference)
    assert shift is not None and not shift.low
    assert (
        recipes_for(shift, n_stages=n_stages, peak=None, min_side=300, input_size=224)[0].settings[
            "bn_policy"
        ]
        == "train"
    )
    # photos: LP-FT + WiSE, and a larger input for large images only
    shift, _ = locate_shift(_bn(0.25, 0.25), reference)
    assert shift is None
    large = recipes_for(None, n_stages=6, peak=None, min_side=400, input_size=224)
    assert [r.name for r in large] == ["lp-ft-wise", "lp-ft-wise-large"]
    assert large[1].settings["image_size"] == 256
    small = recipes_for(None, n_stages=6, peak=None, min_side=200, input_size=224)
    assert [r.name for r in small] == ["lp-ft-wise"]


def _xray_folder(root: Path, n: int = 24, seed: int = 0) -> Path:
    """Tiny (28 px) greyscale blobs: far from ImageNet photos in their low-level statistics."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    for k, cls in enumerate(("clear", "spot")):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = 90 + 40 * np.exp(-((xx - 14) ** 2 + (yy - 14) ** 2) / 120.0)
            if k:
                cx, cy = rng.integers(6, 22, size=2)
                img = img + 90 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 6.0)
            img = img + rng.normal(0, 6, size=img.shape)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L").save(
                root / cls / f"{i}.png"
            )
    return root


def test_shifted_domain_gets_the_partial_freeze_recipe(tmp_path: Path) -> None:
    # 16 images a class (< 20): the recipe is chosen and logged, but not run
    data = _xray_folder(tmp_path / "xray", n=16)
    res = run_auto(
        AutoConfig(
            data=str(data),
            out=str(tmp_path / "run"),
            backbones=("efficientnet_lite0",),
            progress=False,
            budget_s=600,
        )
    )
    m = res.metrics
    assert m.shift["kind"] == "low_level"
    assert m.shift["recipes"] == ["partial-freeze-ema"]
    ft = [c for c in m.candidates if c["kind"] == "finetune"]
    assert [c["recipe"] for c in ft] == ["partial-freeze-ema"]
    assert ft[0]["settings"]["image_size"] == 112 and ft[0]["status"] == "dropped"
    assert "smallest class has" in ft[0]["why"]
    assert m.chosen["kind"] == "probe"


def test_budget_too_small_for_finetuning_keeps_the_probe(tmp_path: Path) -> None:
    data = build_image_folder(tmp_path / "data", n_per_class=30)
    res = run_auto(
        AutoConfig(
            data=str(data),
            out=str(tmp_path / "run"),
            backbones=("efficientnet_lite0",),
            budget_s=5,
            progress=False,
        )
    )
    m = res.metrics
    assert m.chosen["kind"] == "probe"
    ft = [c for c in m.candidates if c["kind"] == "finetune"]
    assert ft and all(c["status"] == "dropped" for c in ft)
    assert all("not started" in c["why"] for c in ft)
    assert (res.out / "model" / "model.json").is_file() and res.report.is_file()
    html = res.report.read_text()
    assert "Decision log" in html and "Top losses" in html


def test_choices_never_read_the_validation_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every image read before the final scoring is a training image; the fine-tune trains
    and selects on the inner split of the training images only."""
    from transferlab.features import FeatureExtractor
    from transferlab.finetune import FineTuner

    root = tmp_path / "data"
    build_image_folder(root / "train", n_per_class=24, seed=1)
    build_image_folder(root / "val", n_per_class=8, seed=2)
    val = {str(p) for p in (root / "val").rglob("*.png")}
    train = {str(p) for p in (root / "train").rglob("*.png")}
    final = [False]
    seen_before: set[str] = set()
    fitted: list[tuple[set[str], set[str]]] = []

    original_extract = FeatureExtractor.extract
    original_fit = FineTuner.fit

    def extract(self, paths, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not final[0]:
            seen_before.update(str(p) for p in paths)
        return original_extract(self, paths, *args, **kwargs)

    def fit(self, tr, va, *args, **kwargs):  # type: ignore[no-untyped-def]
        fitted.append(({s.path for s in tr}, {s.path for s in va}))
        return original_fit(self, tr, va, *args, **kwargs)

    monkeypatch.setattr(FeatureExtractor, "extract", extract)
    monkeypatch.setattr(FineTuner, "fit", fit)
    # the fine-tune wins whatever it and the probes score (a probe may reach 1.0), so that its final path (scoring, views) runs too
    monkeypatch.setattr("transferlab.pipeline._auto._run.expected_score", lambda *a: 2.0)

    def on_step(text: str) -> None:
        final[0] = final[0] or "scoring the chosen model" in text

    res = run_auto(
        AutoConfig(
            data=str(root),
            out=str(tmp_path / "run"),
            backbones=("test_resnet",),
            weights="random",
            budget_s=600,
            progress=False,
            on_step=on_step,
            max_probes=2,
        )
    )
    assert final[0]
    assert seen_before and seen_before <= train and not seen_before & val
    assert fitted, "the budget allowed a fine-tune: it should have run"
    for tr, va in fitted:
        assert tr <= train and va <= train and not tr & va
    m = res.metrics
    ran = [c for c in m.candidates if c["kind"] == "finetune" and c["status"] != "dropped"]
    assert ran and all(isinstance(c["inner_score"], float) for c in ran)
    assert m.n_val == 16 and "scored once" in m.images_used["reported"]
    assert m.chosen["kind"] == "finetune"
    # the report's embedding map of val through the fine-tuned network (issue 18, deliverable 5)
    assert (tmp_path / "run" / "feature_map.png").is_file()
    from transferlab.models import load_model

    model = load_model(res.model_dir)
    assert len(model.predict_proba_paths(sorted(val))[0]) == 16


def test_cli_auto(tmp_path: Path) -> None:
    from transferlab.cli import app

    data = build_image_folder(tmp_path / "data", n_per_class=8)
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "auto",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--budget",
            "1m",
            "--backbones",
            "test_resnet",
            "--weights",
            "random",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "chosen:" in r.output and "validation accuracy" in r.output
    bad = runner.invoke(app, ["auto", str(data), "--out", str(tmp_path / "r2"), "--budget", "soon"])
    assert bad.exit_code != 0 and "budget must look like" in bad.output
    assert "Traceback" not in bad.output
