"""Partitioned KNN: a coarse quantiser over the vec0 table, so that a search reads a few lists.

sqlite-vec 0.1.9 answers a KNN query by brute force over the table's chunks; its time grows
linearly with the library (about 0.7 us per int8[256] vector on this machine). But a vec0
``partition key`` column splits the table: a KNN query constrained to some key values reads only
their chunks. The index keeps an inverted file on that column:

- ``partitions(id, centroid, size)``: k-means centroids (float32, unit norm) and the number of
  photos in each list; ``vectors.list`` (the partition key) holds each photo's list id. An
  untrained index has no rows here and every photo in list 0: its search is the exact one.
- A search scores the query against the centroids (in RAM, cached per ``meta.partition_epoch``)
  and runs one vec0 KNN over the nearest ``nprobe`` lists (``list IN (...)``, the date and folder
  filters inside, as before); the merged candidates are rescored exactly, as in the exact path.
- The write that brings the library to ``train_at`` photos trains ``ceil(n / list_size)``
  centroids (spherical k-means on the stored embeddings) and moves every photo to its list.
  Later inserts go to the list of their nearest centroid. A list that grows past ``split_at`` is
  split in two by a 2-means over its members; a list emptied by removals is dropped. Lists follow
  the library's growth without a full re-index; ``retrain`` re-clusters everything when wanted
  (an index migrated from schema 3 with many photos gets trained on its first write).
- Every change runs inside the write transaction of the write that caused it (an insert batch,
  a removal): a crash (kill -9) leaves the index as it was before that write, lists and all.

Moving a photo to another list is a DELETE + INSERT in vec0 (its partition key cannot be
updated). A split moves every member into two new lists rather than keeping one half in place:
vec0 reuses free slots only in a partition's newest chunk and frees a chunk only when it is
empty, so moving all members frees the old chunks whole instead of leaving holes in them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import apsw
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

UNTRAINED = 0  # the list id of every photo while the index has no centroids
VEC_CHUNK = 128  # vec0 chunk_size of the vectors table: slots allocated per partition at a time
#                  (a list of ~380 photos wastes half a chunk on average: ~50 B per photo at 256 dims;
#                  vec0's default of 1024 would waste more than the vectors themselves)
MAX_LIST = 4096  # the most rows one vec0 KNN returns (sqlite-vec's largest k): a list is read whole by one
EPOCH_KEY = "partition_epoch"  # meta key bumped whenever the set of centroids changes


@dataclass(frozen=True)
class PartitionConfig:
    train_at: int = 4096  # photos at which the index is first partitioned; below, one list, exact KNN
    list_size: int = 256  # photos per list when (re)training: nlist = ceil(photos / list_size)
    split_at: int = 512  # a list with more photos than this is split in two (2-means over its members)
    nprobe_min: int = 8  # lists probed by a search at least (all of them when there are fewer)
    nprobe_sqrt: float = 6.0  # ... and at least ceil(nprobe_sqrt * sqrt(nlist)): sub-linear in the library.
    #                           6: recall@10 0.988 / 0.992 at 100k / 300k synthetic photos (text queries;
    #                           bench/results/scale.json, nprobe_sweep); 1: about 0.74 / 0.79
    max_probe_share: float = 0.5  # a search that would read more than this share of the lists reads them all
    #                              in one plain vec0 KNN instead (the exact search, without the per-list cost)
    filtered_probe_factor: float = 1.0  # a filtered search first probes this many times more lists ...
    filtered_match_share: float = 0.25  # ... and doubles them until the photos passing its filters in the
    #                                    lists read are this share of what an unfiltered search reads
    kmeans_iters: int = 12  # Lloyd iterations of the training k-means
    kmeans_sample: int = 64  # training sample: at most this many photos per list (the rest are assigned after)
    split_iters: int = 8  # Lloyd iterations of a split's 2-means
    seed: int = 0  # seed of the k-means initialisation (the same photos give the same lists)

    def __post_init__(self) -> None:
        if not 2 <= 2 * self.list_size <= self.split_at * 2 <= MAX_LIST - 1024:
            raise ValueError(f"need 1 <= list_size <= split_at <= {MAX_LIST // 2 - 512}, got "
                             f"list_size={self.list_size}, split_at={self.split_at}")
        if self.train_at < self.list_size or self.nprobe_min < 1:
            raise ValueError("train_at must be >= list_size and nprobe_min >= 1")

    def nprobe(self, nlist: int) -> int:
        """Lists a search probes in an index of ``nlist`` lists (``nlist``: all, by the exact search)."""
        n = min(nlist, max(self.nprobe_min, math.ceil(self.nprobe_sqrt * math.sqrt(nlist))))
        return nlist if n > self.max_probe_share * nlist else n


DEFAULT_PARTITIONS = PartitionConfig()

# (photo ids) -> their stored embeddings, unit norm (n, D): how the store decodes its vectors
Embeddings = Callable[[Sequence[int]], FloatArray]


def create_table(conn: apsw.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS partitions(id INTEGER PRIMARY KEY, centroid BLOB NOT NULL,"
                 " size INTEGER NOT NULL)")


class Partitions:
    """The lists of one index file (a view on its ``partitions`` table, centroids cached)."""

    def __init__(self, conn: apsw.Connection, dim: int, param_sql: str, cfg: PartitionConfig = DEFAULT_PARTITIONS):
        self._conn = conn
        self._dim = dim
        self._param = param_sql  # how a vector blob is bound for vec0 (vec_int8(?), ...)
        self.cfg = cfg
        self._epoch: int | None = None
        self._ids: IntArray = np.zeros((0,), np.int64)
        self._cent: FloatArray = np.zeros((0, dim), np.float32)

    # ---- reading ---------------------------------------------------------------------------------
    def _load(self) -> None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (EPOCH_KEY,)).fetchone()
        epoch = int(row[0]) if row else 0
        if epoch == self._epoch:
            return
        rows = self._conn.execute("SELECT id, centroid FROM partitions ORDER BY id").fetchall()
        self._ids = np.array([int(r[0]) for r in rows], np.int64)
        self._cent = (np.stack([np.frombuffer(bytes(r[1]), np.float32) for r in rows]) if rows
                      else np.zeros((0, self._dim), np.float32))
        self._epoch = epoch

    @property
    def nlist(self) -> int:
        """Lists with a centroid (0: untrained, every photo in list 0)."""
        self._load()
        return len(self._ids)

    def assign(self, x: FloatArray) -> IntArray:
        """The list of each unit vector (n, D): its nearest centroid's, or 0 when untrained."""
        self._load()
        x = np.asarray(x, np.float32).reshape(-1, self._dim)
        if not len(self._ids):
            return np.full((len(x),), UNTRAINED, np.int64)
        return self._ids[np.argmax(x @ self._cent.T, axis=1)]

    def ranked(self, q: FloatArray) -> IntArray:
        """Every list id, nearest centroid to the query first."""
        self._load()
        return self._ids[np.argsort(-(self._cent @ np.asarray(q, np.float32)), kind="stable")]

    def photos(self) -> int:
        """Photos in the lists (the sum of their sizes)."""
        return int(self._conn.execute("SELECT total(size) FROM partitions").fetchone()[0])

    def sizes(self) -> dict[int, int]:
        return {int(i): int(s) for i, s in self._conn.execute("SELECT id, size FROM partitions")}

    # ---- writing (inside the caller's write transaction) ---------------------------------------
    def grew(self, lists: Sequence[int], sign: int = 1) -> None:
        """Photos were added to (sign -1: removed from) these lists (one entry per photo)."""
        ids, counts = np.unique(np.asarray(lists, np.int64), return_counts=True)
        self._conn.executemany("UPDATE partitions SET size = size + ? WHERE id = ?",
                               [(sign * int(c), int(i)) for i, c in zip(ids, counts) if i != UNTRAINED])

    def maintain(self, photos: int, embeddings: Embeddings) -> int:
        """Train when the library reached ``train_at`` photos, split lists past ``split_at``, drop
        empty ones; returns the lists changed (0: nothing to do)."""
        c, cfg = self._conn, self.cfg
        if not self.nlist:
            if photos < cfg.train_at:
                return 0
            return self.retrain(embeddings)
        changed = self.drop_empty(bump=False)
        while full := c.execute("SELECT id FROM partitions WHERE size > ?", (cfg.split_at,)).fetchall():
            for pid, in full:  # halves of a list far past split_at may be full still: split again
                self._split(int(pid), embeddings)
                changed += 1
        if changed:
            self._bump()
        return int(changed)

    def drop_empty(self, bump: bool = True) -> int:
        """Drop the lists that removals emptied; returns how many."""
        self._conn.execute("DELETE FROM partitions WHERE size <= 0")
        n = self._conn.changes()
        if n and bump:
            self._bump()
        return n

    def check(self) -> list[str]:
        """What is inconsistent between the lists and the vectors (empty: nothing; a full scan, for tests)."""
        c = self._conn
        got: dict[int, int] = {}
        for _, li in c.execute("SELECT rowid, list FROM vectors"):
            got[int(li)] = got.get(int(li), 0) + 1
        sizes = self.sizes()
        problems = []
        if not sizes and set(got) - {UNTRAINED}:
            problems.append(f"untrained index with photos in lists {sorted(set(got) - {UNTRAINED})[:5]}")
        if sizes:
            if got.get(UNTRAINED):
                problems.append(f"{got[UNTRAINED]} photos in list 0 of a partitioned index")
            for li in sorted(set(got) | set(sizes)):
                if li != UNTRAINED and got.get(li, 0) != sizes.get(li, -1):
                    problems.append(f"list {li}: {got.get(li, 0)} vectors, size {sizes.get(li)}")
        photos = int(c.execute("SELECT count(*) FROM photos").fetchone()[0])
        if photos != sum(got.values()):
            problems.append(f"{photos} photos but {sum(got.values())} vectors")
        return problems

    def retrain(self, embeddings: Embeddings) -> int:
        """Cluster every photo afresh (spherical k-means on a sample, then all assigned); returns nlist."""
        c, cfg = self._conn, self.cfg
        ids = [int(r[0]) for r in c.execute("SELECT id FROM photos ORDER BY id")]  # every photo has one vector
        if not ids:
            return 0
        nlist = max(1, math.ceil(len(ids) / cfg.list_size))
        rng = np.random.default_rng(cfg.seed)
        sample = sorted(rng.choice(len(ids), min(len(ids), cfg.kmeans_sample * nlist), replace=False).tolist())
        cent = kmeans(embeddings([ids[i] for i in sample]), nlist, cfg.kmeans_iters, rng)
        c.execute("DELETE FROM partitions")
        c.executemany("INSERT INTO partitions(id, centroid, size) VALUES (?, ?, 0)",
                      [(j + 1, cent[j].tobytes()) for j in range(len(cent))])
        lists = np.arange(1, len(cent) + 1, dtype=np.int64)
        for i in range(0, len(ids), 2048):
            chunk = ids[i:i + 2048]
            dest = lists[np.argmax(embeddings(chunk) @ cent.T, axis=1)]
            self._move(chunk, dest)
        self._bump()
        return len(cent)

    def _split(self, pid: int, embeddings: Embeddings) -> None:
        """Two new lists from a 2-means over the members of list ``pid``, which is dropped."""
        c = self._conn
        members = self._members(pid)
        x = embeddings(members)
        rng = np.random.default_rng(self.cfg.seed + pid)
        two = kmeans(x, 2, self.cfg.split_iters, rng)
        side = np.argmax(x @ two.T, axis=1)
        if side.min() == side.max():  # identical vectors: any halves will do
            side = np.arange(len(members)) % 2
            two = np.stack([_unit(x[side == s].mean(0)) for s in (0, 1)])
        top = int(c.execute("SELECT coalesce(max(id), 0) FROM partitions").fetchone()[0])
        c.execute("DELETE FROM partitions WHERE id = ?", (pid,))
        c.executemany("INSERT INTO partitions(id, centroid, size) VALUES (?, ?, 0)",
                      [(top + 1, two[0].tobytes()), (top + 2, two[1].tobytes())])
        new = np.array([top + 1, top + 2], np.int64)
        self._move(members, new[side])
        while rest := self._members(pid):  # a list larger than one KNN can return (not reached by design)
            self._move(rest, new[np.argmax(embeddings(rest) @ two.T, axis=1)])

    def _members(self, pid: int) -> list[int]:
        """Photo ids in list ``pid`` (at most MAX_LIST): a vec0 KNN constrained to the partition
        (a plain ``WHERE list = ?`` would scan the whole table)."""
        return [int(r[0]) for r in self._conn.execute(
            f"SELECT rowid FROM vectors WHERE embedding MATCH {self._param} AND k = ? AND list = ?",
            (self._query_blob(), MAX_LIST, pid))]

    def _move(self, ids: Sequence[int], dest: IntArray) -> None:
        """Move photos to lists ``dest`` (their old lists' sizes are not touched: the caller
        drops or resets those)."""
        c = self._conn
        rows = c.execute("SELECT v.rowid, v.embedding, v.taken, v.folder FROM json_each(?) j"
                         " JOIN vectors v ON v.rowid = j.value", (json.dumps([int(i) for i in ids]),)).fetchall()
        to = dict(zip((int(i) for i in ids), (int(d) for d in dest)))
        for rid, emb, taken, folder in rows:
            c.execute("DELETE FROM vectors WHERE rowid = ?", (rid,))
            c.execute(f"INSERT INTO vectors(rowid, list, embedding, taken, folder) VALUES (?, ?, {self._param}, ?, ?)",
                      (rid, to[int(rid)], bytes(emb), taken, folder))
        self.grew([to[int(r[0])] for r in rows])

    def _query_blob(self) -> bytes:
        """A zero vector as the MATCH operand of this table (any vector lists a whole partition)."""
        kind = self._param.split("(")[0]
        return bytes({"vec_f32": 4 * self._dim, "vec_bit": self._dim // 8}.get(kind, self._dim))

    def _bump(self) -> None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (EPOCH_KEY,)).fetchone()
        self._conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                           (EPOCH_KEY, str(int(row[0]) + 1 if row else 1)))


