"""CPU bf16 training keeps depthwise convolutions in fp32 (issue 17: their bf16 backward is what
made plain bf16 autocast slower than fp32), and that leaves the model untouched and resumable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.finetune._data import FAST, make_data
from transferlab.data import load_dataset
from transferlab.finetune import Callback, FinetuneConfig, FineTuner
from transferlab.finetune._precision import depthwise_convs, fp32_depthwise


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 1),  # pointwise: bf16 under autocast
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: kept fp32
        nn.Conv2d(8, 4, 1),
    )


def _dtypes(net: nn.Module, x: torch.Tensor) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    hooks = [m.register_forward_hook(lambda m, a, o: seen.append(o.dtype)) for m in net]
    net(x).float().sum().backward()
    for h in hooks:
        h.remove()
    return seen


def test_depthwise_convs_run_in_fp32_under_bf16_autocast_and_only_inside():
    net, x = _net(), torch.randn(2, 3, 8, 8)
    assert depthwise_convs(net) == [net[1]]
    with torch.autocast("cpu", torch.bfloat16), fp32_depthwise(net, "cpu", enabled=True) as n:
        inside = _dtypes(net, x)
    assert n == 1
    assert inside == [torch.bfloat16, torch.float32, torch.bfloat16]
    assert net[1].weight.grad is not None and net[1].weight.grad.dtype == torch.float32
    # the hooks are gone on exit: plain autocast again, and the weights were never cast
    with torch.autocast("cpu", torch.bfloat16):
        assert _dtypes(net, x) == [torch.bfloat16] * 3
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert not net[1]._forward_pre_hooks and not net[1]._forward_hooks
    with torch.autocast("cpu", torch.bfloat16), fp32_depthwise(net, "cpu", enabled=False) as n:
        assert n == 0 and _dtypes(net, x) == [torch.bfloat16] * 3


class _SeeDtypes(Callback):
    """Records the depthwise convolutions' output dtypes in the first training batch."""

    def __init__(self) -> None:
        self.dtypes: set[torch.dtype] = set()

    def before_batch(self, tuner):
        if not self.dtypes:
            convs = depthwise_convs(tuner.backbone_.model)
            hooks = [c.register_forward_hook(self._see) for c in convs]
            self._hooks = hooks

    def _see(self, module, args, out):
        self.dtypes.add(out.dtype)

    def after_loss(self, tuner):
        for h in getattr(self, "_hooks", []):
            h.remove()
        self._hooks = []


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path / "data")


TINY_EFFNET = {**FAST, "backbone": "test_efficientnet"}


def test_bf16_fine_tune_keeps_depthwise_fp32_and_resumes_exactly(data, tmp_path):
    """A bf16 run of a network with depthwise convolutions: those run in fp32, the model keeps
    no hooks afterwards, and an interrupted run resumed from last.pt matches the full run."""
    ds = load_dataset(data)
    cfg = FinetuneConfig(**TINY_EFFNET, epochs=2, head_init="random", precision="bf16")
    seen = _SeeDtypes()
    full = FineTuner(cfg, callbacks=[seen], progress=False)
    full.fit(ds.train, ds.val, ds.classes, checkpoint_dir=tmp_path / "full")
    assert full.result_.precision == "bf16" and full.fp32_depthwise_
    assert seen.dtypes == {torch.float32}
    convs = depthwise_convs(full.backbone_.model)
    assert convs and not any(c._forward_pre_hooks for c in convs)

    class Stop(Callback):
        def after_epoch(self, tuner):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        FineTuner(cfg, callbacks=[Stop()], progress=False).fit(
            ds.train, ds.val, ds.classes, checkpoint_dir=tmp_path / "resumed"
        )
    resumed = FineTuner(cfg, progress=False)
    resumed.fit(ds.train, ds.val, ds.classes, checkpoint_dir=tmp_path / "resumed", resume=True)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    for (k, a), (_, b) in zip(
        full.backbone_.model.state_dict().items(),
        resumed.backbone_.model.state_dict().items(),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_fp32_precision_leaves_autocast_off(data):
    ds = load_dataset(data)
    cfg = FinetuneConfig(**TINY_EFFNET, epochs=1, head_init="random", precision="fp32")
    tuner = FineTuner(cfg, progress=False)
    assert tuner.fit(ds.train, ds.val, ds.classes).precision == "fp32"
    assert not tuner.fp32_depthwise_
