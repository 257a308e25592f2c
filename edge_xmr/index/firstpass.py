"""The candidate search's first pass: every photo's code in RAM, scored with one matrix product.

sqlite-vec 0.1.9 answers a KNN query by brute force inside SQLite (0.9 s at 1M int8[256] photos
here, bench/results/scale.json), slower than numpy over the same vectors in RAM. So
the index keeps its vectors in vec0 (the store), and each open store keeps in RAM what a search
needs to rank them: the photo ids, their capture times and folder ids (the filters), and a
float32 code per photo.

- Up to ``FirstPassConfig.exact_max`` photos the code is the stored vector itself (dequantised
  with its refinement, unit norm): the first pass is the exact search, no rescoring, and as fast
  as numpy over a float32 matrix (it is one).
- Above, the code is the stored int8 vector projected on the ``dims`` leading eigenvectors of the
  library's second moment Σ e eᵀ / n (``moments``, kept by every write; float32, dims x 4 bytes per
  photo); the ``rescore`` best photos by code are rescored exactly from their stored vectors. The
  basis is fitted when the codes are loaded and refitted (every code recomputed) when the library
  has grown or shrunk by ``refit_growth`` since.

Kept current incrementally: every write appends the ids of the photos it inserted, removed or
re-filed to the ``changes`` table (in its own transaction, so a rolled-back write logs nothing);
before each search the first pass reads the entries after the last one it applied and reloads
those photos (their rows, or their absence). A reader that fell behind the ``log_keep`` entries
the table keeps reloads everything. The search then runs inside the same read transaction as
that catch-up, so it sees exactly one committed state: never a removed photo, always a new one.

The stores of one process that open the same file share one first pass (``shared``; the web
gallery opens the index per request), used under its lock: a connection whose snapshot is older
than what the shared codes were caught up to reloads them.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import apsw
import numpy as np
import numpy.typing as npt

from . import moments
from .stores import Store

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class FirstPassConfig:
    exact_max: int = 32768  # up to this many photos the code is the full stored vector (exact, no rescoring)
    dims: int = 64  # above: PCA dimensions of the code (recall@10 per dims x rescore: scale.json's first_pass_sweep)
    rescore: int = 200  # above: photos rescored exactly from their stored vectors (at least 2x those wanted)
    refit_growth: float = 2.0  # the basis is refitted when the library grew or shrank by this factor since
    compact_share: float = 0.125  # rows of removed photos kept (masked) until they are this share of the rows
    log_keep: int = 65536  # entries the changes table keeps: a reader further behind reloads every code

    def __post_init__(self) -> None:
        if self.dims < 1 or self.rescore < 1 or self.refit_growth <= 1 or self.log_keep < 1:
            raise ValueError("need dims >= 1, rescore >= 1, refit_growth > 1 and log_keep >= 1")


DEFAULT_FIRST_PASS = FirstPassConfig()
_LOAD_CHUNK = 65536  # photos read and coded at a time when loading


def create_log(conn: apsw.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS changes(seq INTEGER PRIMARY KEY, id INTEGER NOT NULL)")


def log_changes(conn: apsw.Connection, ids: Sequence[int], keep: int = DEFAULT_FIRST_PASS.log_keep) -> None:
    """Photos inserted, removed or re-filed (inside the caller's write transaction). The newest
    entry is never pruned, so ``seq`` only grows and the entries kept are contiguous."""
    if not len(ids):
        return
    conn.executemany("INSERT INTO changes(id) VALUES (?)", [(int(i),) for i in ids])
    conn.execute("DELETE FROM changes WHERE seq <= (SELECT max(seq) FROM changes) - ?", (keep,))


_SHARED: weakref.WeakValueDictionary[tuple[object, ...], FirstPass] = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


def shared(path: str | os.PathLike[str], store: Store, cfg: FirstPassConfig) -> FirstPass:
    """The first pass of the index file at ``path`` for this store and config, shared by the stores
    of this process that have it open (kept while one of them is)."""
    try:
        st = os.stat(path)
        key: tuple[object, ...] = (os.path.realpath(path), st.st_dev, st.st_ino, store, cfg)
    except OSError:  # not a file (yet): not shared
        return FirstPass(store, cfg)
    with _SHARED_LOCK:
        fp = _SHARED.get(key)
        if fp is None:
            fp = _SHARED[key] = FirstPass(store, cfg)
        return fp


class FirstPass:
    """The in-RAM codes of one open index file (loaded on first use, caught up before each search;
    hold ``lock`` from the catch-up to the end of the search)."""

    def __init__(self, store: Store, cfg: FirstPassConfig = DEFAULT_FIRST_PASS):
        self.store, self.cfg = store, cfg
        self.lock = threading.RLock()
        self.seq = -1  # the last change applied (-1: nothing loaded)
        self.basis: FloatArray | None = None  # (D, dims) projection; None: exact codes
        self.fitted_at = 0  # photos when the basis was fitted
        self.n = 0  # rows in use (live and removed)
        self.ids: IntArray = np.zeros((0,), np.int64)  # ascending
        self.live = np.zeros((0,), bool)
        self.taken: IntArray = np.zeros((0,), np.int64)
        self.folder = np.zeros((0,), np.int64)
        self.codes: FloatArray = np.zeros((0, store.dim), np.float32)

    @property
    def exact(self) -> bool:
        return self.basis is None

    def invalidate(self) -> None:
        """Forget every code (a write transaction rolled back after a catch-up saw its rows)."""
        self.seq = -1

    # ---- keeping current (inside the search's read transaction) -------------------------------
    def sync(self, conn: apsw.Connection) -> None:
        top = int(conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0])
        if self.seq < 0:
            return self.load(conn, top)
        if top == self.seq:
            return None
        low = int(conn.execute("SELECT coalesce(min(seq), 0) FROM changes").fetchone()[0])
        if top < self.seq or low > self.seq + 1:  # entries pruned past us (or another file): reload all
            return self.load(conn, top)
        ids = sorted({int(r[0]) for r in conn.execute("SELECT id FROM changes WHERE seq > ?", (self.seq,))})
        self._apply(conn, ids)
        self.seq = top
        live = int(self.live[:self.n].sum())
        if self._wants_reload(live):
            return self.load(conn, top)
        if self.n - live > self.cfg.compact_share * max(self.n, 1):
            self._compact()
        return None

    def _wants_reload(self, live: int) -> bool:
        cfg = self.cfg
        if self.exact:
            return live > cfg.exact_max
        g = cfg.refit_growth
        return live < cfg.exact_max / 2 or not self.fitted_at / g <= live <= self.fitted_at * g

    def load(self, conn: apsw.Connection, seq: int) -> None:
        """Every photo's code afresh (and the basis, when the library is past ``exact_max``).

        The vec0 vectors are read from sqlite-vec's chunk tables (``_scan_vec0``: one blob per 64
        photos instead of one virtual-table lookup per photo); photos it does not deliver are read
        through vec0 itself."""
        self.seq = -1  # until this load completes: an exception leaves nothing half loaded in use
        rows = conn.execute("SELECT id, taken, folder_id FROM photos ORDER BY id").fetchall()
        n, st = len(rows), self.store
        ids = np.fromiter((r[0] for r in rows), np.int64, n)
        self.basis = None
        if n > self.cfg.exact_max:
            self.basis = self._fit(conn, n)
            self.fitted_at = n
        width = st.dim if self.basis is None else self.basis.shape[1]
        self.ids, self.n = ids, n
        self.taken = np.fromiter((r[1] for r in rows), np.int64, n)
        self.folder = np.fromiter((r[2] for r in rows), np.int64, n)
        del rows
        self.codes = np.zeros((n, width), np.float32)
        need_knn = st.rescores_from_knn_vector
        need_refine = self.exact or not need_knn
        have = np.ones((n,), bool)
        knn = refine = None
        if need_knn:
            knn, found = _scan_vec0(conn, ids, st.knn_bytes)
            have &= found
        if need_refine:
            refine = np.full((n, st.refine_bytes), 0x88, np.uint8)  # 0x88: a zero residual
            found = np.zeros((n,), bool)
            for rid, blob in conn.execute("SELECT id, embedding FROM rerank ORDER BY id"):
                i = int(np.searchsorted(ids, rid))
                if i < n and ids[i] == rid:
                    found[i] = True
                    if blob:
                        refine[i] = np.frombuffer(blob, np.uint8)
            have &= found
        for i in range(0, n, _LOAD_CHUNK):
            sl = slice(i, min(n, i + _LOAD_CHUNK))
            x = st.decode_arrays(None if knn is None else knn[sl], None if refine is None else refine[sl],
                                 sl.stop - sl.start)
            self.codes[sl] = x if self.basis is None else x @ self.basis
        del knn, refine
        self.live = have
        rest = ids[~have].tolist()  # photos the chunk tables did not give (or a photo row without vectors)
        for i in range(0, len(rest), _LOAD_CHUNK):
            got, taken, folder, codes = self._read(conn, rest[i:i + _LOAD_CHUNK])
            at = np.searchsorted(ids, got)
            self.live[at], self.taken[at], self.folder[at], self.codes[at] = True, taken, folder, codes
        self.seq = seq

    def _fit(self, conn: apsw.Connection, n: int) -> FloatArray:
        """The leading eigenvectors of the stored embeddings' second moment (D, dims)."""
        m = moments.read(conn, self.store.dim, self._embeddings(conn))
        w, v = np.linalg.eigh(m.outer / max(m.count, 1))
        return np.ascontiguousarray(v[:, ::-1][:, :min(self.cfg.dims, self.store.dim)], np.float32)

    def _embeddings(self, conn: apsw.Connection) -> moments.Embeddings:
        def embed(ids: Sequence[int]) -> FloatArray:
            return self._read(conn, list(ids), exact=True)[3]
        return embed

    def _read(self, conn: apsw.Connection, ids: list[int], exact: bool | None = None
              ) -> tuple[IntArray, IntArray, IntArray, FloatArray]:
        """(ids found, taken, folder, codes) of photos, ascending by id; missing photos are left out."""
        exact = self.exact if exact is None else exact
        st = self.store
        arg = json.dumps(ids)
        meta = conn.execute("SELECT p.id, p.taken, p.folder_id FROM json_each(?) j JOIN photos p ON p.id = j.value"
                            " ORDER BY p.id", (arg,)).fetchall()
        need_knn = st.rescores_from_knn_vector  # the bit store's codes are in its refinement
        need_refine = exact or not need_knn
        knn: dict[int, bytes] = {}
        if need_knn:
            knn = {int(r): bytes(b) for r, b in conn.execute(
                "SELECT v.rowid, v.embedding FROM json_each(?) j JOIN vectors v ON v.rowid = j.value", (arg,))}
        refine: dict[int, bytes | None] = {}
        if need_refine:
            refine = {int(r): bytes(b) if b is not None else None for r, b in conn.execute(
                "SELECT r.id, r.embedding FROM json_each(?) j JOIN rerank r ON r.id = j.value", (arg,))}
        ok = [r for r in meta if (not need_knn or int(r[0]) in knn) and (not need_refine or int(r[0]) in refine)]
        got = np.array([int(r[0]) for r in ok], np.int64)
        width = st.dim if exact or self.basis is None else self.basis.shape[1]
        if not len(got):
            return got, got.copy(), got.copy(), np.zeros((0, width), np.float32)
        x = st.decode_many([knn[int(i)] for i in got] if need_knn else [None] * len(got),
                           [refine[int(i)] for i in got] if need_refine else None)
        taken = np.array([int(r[1]) for r in ok], np.int64)
        folder = np.array([int(r[2]) for r in ok], np.int64)
        if not exact and self.basis is not None:
            x = x @ self.basis
        return got, taken, folder, np.ascontiguousarray(x, np.float32)

    def _apply(self, conn: apsw.Connection, ids: list[int]) -> None:
        """Reload these photos: new ones appended, changed ones rewritten, removed ones masked."""
        if not ids:
            return
        got, taken, folder, codes = self._read(conn, ids)
        want = np.asarray(ids, np.int64)
        cur = self.ids[:self.n]
        pos = np.searchsorted(cur, want)
        known = (pos < self.n) & (cur[np.minimum(pos, max(self.n - 1, 0))] == want) if self.n else np.zeros(len(want), bool)
        present = np.isin(want, got)
        self.live[pos[known & ~present]] = False  # removed
        at = np.searchsorted(got, want[known & present])  # rewritten in place
        rows = pos[known & present]
        self.live[rows], self.taken[rows], self.folder[rows], self.codes[rows] = True, taken[at], folder[at], codes[at]
        new = np.searchsorted(got, want[~known & present])
        if len(new):
            self._append(got[new], taken[new], folder[new], codes[new])

    def _append(self, ids: IntArray, taken: IntArray, folder: IntArray, codes: FloatArray) -> None:
        m = self.n + len(ids)
        if m > len(self.ids):  # grow by half again: amortised O(1) per photo
            cap = max(m, len(self.ids) + len(self.ids) // 2, 1024)
            self.ids, self.live, self.taken, self.folder = (
                np.resize(a, (cap,)) for a in (self.ids, self.live, self.taken, self.folder))
            grown = np.zeros((cap, self.codes.shape[1]), np.float32)
            grown[:self.n] = self.codes[:self.n]
            self.codes = grown
        sl = slice(self.n, m)
        self.ids[sl], self.live[sl], self.taken[sl], self.folder[sl], self.codes[sl] = ids, True, taken, folder, codes
        sorted_before = self.n == 0 or ids[0] > self.ids[self.n - 1]
        self.n = m
        if not sorted_before:  # an id below the largest known (ids reused after removals): re-sort
            order = np.argsort(self.ids[:m], kind="stable")
            for a in (self.ids, self.live, self.taken, self.folder, self.codes):
                a[:m] = a[:m][order]

    def _compact(self) -> None:
        keep = np.flatnonzero(self.live[:self.n])
        self.ids, self.live, self.taken, self.folder = (
            a[keep].copy() for a in (self.ids, self.live, self.taken, self.folder))
        self.codes = np.ascontiguousarray(self.codes[keep])
        self.n = len(keep)

    # ---- searching ----------------------------------------------------------------------------
    def search(self, q: FloatArray, n: int, after: int | None, before: int | None,
               folders: Sequence[int] | None) -> tuple[IntArray, FloatArray | None, FloatArray]:
        """The best photos for a unit query among those passing the filters: (ids, unit embeddings,
        cosines) of the ``n`` best when exact; else (ids, None, code scores) of the best
        ``max(rescore, 2 n)`` by code, for the caller to rescore."""
        m = self.n
        mask = None if bool(self.live[:m].all()) else self.live[:m].copy()
        if after is not None:
            mask = _and(mask, self.taken[:m] >= after)
        if before is not None:
            mask = _and(mask, self.taken[:m] < before)
        if folders is not None:
            lut = np.zeros((max(int(self.folder[:m].max(initial=0)), max(folders, default=0)) + 1,), bool)
            lut[np.asarray(list(folders), np.int64)] = True
            mask = _and(mask, lut[self.folder[:m]])
        qc = np.asarray(q, np.float32) if self.basis is None else np.asarray(q, np.float32) @ self.basis
        if mask is None:
            rows = None
            s = self.codes[:m] @ qc
        else:
            rows = np.flatnonzero(mask)
            s = self.codes[rows] @ qc if 2 * len(rows) < m else (self.codes[:m] @ qc)[rows]
        want = n if self.exact else max(self.cfg.rescore, 2 * n)
        top = _top(s, want)
        at = top if rows is None else rows[top]
        return self.ids[at], (self.codes[at] if self.exact else None), s[top]

    def nbytes(self) -> int:
        """RAM held by the codes and their columns."""
        return int(sum(a.nbytes for a in (self.ids, self.live, self.taken, self.folder, self.codes)))


def _scan_vec0(conn: apsw.Connection, ids: IntArray, width: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    """The vec0 vector of each photo in ``ids`` (ascending) as bytes (n, width), and which were
    found, read straight from sqlite-vec 0.1.9's shadow tables: ``vectors_chunks`` (per chunk: its
    size, a validity bitmap, the rowid of each slot) and ``vectors_vector_chunks00`` (its vectors,
    slot by slot). Nothing is found when the tables are not laid out so (another sqlite-vec): the
    caller then reads every photo through the virtual table."""
    out = np.zeros((len(ids), width), np.uint8)
    found = np.zeros((len(ids),), bool)
    try:
        cur = conn.execute("SELECT c.size, c.validity, c.rowids, v.vectors FROM vectors_chunks c"
                           " JOIN vectors_vector_chunks00 v ON v.rowid = c.chunk_id")
        for size, validity, rowids, vectors in cur:
            size = int(size)
            valid = np.unpackbits(np.frombuffer(validity, np.uint8), bitorder="little")[:size].astype(bool)
            rid = np.frombuffer(rowids, np.int64)[:size]
            vec = np.frombuffer(vectors, np.uint8)
            if len(rid) < size or len(vec) < size * width:
                raise ValueError("not the chunk layout of sqlite-vec 0.1.9")
            slots = np.flatnonzero(valid)
            pos = np.minimum(np.searchsorted(ids, rid[slots]), max(len(ids) - 1, 0))
            ok = ids[pos] == rid[slots] if len(ids) else np.zeros((0,), bool)
            out[pos[ok]] = vec.reshape(-1, width)[slots[ok]] if len(vec) == size * width else \
                vec[:size * width].reshape(size, width)[slots[ok]]
            found[pos[ok]] = True
    except (apsw.SQLError, ValueError):
        return out, np.zeros((len(ids),), bool)
    return out, found


def _and(mask: npt.NDArray[np.bool_] | None, other: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    return other if mask is None else mask & other


def _top(s: FloatArray, r: int) -> IntArray:
    """Indices of the ``r`` largest scores, best first (ties: lower index first)."""
    if r >= len(s):
        return np.argsort(-s, kind="stable")
    cand = None
    if len(s) > 64 * r:  # a threshold from a strided sample, then a selection among the few above it
        sample = s[::16]
        j = min(len(sample) - 1, max(4, r // 8))  # about 2r scores expected above it
        t = np.partition(sample, len(sample) - 1 - j)[len(sample) - 1 - j]
        above = np.flatnonzero(s >= t)
        if len(above) >= r:
            cand = above
    if cand is None:
        cand = np.arange(len(s))
    part = cand[np.argpartition(s[cand], len(cand) - r)[len(cand) - r:]] if len(cand) > r else cand
    order = np.lexsort((part, -s[part]))
    return part[order]
