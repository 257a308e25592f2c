"""ONNX rewrites that make a fixed-shape graph fit for a phone's accelerator (the mobile variants).

- ``fold_static_shapes``: Shape of a tensor whose shape is static becomes a constant, and the small
  integer arithmetic on it (Gather / Slice / Concat / Unsqueeze / Cast ...) is folded, so no Shape op
  is left where every shape is fixed (the exporter keeps ``flatten``'s Shape even then);
- ``decompose_layernorm``: LayerNormalization -> ReduceMean, Sub, Mul, Add, Sqrt, Div;
- ``decompose_erf``: Erf -> Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7) with Max, Mul, Add, Div, Exp.

NNAPI has neither LayerNormalization nor Erf; CoreML takes every op used here. The CPU graphs keep
the native ops (onnxruntime fuses them into faster kernels); every rewritten graph is compared with
the model by the export's parity check.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

_FOLDABLE = {"Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Mul", "Add", "Sub", "Div",
             "Reshape", "Identity", "Equal", "Where", "ConstantOfShape", "Expand", "Range"}
_MAX_FOLD = 4096  # elements: only small (shape-like) results are folded into constants
# Abramowitz & Stegun 7.1.26: erf(u) = 1 - (a1 t + ... + a5 t^5) exp(-u^2), t = 1 / (1 + p u), u >= 0
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _const(graph: onnx.GraphProto, name: str, value: np.ndarray) -> str:
    graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    out: dict[str, list[int]] = {}
    for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        dims = v.type.tensor_type.shape.dim
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape") and \
                all(d.HasField("dim_value") for d in dims):
            out[v.name] = [d.dim_value for d in dims]
    return out


def fold_static_shapes(model: onnx.ModelProto) -> int:
    """Replace Shape nodes of statically shaped tensors by constants and fold the small integer
    arithmetic they feed; returns how many nodes were removed."""
    g = model.graph
    removed = 0
    while True:
        shapes = _static_shapes(model)
        consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        folded = []
        outputs = {o.name for o in g.output}
        for n in (n for n in g.node if not outputs & set(n.output)):  # topological order: a folded output can feed a later node of the same sweep
            values = _fold(n, shapes, consts, model.opset_import)
            if values is not None:
                consts.update(zip(n.output, values))
                folded.append((n, values))
        for n, values in folded:
            for o, v in zip(n.output, values):
                _const(g, o, v)
            g.node.remove(n)
        removed += len(folded)
        if not folded:
            return removed


def _fold(n: onnx.NodeProto, shapes: dict[str, list[int]], consts: dict[str, np.ndarray],
          opsets: object) -> list[np.ndarray] | None:
    """The outputs of node ``n`` when they are known without running the graph (else None)."""
    from onnx.reference import ReferenceEvaluator

    if n.op_type == "Shape" and n.input[0] in shapes:
        dims = shapes[n.input[0]]
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        return [np.asarray(dims[attrs.get("start", 0):attrs.get("end", len(dims))], np.int64)]
    if n.op_type not in _FOLDABLE or not n.input or not all(i in consts for i in n.input if i):
        return None
    feeds = {i: consts[i] for i in n.input if i}
    if any(f.size > _MAX_FOLD for f in feeds.values()):
        return None
    sub = helper.make_graph([n], "fold", [], [helper.make_tensor_value_info(o, 0, None) for o in n.output],
                            initializer=[numpy_helper.from_array(v, k) for k, v in feeds.items()])
    res = [np.asarray(r) for r in ReferenceEvaluator(helper.make_model(sub, opset_imports=opsets)).run(None, {})]
    return res if all(r.size <= _MAX_FOLD for r in res) else None


def _replace(graph: onnx.GraphProto, old: onnx.NodeProto, new: list[onnx.NodeProto]) -> None:
    i = list(graph.node).index(old)
    graph.node.remove(old)
    for k, n in enumerate(new):
        graph.node.insert(i + k, n)


def decompose_layernorm(model: onnx.ModelProto) -> int:
    """LayerNormalization over the last axis -> y = (x - mean) / sqrt(mean((x - mean)²) + eps) * scale + bias.
    Returns how many nodes were rewritten."""
    g, count = model.graph, 0
    for n in [n for n in g.node if n.op_type == "LayerNormalization"]:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if attrs.get("axis", -1) != -1 or len(n.output) > 1 and any(n.output[1:]):
            continue
        p = f"{n.name or n.output[0]}/ln"
        x, scale = n.input[0], n.input[1]
        eps = _const(g, f"{p}/eps", np.asarray(attrs.get("epsilon", 1e-5), np.float32))
        y = f"{p}/normed" if len(n.input) > 2 and n.input[2] else n.output[0]
        nodes = [
            helper.make_node("ReduceMean", [x], [f"{p}/mean"], axes=[-1], keepdims=1),
            helper.make_node("Sub", [x, f"{p}/mean"], [f"{p}/d"]),
            helper.make_node("Mul", [f"{p}/d", f"{p}/d"], [f"{p}/d2"]),
            helper.make_node("ReduceMean", [f"{p}/d2"], [f"{p}/var"], axes=[-1], keepdims=1),
            helper.make_node("Add", [f"{p}/var", eps], [f"{p}/var_eps"]),
            helper.make_node("Sqrt", [f"{p}/var_eps"], [f"{p}/std"]),
            helper.make_node("Div", [f"{p}/d", f"{p}/std"], [f"{p}/z"]),
            helper.make_node("Mul", [f"{p}/z", scale], [y]),
        ]
        if y != n.output[0]:
            nodes.append(helper.make_node("Add", [y, n.input[2]], [n.output[0]]))
        _replace(g, n, nodes)
        count += 1
    return count


def decompose_erf(model: onnx.ModelProto) -> int:
    """Erf(u) -> E(|u|) · u / max(|u|, 1e-6) with E the A&S 7.1.26 polynomial (|u| = max(u, -u): CoreML
    has no Abs, NNAPI no Sign). Near 0 the quotient replaces sign(u) with an error below 2e-6 · |u|.
    Returns how many nodes were rewritten."""
    g, count = model.graph, 0
    for n in [n for n in g.node if n.op_type == "Erf"]:
        p = f"{n.name or n.output[0]}/erf"
        c = {k: _const(g, f"{p}/{k}", np.asarray(v, np.float32))
             for k, v in (("m1", -1.0), ("one", 1.0), ("p", _AS_P), ("tiny", 1e-6),
                          *((f"a{i}", a) for i, a in enumerate(_AS_A, 1)))}
        u = n.input[0]
        nodes = [
            helper.make_node("Mul", [u, c["m1"]], [f"{p}/neg"]),
            helper.make_node("Max", [u, f"{p}/neg"], [f"{p}/abs"]),
            helper.make_node("Mul", [f"{p}/abs", c["p"]], [f"{p}/pu"]),
            helper.make_node("Add", [f"{p}/pu", c["one"]], [f"{p}/den"]),
            helper.make_node("Div", [c["one"], f"{p}/den"], [f"{p}/t"]),
        ]
        acc = c["a5"]  # Horner: ((((a5 t + a4) t + a3) t + a2) t + a1) t
        for i in (4, 3, 2, 1):
            nodes += [helper.make_node("Mul", [acc, f"{p}/t"], [f"{p}/h{i}m"]),
                      helper.make_node("Add", [f"{p}/h{i}m", c[f"a{i}"]], [f"{p}/h{i}"])]
            acc = f"{p}/h{i}"
        nodes += [
            helper.make_node("Mul", [acc, f"{p}/t"], [f"{p}/poly"]),
            helper.make_node("Mul", [u, f"{p}/neg"], [f"{p}/negsq"]),
            helper.make_node("Exp", [f"{p}/negsq"], [f"{p}/gauss"]),
            helper.make_node("Mul", [f"{p}/poly", f"{p}/gauss"], [f"{p}/tail"]),
            helper.make_node("Sub", [c["one"], f"{p}/tail"], [f"{p}/e"]),
            helper.make_node("Max", [f"{p}/abs", c["tiny"]], [f"{p}/absc"]),
            helper.make_node("Div", [u, f"{p}/absc"], [f"{p}/sign"]),
            helper.make_node("Mul", [f"{p}/e", f"{p}/sign"], [n.output[0]]),
        ]
        _replace(g, n, nodes)
        count += 1
    return count


def mobile_rewrite(model: onnx.ModelProto) -> dict[str, int]:
    """Every rewrite of this module, in order; returns the counts."""
    return {"shape_nodes_folded": fold_static_shapes(model), "layernorm_decomposed": decompose_layernorm(model),
            "erf_decomposed": decompose_erf(model)}