def kmeans(x: FloatArray, k: int, iters: int, rng: np.random.Generator) -> FloatArray:
    """Spherical k-means (cosine) of unit rows ``x``: k unit centroids (k <= len(x)); k-means++
    seeds for small k, a random sample of rows for large k (k-means++ costs k passes)."""
    x = np.asarray(x, np.float32)
    k = max(1, min(k, len(x)))
    if k <= 64:
        first = int(rng.integers(len(x)))
        seeds = [first]
        best = x @ x[first]
        for _ in range(1, k):  # the next seed drawn by its distance to the nearest seed so far
            d = np.maximum(0.0, 1.0 - best).astype(np.float64)
            nxt = int(rng.choice(len(x), p=d / d.sum())) if d.sum() > 0 else int(rng.integers(len(x)))
            seeds.append(nxt)
            best = np.maximum(best, x @ x[nxt])
    else:
        seeds = rng.choice(len(x), k, replace=False).tolist()
    c = x[seeds].copy()
    for _ in range(iters):
        a = np.argmax(x @ c.T, axis=1)
        order = np.argsort(a, kind="stable")
        present, starts = np.unique(a[order], return_index=True)
        sums = c.copy()  # a centroid that lost every member keeps its place
        sums[present] = np.add.reduceat(x[order], starts, axis=0)
        c = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return c.astype(np.float32)


def _unit(v: npt.NDArray[np.floating]) -> FloatArray:
    v = np.asarray(v, np.float32)
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)
