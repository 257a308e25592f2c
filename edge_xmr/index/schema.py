"""Index schema (version 5), the meta table, and migrations from older versions.

Tables (one SQLite file):

- ``meta(key, value)``: schema_version, model_name, model_id (sha256 of the bundle's fp32 graphs +
  tokenizer), embedding_id (sha256 of its text and image encoders, tokenizer and preprocessing: a
  bundle with the same embedding_id may open the index even if its model_id differs), embedding_dim,
  metric, store, embedding_int8_scale, token_int8_scale, token_count, token_dim, created,
  bundle_path (a hint for later commands).
- ``folders(id, path)``: every folder holding photos, as a POSIX-style key ending in "/".
- ``photos``: path, folder_id, content hash (sha256), size, mtime_ns, exif_time (EXIF capture
  time), taken (exif_time, else the file's mtime; what date filters use), width, height.
- ``vectors`` (vec0): the bi-encoder embedding, rowid = photos.id, with metadata columns
  ``taken`` and ``folder``. Searches rank photos by the in-RAM first pass (``firstpass``), which
  reads its codes from here once per open store and the stored vectors of its best candidates.
- ``changes(seq, id)``: the photos each write inserted, removed or re-filed, in commit order (the
  newest ``FirstPassConfig.log_keep`` entries): how an open store's first pass catches up.
- ``rerank(id, tokens, embedding)``: int8 image tokens (T x Dt) for the cross-encoder, and the
  embedding refinement used for exact rescoring (int8 store: the 4-bit rounding residual of the
  vec0 codes; bit store: int8 codes + residual; float32 store: NULL).
- ``skipped(path, size, mtime_ns, reason, at, kind)``: files that could not be indexed, and why;
  ``kind`` says when to try again: ``content`` (the bytes are not a usable image: once the file's
  size or mtime changes), ``unreadable`` (permission denied, an I/O error: every run),
  ``unsupported`` (HEIC without the optional extra: every run).

Paths (photos.path, skipped.path, folders.path) are index keys: resolved, valid Unicode
(``pathkeys``).

Creating and migrating are safe when several processes open a new or old index at once: each
step runs in one ``BEGIN IMMEDIATE`` transaction that checks again, under the write lock, whether
another process did it first.

Version history: 1 had no folders table and no vec0 metadata columns (filters ran after the
KNN, which silently returned too few results) and no size/mtime on skipped files; 2 had no
``skipped.kind`` (a file that failed was tried again only once its size or mtime changed); 3
had no ``changes`` table (searches ran sqlite-vec's brute-force KNN); 4 partitioned vec0 by an
inverted file (a ``list`` partition key and a ``partitions`` table of k-means centroids), which
the in-RAM first pass replaced: faster at every size measured (docs/runtime.md).
"""

from __future__ import annotations

import time

import apsw

from .db import write_transaction
from .firstpass import create_log
from .stores import STORE_KINDS, Store
from ..errors import EdgeXmrError

SCHEMA_VERSION = 5

# skipped.kind: when a file that could not be indexed is tried again
SKIP_CONTENT = "content"  # not a usable image: when its size or mtime changes
SKIP_UNREADABLE = "unreadable"  # permission denied, I/O error: every run
SKIP_UNSUPPORTED = "unsupported"  # a format that needs an optional extra: every run


class SchemaError(EdgeXmrError, RuntimeError):
    """The index file cannot be used by this version of edge_xmr."""


def create(conn: apsw.Connection, store: Store, meta: dict[str, str]) -> bool:
    """Create all tables of the current schema and write ``meta``, in one transaction; returns
    False (and changes nothing) when another connection created them first."""
    with write_transaction(conn):
        if has_schema(conn):  # checked again under the write lock: another process won the race
            return False
        conn.execute(
            "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "CREATE TABLE folders(id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);"
            "CREATE TABLE photos(id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE,"
            " folder_id INTEGER NOT NULL, hash BLOB NOT NULL, size INTEGER NOT NULL,"
            " mtime_ns INTEGER NOT NULL, exif_time INTEGER, taken INTEGER NOT NULL,"
            " width INTEGER NOT NULL, height INTEGER NOT NULL);"
            "CREATE INDEX photos_hash ON photos(hash);"
            "CREATE TABLE rerank(id INTEGER PRIMARY KEY, tokens BLOB NOT NULL, embedding BLOB);"
            "CREATE TABLE skipped(path TEXT PRIMARY KEY, size INTEGER NOT NULL,"
            " mtime_ns INTEGER NOT NULL, reason TEXT NOT NULL, at INTEGER NOT NULL,"
            f" kind TEXT NOT NULL DEFAULT '{SKIP_CONTENT}');"
        )
        create_vectors(conn, store)
        create_log(conn)
        write_meta(conn, {**meta, "schema_version": str(SCHEMA_VERSION)})
    return True


VEC_CHUNK = 64  # vec0 chunk_size: a search reads its candidates' vectors one by one, each at its offset in
#               its chunk's blob, which SQLite reaches by walking the blob's overflow pages: 100 random
#               reads at 100k photos took 4.6 ms with vec0's default 1024 (256 KB blobs), 1.5 ms with 64
#               (16 KB), for 13 more bytes per photo (one-off test, dbstat); 16: 1.1 ms, 250 more bytes


