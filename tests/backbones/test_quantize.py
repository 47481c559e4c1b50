"""INT8 static quantisation of the exported lite0 graph: high cosine to fp32 on real images, and the
fidelity check catches a broken graph."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests._helpers import shared_dataset
from transferlab.backbones import OnnxTaps, load_backbone
from transferlab.backbones._quantize import (
    FidelityReport,
    QuantizationResult,
    measure_fidelity,
    quantize_static_int8,
    resolve_keep_float,
)
from transferlab.data import list_images, load_image
from transferlab.exceptions import InvalidParameterError

QUANTIZE_PY = Path(__file__).resolve().parents[2] / "src/transferlab/backbones/_quantize.py"


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """lite0 pre_logits as a static-padding fp32 graph, and preprocessed hymenoptera images:
    16 train (calibration), 12 val (fidelity)."""
    root = shared_dataset("hymenoptera")
    bb = load_backbone("efficientnet_lite0")
    tf = bb.transform()

    def images(split: str, n: int) -> np.ndarray:
        files = []
        for cls in ("ants", "bees"):
            files += list_images(root / split / cls)[0][: n // 2]
        return np.stack([tf(load_image(f)).numpy() for f in files])

    # the export the fp32 engine runs: static padding, pads folded into the convs
    path = OnnxTaps(bb, ["pre_logits"], "avg", tmp_path_factory.mktemp("int8")).path
    return path, images("train", 16), images("val", 12)


def _batches(x: np.ndarray, bs: int = 8):
    return [x[i : i + bs] for i in range(0, len(x), bs)]


def test_int8_features_stay_close_to_fp32_on_real_images(graphs, tmp_path):
    fp32, train, val = graphs
    res = quantize_static_int8(fp32, tmp_path / "int8.onnx", _batches(train))
    assert isinstance(res, QuantizationResult)
    assert res.calibration_images == 16
    assert res.per_channel and res.quantized_nodes > 40  # the convs after the float start
    assert len(res.kept_float) > 9  # the default keeps lite0's stem and blocks 0-1 in float
    ops = Counter(n.op_type for n in onnx.load(res.int8_path).graph.node)
    assert ops["DequantizeLinear"] > 50
    fid = measure_fidelity(fp32, res.int8_path, _batches(val), threads=1)
    assert isinstance(fid, FidelityReport)
    assert fid.images == 12 and fid.cosines["pre_logits"].shape == (12,)
    # the full benchmark (256 calibration images) gives ~0.995; 16 images still give > 0.98
    assert fid.mean_cosine["pre_logits"] > 0.98, fid
    assert fid.min_cosine["pre_logits"] > 0.95, fid
    assert fid.to_dict()["mean_cosine"]["pre_logits"] == fid.worst_mean_cosine


def test_fidelity_catches_a_broken_int8_graph(graphs, tmp_path):
    """Calibrated on blank images, every activation range is wrong: the check must say so."""
    fp32, _, val = graphs
    blank = np.zeros((8, 3, 224, 224), np.float32)
    res = quantize_static_int8(fp32, tmp_path / "bad.onnx", [blank], method="minmax")
    fid = measure_fidelity(fp32, res.int8_path, _batches(val), threads=1)
    assert fid.mean_cosine["pre_logits"] < 0.9, fid


def test_keep_float_leaves_the_named_nodes_unquantised(graphs, tmp_path):
    fp32, train, _ = graphs
    model = onnx.load(fp32)
    first = resolve_keep_float(model, ["first_conv"])
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert first == convs[:1]
    head = resolve_keep_float(model, ["first_convs:3"])
    assert head[0] == model.graph.node[0].name and head[-1] == convs[2]  # input through conv 3
    assert set(convs[:3]) <= set(head) and convs[3] not in head
    res = quantize_static_int8(
        fp32,
        tmp_path / "keep.onnx",
        _batches(train[:8]),
        method="minmax",
        keep_float=["first_conv"],
    )
    assert res.kept_float == tuple(first)
    q = onnx.load(res.int8_path)
    conv = next(n for n in q.graph.node if n.name == first[0])
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    assert producers.get(conv.input[1]) != "DequantizeLinear"  # its weights stayed float


def test_bad_options_are_refused(graphs, tmp_path):
    fp32, train, _ = graphs
    with pytest.raises(InvalidParameterError, match="method must be one of"):
        quantize_static_int8(fp32, tmp_path / "x.onnx", _batches(train), method="kl")
    with pytest.raises(InvalidParameterError, match="no images"):
        quantize_static_int8(fp32, tmp_path / "x.onnx", [])
    with pytest.raises(InvalidParameterError, match="not 'first_conv'"):
        resolve_keep_float(onnx.load(fp32), ["no_such_node"])
    assert not os.path.exists(tmp_path / "x.onnx")


def test_module_imports_neither_torch_nor_timm():
    """It runs in torch-free processes: loaded on its own, it must not pull torch in."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('q', {str(QUANTIZE_PY)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['q'] = m\n"
        "spec.loader.exec_module(m)\n"
        "bad = [k for k in ('torch', 'timm') if k in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
