"""The package's public API: one list of names, each resolving to the object its home defines,
without importing torch until a name is used."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

import transferlab


@pytest.mark.parametrize("name", [n for n in transferlab.__all__ if n != "__version__"])
def test_every_public_name_resolves_to_its_home(name):
    home = importlib.import_module(transferlab._LAZY[name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the deprecated names warn: below
        assert getattr(transferlab, name) is getattr(home, name)


def test_the_issue_names_are_exported():
    wanted = {"FineTuner", "FinetuneConfig", "MultiLabelProbe", "run_diagnose", "run_evaluate"}
    wanted |= {"export_onnx", "FeatureExtractor", "LinearProbe", "load_model", "FitConfig"}
    assert wanted <= set(transferlab.__all__)
    assert set(dir(transferlab)) >= set(transferlab.__all__)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        transferlab.nope  # noqa: B018


def test_deprecated_result_name_warns_and_is_the_new_one():
    """In a fresh process (the warning comes once per process): FitResult names RunResult."""
    code = "import transferlab; transferlab.FitResult"
    run = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0 and "use transferlab.pipeline.RunResult" in run.stderr
    from transferlab.pipeline import RunResult

    assert "FitResult" not in transferlab.__all__ and "FitResult" not in dir(transferlab)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert transferlab.FitResult is RunResult


def test_importing_the_package_does_not_import_torch():
    code = "import sys, transferlab; transferlab.__version__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
