"""edge_xmr: on-device text<->image retrieval, retrieve fast with a bi-encoder, rerank smart with a
cross-encoder that shares its weights.

The runtime imports numpy, onnxruntime and sqlite-vec only; training/export live behind extras.
"""

__version__ = "0.1.0"

# Public runtime names, imported on first use so that ``import edge_xmr`` stays light
# (no apsw, onnxruntime or torch until a name below is touched).
_LAZY = {
    "EdgeXmrError": "edge_xmr.errors",
    "IndexFileError": "edge_xmr.index.db",
    "Library": "edge_xmr.index.library",
    "LibraryError": "edge_xmr.index.library",
    "ModelMismatchError": "edge_xmr.index.library",
    "Hit": "edge_xmr.search",
    "TextHit": "edge_xmr.search",
    "IndexOptions": "edge_xmr.indexer",
    "IndexReport": "edge_xmr.indexer",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edge_xmr' has no attribute {name!r}")
