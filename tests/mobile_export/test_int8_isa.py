"""int8 results that do not depend on the CPU: the u8s8 kernels of onnxruntime on x86 without VNNI
(AVX2-only, AVX-512 without VNNI) add pairs of uint8 x int8 products in int16 (``vpmaddubsw``), which
saturates unless |w| <= 64. An oracle of that kernel in numpy, the graphs' weights against it, and
the export check that keeps it so. (tests/quantize/test_int8_emulated_cpu.py runs a real AVX2
kernel under CPU emulation.)"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from mobile_export.quantize_int8 import SAFE_INT8_WEIGHT, quantize_int8, saturation_risk


def _u8s8_pairwise_int16(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What ``vpmaddubsw`` + ``vpmaddwd`` compute: uint8 a (M, K) times int8 b (K, N), the products of
    each pair of k summed and saturated to int16, the pairs accumulated in int32."""
    k = a.shape[1] - a.shape[1] % 2
    prod = a[:, None, :k].astype(np.int32) * b.T[None, :, :k].astype(np.int32)  # (M, N, K)
    pairs = np.clip(prod[..., 0::2] + prod[..., 1::2], -32768, 32767)
    return pairs.sum(-1)


def _one_matmul(tmp_path, w: np.ndarray) -> str:
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, w.shape[0]])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, w.shape[1]])],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = str(tmp_path / "f.onnx")
    onnx.save(m, path)
    return path


def _int8_weights(path) -> np.ndarray:
    m = onnx.load(str(path))
    node = next(n for n in m.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul"))
    return numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == node.input[1]))


def test_kernel_oracle_saturates_only_beyond_64():
    """The oracle itself: exact for |w| <= 64 with every uint8 activation at its worst, not beyond."""
    b = np.array([[64, -64, 65], [64, -64, 65]], np.int8)  # (K=2, N=3)
    a = np.full((1, 2), 255, np.uint8)
    exact = a.astype(np.int32) @ b.astype(np.int32)
    got = _u8s8_pairwise_int16(a, b)
    assert got[0, 0] == exact[0, 0] == 32640 and got[0, 1] == exact[0, 1] == -32640
    assert exact[0, 2] == 33150 and got[0, 2] == 32767  # saturated


@pytest.mark.parametrize("reduce_range", [True, False])
def test_dynamic_int8_weights_against_the_kernel(tmp_path, reduce_range):
    """Weights as the export quantizes them, worst-case activations (255 wherever w > 0): the reduced
    range gives the exact integer product on a non-VNNI kernel, the full range does not; and
    ``saturation_risk`` (the export's check) tells the two apart."""
    w = np.random.default_rng(0).normal(0, 1, (64, 16)).astype(np.float32)
    dst = tmp_path / "q.onnx"
    report = quantize_int8(_one_matmul(tmp_path, w), dst, reduce_range=reduce_range)
    q = _int8_weights(dst)
    a = np.where(q.T > 0, 255, 0).astype(np.uint8)  # (N, K): row n maximises column n's pair sums
    exact = a.astype(np.int32) @ q.astype(np.int32)
    same = np.array_equal(_u8s8_pairwise_int16(a, q), exact)
    assert same == reduce_range
    assert (np.abs(q.astype(np.int32)).max() <= SAFE_INT8_WEIGHT) == reduce_range
    assert bool(report["int16_saturation_risk"]) != reduce_range
    assert bool(saturation_risk(onnx.load(str(dst)))) != reduce_range


def test_exported_int8_graphs_cannot_saturate(tiny_bundle, export_report):
    """Every graph of an exported int8 bundle: no integer kernel weight beyond 64, and the export's
    check says so (it would fail the export otherwise)."""
    for g in ("text_encoder", "image_encoder", "cross_encoder"):
        m = onnx.load(str(tiny_bundle / "onnx" / "int8" / f"{g}.onnx"))
        assert saturation_risk(m) == [], g
    assert export_report["checks"]["int8_no_saturation"]
    assert export_report["parity_int8"]["cpu"]["machine"]


def test_int8_figures_name_the_cpu_they_were_measured_on(tiny_bundle, export_report):
    """Each int8 graph's figures in the manifest carry the CPU (ISA features) they come from."""
    import json

    from mobile_export import parity

    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    here = parity.cpu_isa()
    for g in ("text_encoder", "image_encoder", "cross_encoder"):
        int8 = manifest["graphs"][g]["variants"]["onnx/int8"]
        assert int8["measured_on"] == export_report["parity_int8"]["cpu"], g
        assert int8["measured_on"]["features"] == here["features"], g


def test_saturation_risk_sees_static_qdq_weights():
    """A QDQ weight (int8 initializer -> DequantizeLinear -> MatMul), which onnxruntime fuses into an
    integer kernel, is checked too; an int8 weight that is only cast to float is not at risk."""
    q = numpy_helper.from_array(np.array([[100, -3], [1, 2]], np.int8), "wq")
    s = numpy_helper.from_array(np.array(0.1, np.float32), "ws")
    z = numpy_helper.from_array(np.array(0, np.int8), "wz")
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("Cast", ["wq"], ["wf"], to=onnx.TensorProto.FLOAT),
             helper.make_node("MatMul", ["y", "wf"], ["y2"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y2", onnx.TensorProto.FLOAT, [1, 2])], [q, s, z])
    assert saturation_risk(helper.make_model(g)) == ["wq"]
