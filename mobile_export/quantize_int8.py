"""Int8 ONNX graphs: dynamic per-channel int8 MatMul/Gemm plus int8 weight storage for the rest.

- MatMul / Gemm with a constant weight: onnxruntime ``quantize_dynamic`` (int8 weights per output
  channel, activations quantized at run time). Static QDQ on every op wrecked a text tower in the
  team's measurements (cosine 0.32); dynamic MatMul/Gemm keeps cosine ~0.999.
  The weights use onnxruntime's reduced range, [-64, 64] (``reduce_range``): on x86 CPUs without
  VNNI (AVX2-only, or AVX-512 without VNNI) onnxruntime's u8s8 kernels add pairs of
  uint8 x int8 products in int16 (``vpmaddubsw``), which saturates once 2 * 255 * |w| > 32767; with
  |w| <= 64 it cannot, so the integer results are the same on every x86 ISA and on ARM (whose
  dot-product kernels accumulate in int32). bench/bench_int8_isa.py compares both ranges here and
  on an emulated AVX2 CPU (qemu -cpu Haswell); tests/quantize/test_int8_emulated_cpu.py keeps it so.
- Large Gather tables (token / position embeddings): int8 rows with one scale per row, read back with
  Gather -> Cast -> Mul (standard ops; exact per-row dequantisation of the rows looked up).
- Conv weights: int8 per output channel, turned back into float by Cast + Mul (weight-only: the
  convolution runs in float, activations are never quantized; onnxruntime folds the Cast + Mul when
  the session starts, so int8 storage costs no speed). Dynamic ConvInteger was measured at
  cosine 0.85 on real photos: never used.
- ``weight_only`` nodes: MatMul/Gemm kept in float compute with int8 weights (Cast + Mul, folded at
  session start like the conv weights). Dynamic quantization
  scales activations per tensor, i.e. over the whole batch, so results depend slightly on what
  else is in the batch; weight-only results do not (the image encoder uses it: a photo's stored
  embedding must not depend on its batch).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

DEFAULT_OPS: tuple[str, ...] = ("MatMul", "Gemm")
MIN_ELEMENTS = 4096  # smaller Gather / Conv weights stay float: the first, small convolutions of
# EfficientNet-Lite are the most sensitive (measured: image-embedding cosine on 100 real photos
# 0.9925 mean / 0.976 min with every conv int8, 0.9977 / 0.9956 keeping the < 4096-element ones)


def quantize_int8(src: str | Path, dst: str | Path, op_types: Sequence[str] = DEFAULT_OPS,
                  per_channel: bool = True, weight_only: str | None = None, embeddings: bool = True,
                  conv_weights: bool = True, reduce_range: bool = True) -> dict[str, Any]:
    """Write an int8 version of the ONNX graph ``src`` to ``dst``; returns what was quantized.

    Args:
        src: fp32 ONNX file (self-contained).
        dst: output ONNX file (self-contained).
        op_types: ops handed to onnxruntime's dynamic quantizer (constant weights only).
        per_channel: int8 scales per output channel (else per tensor) for those ops.
        weight_only: regex on node names; matching MatMul/Gemm nodes keep float compute with int8
            weights behind a DequantizeLinear instead of dynamic quantization (for sensitive layers).
        embeddings: store large Gather tables as int8 rows (one float scale per row).
        conv_weights: store Conv weights as int8 per output channel (weight-only).
        reduce_range: dynamic-quantize weights into [-64, 64] so that no CPU's integer kernel can
            saturate (see the module doc); False gives 8-bit weights whose results depend on the ISA.

    Returns:
        ``{"dynamic_ops": {op: count}, "int8_gather": [names], "int8_conv": count}``.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        mid = Path(tmp) / "dynamic.onnx"
        excluded = _matching_nodes(onnx.load(str(src), load_external_data=False), weight_only)
        if op_types:  # an empty list would mean "every op" to quantize_dynamic
            quantize_dynamic(str(src), str(mid), op_types_to_quantize=list(op_types), per_channel=per_channel,
                             reduce_range=reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                             extra_options={"MatMulConstBOnly": True})
        else:
            mid = src
        model = onnx.load(str(mid))
    report: dict[str, Any] = {"dynamic_ops": _count(model, ("MatMulInteger", "DynamicQuantizeMatMul",
                                                            "DynamicQuantizeLinear"))}
    report["weight_only_matmul"] = _matmul_weights_int8(model, set(excluded))
    report["int8_gather"] = _gather_rows_int8(model) if embeddings else []
    report["int8_conv"] = _conv_weights_int8(model) if conv_weights else 0
    report["int16_saturation_risk"] = saturation_risk(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return report


# Integer kernels that multiply uint8 activations by a constant int8 weight (input index of the weight
# and of its zero point): onnxruntime runs them on u8s8 kernels, which on x86 without VNNI saturate
# int16 pair sums unless |weight - zero point| <= SAFE_INT8_WEIGHT.
_INTEGER_MATMULS = {"MatMulInteger": (1, 3), "DynamicQuantizeMatMul": (1, 4), "MatMulIntegerToFloat": (1, 5),
                    "ConvInteger": (1, 3), "QLinearMatMul": (3, 5), "QLinearConv": (3, 5)}
SAFE_INT8_WEIGHT = 64  # 2 * 255 * 64 = 32640 <= 32767: a pair of u8 x s8 products fits int16


def saturation_risk(model: onnx.ModelProto) -> list[str]:
    """Names of the constant int8 weights of integer MatMul/Conv nodes (and of int8 weights that a
    DequantizeLinear turns into a MatMul/Gemm/Conv input, which onnxruntime fuses into such nodes)
    with some ``|w - zero_point| > SAFE_INT8_WEIGHT``: the ones whose results can depend on the CPU.
    Constant weights that are turned into float (Cast + Mul) run in float and are never at risk."""
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    weights: list[tuple[str, str | None, bool]] = []  # (weight, zero point, per-channel axis is 0)
    for node in model.graph.node:
        conv = "Conv" in node.op_type
        if node.op_type in _INTEGER_MATMULS:
            w, zp = _INTEGER_MATMULS[node.op_type]
            weights.append((node.input[w], _input(node, zp), conv))
        elif node.op_type in ("MatMul", "Gemm", "Conv"):
            for x in node.input[:2]:
                dq = producers.get(x)
                if dq is not None and dq.op_type == "DequantizeLinear":
                    weights.append((dq.input[0], _input(dq, 2), conv))
    risky: list[str] = []
    for w, zp, axis0 in weights:
        if w in risky or w not in inits or inits[w].data_type != onnx.TensorProto.INT8:
            continue  # a uint8 weight (u8u8 kernels do not saturate) or one computed at run time
        q = numpy_helper.to_array(inits[w]).astype(np.int32)
        z = numpy_helper.to_array(inits[zp]).astype(np.int32) if zp in inits else np.zeros((), np.int32)
        if z.ndim == 1 and (axis0 or z.shape[0] != q.shape[-1]):
            z = z.reshape((-1,) + (1,) * (q.ndim - 1))  # per channel along axis 0 (Conv, transposed Gemm)
        if np.abs(q - z).max(initial=0) > SAFE_INT8_WEIGHT:
            risky.append(w)
    return risky


def _input(node: onnx.NodeProto, i: int) -> str | None:
    """The node's i-th input name, None where it is absent or empty (an optional input left out)."""
    return node.input[i] if len(node.input) > i and node.input[i] else None


def _int8_weight(model: onnx.ModelProto, name: str, q: np.ndarray, scale: np.ndarray, axis: int,
                 before: onnx.NodeProto) -> str:
    """Add int8 weight ``q`` with per-channel ``scale`` along ``axis`` and the nodes that turn it back
    into float, ``Mul(Cast(q), scale)``, before node ``before``; returns the float tensor's name.

    Cast + Mul (rather than DequantizeLinear) on constants is folded by onnxruntime when the
    session starts: the graph then runs at fp32 speed from int8 storage (a DequantizeLinear is kept
    unfolded for QDQ fusions, so the weights would be dequantized on every run, 1.8x slower measured
    on the image encoder, and the convolutions could not pre-pack their weights).
    """
    shape = [1] * q.ndim
    shape[axis] = len(scale)
    model.graph.initializer.extend([numpy_helper.from_array(q, name + "_int8"),
                                    numpy_helper.from_array(scale.astype(np.float32).reshape(shape), name + "_scale")])
    pos = list(model.graph.node).index(before)
    model.graph.node.insert(pos, helper.make_node("Cast", [name + "_int8"], [name + "_f"], to=onnx.TensorProto.FLOAT,
                                                  name=name + "_cast"))
    model.graph.node.insert(pos + 1, helper.make_node("Mul", [name + "_f", name + "_scale"], [name + "_deq"],
                                                      name=name + "_dequant"))
    return name + "_deq"


def _matching_nodes(model: onnx.ModelProto, pattern: str | None) -> list[str]:
    if not pattern:
        return []
    rx = re.compile(pattern)
    names = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and rx.search(n.name)]
    # dynamic mode first rewrites Gemm as MatMul + Add, naming the MatMul "<gemm>_MatMul"
    return names + [n.name + "_MatMul" for n in model.graph.node if n.op_type == "Gemm" and n.name in names]


