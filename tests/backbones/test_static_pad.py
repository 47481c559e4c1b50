"""static_padding: TF-"same" pads fixed for one input size, same outputs, a graph without pad arithmetic."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from transferlab.backbones import _TapGraph, load_backbone
from transferlab.backbones._static_pad import (
    fold_pads_into_convs,
    same_padding_layers,
    simplify_onnx,
    static_padding,
)
from transferlab.exceptions import InvalidParameterError

PAD_ARITHMETIC = {"Shape", "Gather", "Ceil", "Div", "Sub", "Concat", "Slice", "ConstantOfShape"}


@pytest.fixture(scope="module")
def lite0():
    return load_backbone("efficientnet_lite0")


def _export(bb, path: Path) -> None:
    graph = _TapGraph(bb, ["stage3", "pre_logits"], "avg").eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (torch.zeros(2, 3, 224, 224),),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["stage3", "pre_logits"],
            dynamic_axes={"image": {0: "batch"}},
            opset_version=17,
        )


@pytest.mark.parametrize("size", [224, 240])
def test_outputs_equal_the_dynamic_padding_at_that_size(lite0, size):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    ref = lite0.forward_taps(x, ["stem", "stage2", "pre_logits"])
    with static_padding(lite0.model, (3, size, size)) as pads:
        out = lite0.forward_taps(x, ["stem", "stage2", "pre_logits"])
    assert set(pads) == set(same_padding_layers(lite0.model))  # all five strided TF-same convs
    for name in ref:
        torch.testing.assert_close(out[name], ref[name], atol=1e-5, rtol=0)


def test_pads_are_tf_same_and_everything_is_restored(lite0):
    layers = same_padding_layers(lite0.model)
    assert len(layers) == 5
    state = {k: v.clone() for k, v in lite0.model.state_dict().items()}
    with static_padding(lite0.model, (3, 224, 224)) as pads:
        # TF "same" for stride 2: the extra row/column goes after (bottom/right)
        assert pads["conv_stem"] == (0, 1, 0, 1)  # 3x3, 224 -> 112
        assert pads["blocks.2.0.conv_dw"] == (1, 2, 1, 2)  # 5x5 on 56 -> 28
        assert all("forward" in vars(m) for m in layers.values())
        with pytest.raises(InvalidParameterError, match="224x224"):
            lite0.model(torch.zeros(1, 3, 200, 200))
    assert not any("forward" in vars(m) for m in layers.values())
    assert lite0.model.state_dict().keys() == state.keys()
    lite0.model(torch.zeros(1, 3, 200, 200))  # any size works again


def test_restored_on_error(lite0):
    with pytest.raises(RuntimeError, match="boom"), static_padding(lite0.model, (224, 224)):
        raise RuntimeError("boom")
    assert not any("forward" in vars(m) for m in same_padding_layers(lite0.model).values())


def test_model_without_same_layers_passes_through():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    with static_padding(model, (3, 16, 16)) as pads:
        assert pads == {}


def test_bad_input_size_is_refused(lite0):
    with (
        pytest.raises(InvalidParameterError, match="input_size"),
        static_padding(lite0.model, (224,)),
    ):
        pass


def test_exported_graph_has_no_pad_arithmetic_and_matches(lite0, tmp_path):
    lite0.model.to(memory_format=torch.contiguous_format)
    try:
        _export(lite0, tmp_path / "dynamic.onnx")
        with static_padding(lite0.model, (3, 224, 224)):
            _export(lite0, tmp_path / "static.onnx")
    finally:
        lite0.model.to(memory_format=torch.channels_last)
    folded = simplify_onnx(tmp_path / "static.onnx")
    assert folded == 5
    ops = Counter(n.op_type for n in onnx.load(tmp_path / "static.onnx").graph.node)
    dyn_ops = Counter(n.op_type for n in onnx.load(tmp_path / "dynamic.onnx").graph.node)
    assert dyn_ops["Shape"] >= 5  # what the dynamic export carries
    assert not PAD_ARITHMETIC & set(ops), ops
    assert "Pad" not in ops
    assert ops["Conv"] == dyn_ops["Conv"]

    x = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
    ref = lite0.forward_taps(torch.from_numpy(x), ["stage3", "pre_logits"])
    sess = ort.InferenceSession(str(tmp_path / "static.onnx"), providers=["CPUExecutionProvider"])
    for name, out in zip(["stage3", "pre_logits"], sess.run(None, {"image": x}), strict=True):
        np.testing.assert_allclose(out, ref[name].numpy(), atol=1e-4, rtol=0)


def _pad_conv_graph(value: float) -> onnx.ModelProto:
    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((2, 1, 3, 3)).astype(np.float32), "w"
    )
    pads = numpy_helper.from_array(np.array([0, 0, 0, 1, 0, 0, 1, 2], dtype=np.int64), "pads")
    val = numpy_helper.from_array(np.array(value, dtype=np.float32), "val")
    nodes = [
        helper.make_node("Pad", ["x", "pads", "val"], ["xp"], mode="constant"),
        helper.make_node("Conv", ["xp", "w"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w, pads, val],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_zero_pad_folds_into_conv_with_the_same_result():
    x = np.random.default_rng(1).standard_normal((1, 1, 9, 9)).astype(np.float32)
    model = _pad_conv_graph(0.0)
    ref = _run(model, x)
    assert fold_pads_into_convs(model) == 1
    (conv,) = model.graph.node
    assert list(helper.get_attribute_value(conv.attribute[-1])) == [1, 2, 2, 3]
    np.testing.assert_allclose(_run(model, x), ref, atol=1e-6)


def test_non_zero_pad_is_left_alone():
    model = _pad_conv_graph(1.0)
    assert fold_pads_into_convs(model) == 0
    assert [n.op_type for n in model.graph.node] == ["Pad", "Conv"]
