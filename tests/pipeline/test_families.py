"""Every command on every timm family (issue 20), with random weights (no hub here): fit,
extract, diagnose, rank, a fine-tune step, the saved model, and the service's features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests._helpers import build_image_folder
from transferlab.cli import app
from transferlab.exceptions import InvalidParameterError

runner = CliRunner()

FAMILIES = {
    "vit_tiny_patch16_224": "transformer",
    "swin_tiny_patch4_window7_224": "transformer",
    "convnext_atto": "layernorm-cnn",
    "resnet18": "batchnorm-cnn",
    "mobilenetv3_small_050": "batchnorm-cnn",
    "regnetx_002": "batchnorm-cnn",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("families")
    build_image_folder(root / "train", n_per_class=8, seed=1)
    build_image_folder(root / "val", n_per_class=4, seed=2)
    return root


@pytest.mark.parametrize("name", list(FAMILIES))
def test_fit_and_a_finetune_step_on_every_family(name: str, data: Path, tmp_path: Path) -> None:
    from transferlab.finetune import FinetuneConfig, FineTuner
    from transferlab.models import load_model
    from transferlab.pipeline import FitConfig, run_fit

    res = run_fit(
        FitConfig(
            data=str(data), out=str(tmp_path / "fit"), backbone=name, weights="random",
            no_cache=True,
        )
    )  # fmt: skip
    assert res.metrics.n_val == 8 and 0.0 <= res.metrics.accuracy <= 1.0
    model = load_model(tmp_path / "fit" / "model")
    val = sorted(str(p) for p in (data / "val").rglob("*.png"))
    assert len(model.predict_paths(val[:2])) == 2

    from transferlab.data import load_dataset

    ds = load_dataset(data)
    tuner = FineTuner(
        FinetuneConfig(backbone=name, weights="random", epochs=1, batch_size=8, wise="off"),
        progress=False,
    )
    result = tuner.fit(ds.train, ds.val, ds.classes)
    assert len(result.history) == 1 and np.isfinite(result.history[0]["train_loss"])
    assert tuner.backbone_.family.name == FAMILIES[name]
    # the family's defaults filled in: layer-wise decay for transformers and ConvNeXt
    decay = tuner.settings_.layer_decay
    assert (decay == "off") == (FAMILIES[name] == "batchnorm-cnn")
    assert tuner.settings_.lr == {"transformer": 1e-4, "layernorm-cnn": 2e-4}.get(
        FAMILIES[name], 5e-4
    )


def test_layer_decay_gives_each_block_its_factor() -> None:
    from transferlab.backbones import load_backbone
    from transferlab.finetune import layer_decay_scales, layer_groups
    from transferlab.finetune._groups import discriminative_optimizer

    model = load_backbone("vit_tiny_patch16_224", weights="random").model
    model.reset_classifier(2)
    scales = layer_decay_scales(model, 0.75)
    # timm's fine groups: stem, 12 blocks (the final norm with the last), classifier
    assert len(layer_groups(model, coarse=False)) == 14
    assert scales["head.weight"] == 1.0
    assert scales["norm.weight"] == scales["blocks.11.mlp.fc1.weight"] == pytest.approx(0.75)
    assert scales["blocks.10.mlp.fc1.weight"] == pytest.approx(0.75**2)
    assert scales["blocks.0.attn.qkv.weight"] == pytest.approx(0.75**12)
    assert scales["patch_embed.proj.weight"] == scales["cls_token"] == pytest.approx(0.75**13)
    groups = layer_groups(model)
    opt, lrs = discriminative_optimizer(model, groups, 0, 1e-3, 100.0, 0.01, layer_decay=0.75)
    assert max(lrs) == pytest.approx(1e-3) and min(lrs) == pytest.approx(1e-3 * 0.75**13)
    n_params = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_params == sum(p.numel() for p in model.parameters())


def test_finetune_refuses_what_a_transformer_cannot_do(data: Path) -> None:
    from transferlab.data import load_dataset
    from transferlab.finetune import FinetuneConfig, FineTuner

    ds = load_dataset(data)
    for change, match in (({"adapt_bn": True}, "no BatchNorm"), ({"image_size": 112}, "fixed")):
        cfg = FinetuneConfig(backbone="vit_tiny_patch16_224", weights="random", **change)
        with pytest.raises(InvalidParameterError, match=match):
            FineTuner(cfg, progress=False).fit(ds.train, ds.val, ds.classes)
    r = runner.invoke(app, ["finetune", str(data), "--layer-decay", "lots"])
    assert r.exit_code != 0 and "--layer-decay must be off or a number" in r.output


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "convnext_atto"])
def test_diagnose_on_networks_without_batchnorm(name: str, data: Path, tmp_path: Path) -> None:
    """Exit 0 with findings; the BatchNorm measures named as skipped, the activation shift
    measured instead, and no BatchNorm flag in any advice."""
    out = tmp_path / "diag"
    r = runner.invoke(
        app,
        ["diagnose", str(data), "--backbone", name, "--weights", "random", "--out", str(out),
         "--bn-images", "8"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "SKIPPED  BatchNorm shift and AdaBN" in r.output
    d = json.loads((out / "diagnosis.json").read_text())
    assert d["family"] == FAMILIES[name] and d["findings"]
    assert d["skipped"] and "no BatchNorm statistics" in d["skipped"][0]
    assert d["bn_shift"]["target"]["measure"] == "activations"
    assert d["bn_shift"]["target"]["by_tap_w2"]  # measured per tap
    commands = [c for f in d["findings"] for c in f.get("commands", [])]
    assert commands and not any("--bn " in c or "--adapt-bn" in c for c in commands)
    assert all(f"--backbone {name}" in c for c in commands if c.startswith("transferlab fit"))
    assert "Skipped measures" in (out / "report.html").read_text()


def test_rank_with_weights_on_transformer_and_convnext(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "rank"
    r = runner.invoke(
        app,
        ["rank", str(data), "--backbones", "vit_tiny_patch16_224,convnext_atto",
         "--weights", "random", "--out", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "rank.json").read_text())["rows"]
    assert {row["backbone"] for row in rows} == {"vit_tiny_patch16_224", "convnext_atto"}
    assert "--weights random" in r.output and "--bn" not in r.output
    bad = runner.invoke(
        app, ["rank", str(data), "--backbones", "a,b,c", "--weights", "random,random"]
    )
    assert bad.exit_code != 0 and "2 given" in bad.output


def test_extract_a_transformer_block_with_token_pooling(data: Path, tmp_path: Path) -> None:
    f = tmp_path / "f.npz"
    r = runner.invoke(
        app,
        ["extract", str(data), "--out", str(f), "--backbone", "vit_tiny_patch16_224",
         "--weights", "random", "--layer", "stage3", "--pool", "token_patch", "--no-cache"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    with np.load(f) as z:
        assert z["X"].shape == (24, 384)  # class token and patch mean, 192 each


def test_backbones_recommended_lists_hub_names_and_family_defaults() -> None:
    r = runner.invoke(app, ["backbones", "--recommended", "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    rows = {row["name"]: row for row in got["recommended"]}
    dino = rows["vit_small_patch14_dinov2.lvd142m"]
    assert dino["family"] == "transformer" and dino["input_size"] == 518
    assert dino["offline"] is False and 20 < dino["params_m"] < 25
    assert rows["efficientnet_lite0"]["offline"] is True
    assert rows["convnext_tiny.fb_in22k_ft_in1k"]["family"] == "layernorm-cnn"
    assert got["finetune_defaults"]["transformer"]["layer_decay"] == 0.75


def test_service_features_from_a_transformer(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tests.serve._client import auth, make_keys, pattern, settings_for
    from transferlab.features import FeatureExtractor
    from transferlab.serve import create_app

    images = [pattern("hstripes", 1), pattern("checker", 2)]
    paths = []
    for i, b in enumerate(images):
        (tmp_path / f"{i}.png").write_bytes(b)
        paths.append(str(tmp_path / f"{i}.png"))
    expected = FeatureExtractor(
        "vit_tiny_patch16_224", weights="random", cache=False, progress=False
    ).transform(paths)
    (key,) = make_keys(tmp_path / "serve", "alice")
    settings = settings_for(tmp_path / "serve", backbone="vit_tiny_patch16_224", weights="random")
    with TestClient(create_app(settings)) as client:
        r = client.post(
            "/v1/features",
            headers=auth(key),
            files=[("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)],
        )
    assert r.status_code == 200, r.text
    got = np.array([f["vector"] for f in r.json()["features"]], dtype=np.float32)
    assert got.shape == (2, 192)
    np.testing.assert_allclose(got, expected, atol=1e-4)
