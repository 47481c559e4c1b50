"""The LR finder: the sweep, the suggestion, the plot and the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.finetune._data import FAST, make_data
from transferlab.cli import app
from transferlab.data import load_dataset
from transferlab.finetune import FinetuneConfig, FineTuner

runner = CliRunner()


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path / "data")


def test_lr_find_sweeps_and_restores_weights(data, tmp_path):
    ds = load_dataset(data)
    tuner = FineTuner(FinetuneConfig(**FAST), progress=False)
    res = tuner.lr_find(ds.train, ds.classes, num_it=12, start_lr=1e-5, end_lr=10)
    assert 5 <= len(res.lrs) <= 12
    assert res.lrs == sorted(res.lrs) and res.lrs[0] == pytest.approx(1e-5)
    assert res.lrs[0] <= res.suggestion * 10 <= res.lrs[-1]
    assert "minimum" in res.rule
    png = res.plot(tmp_path / "lr.png")
    assert png.stat().st_size > 1000


def test_cli_lr_find(data, tmp_path):
    res = runner.invoke(
        app,
        [
            "lr-find",
            str(data),
            "--out",
            str(tmp_path / "lr"),
            "--backbone",
            "test_resnet",
            "--weights",
            "random",
            "--image-size",
            "48",
            "--num-it",
            "8",
            "--batch-size",
            "4",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "suggested lr" in res.stdout
    assert (tmp_path / "lr" / "lr_find.png").exists()
    assert json.loads((tmp_path / "lr" / "lr_find.json").read_text())["suggestion"] > 0
