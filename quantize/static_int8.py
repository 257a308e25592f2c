"""Static int8 (QDQ) graphs calibrated on real photos and captions (onnxruntime's static quantizer).

Only MatMul / Gemm / Conv with constant weights are quantized (per output channel), with activation
ranges measured on calibration inputs: quantizing every op wrecked a text tower in the team's
measurements (cosine 0.32: the attention-mask constant was quantized). ``MatMulConstBOnly`` keeps the
attention products (activation x activation) and so the whole mask path in float. The graphs stay
standard ONNX (QuantizeLinear / DequantizeLinear pairs) that onnxruntime fuses into int8 kernels.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

OP_TYPES: tuple[str, ...] = ("MatMul", "Gemm", "Conv")
KEEP_FLOAT = r"/fc2/"  # MatMul/Gemm node names left in float: the feed-forward output layers, whose input
# (after GELU) has heavy-tailed activations. Measured (text encoder of a lite-half student, 100 Flickr8k
# dev captions): embedding cosine vs fp32 0.9821 quantizing every MatMul, 0.9934 keeping fc2 float
MIN_CONV_ELEMENTS = 4096  # smaller Conv weights stay float, and so do depthwise convs (group > 1):
# per-tensor activation ranges do not fit them. Measured (EfficientNet-Lite0 tower, 64 dev photos):
# image-embedding cosine 0.942 with the depthwise convs quantized, 0.9983 without them and the small ones


class _Reader:
    """onnxruntime ``CalibrationDataReader`` over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = feeds
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def calibration_feeds(graph: str, ids: np.ndarray, mask: np.ndarray, pixels: np.ndarray, embeds: np.ndarray,
                      tokens: np.ndarray, batch: int = 16, n_candidates: int = 16,
                      encode_text: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
                      ) -> list[dict[str, np.ndarray]]:
    """Inputs of ``graph`` for calibration: caption batches, photo batches, and for the cross-encoder
    one caption (its fp32 text-encoder outputs from ``encode_text(ids, mask) -> (text_embeds,
    text_states)``) against ``n_candidates`` photos (fp32 outputs of the image encoder on the
    calibration photos: ``embeds`` (N, D), ``tokens`` (N, T, Dt)). Every feed of a graph has the same
    shapes (captions padded to the longest one, whole batches only): the histogram calibrators need it."""
    feeds: list[dict[str, np.ndarray]] = []
    L = max(1, int(mask.sum(1).max())) if len(mask) else 1
    if graph == "text_encoder":
        for i in range(0, max(1, len(ids) - batch + 1), batch):
            feeds.append({"input_ids": ids[i:i + batch, :L], "attention_mask": mask[i:i + batch, :L]})
    elif graph == "image_encoder":
        feeds = [{"pixel_values": pixels[i:i + batch]} for i in range(0, max(1, len(pixels) - batch + 1), batch)]
    elif graph == "cross_encoder":
        if encode_text is None:
            raise ValueError("calibrating the cross-encoder needs encode_text (the fp32 text encoder)")
        rng = np.random.default_rng(0)
        for q in range(min(len(ids), 32)):
            c = np.sort(rng.choice(len(embeds), size=min(n_candidates, len(embeds)), replace=False))
            emb, states = encode_text(ids[q:q + 1, :L], mask[q:q + 1, :L])
            feeds.append({"text_states": states, "attention_mask": mask[q:q + 1, :L], "text_embeds": emb,
                          "image_tokens": tokens[c], "image_embeds": embeds[c]})
    else:
        raise ValueError(f"unknown graph {graph!r}")
    return feeds


def quantize_static_qdq(src: str | Path, dst: str | Path, feeds: list[dict[str, np.ndarray]],
                        op_types: tuple[str, ...] = OP_TYPES, method: str = "minmax",
                        keep_float: str | None = KEEP_FLOAT, int8_storage: bool = True) -> dict[str, Any]:
    """Write a static QDQ int8 version of ``src`` (external data allowed) to ``dst`` (self-contained).

    Args:
        src: fp32 ONNX graph.
        dst: output graph.
        feeds: calibration inputs (see :func:`calibration_feeds`).
        op_types: the only op types quantized.
        method: activation range calibration, ``"minmax"`` or ``"percentile"`` (99.999th).
        keep_float: regex of MatMul/Gemm node names left in float compute (None: none).
        int8_storage: then store what static QDQ leaves in float as int8, with float compute
            (``mobile_export.quantize_int8`` with no dynamic ops): the token / position tables as int8
            rows, the ``keep_float`` MatMul weights and the unquantized conv weights per channel.

    Returns:
        ``{"op_types", "calibration", "quantize_linear_nodes", "float_nodes", "calibration_batches"}``.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    cal = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "fp32.onnx"
        model = onnx.load(str(src))
        onnx.save(model, str(plain))  # self-contained copy (shared weights inlined)
        excluded = float_nodes(model, keep_float)
        extra: dict[str, Any] = {"MatMulConstBOnly": True, "ActivationSymmetric": False, "WeightSymmetric": True}
        if method == "percentile":
            extra["CalibPercentile"] = 99.999
        quantize_static(str(plain), str(dst), _Reader(feeds), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(op_types), per_channel=True, reduce_range=True,  # no int16 saturation on any ISA
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=cal, nodes_to_exclude=excluded, extra_options=extra)
        storage: dict[str, Any] = {}
        if int8_storage:
            from mobile_export.quantize_int8 import quantize_int8

            qdq = Path(tmp) / "qdq.onnx"
            shutil.move(str(dst), qdq)
            storage = quantize_int8(qdq, dst, op_types=(), weight_only=keep_float, embeddings=True, conv_weights=True)
    n_q = sum(1 for n in onnx.load(str(dst)).graph.node if n.op_type == "QuantizeLinear")
    return {"op_types": list(op_types), "calibration": method, "quantize_linear_nodes": n_q,
            "float_compute_nodes": len(excluded), "calibration_batches": len(feeds),
            "int8_storage": {"weight_only_matmul": storage.get("weight_only_matmul", 0),
                             "int8_gather": storage.get("int8_gather", []), "int8_conv": storage.get("int8_conv", 0)}}


def float_nodes(model: Any, keep_float: str | None) -> list[str]:
    """Nodes the static quantizer must leave in float: MatMul/Gemm matching ``keep_float``, depthwise
    convs and convs with fewer than ``MIN_CONV_ELEMENTS`` weights."""
    import re

    inits = {t.name: t for t in model.graph.initializer}
    out = []
    rx = re.compile(keep_float) if keep_float else None
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm") and rx is not None and rx.search(n.name):
            out.append(n.name)
        elif n.op_type == "Conv":
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            w = inits.get(n.input[1]) if len(n.input) > 1 else None
            if group > 1 or w is None or int(np.prod(w.dims)) < MIN_CONV_ELEMENTS:
                out.append(n.name)
    return out