def _count(model: onnx.ModelProto, ops: Sequence[str]) -> dict[str, int]:
    out = {op: 0 for op in ops}
    for n in model.graph.node:
        if n.op_type in out:
            out[n.op_type] += 1
    return {k: v for k, v in out.items() if v}


def _float_inits(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}


def _users(model: onnx.ModelProto, name: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if name in n.input]


def _gather_rows_int8(model: onnx.ModelProto) -> list[str]:
    """Gather(table, idx) on a big float table -> Mul(Cast(Gather(table_q, idx)), Gather(scale, idx))."""
    inits = _float_inits(model)
    done: list[str] = []
    for name, t in list(inits.items()):
        users = _users(model, name)
        if (len(t.dims) != 2 or int(np.prod(t.dims)) < MIN_ELEMENTS or not users
                or any(u.op_type != "Gather" or u.input[0] != name
                       or any(a.name == "axis" and a.i != 0 for a in u.attribute) for u in users)):
            continue
        w = numpy_helper.to_array(t).astype(np.float32)  # (V, W)
        scale = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-12) / 127.0  # (V, 1)
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        model.graph.initializer.remove(t)
        model.graph.initializer.extend([numpy_helper.from_array(q, name + "_int8"),
                                        numpy_helper.from_array(scale.astype(np.float32), name + "_rowscale")])
        for u in users:
            out = u.output[0]
            u.input[0] = name + "_int8"
            u.output[0] = out + "_int8"
            idx = u.input[1]
            pos = list(model.graph.node).index(u) + 1
            model.graph.node.insert(pos, helper.make_node("Cast", [out + "_int8"], [out + "_f"],
                                                          to=onnx.TensorProto.FLOAT, name=u.name + "_cast"))
            model.graph.node.insert(pos + 1, helper.make_node("Gather", [name + "_rowscale", idx], [out + "_s"],
                                                              axis=0, name=u.name + "_scale"))
            model.graph.node.insert(pos + 2, helper.make_node("Mul", [out + "_f", out + "_s"], [out],
                                                              name=u.name + "_dequant"))
        done.append(name)
    return done


