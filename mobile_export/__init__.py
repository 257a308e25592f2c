"""Export the joint model to a bundle (ONNX fp32/int8, ORT format, CoreML) with parity checks.

Needs the ``[export]`` extra (torch, onnx); CoreML also ``[coreml]``. The runtime side that reads a
bundle is :mod:`edge_xmr.bundle` (torch-free).
"""

from .api import ExportError, export_bundle
from .specs import GRAPHS, GraphSpec

__all__ = ["GRAPHS", "ExportError", "GraphSpec", "export_bundle"]
