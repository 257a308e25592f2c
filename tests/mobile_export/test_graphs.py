"""Accelerator-ready graphs: the forms of graphs.py, the ONNX rewrites and the mobile variants a bundle ships."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from mobile_export import parity
from mobile_export.mobile import export_mobile, usability
from mobile_export.rewrite import decompose_erf, decompose_layernorm, fold_static_shapes
from mobile_export.specs import GRAPHS

# ops onnxruntime's CoreML ML Program provider refuses (its checker's list) that the graphs used to have
REFUSED = {"Einsum", "Expand", "ReduceL2", "ReduceLogSumExp", "ConstantOfShape", "Equal", "Range"}


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("graph", list(GRAPHS))
def test_cpu_graphs_have_no_refused_ops(tiny_bundle, graph):
    assert not _ops(tiny_bundle / "onnx" / "fp32" / f"{graph}.onnx") & REFUSED


@pytest.mark.parametrize("graph", list(GRAPHS))
def test_mobile_variant_fits_coreml_and_nnapi(tiny_bundle, graph):
    """The shipped mobile variant: onnxruntime's checker says 'should perform well as is: YES' for CoreML
    ML Program and NNAPI (one partition, > 75% of nodes), and the manifest quotes that verdict."""
    info = json.loads((tiny_bundle / "manifest.json").read_text())["graphs"][graph]["variants"]["mobile/fp32"]
    path = tiny_bundle / info["path"]
    use = usability(path)
    assert use["dynamic_inputs"] == []
    for ep in ("CoreML_MLProgram", "NNAPI"):
        r = use[ep]["as_exported"]
        assert (r["suitability"], r["partitions"]) == ("YES", 1), (ep, r)
        assert info["accelerators"][ep].startswith("should perform well as is: YES")
    assert not _ops(path) & (REFUSED | {"LayerNormalization", "Erf", "Shape"})
    assert info["parity_vs_torch_max_abs_diff"] <= GRAPHS[graph].atol


@pytest.mark.parametrize("graph", list(GRAPHS))
def test_old_forms_fail_the_checker(_tiny_model, tmp_path, graph):
    """The same fixed shapes and rewrites applied to the model's own methods (the graphs before graphs.py)
    do not fit CoreML: the forms are what makes the difference."""
    spec = GRAPHS[graph]
    old = replace(spec, graph=spec.wrapper)
    export_mobile(_tiny_model, old, tmp_path / "old.onnx")
    export_mobile(_tiny_model, spec, tmp_path / "new.onnx")
    assert usability(tmp_path / "old.onnx")["CoreML_MLProgram"]["as_exported"]["suitability"] != "YES"
    assert usability(tmp_path / "new.onnx")["CoreML_MLProgram"]["as_exported"]["suitability"] == "YES"


@pytest.mark.parametrize("graph", list(GRAPHS))
def test_mobile_variant_pads_like_the_dynamic_graph(tiny_bundle, _tiny_model, graph):
    """A short input padded to the fixed sizes gives the dynamic graph's outputs, cut back."""
    spec = GRAPHS[graph]
    fixed = spec.fixed_sizes(_tiny_model.cfg)
    sizes = {d: max(1, v - 3) for d, v in fixed.items()}
    feeds = spec.dummy(_tiny_model.cfg, sizes, np.random.default_rng(5))
    dyn = parity.session(tiny_bundle / "onnx" / "fp32" / f"{graph}.onnx").run(None, feeds)
    mob = parity.session(tiny_bundle / "onnx" / "fp32" / f"{graph}.mobile.onnx").run(None, parity.pad_to(spec, feeds, fixed))
    for a, b in zip(dyn, parity.cut_to(spec, mob, sizes)):
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-5


def _single(op: str, inputs: list[np.ndarray], **attrs) -> onnx.ModelProto:
    names = [f"i{k}" for k in range(len(inputs))]
    g = helper.make_graph([helper.make_node(op, names, ["y"], **attrs)], "g",
                          [helper.make_tensor_value_info(names[0], onnx.TensorProto.FLOAT, list(inputs[0].shape))],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(x, n) for n, x in zip(names[1:], inputs[1:])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"i0": x})[0]


def test_decompose_erf_matches_erf():
    from math import erf

    x = np.concatenate([np.linspace(-6, 6, 2001), [0.0, 1e-8, -1e-8, 1e-5, -30.0, 30.0]]).astype(np.float32)
    m = _single("Erf", [x])
    assert decompose_erf(m) == 1 and "Erf" not in {n.op_type for n in m.graph.node}
    want = np.array([erf(float(v)) for v in x])
    assert np.abs(_run(m, x) - want).max() < 5e-7


def test_decompose_layernorm_matches_layernorm():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 5, 24)) * 4 + 2).astype(np.float32)
    scale, bias = rng.standard_normal(24).astype(np.float32), rng.standard_normal(24).astype(np.float32)
    m = _single("LayerNormalization", [x, scale, bias], axis=-1, epsilon=1e-5)
    ref = _run(m, x)
    assert decompose_layernorm(m) == 1 and "LayerNormalization" not in {n.op_type for n in m.graph.node}
    assert np.abs(_run(m, x) - ref).max() < 1e-5


def test_fold_static_shapes_removes_shape_of_static_tensors():
    x = np.zeros((2, 3, 4), np.float32)
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Slice", ["s", "zero", "two"], ["s2"]),
             helper.make_node("Concat", ["s2", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, 4])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(np.array([v], np.int64), n)
                                       for n, v in (("zero", 0), ("two", 2), ("minus1", -1))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert fold_static_shapes(m) == 3
    assert [n.op_type for n in m.graph.node] == ["Reshape"]
    import onnxruntime as ort

    out = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert out.shape == (2, 3, 4)