def _conv_weights_int8(model: onnx.ModelProto) -> int:
    """Conv weight W (O, I, kh, kw) -> int8 per output channel, back to float by Cast + Mul.

    A weight that several Conv nodes share (an image graph that runs its tower on views of two sizes)
    is quantized once; its float form is made before the first of them. Returns the weights done."""
    inits = _float_inits(model)
    n_done = 0
    for node in list(model.graph.node):
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        name = node.input[1]
        t = inits[name]
        users = _users(model, name)
        if int(np.prod(t.dims)) < MIN_ELEMENTS or any(u.op_type != "Conv" or list(u.input).index(name) != 1
                                                     for u in users):
            continue
        w = numpy_helper.to_array(t).astype(np.float32)
        scale = np.maximum(np.abs(w).reshape(w.shape[0], -1).max(axis=1), 1e-12) / 127.0  # (O,)
        q = np.clip(np.round(w / scale[:, None, None, None]), -127, 127).astype(np.int8)
        model.graph.initializer.remove(t)
        del inits[name]
        deq = _int8_weight(model, name, q, scale, axis=0, before=node)  # node: the first user in graph order
        for u in users:
            u.input[1] = deq
        n_done += 1
    return n_done


def _matmul_weights_int8(model: onnx.ModelProto, names: set[str]) -> int:
    """MatMul(x, B) / Gemm(x, B) with a constant B -> the same op on int8 B with one scale per output
    channel (B's columns; its rows for Gemm with transB=1), back to float by Cast + Mul.

    Only nodes in ``names``; a weight shared by several nodes is quantized once (same int8 tensor)."""
    inits = _float_inits(model)
    deq: dict[tuple[str, int], str] = {}
    n_done = 0
    for node in list(model.graph.node):
        if node.name not in names or node.op_type not in ("MatMul", "Gemm") or node.input[1] not in inits:
            continue
        name = node.input[1]
        if len(inits[name].dims) != 2:
            continue
        trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
        axis = 0 if trans_b else 1  # the output-channel axis of B
        if (name, axis) not in deq:
            w = numpy_helper.to_array(inits[name]).astype(np.float32)
            scale = np.maximum(np.abs(w).max(axis=1 - axis), 1e-12) / 127.0  # one per output channel
            q = np.clip(np.round(w / np.expand_dims(scale, 1 - axis)), -127, 127).astype(np.int8)
            first = next(n for n in model.graph.node if name in n.input)
            deq[(name, axis)] = _int8_weight(model, f"{name}_w{axis}", q, scale, axis=axis, before=first)
        node.input[1] = deq[(name, axis)]
        n_done += 1
    for name in {n for n, _ in deq}:
        if not _users(model, name):
            model.graph.initializer.remove(inits[name])
    return n_done
