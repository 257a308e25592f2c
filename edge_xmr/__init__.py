"""edge_xmr: on-device text<->image retrieval, retrieve fast with a bi-encoder, rerank smart with a
cross-encoder that shares its weights.

The runtime imports numpy, onnxruntime and sqlite-vec only; training/export live behind extras.
"""

__version__ = "0.1.0"
