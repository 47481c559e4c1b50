"""A saved fine-tuned model predicts what the tuner validated: one TTA prediction step serves
both (`transferlab.finetune.predict_batch`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.finetune._data import FAST, make_data
from transferlab.data import load_dataset
from transferlab.finetune import FinetuneConfig, FineTuner, predict_batch
from transferlab.models import FinetunedModel, load_model


@pytest.mark.parametrize("tta", [False, True], ids=["plain", "tta"])
def test_saved_finetuned_model_predicts_what_the_tuner_validated(tmp_path, tta):
    ds = load_dataset(make_data(tmp_path / "data"))
    cfg = FinetuneConfig(**FAST, epochs=1, tta=tta, wise="off", head_init="random")
    tuner = FineTuner(cfg, progress=False)
    tuner.fit(ds.train, ds.val, ds.classes)
    val_proba, val_y = tuner.predict_proba_loader(tuner.loaders_["val"])

    model = FinetunedModel.from_tuner(tuner, progress=False)
    assert model.tta is tta
    model.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model", device="cpu", progress=False)
    assert isinstance(loaded, FinetunedModel) and loaded.tta is tta
    paths = [s.path for s in ds.val]
    for m in (model, loaded):
        proba, index, errors = m.predict_proba_paths(paths, calibrated=False)
        assert errors == {} and index.tolist() == list(range(len(paths)))
        np.testing.assert_allclose(proba, val_proba, atol=1e-5)
    labels = [ds.classes.index(s.label) for s in ds.val]
    assert val_y.tolist() == labels
    # the one prediction step: with TTA, the mean of the image's and its mirror's probabilities
    x = next(iter(tuner.loaders_["val"]))[0]
    net, dev = tuner.backbone_.model.eval(), tuner.backbone_.device
    plain = predict_batch(net, x, device=dev)
    mirrored = predict_batch(net, torch.flip(x, dims=[3]), device=dev)
    expected = (plain + mirrored) / 2 if tta else plain
    np.testing.assert_allclose(predict_batch(net, x, device=dev, tta=tta), expected, atol=1e-6)
    np.testing.assert_allclose(val_proba[: len(x)], expected, atol=1e-6)
