"""The library's photo-embedding moments (``score.LibraryMoments``) kept in the index file.

One row of the table ``library_moments(id = 1, count, total, outer)``: the count of photos, the sum
of their stored embeddings (D float64) and the sum of their outer products (D x D float64). The
library's write paths update it in the same transaction as the photos (``add`` after inserting,
``remove`` before deleting), so it always describes the photos committed with it. The table is
created on the first write that needs it (an index made before it existed gets it then, filled
from its stored embeddings); a reader that finds no row, or a count that is not the photo count,
recomputes the moments from the stored embeddings (exact, O(n D^2), not written back).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import apsw
import numpy as np
import numpy.typing as npt

from ..score import LibraryMoments

Embeddings = Callable[[Sequence[int]], npt.NDArray[np.float32]]  # photo ids -> stored embeddings (n, D)

_TABLE = "library_moments"
_CHUNK = 2048  # photos decoded at a time when recomputing


def _row(conn: apsw.Connection, dim: int) -> LibraryMoments | None:
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_TABLE,)).fetchone() is None:
        return None
    r = conn.execute(f"SELECT count, total, outer FROM {_TABLE} WHERE id = 1").fetchone()
    if r is None:
        return None
    total = np.frombuffer(bytes(r[1]), np.float64)
    outer = np.frombuffer(bytes(r[2]), np.float64)
    if total.size != dim or outer.size != dim * dim:
        return None
    return LibraryMoments(int(r[0]), total.copy(), outer.reshape(dim, dim).copy())


def _write(conn: apsw.Connection, m: LibraryMoments) -> None:
    conn.execute(f"CREATE TABLE IF NOT EXISTS {_TABLE}(id INTEGER PRIMARY KEY CHECK (id = 1),"
                 " count INTEGER NOT NULL, total BLOB NOT NULL, outer BLOB NOT NULL)")
    conn.execute(f"INSERT INTO {_TABLE}(id, count, total, outer) VALUES (1, ?, ?, ?) ON CONFLICT(id) DO UPDATE"
                 " SET count = excluded.count, total = excluded.total, outer = excluded.outer",
                 (m.count, np.ascontiguousarray(m.total, np.float64).tobytes(),
                  np.ascontiguousarray(m.outer, np.float64).tobytes()))


def recompute(conn: apsw.Connection, dim: int, embeddings: Embeddings) -> LibraryMoments:
    """The moments of every photo in the index, from its stored embeddings (brute force)."""
    ids = [int(r[0]) for r in conn.execute("SELECT id FROM photos ORDER BY id")]  # the library's every photo
    m = LibraryMoments.empty(dim)
    for i in range(0, len(ids), _CHUNK):
        m = m.add(embeddings(ids[i:i + _CHUNK]))
    return m


def read(conn: apsw.Connection, dim: int, embeddings: Embeddings) -> LibraryMoments:
    """The moments of the photos in the index (call inside a read transaction)."""
    m = _row(conn, dim)
    n = int(conn.execute("SELECT count(*) FROM photos").fetchone()[0])
    if m is None or m.count != n:
        return recompute(conn, dim, embeddings)
    return m


def add(conn: apsw.Connection, dim: int, embeds: npt.NDArray[np.float32], embeddings: Embeddings) -> None:
    """Photos with stored embeddings ``embeds`` were just inserted (inside the write transaction)."""
    if not len(embeds):
        return
    m = _row(conn, dim)
    _write(conn, recompute(conn, dim, embeddings) if m is None else m.add(embeds))


def remove(conn: apsw.Connection, dim: int, gone: npt.NDArray[np.float32] | None) -> None:
    """Photos whose stored embeddings are ``gone`` are about to be deleted (inside the write transaction).

    ``gone`` is None when the caller could not read them (a photo row without its vectors): the sums
    are then forgotten and recomputed when next needed.
    """
    m = _row(conn, dim)
    if m is None or (gone is not None and not len(gone)):  # no row yet: the next write or read computes it
        return
    if gone is None:
        conn.execute(f"DELETE FROM {_TABLE}")
        return
    _write(conn, m.remove(gone))
