"""The default fast path as a user meets it (issue 17): a plain install runs ONNX Runtime with no
warning, and a run whose export exists, or whose vectors are all cached, imports no torch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from tests._helpers import build_image_folder

# runs the CLI in this process' interpreter and reports whether torch got imported
_PROBE = (
    "import runpy, sys\n"
    "sys.argv = ['transferlab', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('transferlab', run_name='__main__')\n"
    "except SystemExit as exc:\n"
    "    code = exc.code\n"
    "else:\n"
    "    code = 0\n"
    "print('TORCH_IMPORTED', 'torch' in sys.modules, 'TIMM_IMPORTED', 'timm' in sys.modules,\n"
    "      'SKLEARN_IMPORTED', 'sklearn' in sys.modules)\n"
    "sys.exit(code)\n"
)


def _cli(*args: str, cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    if cache is not None:
        env["TRANSFERLAB_CACHE_DIR"] = str(cache)
    return subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_onnx_export_needs_only_core_dependencies():
    """What the default engine needs is in the package's core requirements, not an extra."""
    reqs = metadata.requires("transferlab") or []
    core = {re.split(r"[<>=!~;\[ ]", r)[0].lower() for r in reqs if "extra ==" not in r}
    assert {"onnx", "onnxruntime"} <= core


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast")
    big = build_image_folder(root / "big", n_per_class=36, seed=1)  # 72 images: over the 64 bar
    more = build_image_folder(root / "more", n_per_class=5, seed=2, ext=".jpg")
    return root, big, more


