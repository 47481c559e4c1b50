"""Each command builds its run's config and calls the typed run (`run_<verb>`), never a deprecated
name; a parameter goes over by name when the config has a field of that name (`config_from`)."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import transferlab.data
import transferlab.finetune
import transferlab.pipeline
from transferlab._internal import deprecation
from transferlab.cli import app, curve, diagnose, embed, evaluate, finetune, fit, lr_find
from transferlab.cli._common import config_from, print_step
from transferlab.finetune import FinetuneConfig
from transferlab.pipeline import (
    AdaptBNConfig,
    CurveConfig,
    DiagnoseConfig,
    EmbedConfig,
    EvaluateConfig,
    FinetuneRunConfig,
    FitConfig,
    RankConfig,
)

runner = CliRunner()

#: the deprecated pipeline names: a command calling one fails the test
DEPRECATED = (
    "fit",
    "finetune",
    "evaluate_run",
    "curve_run",
    "embed_run",
    "diagnose_run",
    "rank_run",
    "adapt_bn_run",
)
RUNS = (
    "run_fit",
    "run_finetune",
    "run_finetune_nproc",
    "run_evaluate",
    "run_curve",
    "run_embed",
    "run_diagnose",
    "run_rank",
    "run_adapt_bn",
)


class _Called(Exception):
    """Raised by a stub run so that the command stops once it has its config."""


@pytest.fixture
def calls(monkeypatch):
    """Stubs for every run (and for `FineTuner`); each call is recorded as (name, args)."""
    seen: list[tuple[str, tuple[Any, ...]]] = []

    def stub(name: str):
        def call(*args: Any, **kwargs: Any) -> Any:
            seen.append((name, args))
            raise _Called(name)

        return call

    def deprecated(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the CLI called a deprecated pipeline name")

    for name in RUNS:
        monkeypatch.setattr(transferlab.pipeline, name, stub(name))
    for name in DEPRECATED:
        monkeypatch.setattr(transferlab.pipeline, name, deprecated)
    monkeypatch.setattr(transferlab.finetune, "FineTuner", stub("FineTuner"))
    monkeypatch.setattr(transferlab.data, "load_dataset", lambda *a, **k: None)
    monkeypatch.setattr(deprecation, "_warned", set())  # every deprecated use warns again
    return seen


CASES = [
    (
        ["fit", "D", "--C", "auto", "--balanced", "--workers", "2", "--cache-dir", "CD"],
        "run_fit",
        {"data": "D", "C": "auto", "class_weight": "balanced", "num_workers": 2},
    ),
    (["fit", "D", "--C", "0.5", "-o", "O"], "run_fit", {"C": 0.5, "out": "O", "cache_dir": None}),
    (
        ["finetune", "D", "-o", "O", "--wise", "0.5", "--balance", "sampler", "--workers", "1"],
        "run_finetune",
        {"data": Path("D"), "out": Path("O")},
    ),
    (["finetune", "D", "-o", "O", "--nproc", "2"], "run_finetune_nproc", {"out": Path("O")}),
    (
        ["diagnose", "D", "-o", "O", "--layers", "a, b", "--compare", "x", "--reference", "R"],
        "run_diagnose",
        {"out": "O", "layers": ("a", "b"), "compare": ("x",), "reference": "R"},
    ),
    (
        ["rank", "D", "--backbones", "a,b", "--verify", "--max-images", "9"],
        "run_rank",
        {"out": None, "backbones": ("a", "b"), "verify": True, "max_images": 9, "layers": None},
    ),
    (["adapt-bn", "D", "-o", "O", "--max-images", "5"], "run_adapt_bn", {"max_images": 5}),
    (
        ["curve", "D", "-o", "O", "--shots", "1,all", "--baselines", "none", "--cnn-epochs", "3"],
        "run_curve",
        {"shots": [1, "all"], "methods": ["transfer"], "cnn_epochs": 3},
    ),
    (
        ["embed", "D", "-o", "O", "--domain", "A", "--method", "pca", "--thumbnails"],
        "run_embed",
        {"domains": [Path("A")], "method": "pca", "thumbnails": True},
    ),
    (
        ["evaluate", "M", "D", "-o", "O", "--split", "val", "--grid-size", "3"],
        "run_evaluate",
        {"model_dir": Path("M"), "data": Path("D"), "split": "val", "grid_size": 3},
    ),
    (
        ["lr-find", "D", "--image-size", "64", "--batch-size", "3", "-b", "x"],
        "FineTuner",
        {"image_size": 64, "batch_size": 3, "backbone": "x", "head_init": "random"},
    ),
]


@pytest.mark.filterwarnings("error::DeprecationWarning:transferlab")
@pytest.mark.parametrize(("args", "run", "expected"), CASES, ids=[c[0][0] for c in CASES])
def test_each_command_calls_its_typed_run_with_its_config(calls, args, run, expected):
    res = runner.invoke(app, args)
    assert isinstance(res.exception, _Called), (res.exception, res.output)
    assert [name for name, _ in calls] == [run]
    config = calls[0][1][0]
    assert {k: getattr(config, k) for k in expected} == expected


def test_finetune_options_reach_both_configs(calls):
    args = ["finetune", "D", "-o", "O", "--wise", "0.5", "--balance", "sampler", "--workers", "1"]
    runner.invoke(app, [*args, "--epochs", "2", "--resume", "--multi-label", "--no-augment"])
    run = calls[0][1][0]
    assert (run.resume, run.multi_label, run.val_fraction) == (True, True, 0.2)
    ft = run.finetune
    assert (ft.wise, ft.class_balance, ft.num_workers, ft.epochs, ft.augment) == (
        0.5,
        "sampler",
        1,
        2,
        False,
    )
    runner.invoke(app, ["finetune", "D", "-o", "O", "--nproc", "3", "--lr", "0.1"])
    assert calls[1][1][1] == 3 and calls[1][1][0].finetune.lr == 0.1


def test_diagnose_reports_its_steps(calls):
    runner.invoke(app, ["diagnose", "D"])
    assert calls[0][1][0].on_step is print_step


#: each command's parameters that are NOT a field of its config: the command converts them or
#: uses them itself. A new option lands here only when it is deliberately not passed by name.
NOT_FIELDS = [
    (fit.fit_cmd, (FitConfig,), {"out_dir", "c", "balanced", "workers", "as_json"}),
    (
        finetune.finetune_cmd,
        (FinetuneConfig, FinetuneRunConfig),
        {"out_dir", "balance", "workers", "as_json", "nproc"},
    ),
    (diagnose.diagnose_cmd, (DiagnoseConfig,), {"out_dir", "as_json"}),
    (diagnose.rank_cmd, (RankConfig,), {"out_dir", "as_json"}),
    (diagnose.adapt_bn_cmd, (AdaptBNConfig,), {"out_dir"}),
    (curve.curve_cmd, (CurveConfig,), {"out_dir", "baselines"}),
    (embed.embed_cmd, (EmbedConfig,), {"out_dir"}),
    (evaluate.evaluate_cmd, (EvaluateConfig,), {"out_dir", "as_json"}),
    (
        lr_find.lr_find_cmd,
        (FinetuneConfig,),
        {"data", "out_dir", "start_lr", "end_lr", "num_it", "unfrozen", "val_fraction"},
    ),
]


@pytest.mark.parametrize(
    ("cmd", "configs", "expected"), NOT_FIELDS, ids=[c[0].__name__ for c in NOT_FIELDS]
)
def test_parameters_outside_the_config_are_the_known_ones(cmd, configs, expected):
    fields = {f.name for cls in configs for f in dataclasses.fields(cls)}
    params = set(inspect.signature(cmd).parameters)
    assert params - fields == expected


def test_config_from_takes_fields_by_name_and_changes_win():
    params = {"data": "D", "out_dir": "O", "seed": 3, "as_json": True, "backbone": "x"}
    cfg = config_from(CurveConfig, params, out="O2", backbone="y")
    assert (cfg.data, cfg.out, cfg.seed, cfg.backbone) == ("D", "O2", 3, "y")
    assert cfg.repeats == CurveConfig(data="D", out="O").repeats  # not a parameter: the default
    with pytest.raises(TypeError):
        config_from(CurveConfig, params, out="O", no_such_field=1)
