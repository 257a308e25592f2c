"""The on-device photo index: SQLite (via apsw) + sqlite-vec, one file per library."""

from __future__ import annotations

from .db import IndexFileError
from .filters import Filters, make_filters
from .library import (
    Candidates,
    EncoderBundle,
    Library,
    LibraryError,
    LibraryInfo,
    ModelMismatchError,
    PhotoInfo,
    PhotoRecord,
    Stats,
)
from .schema import SCHEMA_VERSION, SchemaError
from .stores import DEFAULT_STORE, STORE_KINDS, Store, StoreKind

__all__ = [
    "DEFAULT_STORE", "SCHEMA_VERSION", "STORE_KINDS", "Candidates", "EncoderBundle", "Filters", "IndexFileError",
    "Library", "LibraryError", "LibraryInfo", "ModelMismatchError", "PhotoInfo", "PhotoRecord", "SchemaError",
    "Stats", "Store", "StoreKind", "make_filters",
]
