"""Layer groups (stem, stages, classifier), freezing and discriminative learning rates."""

from __future__ import annotations

import pytest

from tests.finetune._data import FAST, make_data
from transferlab.data import load_dataset
from transferlab.finetune import FinetuneConfig, FineTuner, layer_groups


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path / "data")


def test_layer_groups_follow_the_network_order():
    import timm

    model = timm.create_model("tf_efficientnet_lite0", num_classes=3)
    groups = layer_groups(model)
    names = [g for g, _ in groups]
    assert names[0] == "stem" and names[-1] == "classifier"
    assert groups[-1][1] == ["classifier.weight", "classifier.bias"]
    assert any(p.startswith("conv_stem") for p in groups[0][1])
    flat = [p for _, ps in groups for p in ps]
    assert sorted(flat) == sorted(n for n, _ in model.named_parameters())  # each parameter once
    assert len(groups) >= 8  # stem, 7 stages (+ head conv), classifier


def test_freeze_to_and_discriminative_learning_rates(data):
    ds = load_dataset(data)
    tuner = FineTuner(FinetuneConfig(**FAST, lr=1e-2, lr_mult=100), progress=False)
    tuner._setup(ds.classes)
    tuner.freeze_to(-1)
    trainable = [n for n, p in tuner.backbone_.model.named_parameters() if p.requires_grad]
    assert trainable == tuner.groups_[-1][1]
    tuner.freeze_to(0)
    assert all(p.requires_grad for p in tuner.backbone_.model.parameters())
    _, max_lrs = tuner._optimizer(1e-2, 100)
    assert max(max_lrs) == pytest.approx(1e-2)
    assert min(max_lrs) == pytest.approx(1e-4)
    assert max_lrs == sorted(max_lrs)  # stem lowest ... classifier highest
