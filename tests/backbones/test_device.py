"""The one device and "auto" precision rule, with both callers' behaviour reachable."""

from __future__ import annotations

import pytest
import torch

from transferlab.backbones import PRECISIONS, resolve_device, use_bf16
from transferlab.exceptions import InvalidParameterError

CPU = torch.device("cpu")


def test_explicit_precisions_mean_what_they_say():
    for cpu in (True, False):
        assert use_bf16("bf16", CPU, cpu=cpu)
        assert not use_bf16("fp32", CPU, cpu=cpu)


def test_auto_on_cpu_follows_native_bf16_for_training_and_stays_fp32_for_extraction():
    """finetune.use_bf16's rule (cpu=True) and FeatureExtractor._precision's (cpu=False)."""
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert use_bf16("auto", CPU) is native
    assert use_bf16("auto", CPU, cpu=False) is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_on_a_gpu_follows_its_bf16_support():
    gpu = torch.device("cuda")
    for cpu in (True, False):
        assert use_bf16("auto", gpu, cpu=cpu) is bool(torch.cuda.is_bf16_supported())


def test_unknown_precision_names_the_accepted_values():
    assert PRECISIONS == ("auto", "fp32", "bf16")
    with pytest.raises(InvalidParameterError, match="precision must be one of auto, fp32, bf16"):
        use_bf16("fp16", CPU)


def test_resolve_device():
    assert resolve_device("cpu") == CPU
    assert resolve_device(CPU) is CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InvalidParameterError, match="device must be"):
        resolve_device("tpu:x")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidParameterError, match="CUDA is not available"):
            resolve_device("cuda")
