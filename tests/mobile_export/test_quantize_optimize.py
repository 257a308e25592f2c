"""int8 quantization and transformer fusion of single graphs (tiny model)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from mobile_export import parity
from mobile_export.onnx_export import export_onnx
from mobile_export.optimize import fuse_transformer, fusion_speedup
from mobile_export.quantize_int8 import quantize_int8
from mobile_export.specs import GRAPHS


@pytest.fixture(scope="module")
def tiny_graphs(_tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("graphs")
    return {g: export_onnx(_tiny_model, spec, d / f"{g}.onnx") for g, spec in GRAPHS.items()}


def test_no_identity_renames_left(tiny_graphs):
    m = onnx.load(str(tiny_graphs["cross_encoder"]))
    inits = {t.name for t in m.graph.initializer}
    assert not [n for n in m.graph.node if n.op_type == "Identity" and n.input[0] in inits]


def test_dynamic_int8(tiny_graphs, tmp_path, _tiny_model):
    t = quantize_int8(tiny_graphs["text_encoder"], tmp_path / "t.onnx")
    assert t["dynamic_ops"]["MatMulInteger"] > 0 and t["int8_gather"]  # the token table is int8 rows
    r = quantize_int8(tiny_graphs["cross_encoder"], tmp_path / "c.onnx")
    assert r["dynamic_ops"]["MatMulInteger"] > 0
    m = onnx.load(str(tmp_path / "c.onnx"))
    assert not [n for n in m.graph.node if n.op_type == "MatMul"
                and n.input[1] in {t.name for t in m.graph.initializer}]  # every weight MatMul quantized
    d = parity.onnx_vs_onnx(GRAPHS["cross_encoder"], _tiny_model.cfg, tiny_graphs["cross_encoder"], tmp_path / "c.onnx")
    assert d["min_cosine"] > 0.99


def test_weight_only_is_batch_independent(tiny_graphs, tmp_path, _tiny_model):
    r = quantize_int8(tiny_graphs["image_encoder"], tmp_path / "i.onnx", weight_only=".")
    assert r["weight_only_matmul"] == 3 and not r["dynamic_ops"]
    s = parity.session(tmp_path / "i.onnx")
    px = GRAPHS["image_encoder"].dummy(_tiny_model.cfg, {"batch": 4}, np.random.default_rng(0))["pixel_values"]
    batch = s.run(None, {"pixel_values": px})[0]
    single = np.concatenate([s.run(None, {"pixel_values": px[i:i + 1]})[0] for i in range(4)])
    assert np.abs(batch - single).max() < 1e-5


def test_fusion_keeps_parity(tiny_graphs, tmp_path, _tiny_model):
    ops = fuse_transformer(tiny_graphs["text_encoder"], tmp_path / "f.onnx", 4, 32)
    assert ops.get("SkipLayerNormalization", 0) > 0
    assert parity.torch_vs_onnx(_tiny_model, GRAPHS["text_encoder"], tmp_path / "f.onnx")["ok"]
    feeds = GRAPHS["text_encoder"].dummy(_tiny_model.cfg, {"batch": 2, "length": 5}, np.random.default_rng(0))
    s = fusion_speedup(tiny_graphs["text_encoder"], tmp_path / "f.onnx", feeds, rounds=3)
    assert s["ms_plain"] > 0 and s["ms_fused"] > 0 and s["speedup"] > 0


def test_int8_leaves_the_views_resampling_in_float(tiny_graphs, tmp_path, _tiny_model):
    """The enlarged view's bicubic resampling (constant matrices on the left of MatMul) is not quantized,
    the tower's conv weights, which both views' passes share, are, and the int8 image graph with views
    stays as close to its fp32 graph as the plain one does."""
    import copy
    from dataclasses import replace

    import onnxruntime as ort
    from onnx import numpy_helper

    m = copy.deepcopy(_tiny_model)
    m.cfg = replace(m.cfg, views=((32, False), (40, True)))
    graphs = {"plain": tiny_graphs["image_encoder"],
              "views": export_onnx(m, GRAPHS["image_encoder"], tmp_path / "views.onnx")}
    px = np.random.default_rng(0).uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32)
    err, convs = {}, {}
    for k, src in graphs.items():
        q = tmp_path / f"{k}8.onnx"
        r = quantize_int8(src, q, weight_only=".")
        assert r["weight_only_matmul"] > 0
        convs[k] = r["int8_conv"]
        out = [ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": px})[0]
               for f in (src, q)]
        err[k] = float(np.abs(out[0] - out[1]).max())
    resample = [numpy_helper.to_array(a.t) for n in onnx.load(str(tmp_path / "views8.onnx")).graph.node
                if n.op_type == "Constant" for a in n.attribute if a.name == "value" and tuple(a.t.dims) == (40, 32)]
    assert resample and all(r.dtype == np.float32 for r in resample)
    assert convs["views"] == convs["plain"]  # conv weights that both views' towers share are int8 too
    assert err["views"] <= 2 * err["plain"] + 1e-3, err


def test_conv_weight_shared_by_two_convs_is_stored_int8_once(tmp_path):
    """An image graph with views of two sizes runs the tower twice on the same conv weights: they are
    stored as int8 once, and both convolutions read the dequantized weight."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 32, 3, 3)).astype(np.float32)  # 4608 elements: above MIN_ELEMENTS
    graph = helper.make_graph(
        [helper.make_node("Conv", ["a", "w"], ["ya"], name="conv_a", pads=[1, 1, 1, 1]),
         helper.make_node("Conv", ["b", "w"], ["yb"], name="conv_b", pads=[1, 1, 1, 1])],
        "shared", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 32, 6, 6]),
                   helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 32, 9, 9])],
        [helper.make_tensor_value_info("ya", TensorProto.FLOAT, [1, 16, 6, 6]),
         helper.make_tensor_value_info("yb", TensorProto.FLOAT, [1, 16, 9, 9])],
        initializer=[numpy_helper.from_array(w, "w")])
    src = tmp_path / "shared.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    r = quantize_int8(src, tmp_path / "q.onnx", op_types=(), embeddings=False)
    assert r["int8_conv"] == 1
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert [t.name for t in q.graph.initializer if t.data_type == TensorProto.INT8] == ["w_int8"]
    assert not [t for t in q.graph.initializer if t.name == "w"]
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    assert len({n.input[1] for n in convs}) == 1 and convs[0].input[1] != "w"
    feeds = {"a": rng.standard_normal((1, 32, 6, 6)).astype(np.float32),
             "b": rng.standard_normal((1, 32, 9, 9)).astype(np.float32)}
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    for x, y in zip(ref, got):
        assert np.abs(x - y).max() < 0.02 * np.abs(x).max()
