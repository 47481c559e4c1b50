"""Learning curves: draws, baselines, summary, the curve command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tests._helpers import build_image_folder
from transferlab.cli import app
from transferlab.evaluate import learning_curve, parse_shots
from transferlab.evaluate._curves import _draw
from transferlab.exceptions import InvalidParameterError

runner = CliRunner()


def test_parse_shots():
    assert parse_shots("1, 5,all") == [1, 5, "all"]
    with pytest.raises(InvalidParameterError, match="--shots"):
        parse_shots("1,x")
    with pytest.raises(InvalidParameterError, match=">= 1"):
        parse_shots("0")


def test_draws_are_per_class_and_reproducible():
    y = np.repeat([0, 1, 2], 10)
    a = _draw(y, 3, np.random.default_rng([0, 1, 3]))
    b = _draw(y, 3, np.random.default_rng([0, 1, 3]))
    assert a.tolist() == b.tolist()
    assert np.bincount(y[a]).tolist() == [3, 3, 3]
    assert len(_draw(y, "all", np.random.default_rng(0))) == 30


def _per_class_draw(y, k, rng):
    """The draw as learning curves made it before `data.stratified_subsample` did it: classes
    in sorted order, `rng.choice` without replacement from each larger than k."""
    idx = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        small = k == "all" or len(members) <= int(k)
        idx.append(members if small else rng.choice(members, size=int(k), replace=False))
    return np.sort(np.concatenate(idx))


@pytest.mark.parametrize("k", [1, 3, 7, "all"])
def test_draws_are_the_ones_curves_always_drew(k):
    """Same seed, same images: curves keep their numbers across the move to the shared
    stratified subsample (uneven classes, one smaller than k)."""
    y = np.repeat([2, 0, 1, 3], [10, 4, 25, 6])
    for seed in range(5):
        got = _draw(y, k, np.random.default_rng([seed, 0, 3]))
        assert got.tolist() == _per_class_draw(y, k, np.random.default_rng([seed, 0, 3])).tolist()


def test_transfer_curve_rises_with_shots():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1.2, (3, 20))

    def make(n):
        y = np.repeat(["a", "b", "c"], n)
        return np.concatenate([rng.normal(c, 1.5, (n, 20)) for c in centres]), y

    Xtr, ytr = make(30)
    Xva, yva = make(40)
    curve = learning_curve(
        Xtr, ytr, Xva, yva, shots=[1, 10, "all"], repeats=4, methods=["transfer"], progress=False
    )
    means = curve.mean("transfer")
    assert means[0] < means[-1]
    assert curve.n_per_class == [1.0, 10.0, 30.0]
    assert len(curve.scores["transfer"][0]) == 4 and len(curve.scores["transfer"][-1]) == 1


def test_cli_curve_with_baselines(tmp_path):
    data = build_image_folder(tmp_path / "d", n_per_class=10)
    out = tmp_path / "curve"
    res = runner.invoke(
        app,
        [
            "curve",
            str(data),
            "--out",
            str(out),
            "--shots",
            "1,3,all",
            "--repeats",
            "2",
            "--val-fraction",
            "0.4",
            "--cnn-epochs",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["mean"]) == {"transfer", "pixels", "scratch_cnn"}
    assert m["shots"] == [1, 3, "all"]
    assert all(0 <= v <= 1 for vals in m["mean"].values() for v in vals)
    assert m["summary"] and (out / "learning_curve.png").stat().st_size > 1000
    assert "data:image/png;base64," in (out / "report.html").read_text()
