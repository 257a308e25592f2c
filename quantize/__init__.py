"""Smaller and cheaper models, with an accuracy gate.

- :mod:`quantize.gate`: compare a candidate bundle with a reference bundle on labelled photos
  (torch-free: numpy + onnxruntime through :class:`edge_xmr.bundle.Bundle`);
- :mod:`quantize.variants`: add quantized graph variants to a bundle, with their measured accuracy
  in the manifest (needs the ``[export]`` extra: onnx);
- :mod:`quantize.static_int8`: static QDQ int8 calibrated on real photos (MatMul/Gemm/Conv only);
- :mod:`quantize.distill`: a smaller shared-weight student trained to match a teacher (needs torch).

Nothing heavy is imported here: ``import quantize`` stays torch-free.
"""

from __future__ import annotations
