"""edge_xmr: on-device text<->image retrieval, retrieve fast with a bi-encoder, rerank smart with a
cross-encoder that shares its weights.

The runtime imports numpy, onnxruntime and sqlite-vec only; training/export live behind extras.
The public names below are typed (``py.typed``; the imports under ``TYPE_CHECKING`` are what type
checkers see) and imported on first use, so ``import edge_xmr`` stays light (no apsw, onnxruntime
or torch until a name is touched). Every error edge_xmr raises on purpose is an ``EdgeXmrError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .assets import Asset as Asset
    from .assets import SyncReport as SyncReport
    from .bundle import BundleError as BundleError
    from .data import DataError as DataError
    from .demo import DemoError as DemoError
    from .discovery import NoBundleError as NoBundleError
    from .errors import EdgeXmrError as EdgeXmrError
    from .index.db import IndexFileError as IndexFileError
    from .index.library import LibraryError as LibraryError
    from .index.library import ModelMismatchError as ModelMismatchError
    from .index.library import Stats as Stats
    from .index.schema import SchemaError as SchemaError
    from .indexer import IndexOptions as IndexOptions
    from .indexer import IndexReport as IndexReport
    from .indexer import Progress as Progress
    from .library import Library as Library
    from .preprocess import ImageError as ImageError
    from .preprocess import ImageReadError as ImageReadError
    from .providers import ProviderError as ProviderError
    from .ray_index import RayIndexError as RayIndexError
    from .ray_index import RayOptions as RayOptions
    from .score import ScoreConfigError as ScoreConfigError
    from .search import Hit as Hit
    from .search import QueryError as QueryError
    from .search import TextHit as TextHit
    from .server import ServeError as ServeError

# name -> module, imported on first use (keep in step with the imports above: tests/test_api_types.py)
_LAZY = {
    "Asset": "edge_xmr.assets",
    "SyncReport": "edge_xmr.assets",
    "BundleError": "edge_xmr.bundle",
    "DataError": "edge_xmr.data",
    "DemoError": "edge_xmr.demo",
    "NoBundleError": "edge_xmr.discovery",
    "EdgeXmrError": "edge_xmr.errors",
    "IndexFileError": "edge_xmr.index.db",
    "LibraryError": "edge_xmr.index.library",
    "ModelMismatchError": "edge_xmr.index.library",
    "Stats": "edge_xmr.index.library",
    "SchemaError": "edge_xmr.index.schema",
    "IndexOptions": "edge_xmr.indexer",
    "IndexReport": "edge_xmr.indexer",
    "Progress": "edge_xmr.indexer",
    "Library": "edge_xmr.library",
    "ImageError": "edge_xmr.preprocess",
    "ImageReadError": "edge_xmr.preprocess",
    "ProviderError": "edge_xmr.providers",
    "RayIndexError": "edge_xmr.ray_index",
    "RayOptions": "edge_xmr.ray_index",
    "ScoreConfigError": "edge_xmr.score",
    "Hit": "edge_xmr.search",
    "QueryError": "edge_xmr.search",
    "TextHit": "edge_xmr.search",
    "ServeError": "edge_xmr.server",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edge_xmr' has no attribute {name!r}")
