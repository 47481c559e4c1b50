"""The loop's callbacks: MixUp, the weight average (EMA on timm's ModelEmaV3), the events."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.finetune._data import FAST, make_data
from transferlab.data import load_dataset
from transferlab.finetune import Callback, FinetuneConfig, FineTuner


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path / "data")


def test_mixup_trains_on_blended_pairs_and_stays_deterministic(data):
    """mixup > 0 changes what the network is trained on (blended images, two-label loss), still
    learns, and two runs with one seed match step for step (so --resume stays exact)."""
    ds = load_dataset(data)

    def run(mixup: float) -> list[float]:
        cfg = FinetuneConfig(**FAST, epochs=3, lr=5e-3, head_init="random", mixup=mixup)
        result = FineTuner(cfg, progress=False).fit(ds.train, ds.val, ds.classes)
        return [h["train_loss"] for h in result.history]

    plain, mixed, again = run(0.0), run(0.4), run(0.4)
    assert mixed == again
    assert mixed != plain
    assert all(np.isfinite(mixed)) and mixed[-1] < mixed[0]


def test_ema_validates_and_keeps_the_bias_corrected_weight_average(data):
    """With ``ema`` the weights validated after each epoch, and kept at the end, are the
    bias-corrected exponential average of the weights after every optimiser step (recomputed
    here from the trajectory), not the last step's weights."""
    ds = load_dataset(data)
    decay = 0.8

    class Trajectory(Callback):
        def __init__(self) -> None:
            self.steps: list[dict[str, torch.Tensor]] = []
            self.epoch_ends: list[int] = []

        def after_batch(self, tuner):
            state = tuner.backbone_.model.state_dict()
            self.steps.append({k: v.detach().clone() for k, v in state.items()})

        def after_epoch(self, tuner):
            self.epoch_ends.append(len(self.steps))

    traj = Trajectory()
    cfg = FinetuneConfig(
        **FAST, epochs=2, freeze_epochs=1, lr=5e-3, head_init="random", ema=decay, wise="off"
    )
    tuner = FineTuner(cfg, callbacks=[traj], progress=False)
    result = tuner.fit(ds.train, ds.val, ds.classes)
    averages, avg = [], None
    for t, state in enumerate(traj.steps, start=1):
        w = (1 - decay) / (1 - decay**t)
        avg = {k: v.clone() if avg is None else avg[k] + w * (v - avg[k]) for k, v in state.items()}
        if t in traj.epoch_ends:
            averages.append(avg)
    kept = tuner.backbone_.model.state_dict()
    expected = averages[result.best_epoch - 1]
    moved = [k for k in expected if not torch.equal(traj.steps[-1][k], traj.steps[0][k])]
    assert moved  # the run trained something, so the average differs from the last step
    for k in moved:
        torch.testing.assert_close(kept[k], expected[k], rtol=1e-4, atol=1e-6, msg=k)
    assert any(not torch.allclose(kept[k], traj.steps[-1][k]) for k in moved)


def _reference_ema(states: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    """The weight average as transferlab computed it before it used timm's ModelEmaV3: one
    `torch._foreach_lerp_` per step with the bias-corrected weight, integer buffers copied."""
    ema = {k: v.clone() for k, v in states[0].items()}
    for t, state in enumerate(states, start=1):
        weight = (1 - decay) / (1 - decay**t)
        keys = [k for k, v in ema.items() if v.is_floating_point()]
        torch._foreach_lerp_([ema[k] for k in keys], [state[k] for k in keys], weight)
        for k, v in ema.items():
            if not v.is_floating_point():
                v.copy_(state[k])
    return ema


def test_ema_callback_on_timm_model_ema_matches_the_bias_corrected_average():
    """The EMA callback runs timm's `ModelEmaV3` with the bias-corrected decay: on a short run it
    gives the average computed by hand (floats to 1e-6, BatchNorm's step counter exactly), which
    none of ModelEmaV3's own schedules does (its warmup starts as a plain mean)."""
    from types import SimpleNamespace

    from timm.utils import ModelEmaV3

    from transferlab.finetune import EMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tuner = SimpleNamespace(backbone_=SimpleNamespace(model=model))
    decay = 0.9
    cb = EMA(decay)
    cb.before_fit(tuner)
    warmup = ModelEmaV3(model, decay=decay, use_warmup=True, warmup_power=1.0)
    states = []
    for step in range(1, 13):
        loss = model(torch.randn(16, 4)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        cb.after_step(tuner)
        warmup.update(model, step=step)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    expected = _reference_ema(states, decay)
    got = cb.ema.module.state_dict()
    assert cb.steps == 12
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=1e-6, atol=1e-7, msg=k)
    assert int(got["1.num_batches_tracked"]) == 12
    w = warmup.module.state_dict()
    assert not torch.allclose(w["0.weight"], expected["0.weight"], atol=1e-4)
    # and it round-trips through a checkpoint's "ema"/"ema_steps" (the keys last.pt always had)
    again = EMA(decay)
    again.before_fit(SimpleNamespace(backbone_=SimpleNamespace(model=model)))
    again.load_state_dict({"ema": {k: v.clone() for k, v in expected.items()}, "ema_steps": 12})
    assert again.steps == 12 and set(cb.state_dict()) == {"ema", "ema_steps"}
    for k, v in expected.items():
        torch.testing.assert_close(again.ema.module.state_dict()[k], v, rtol=0, atol=0, msg=k)


def test_events_run_in_order_and_built_in_callbacks_come_from_the_config(data):
    """One epoch's events in the documented order, and the config's MixUp, EMA, early stopping
    and WiSE as callbacks beside the caller's (ordered by `order`)."""
    from transferlab.finetune import EMA, EarlyStopping, MixUp, WiSE

    ds = load_dataset(data)
    events: list[str] = []

    class Record(Callback):
        def __getattribute__(self, name):
            attr = object.__getattribute__(self, name)
            if name.startswith(("before_", "after_")):
                events.append(name)
            return attr

    cfg = FinetuneConfig(**FAST, epochs=1, mixup=0.2, ema=0.9, early_stopping=2, wise=0.5)
    tuner = FineTuner(cfg, callbacks=[Record()], progress=False)
    tuner.fit(ds.train, ds.val, ds.classes)
    kinds = [type(cb) for cb in tuner.cbs_]
    assert kinds == [MixUp, EMA, WiSE, type(tuner.callbacks[0]), EarlyStopping]
    steps = len(tuner.loaders_["train"])
    per_batch = ["before_batch", "after_loss", "after_step", "after_batch"]
    assert events == [
        "before_fit",
        "before_epoch",
        *per_batch * steps,
        "before_validate",
        "after_validate",
        "after_epoch",
        "after_fit",
    ]
    assert tuner.result_.wise_alpha == 0.5 and set(tuner.result_.wise_scores) == {"0.5"}
