"""PyTorch -> ONNX for one :class:`GraphSpec` (legacy TorchScript exporter, opset from the spec)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch

from .specs import GraphSpec

if TYPE_CHECKING:
    from edge_xmr.model import JointModel


def export_onnx(model: JointModel, spec: GraphSpec, path: str | Path, seed: int = 0,
                fixed: dict[str, int] | None = None) -> Path:
    """Export ``spec``'s graph (``spec.graph``) of ``model`` to ``path`` (one self-contained .onnx file).

    Traced at ``spec.export_sizes`` (every dynamic dim >= 2) with ``spec.dynamic_axes()``; with
    ``fixed`` (sizes of every dynamic dim), at those sizes with every shape static (the mobile variant).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = spec.graph(model).eval()
    feeds = spec.dummy(model.cfg, fixed or spec.export_sizes, np.random.default_rng(seed))
    args = tuple(torch.from_numpy(feeds[t.name]) for t in spec.inputs)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python values
        torch.onnx.export(
            module, args, str(path),
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs],
            dynamic_axes=None if fixed else spec.dynamic_axes(),
            opset_version=spec.opset,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(path))
    if fold_identities(model):
        onnx.save(model, str(path))
    return path


def fold_identities(model: onnx.ModelProto) -> int:
    """Drop ``Identity`` nodes that only rename an initializer (the exporter adds them when a weight is
    used twice, e.g. the cross-encoder's text blocks); consumers then see the weight itself, which
    the int8 quantizer needs. Returns how many were removed."""
    inits = {t.name for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    rename = {}
    for n in list(model.graph.node):
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs:
            rename[n.output[0]] = n.input[0]
            model.graph.node.remove(n)
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    return len(rename)
