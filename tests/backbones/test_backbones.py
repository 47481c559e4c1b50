"""Backbones: registry, packaged weights (real ImageNet predictions), taps, preprocessing."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from transferlab.backbones import (
    get_backbone_spec,
    list_backbones,
    load_backbone,
    pool_features,
)
from transferlab.exceptions import (
    InvalidParameterError,
    UnknownBackboneError,
    UnknownLayerError,
    WeightsNotFoundError,
)

IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0():
    return load_backbone("efficientnet_lite0")


def test_registry_lists_packaged_lites():
    assert list_backbones("efficientnet_lite*") == [
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
    ]
    assert list_backbones(pretrained_only=True) == list_backbones("efficientnet_lite*")
    spec = get_backbone_spec("efficientnet_lite1")
    assert spec.timm_name == "tf_efficientnet_lite1"
    assert spec.offline


def test_any_timm_name_is_accepted_with_hub_weights():
    spec = get_backbone_spec("resnet18")
    assert spec.timm_name == "resnet18" and spec.weights == "hub" and not spec.offline


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(UnknownBackboneError, match="efficientnet_lite0") as exc:
        get_backbone_spec("efficientnet_lite00")
    assert isinstance(exc.value, ValueError)
    suggestions = str(exc.value).split("Did you mean: ")[1].split("?")[0].split(", ")
    assert "efficientnet_lite0" in suggestions
    assert len(suggestions) == len(set(suggestions))  # close matches are not repeated


def test_packaged_lite0_recognises_chelsea_as_a_cat(lite0):
    from skimage import data

    x = lite0.transform()(Image.fromarray(data.chelsea())).unsqueeze(0)
    logits = lite0.forward_taps(x, ["logits"])["logits"]
    top = int(logits.argmax())
    assert top in IMAGENET_CATS, f"predicted ImageNet class {top}"
    assert float(logits.softmax(-1)[0, sorted(IMAGENET_CATS)].sum()) > 0.5


@pytest.mark.parametrize(
    ("name", "size"), [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)]
)
def test_lite1_lite2_load_packaged_weights_and_own_preprocessing(name, size):
    from skimage import data

    bb = load_backbone(name)
    assert bb.weights_source == "package"
    assert bb.data_config["input_size"] == [3, size, size]
    assert bb.data_config["mean"] == [0.5, 0.5, 0.5]
    x = bb.transform()(Image.fromarray(data.chelsea())).unsqueeze(0)
    assert x.shape == (1, 3, size, size)
    assert int(bb.forward_taps(x, ["logits"])["logits"].argmax()) in IMAGENET_CATS


def test_taps_in_order_with_dimensions(lite0):
    info = lite0.tap_info()
    names = [t.name for t in info]
    assert names == ["stem"] + [f"stage{i}" for i in range(1, 8)] + ["pre_logits", "logits"]
    dims = {t.name: t.dim for t in info}
    assert dims["stem"] == 32 and dims["stage7"] == 320
    assert dims["pre_logits"] == 1280 and dims["logits"] == 1000
    spatial = {t.name: t.spatial for t in info}
    assert spatial["stem"] == (112, 112) and spatial["stage7"] == (7, 7)


def test_forward_taps_match_timm_embedding(lite0):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    outs = lite0.forward_taps(x, ["stage3", "pre_logits"])
    assert outs["stage3"].shape == (2, 40)
    with torch.inference_mode():
        ref = lite0.model.forward_head(lite0.model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(outs["pre_logits"], ref)


def test_early_tap_alone_equals_the_same_tap_read_with_the_head(lite0):
    x = torch.randn(1, 3, 224, 224)
    alone = lite0.forward_taps(x, ["stage2"])["stage2"]
    together = lite0.forward_taps(x, ["stage2", "logits"])["stage2"]
    torch.testing.assert_close(alone, together)


def test_unknown_layer_lists_layers(lite0):
    with pytest.raises(UnknownLayerError, match="stage1, stage2"):
        lite0.check_layer("stage9")


def test_pooling_modes():
    t = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert pool_features(t, "avg").shape == (2, 3)
    torch.testing.assert_close(pool_features(t, "max"), t.amax(dim=(2, 3)))
    assert pool_features(t, "avgmax").shape == (2, 6)
    with pytest.raises(InvalidParameterError, match="pool must be one of"):
        pool_features(t, "median")


def test_weights_from_local_file_and_digest(tmp_path, lite0):
    path = tmp_path / "lite0.pth"
    torch.save({k: v.clone() for k, v in lite0.model.state_dict().items()}, path)
    bb = load_backbone("efficientnet_lite0", weights=str(path))
    assert bb.weights_source.startswith("file:")
    assert bb.weights_sha256 == lite0.weights_sha256
    rnd = load_backbone("efficientnet_lite0", weights="random")
    assert rnd.weights_sha256 != lite0.weights_sha256
    assert (
        load_backbone("efficientnet_lite0", weights="random").weights_sha256 == rnd.weights_sha256
    )


def test_bad_weights_are_clear_errors(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="not a file"):
        load_backbone("efficientnet_lite0", weights=str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsNotFoundError, match=r"junk\.pth"):
        load_backbone("efficientnet_lite0", weights=str(junk))
    other = tmp_path / "other.pth"
    torch.save(load_backbone("test_resnet", weights="random").model.state_dict(), other)
    with pytest.raises(WeightsNotFoundError, match="do not fit"):
        load_backbone("efficientnet_lite0", weights=str(other))


def test_hub_download_failure_is_explained(monkeypatch):
    import timm

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsNotFoundError, match="--weights"):
        load_backbone("resnet18", weights="hub")


def test_generic_timm_model_taps():
    bb = load_backbone("test_resnet", weights="random")
    assert bb.layers == ["stem", "stage1", "stage2", "stage3", "stage4", "pre_logits", "logits"]
    x = torch.randn(1, 3, 160, 160)
    assert bb.forward_taps(x, ["stage4"])["stage4"].shape == (1, bb.tap_info()[4].dim)


def test_stem_listed_as_a_feature_level_is_not_a_stage():
    """RegNet's feature_info starts with its stem: the taps still number the stages 1..4 after
    the stem (stage k is the model's k-th stage, layer group k in fine-tuning), so the stem and
    stage1 are different outputs."""
    from transferlab.finetune import layer_groups

    bb = load_backbone("regnety_002", weights="random")
    assert bb.layers == ["stem", "stage1", "stage2", "stage3", "stage4", "pre_logits", "logits"]
    out = bb.forward_taps(torch.randn(1, 3, 64, 64), ["stem", "stage1", "stage4"])
    assert out["stem"].shape[1] != out["stage1"].shape[1]
    groups = layer_groups(bb.model)
    for k in range(1, 5):
        assert groups[k][1][0].startswith(f"s{k}.")


def test_device_validation():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the error path cannot be exercised")
    with pytest.raises(InvalidParameterError, match="CUDA is not available"):
        load_backbone("test_resnet", weights="random", device="cuda")


def test_transform_is_the_data_eval_transform_and_timms(lite0):
    """`Backbone.transform()` is `transferlab.data.eval_transform` at the input size, which is
    what it was before: timm's `create_transform` on the backbone's whole data config."""
    import timm.data
    from skimage import data

    from transferlab.data import eval_transform

    img = Image.fromarray(data.coffee())
    ref = timm.data.create_transform(**lite0.data_config, is_training=False)(img)
    assert torch.equal(lite0.transform()(img), ref)
    assert torch.equal(eval_transform(lite0, 224)(img), ref)


def test_lite0_taps_are_timms_forward_intermediates(lite0):
    """Why the hooks are no loss for lite0: timm's `forward_intermediates` (every block) gives
    the same stem and stage tensors (see `Backbone.forward_taps` for why the hooks stay)."""
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    taps = lite0.forward_taps(
        x, [la for la in lite0.layers if la.startswith(("stem", "stage"))], None
    )
    with torch.inference_mode():
        inter = lite0.model.forward_intermediates(
            x, indices=list(range(len(taps))), intermediates_only=True, extra_blocks=True
        )
    assert len(inter) == len(taps) == 8
    for (name, ours), theirs in zip(taps.items(), inter, strict=True):
        assert torch.equal(ours, theirs), name
