"""`fit`/`finetune` --target and --remedy (issue 22, deliverable 2) on real photos against
edge-map drawings of other photos (hymenoptera): the remedy is chosen from the target, lifts
the drawings, and every figure says which images it learnt from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests._helpers import build_photos_vs_edges
from transferlab.cli import app
from transferlab.exceptions import InvalidParameterError
from transferlab.pipeline import FinetuneRunConfig, FitConfig, run_fit

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "hymenoptera"
runner = CliRunner()
needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not found")


def _build(root: Path, n_train: int = 30, n_val: int = 15) -> Path:
    """train/: photos; val/: edge maps of the val photos (white background, dark lines)."""
    return build_photos_vs_edges(root, n_train, n_val)


@needs_data
def test_auto_remedy_picks_style_for_drawings_and_lifts_them(tmp_path: Path) -> None:
    data = _build(tmp_path / "d")
    res = run_fit(
        FitConfig(str(data), out=str(tmp_path / "run"), target=str(data / "val"), progress=False)
    )
    dom = res.metrics.domain
    assert dom["remedy"] == "style" and dom["chosen_by"].startswith("auto")
    assert dom["images_used"].startswith("inductive") and dom["target_is_val"] is True
    assert dom["target_saturation"] < 0.03 < dom["source_saturation"]
    # the plain probe on the same val drawings, measured in the same run
    assert res.metrics.accuracy >= dom["plain_val_accuracy"] + 0.1
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["domain"]["plain_val_accuracy"] == dom["plain_val_accuracy"]
    report = (tmp_path / "run" / "report.html").read_text()
    assert "domain remedy" in report and "without the remedy" in report


@needs_data
def test_coral_is_transductive_and_says_so(tmp_path: Path) -> None:
    data = _build(tmp_path / "d", n_train=20, n_val=10)
    res = run_fit(
        FitConfig(
            str(data),
            out=str(tmp_path / "run"),
            target=str(data / "val"),
            remedy="coral",
            progress=False,
        )
    )
    dom = res.metrics.domain
    assert dom["remedy"] == "coral" and dom["n_target"] == 20
    assert (
        dom["images_used"].startswith("transductive") and "validation images" in dom["images_used"]
    )
    # the saved model is the adapted probe, and predicts the val drawings as scored
    from transferlab.models import load_model

    model = load_model(tmp_path / "run" / "model")
    assert type(model.probe).__name__ == "DomainAdaptedProbe"
    r = runner.invoke(
        app, ["predict", str(tmp_path / "run" / "model"), str(data / "val"), "--json"]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", str(tmp_path / "run" / "model"), "--format", "onnx"])
    assert r.exit_code != 0 and "CORAL-adapted" in r.output and "Traceback" not in r.output


@needs_data
def test_remedy_errors_name_the_option(tmp_path: Path) -> None:
    data = _build(tmp_path / "d", n_train=6, n_val=3)
    r = runner.invoke(app, ["fit", str(data), "--remedy", "coral", "--out", str(tmp_path / "r")])
    assert r.exit_code != 0 and "--target DIR" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["fit", str(data), "--remedy", "mixstyle"])
    assert r.exit_code != 0 and "remedy" in r.output
    with pytest.raises(InvalidParameterError, match="probe remedies"):
        FinetuneRunConfig(str(data), str(tmp_path / "ft"), remedy="coral")
    r = runner.invoke(
        app, ["fit", str(data), "--target", str(tmp_path / "nope"), "--out", str(tmp_path / "r2")]
    )
    assert r.exit_code != 0 and "nope" in r.output and "Traceback" not in r.output


@needs_data
def test_auto_applies_the_remedy_to_its_probe_and_skips_fine_tunes(tmp_path: Path) -> None:
    data = _build(tmp_path / "d", n_train=20, n_val=10)
    r = runner.invoke(
        app,
        [
            "auto",
            str(data),
            "--target",
            str(data / "val"),
            "--backbones",
            "efficientnet_lite0",
            "--budget",
            "10m",
            "--out",
            str(tmp_path / "auto"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "remedy style" in r.output and "without it" in r.output
    m = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    assert m["domain"]["remedy"] == "style" and m["chosen"]["kind"] == "probe"
    assert m["accuracy"] > m["domain"]["plain_val_accuracy"]
    ft = [c for c in m["candidates"] if c["kind"] == "finetune"]
    assert ft and all("remedy" in c["why"] for c in ft)


@needs_data
def test_finetune_style_remedy_selects_on_the_val_images_and_their_renderings(
    tmp_path: Path,
) -> None:
    from tests.finetune._data import FAST
    from transferlab.finetune import FinetuneConfig
    from transferlab.pipeline import run_finetune

    data = _build(tmp_path / "d", n_train=6, n_val=5)
    res = run_finetune(
        FinetuneRunConfig(
            str(data),
            str(tmp_path / "ft"),
            finetune=FinetuneConfig(**FAST, epochs=1, freeze_epochs=0),
            target=str(data / "val"),
            progress=False,
        )
    )
    m = res.metrics
    assert m["domain"]["remedy"] == "style" and m["config"]["style"] == 0.5
    assert "renderings" in m["domain"]["images_used"] and "renderings" in m["advice"]
    rendered = sorted((tmp_path / "ft" / "styled-val").rglob("*.png"))
    assert len(rendered) == 2 * m["n_val"]  # a line drawing and a greyscale of each
    assert m["n_val"] == 10  # the reported figures are on the val images alone
    assert "domain remedy" in (tmp_path / "ft" / "report.html").read_text()


@needs_data
def test_auto_without_target_advises_style_for_drawn_val_images(tmp_path: Path) -> None:
    data = _build(tmp_path / "d", n_train=10, n_val=5)
    args = ["auto", str(data), "--backbones", "efficientnet_lite0", "--no-finetune"]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert "domain" not in m  # advice only: auto's choices never read val/
    assert "--remedy style" in m["remedy_advice"] and "colourless" in m["remedy_advice"]
    assert "advice" in r.output


@needs_data
def test_fit_without_target_advises_style_for_drawn_val_images(tmp_path: Path) -> None:
    data = _build(tmp_path / "d", n_train=10, n_val=5)
    r = runner.invoke(app, ["fit", str(data), "--out", str(tmp_path / "f")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert "domain" not in m and f"transferlab fit {data} --remedy style" in m["remedy_advice"]
    assert "advice" in r.output
    assert "another domain" in (tmp_path / "f" / "report.html").read_text()
    # ordinary photos on both sides: no advice
    plain = tmp_path / "plain"
    for split in ("train", "val"):
        for c in ("ants", "bees"):
            (plain / split / c).mkdir(parents=True)
            for p in sorted((SHARED / split / c).glob("*.jpg"))[:5]:
                (plain / split / c / p.name).symlink_to(p)
    r = runner.invoke(app, ["fit", str(plain), "--out", str(tmp_path / "g")])
    assert r.exit_code == 0, r.output
    assert "remedy_advice" not in json.loads((tmp_path / "g" / "metrics.json").read_text())
