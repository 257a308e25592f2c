"""The on-device photo index: SQLite (via apsw) + sqlite-vec, one file per library.

The store layer: it imports nothing of the model bundle, the indexer or the search (the façade
``edge_xmr.Library`` combines them).
"""

from __future__ import annotations

from .db import IndexFileError
from .filters import Filters, make_filters
from .library import (
    Candidates,
    EncoderBundle,
    LibraryError,
    LibraryInfo,
    ModelCard,
    ModelMismatchError,
    PhotoInfo,
    PhotoRecord,
    PhotoStore,
    Stats,
    require_model,
)
from .schema import SCHEMA_VERSION, SchemaError
from .stores import DEFAULT_STORE, STORE_KINDS, Store, StoreKind

__all__ = [
    "DEFAULT_STORE", "SCHEMA_VERSION", "STORE_KINDS", "Candidates", "EncoderBundle", "Filters", "IndexFileError",
    "LibraryError", "LibraryInfo", "ModelCard", "ModelMismatchError", "PhotoInfo", "PhotoRecord", "PhotoStore",
    "SchemaError", "Stats", "Store", "StoreKind", "make_filters", "require_model",
]
