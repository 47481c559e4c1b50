"""Every timm family a user transfers from (issue 20), on random weights: the family read
from the model, every tap, the token poolings, and the ONNX export agreeing with PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from transferlab.backbones import (
    FAMILIES,
    OnnxTaps,
    family_of_name,
    load_backbone,
    pool_features,
)
from transferlab.exceptions import InvalidParameterError

#: the smallest timm model of each family the issue names, and its family
FAMILY_OF = {
    "vit_tiny_patch16_224": "transformer",
    "deit_tiny_distilled_patch16_224": "transformer",
    "swin_tiny_patch4_window7_224": "transformer",
    "convnext_atto": "layernorm-cnn",
    "resnet18": "batchnorm-cnn",
    "mobilenetv3_small_050": "batchnorm-cnn",
    "regnetx_002": "batchnorm-cnn",
    "tf_efficientnet_lite0": "batchnorm-cnn",
}


@pytest.fixture(scope="module")
def backbones() -> dict[str, object]:
    return {n: load_backbone(n, weights="random") for n in FAMILY_OF}


@pytest.mark.parametrize("name", list(FAMILY_OF))
def test_family_and_every_tap(name: str, backbones: dict[str, object]) -> None:
    bb = backbones[name]
    assert bb.family.name == FAMILY_OF[name]  # type: ignore[attr-defined]
    assert family_of_name(name) is FAMILIES[FAMILY_OF[name]]  # the meta-device build agrees
    x = torch.randn(2, *bb.data_config["input_size"])  # type: ignore[attr-defined]
    taps = bb.layers  # type: ignore[attr-defined]
    assert taps[0] == "stem" and taps[-2:] == ["pre_logits", "logits"]
    assert sum(t.startswith("stage") for t in taps) >= 4
    outs = bb.forward_taps(x, taps)  # type: ignore[attr-defined]
    card = bb.card()  # type: ignore[attr-defined]
    for tap in taps:
        v = outs[tap]
        assert v.shape == (2, card.pooled_dim(tap, "avg")), tap
        assert torch.isfinite(v).all(), tap
    # a map keeps its channels first at every tap: Swin's N, H, W, C stages are turned
    for t in card.tap_info():
        if len(t.spatial) == 2:
            assert t.spatial[0] == t.spatial[1] and t.spatial[0] < 224, (t.name, t.spatial)


def test_token_poolings_read_the_class_and_patch_tokens(backbones: dict[str, object]) -> None:
    bb = backbones["deit_tiny_distilled_patch16_224"]  # 2 prefix tokens: class + distillation
    assert bb.prefix_tokens == 2  # type: ignore[attr-defined]
    x = torch.randn(2, 3, 224, 224)
    raw = bb.forward_taps(x, ["stage3"], pool=None)["stage3"]  # type: ignore[attr-defined]
    assert raw.shape == (2, 198, 192)
    got = {
        p: bb.forward_taps(x, ["stage3", "pre_logits"], pool=p)  # type: ignore[attr-defined]
        for p in ("token", "patch", "token_patch", "avg")
    }
    torch.testing.assert_close(got["token"]["stage3"], raw[:, 0])
    torch.testing.assert_close(got["patch"]["stage3"], raw[:, 2:].mean(1))
    torch.testing.assert_close(
        got["token_patch"]["stage3"], torch.cat([raw[:, 0], raw[:, 2:].mean(1)], 1)
    )
    torch.testing.assert_close(got["avg"]["stage3"], raw.mean(1))  # every token
    # pre_logits: a token pooling reads the final normed tokens; the default the model's own
    assert got["token_patch"]["pre_logits"].shape == (2, 384)
    assert bb.card().pooled_dim("pre_logits", "token_patch") == 384  # type: ignore[attr-defined]
    assert not torch.allclose(got["patch"]["pre_logits"], got["avg"]["pre_logits"])


def test_token_pooling_without_a_class_token_is_a_clear_error(
    backbones: dict[str, object],
) -> None:
    x = torch.randn(1, 3, 224, 224)
    with pytest.raises(InvalidParameterError, match=r"needs a class token.*stage2"):
        backbones["convnext_atto"].forward_taps(x, ["stage2"], pool="token")  # type: ignore[attr-defined]
    with pytest.raises(InvalidParameterError, match="stem has none"):
        backbones["vit_tiny_patch16_224"].forward_taps(x, ["stem"], pool="token")  # type: ignore[attr-defined]
    # `patch` on a map is its average
    m = torch.randn(2, 5, 3, 3)
    torch.testing.assert_close(pool_features(m, "patch"), m.mean((2, 3)))


@pytest.mark.parametrize(
    "name,pool",
    [
        ("vit_tiny_patch16_224", "token_patch"),
        ("swin_tiny_patch4_window7_224", "avg"),
        ("convnext_atto", "avgmax"),
        ("mobilenetv3_small_050", "avg"),
        ("regnetx_002", "avg"),
    ],
)
def test_onnx_export_of_every_family_matches_pytorch(
    name: str, pool: str, backbones: dict[str, object], tmp_path: Path
) -> None:
    bb = backbones[name]
    layers = [t for t in bb.layers if t not in ("logits",)]  # type: ignore[attr-defined]
    if pool == "token_patch":
        layers = [t for t in layers if t != "stem"]  # the patch embedding has no class token
    ort = OnnxTaps(bb, layers, pool, tmp_path)  # type: ignore[arg-type]
    x = torch.randn(2, *bb.data_config["input_size"])  # type: ignore[attr-defined]
    want = bb.forward_taps(x, layers, pool)  # type: ignore[attr-defined]
    got = ort(x)
    for tap in layers:
        assert got[tap].shape == want[tap].shape
        assert float((got[tap] - want[tap]).abs().max()) < 1e-4, tap


@pytest.mark.network
def test_pretrained_dinov2_from_the_hub_separates_real_classes() -> None:
    """With internet: DINOv2 ViT-S/14 from the hub, its class token + patch mean features of
    hymenoptera's ants and bees far apart. Skipped (with the reason) where the hub is out of
    reach, as on this project's machines."""
    from transferlab.exceptions import WeightsNotFoundError
    from transferlab.features import FeatureExtractor

    shared = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "hymenoptera"
    if not shared.is_dir():
        pytest.skip(f"{shared} not found")
    import socket

    try:  # a closed network answers at once; the hub client would retry for a minute
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError as e:
        pytest.skip(f"needs the Hugging Face hub, out of reach here ({e})")
    try:
        bb = load_backbone("vit_small_patch14_dinov2.lvd142m", weights="hub")
    except WeightsNotFoundError as e:
        pytest.skip(f"needs the Hugging Face hub: {e}")
    paths = {c: sorted((shared / "train" / c).glob("*.jpg"))[:8] for c in ("ants", "bees")}
    fx = FeatureExtractor(bb, pool="token_patch", cache=False, progress=False)
    a, b = (fx.transform([str(p) for p in paths[c]]) for c in ("ants", "bees"))
    assert a.shape == (8, 768)
    within = float(np.linalg.norm(a - a.mean(0), axis=1).mean())
    between = float(np.linalg.norm(a.mean(0) - b.mean(0)))
    assert between > 0.3 * within