def create_vectors(conn: apsw.Connection, store: Store) -> None:
    conn.execute(f"CREATE VIRTUAL TABLE vectors USING vec0({store.column_sql}, taken integer, folder integer,"
                 f" chunk_size={VEC_CHUNK})")


def read_meta(conn: apsw.Connection) -> dict[str, str]:
    return {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}


def write_meta(conn: apsw.Connection, values: dict[str, str]) -> None:
    conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                     [(k, str(v)) for k, v in values.items()])


def has_schema(conn: apsw.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
    return row is not None


def version(conn: apsw.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        raise SchemaError("not an edge_xmr index (no schema_version in meta)")
    return int(row[0])


def migrate(conn: apsw.Connection) -> int:
    """Bring an older index up to ``SCHEMA_VERSION`` in place; returns the version found."""
    found = version(conn)
    if found > SCHEMA_VERSION:
        raise SchemaError(f"index schema version {found} is newer than this edge_xmr supports "
                          f"({SCHEMA_VERSION}); upgrade edge-xmr")
    while True:
        with write_transaction(conn):
            v = version(conn)  # again under the write lock: another process may have migrated
            if v >= SCHEMA_VERSION:
                break
            step, to = _STEPS[v]
            step(conn)
            write_meta(conn, {"schema_version": str(to)})
    return found


def store_from_meta(meta: dict[str, str]) -> Store:
    """The Store described by an index's meta table."""
    kind = meta.get("store", "int8")
    if kind not in STORE_KINDS:
        raise SchemaError(f"unknown store {kind!r} in the index meta table")
    return Store(kind=kind, dim=int(meta["embedding_dim"]),  # type: ignore[arg-type]
                 scale=float(meta.get("embedding_int8_scale") or 0.0))


def _v1_to_v2(conn: apsw.Connection) -> None:
    """folders table + photos.folder_id/taken; vec0 rebuilt with taken/folder metadata and L2;
    rerank.embedding; skipped gets size/mtime_ns/at (so old failures are retried once)."""
    meta = read_meta(conn)
    store = store_from_meta(meta)
    conn.execute(
        "CREATE TABLE folders(id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);"
        "INSERT INTO folders(path) SELECT DISTINCT folder FROM photos ORDER BY folder;"
        "ALTER TABLE photos ADD COLUMN folder_id INTEGER NOT NULL DEFAULT 0;"
        "ALTER TABLE photos ADD COLUMN taken INTEGER NOT NULL DEFAULT 0;"
        "UPDATE photos SET folder_id = (SELECT id FROM folders f WHERE f.path = photos.folder),"
        " taken = coalesce(exif_time, mtime_ns / 1000000000);"
        "ALTER TABLE photos DROP COLUMN folder;"
        "CREATE INDEX IF NOT EXISTS photos_hash ON photos(hash);"
        "ALTER TABLE rerank ADD COLUMN embedding BLOB;"
        "ALTER TABLE skipped ADD COLUMN size INTEGER NOT NULL DEFAULT -1;"
        "ALTER TABLE skipped ADD COLUMN mtime_ns INTEGER NOT NULL DEFAULT -1;"
        "ALTER TABLE skipped ADD COLUMN at INTEGER NOT NULL DEFAULT 0;"
    )
    old = conn.execute("SELECT v.rowid, v.embedding, p.taken, p.folder_id FROM vectors v"
                       " JOIN photos p ON p.id = v.rowid").fetchall()
    conn.execute("DROP TABLE vectors")
    create_vectors(conn, store)
    conn.executemany(f"INSERT INTO vectors(rowid, embedding, taken, folder) VALUES (?, {store.param_sql}, ?, ?)",
                     [(int(r), bytes(e), int(t), int(f)) for r, e, t, f in old])
    conn.execute("UPDATE skipped SET at = ?", (int(time.time()),))
    write_meta(conn, {"metric": "cosine"})


def _v2_to_v3(conn: apsw.Connection) -> None:
    """skipped.kind: files that could not be read (or needed an extra) are tried again every run."""
    conn.execute(f"ALTER TABLE skipped ADD COLUMN kind TEXT NOT NULL DEFAULT '{SKIP_CONTENT}'")
    conn.execute(f"UPDATE skipped SET kind = '{SKIP_UNREADABLE}' WHERE reason LIKE 'cannot read file%'")
    conn.execute(f"UPDATE skipped SET kind = '{SKIP_UNSUPPORTED}' WHERE reason LIKE 'HEIC/HEIF support%'")


def _to_v5(conn: apsw.Connection) -> None:
    """From 3 or 4: vec0 rebuilt without the partition key of 4 (the same rows), the ``partitions``
    table dropped, the ``changes`` table created (empty: a store loads every code on first use)."""
    store = store_from_meta(read_meta(conn))
    old = conn.execute("SELECT rowid, embedding, taken, folder FROM vectors").fetchall()
    conn.execute("DROP TABLE vectors; DROP TABLE IF EXISTS partitions; DELETE FROM meta WHERE key = 'partition_epoch'")
    create_vectors(conn, store)
    create_log(conn)
    conn.executemany(f"INSERT INTO vectors(rowid, embedding, taken, folder) VALUES (?, {store.param_sql}, ?, ?)",
                     [(int(r), bytes(e), t, f) for r, e, t, f in old])


_STEPS = {1: (_v1_to_v2, 2), 2: (_v2_to_v3, 3), 3: (_to_v5, 5), 4: (_to_v5, 5)}  # version -> (step, version after)