def test_default_extract_is_onnxruntime_then_torch_free(folders):
    """A first `transferlab extract` on a fresh cache exports to ONNX and says so, with no
    warning; a second one on other images finds the export and the backbone card and runs with
    neither torch nor timm imported, giving the PyTorch engine's vectors within 1e-4."""
    root, big, more = folders
    cache = root / "cache"
    first = _cli("extract", str(big), "--out", str(root / "a.npz"), "--cache-dir", str(cache))
    assert first.returncode == 0, first.stderr
    assert "computed by onnxruntime-fp32" in first.stdout
    assert "WARNING" not in first.stderr and "Warning" not in first.stderr, first.stderr
    assert len(list((cache / "onnx").glob("*.onnx"))) == 1
    assert len(list((cache / "cards").glob("*.json"))) == 1

    second = _cli(
        "extract", str(more), "--out", str(root / "b.npz"), "--cache-dir", str(cache),
        "--no-cache",
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert "computed by onnxruntime-fp32" in second.stdout
    assert "TORCH_IMPORTED False TIMM_IMPORTED False" in second.stdout

    ref = _cli(
        "extract", str(more), "--out", str(root / "c.npz"), "--cache-dir", str(cache),
        "--no-cache", "--engine", "torch",
    )  # fmt: skip
    assert ref.returncode == 0, ref.stderr
    assert "computed by torch-fp32" in ref.stdout
    fast, slow = (
        np.load(root / "b.npz", allow_pickle=True),
        np.load(root / "c.npz", allow_pickle=True),
    )
    assert list(fast["paths"]) == list(slow["paths"])
    np.testing.assert_allclose(fast["X"], slow["X"], atol=1e-4)


def test_warm_fit_loads_no_model(folders):
    """A second `fit` of the same data and settings restores the first one's outputs from its
    memo: no torch, timm or scikit-learn import, the same model files and figures. Any change
    (a setting, a label) computes again, from the cached vectors and with no model load."""
    root, big, _ = folders
    cache = root / "fit-cache"
    cold = _cli("fit", str(big), "--out", str(root / "cold"), "--cache-dir", str(cache))
    assert cold.returncode == 0, cold.stderr
    assert "TORCH_IMPORTED True" in cold.stdout  # the first run loads and exports the model
    warm = _cli("fit", str(big), "--out", str(root / "warm"), "--cache-dir", str(cache))
    assert warm.returncode == 0, warm.stderr
    assert "TORCH_IMPORTED False TIMM_IMPORTED False SKLEARN_IMPORTED False" in warm.stdout
    a = json.loads((root / "cold" / "metrics.json").read_text())
    b = json.loads((root / "warm" / "metrics.json").read_text())
    assert b["n_cached"] == a["n_train"] + a["n_val"] and a["n_cached"] == 0
    assert a["accuracy"] == b["accuracy"] and a["weights_sha256"] == b["weights_sha256"]
    ma = json.loads((root / "cold" / "model" / "model.json").read_text())
    mb = json.loads((root / "warm" / "model" / "model.json").read_text())
    for key in ("backbone", "layer", "pool", "preprocessing", "classes"):
        assert ma[key] == mb[key]
    assert "reused_run" in b and "reused_run" not in a
    for name in ("probe.zip", "train_index.npz"):
        assert (root / "cold" / "model" / name).read_bytes() == (
            root / "warm" / "model" / name
        ).read_bytes()
    assert (root / "warm" / "report.html").is_file()
    # another setting: computed again (scikit-learn), from cached vectors (no torch)
    other = _cli(
        "fit", str(big), "--out", str(root / "c05"), "--cache-dir", str(cache), "--C", "0.5"
    )
    assert other.returncode == 0, other.stderr
    assert "TORCH_IMPORTED False" in other.stdout and "SKLEARN_IMPORTED True" in other.stdout
    c = json.loads((root / "c05" / "metrics.json").read_text())
    assert "reused_run" not in c and c["C"] == 0.5 and c["n_cached"] == a["n_train"] + a["n_val"]
    # a relabelled image changes the key too
    moved = next((big / "hstripes").glob("*.png"))
    moved.rename(big / "vstripes" / moved.name)
    relabelled = _cli("fit", str(big), "--out", str(root / "relab"), "--cache-dir", str(cache))
    assert relabelled.returncode == 0, relabelled.stderr
    assert "reused_run" not in json.loads((root / "relab" / "metrics.json").read_text())
    (big / "vstripes" / moved.name).rename(moved)
    # and the warm run's model predicts like the cold one's
    pred = _cli("predict", str(root / "warm" / "model"), str(big / "hstripes"), cache=cache)
    assert pred.returncode == 0, pred.stderr
    assert "hstripes" in pred.stdout and "TORCH_IMPORTED False" in pred.stdout


def test_card_is_keyed_by_the_weights_file(tmp_path):
    """A backbone card is found again for the same weights file, and not once the file changes
    (a retrained checkpoint written over the old one must not reuse the old identity)."""
    import torch

    from transferlab.backbones import BackboneCard, load_backbone
    from transferlab.features import FeatureExtractor

    weights = tmp_path / "w.pth"
    torch.save(load_backbone("test_resnet", weights="random").model.state_dict(), weights)
    fx = FeatureExtractor("test_resnet", weights=str(weights), cache=tmp_path / "c", progress=False)
    fx.fit()
    card = BackboneCard.load(tmp_path / "c", "test_resnet", str(weights))
    assert card is not None and card.fingerprint() == fx.backbone_.fingerprint()
    again = FeatureExtractor("test_resnet", weights=str(weights), cache=tmp_path / "c").fit()
    assert "_model" not in again.__dict__  # found by its card: no model loaded
    assert again.n_features_out_ == fx.n_features_out_
    sd = torch.load(weights)
    sd = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    os.utime(weights, ns=(1, 1))  # make sure the stat changes even on coarse clocks
    torch.save(sd, weights)
    assert BackboneCard.load(tmp_path / "c", "test_resnet", str(weights)) is None
    changed = FeatureExtractor("test_resnet", weights=str(weights), cache=tmp_path / "c").fit()
    assert changed.card_.weights_sha256 != card.weights_sha256
    # a damaged card is ignored, not an error
    path = BackboneCard.path_for(tmp_path / "c", "test_resnet", str(weights))
    Path(path).write_text("{not json")
    assert BackboneCard.load(tmp_path / "c", "test_resnet", str(weights)) is None
