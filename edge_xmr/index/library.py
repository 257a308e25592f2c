"""The store: one photo index file (SQLite + sqlite-vec), its rows and vectors.

The lowest layer of the runtime: it reads and writes photos, vectors and meta data, and knows a
model only by its manifest (``ModelCard``). It imports neither the bundle nor the indexer nor the
search; the verbs users call (index, search, ...) live in the façade above it, ``edge_xmr.Library``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import apsw
import numpy as np
import numpy.typing as npt

from ..errors import EdgeXmrError
from . import moments, schema
from .db import connect, file_bytes, read_transaction, write_transaction
from .filters import DateLike, Filters, folder_key, key_range, path_range, wall_seconds_from_epoch, wall_to_iso
from .firstpass import DEFAULT_FIRST_PASS, FirstPassConfig, log_changes, shared
from .pathkeys import lookup_keys
from ..score import LibraryMoments, ScoreConfig
from .stores import DEFAULT_STORE, EMBEDDING_HEADROOM, Store, StoreKind, calibrate_scale, dequantize, quantize

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

# Photos an app gives by its own asset id (``edge_xmr.assets``) share the tables of files: their key
# (photos.path, skipped.path) is ASSET_PREFIX + the id (a file's key is an absolute path, so the two
# never meet), mtime_ns holds the app's modification stamp, size is 0 and hash empty (no bytes are
# hashed), and they sit in one folder, ASSET_FOLDER. That is the whole schema of asset ids.
ASSET_PREFIX = "asset:"
ASSET_FOLDER = "asset:/"


def asset_key(asset_id: str) -> str:
    """The index key of an app's asset id."""
    if not isinstance(asset_id, str) or not asset_id:
        raise ValueError(f"an asset id must be a non-empty string, got {asset_id!r}")
    return ASSET_PREFIX + asset_id


class LibraryError(EdgeXmrError):
    """The index cannot do what was asked (no model loaded, unknown photo, unusable file)."""


class ModelMismatchError(LibraryError):
    """The index was built with another model than the bundle given to open it."""


class ModelCard(Protocol):
    """What the store needs to know of a model: its manifest and identity."""

    manifest: dict[str, Any]

    @property
    def model_id(self) -> str: ...


class EncoderBundle(ModelCard, Protocol):
    """What the runtime needs from a loaded model bundle (``edge_xmr.bundle.Bundle``)."""

    def embed_texts(self, texts: Sequence[str]) -> FloatArray: ...

    def encode_images(self, images: Sequence[Any]) -> tuple[FloatArray, FloatArray]: ...

    def score_candidates(self, text: str, tokens: FloatArray, embeds: FloatArray) -> FloatArray: ...

    def encode_query(self, text: str) -> Any: ...  # has ``.embedding`` (D,); what score_encoded takes

    def score_encoded(self, query: Any, tokens: FloatArray, embeds: FloatArray) -> FloatArray: ...

    @property
    def score_config(self) -> ScoreConfig: ...  # the score's weights (the first stage reads its prior)

    def photo_prior(self, embeds: FloatArray) -> FloatArray: ...  # the per-photo hubness prior hub(e), (n,)


@dataclass(frozen=True)
class PhotoRecord:
    path: str  # the file's index key: its resolved path, in valid Unicode (``pathkeys.path_key``)
    hash: bytes  # sha256 of the file's bytes
    size: int  # file size in bytes
    mtime_ns: int  # modification time, ns since the epoch
    exif_time: int | None  # EXIF capture time in wall-clock seconds (None: the file has none)
    width: int  # width in pixels after EXIF orientation
    height: int  # height in pixels after EXIF orientation

    @property
    def taken(self) -> int:
        """Capture time used by date filters: EXIF if present, else the file's mtime."""
        return self.exif_time if self.exif_time is not None else wall_seconds_from_epoch(self.mtime_ns / 1e9)


@dataclass(frozen=True)
class LibraryInfo:
    schema_version: int  # index schema version
    model_name: str  # name of the model that embedded the photos
    model_id: str  # sha256 identity of that model's bundle
    embedding_id: str  # sha256 of what the stored vectors depend on (its encoders; "" in older indexes)
    dim: int  # embedding dimension D
    metric: str  # similarity of embeddings ("cosine")
    store: StoreKind  # how vec0 keeps embeddings (int8, float32, bit)
    embedding_scale: float  # int8 scale of embeddings (0: not calibrated yet)
    token_scale: float  # int8 scale of image tokens (0: not calibrated yet)
    token_count: int  # image tokens per photo T
    token_dim: int  # size of each image token Dt
    created: str  # ISO time the index was created
    bundle_path: str  # the bundle last used to open it (a hint for the CLI)

    @staticmethod
    def from_meta(meta: dict[str, str]) -> LibraryInfo:
        return LibraryInfo(
            schema_version=int(meta["schema_version"]), model_name=meta.get("model_name", ""),
            model_id=meta.get("model_id", ""), embedding_id=meta.get("embedding_id", ""),
            dim=int(meta["embedding_dim"]), metric=meta.get("metric", "cosine"),
            store=schema.store_from_meta(meta).kind, embedding_scale=float(meta.get("embedding_int8_scale") or 0),
            token_scale=float(meta.get("token_int8_scale") or 0), token_count=int(meta["token_count"]),
            token_dim=int(meta["token_dim"]), created=meta.get("created", ""), bundle_path=meta.get("bundle_path", ""))


@dataclass(frozen=True)
class Candidates:
    ids: IntArray  # photo ids (n,), best first
    embeds: FloatArray  # their stored embeddings, dequantised and unit-normalised (n, D)
    scores: FloatArray  # cosine with the query (n,), descending


@dataclass(frozen=True)
class PhotoInfo:
    id: int  # photo id (rowid in photos and vectors)
    path: str  # the file's resolved path as an index key (``pathkeys.fs_path`` gives the OS path)
    taken: str  # capture time (EXIF, else mtime), ISO wall clock
    width: int  # oriented width in pixels
    height: int  # oriented height in pixels


@dataclass(frozen=True)
class Stats:
    db_path: str  # the index file
    photos: int  # photos indexed
    folders: int  # folders holding them
    skipped: int  # files that could not be indexed
    skipped_files: tuple[tuple[str, str], ...]  # (path, reason) of the first skipped files
    retrying: int  # of the skipped files, those tried again on every run (unreadable, needing an extra)
    model_name: str  # model that embedded the photos
    model_id: str  # its bundle identity
    store: str  # int8, float32 or bit
    dim: int  # embedding dimension
    schema_version: int  # index schema version
    db_bytes: int  # size on disk (with -wal and -shm)
    bytes_per_photo: float  # db_bytes / photos
    first_taken: str | None  # earliest capture time
    last_taken: str | None  # latest capture time

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["skipped_files"] = [{"path": p, "reason": r} for p, r in self.skipped_files]
        return d


_EMPTY_IDS: IntArray = np.zeros((0,), np.int64)
_ENCODE_BATCH = 1024  # photos encoded and inserted at a time by add_photos


class PhotoStore:
    """A photo index file: photos, their vectors and the index's meta data."""

    def __init__(self, conn: apsw.Connection, path: Path, first_pass: FirstPassConfig = DEFAULT_FIRST_PASS):
        self._conn = conn
        self.path = path
        self._first_pass_cfg = first_pass
        self._info = LibraryInfo.from_meta(schema.read_meta(conn))
        self.store = self._make_store()
        self.first_pass = shared(path, self.store, first_pass)

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, db: str | os.PathLike[str] | None = None, model: ModelCard | None = None, *,
             bundle_path: str = "", store: StoreKind = DEFAULT_STORE, create: bool = True,
             first_pass: FirstPassConfig = DEFAULT_FIRST_PASS) -> PhotoStore:
        """Open (or create) an index file.

        Args:
            db: the index file (default: the platform's data folder, see ``edge_xmr.paths``).
            model: the model that fills and searches it (checked against the index's; needed to
                create a new index); ``None`` opens the file without a model.
            bundle_path: the folder of that model's bundle, recorded as a hint for later opens.
            store: for a new index: how embeddings are stored (``int8``, ``float32`` or ``bit``).
            create: create the file if missing.
            first_pass: the in-RAM candidate search's settings (``index.firstpass``).

        Raises:
            ModelMismatchError: the index was built with another model.
            LibraryError: missing file (create=False) or no model to create a new index with.
        """
        from ..paths import default_db_path

        path = Path(db).expanduser() if db is not None else default_db_path()
        if not path.exists() and not create:
            raise LibraryError(f"no index at {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(path)
        try:
            if not schema.has_schema(conn):
                if model is None:
                    raise LibraryError(f"{path} is not an index yet; a model bundle is needed to create one")
                schema.create(conn, Store(store, _manifest_dim(model), 1.0), _new_meta(model, store, bundle_path))
            schema.migrate(conn)
            lib = cls(conn, path, first_pass)
            if model is not None:
                lib._check_model(model, bundle_path)
        except BaseException:
            conn.close()
            raise
        return lib

    def _check_model(self, model: ModelCard, bundle_path: str) -> None:
        name, mid = _manifest_name(model), model.model_id
        info = self._info
        eid = _manifest_embedding_id(model)
        update: dict[str, str] = {}
        if mid != info.model_id and eid and eid == info.embedding_id:
            # same encoders, another reranker (recalibrated or retrained cross-encoder): the stored
            # embeddings and image tokens are what this bundle would compute, so the index stays valid
            update = {"model_id": mid, "model_name": name}
        elif mid == info.model_id and eid and not info.embedding_id:  # indexed before embedding ids
            update = {"embedding_id": eid}
        elif mid != info.model_id:
            raise ModelMismatchError(
                f"{self.path} was indexed with model {info.model_name!r} (id {info.model_id[:12]}), but the "
                f"loaded bundle is model {name!r} (id {mid[:12]}); open it with the bundle it was built with, "
                "or index into a new database")
        if bundle_path and bundle_path != info.bundle_path:
            update["bundle_path"] = bundle_path
        if update:
            with self._write():
                schema.write_meta(self._conn, update)
            self._reload_info()

    def _reload_info(self) -> None:
        self._info = LibraryInfo.from_meta(schema.read_meta(self._conn))
        self.store = self._make_store()
        self.first_pass = shared(self.path, self.store, self._first_pass_cfg)  # another scale: other codes

    def _make_store(self) -> Store:
        return Store(self._info.store, self._info.dim, self._info.embedding_scale or 1.0)

    @property
    def info(self) -> LibraryInfo:
        return self._info

    @property
    def connection(self) -> apsw.Connection:
        return self._conn

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> PhotoStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- whole-library operations ------------------------------------------------------------
    def remove(self, path: str | os.PathLike[str]) -> int:
        """Forget a photo, or every photo under a folder (files are not touched); returns the count."""
        c = self._conn
        where = "path = ? OR (path >= ? AND path < ?)"
        with self._write():
            for key in lookup_keys(path):  # the first spelling that names anything indexed
                args = (key, *path_range(key))
                ids = [int(r[0]) for r in c.execute(f"SELECT id FROM photos WHERE {where}", args)]
                skipped = c.execute(f"SELECT count(*) FROM skipped WHERE {where}", args).fetchone()[0]
                if ids or skipped:
                    self.delete_photos(ids)
                    c.execute(f"DELETE FROM skipped WHERE {where}", args)
                    self.prune_folders()
                    return len(ids)
        return 0

    def stats(self, max_skipped: int = 100) -> Stats:
        c = self._conn
        with read_transaction(c):
            n = self.count()
            folders = int(c.execute("SELECT count(*) FROM folders").fetchone()[0])
            n_skip = int(c.execute("SELECT count(*) FROM skipped").fetchone()[0])
            retrying = int(c.execute("SELECT count(*) FROM skipped WHERE kind != ?",
                                     (schema.SKIP_CONTENT,)).fetchone()[0])
            skipped = tuple((str(p), str(r)) for p, r in c.execute(
                "SELECT path, reason FROM skipped ORDER BY path LIMIT ?", (max_skipped,)))
            lo, hi = c.execute("SELECT min(taken), max(taken) FROM photos").fetchone()
        size = file_bytes(self.path)
        i = self._info
        return Stats(db_path=str(self.path), photos=n, folders=folders, skipped=n_skip, skipped_files=skipped,
                     retrying=retrying,
                     model_name=i.model_name, model_id=i.model_id, store=i.store, dim=i.dim,
                     schema_version=i.schema_version, db_bytes=size, bytes_per_photo=size / n if n else 0.0,
                     first_taken=wall_to_iso(int(lo)) if lo is not None else None,
                     last_taken=wall_to_iso(int(hi)) if hi is not None else None)

    # ---- reading ------------------------------------------------------------------------------
    def count(self) -> int:
        """Photos in the index (a full count: milliseconds at 100k photos)."""
        return int(self._conn.execute("SELECT count(*) FROM photos").fetchone()[0])

    def is_empty(self) -> bool:
        """True when no photo is indexed (constant time)."""
        return self._conn.execute("SELECT 1 FROM photos LIMIT 1").fetchone() is None

    def photo_id(self, path: str | os.PathLike[str]) -> int | None:
        """The id of the photo at ``path`` (any path leading to it, or the path as the library printed it)."""
        for key in lookup_keys(path):
            pid = self.key_id(key)
            if pid is not None:
                return pid
        return None

    def all_ids(self) -> list[int]:
        """The ids of every indexed photo, ascending."""
        return [int(r[0]) for r in self._conn.execute("SELECT id FROM photos ORDER BY id")]

    def key_id(self, key: str) -> int | None:
        """The id of the photo stored under exactly this index key."""
        row = self._conn.execute("SELECT id FROM photos WHERE path = ?", (key,)).fetchone()
        return int(row[0]) if row else None

    def photo_info(self, ids: Sequence[int]) -> dict[int, PhotoInfo]:
        out: dict[int, PhotoInfo] = {}
        for chunk in _chunks([int(i) for i in ids]):
            q = f"SELECT id, path, taken, width, height FROM photos WHERE id IN ({_marks(chunk)})"
            for pid, path, taken, w, h in self._conn.execute(q, chunk):
                out[int(pid)] = PhotoInfo(int(pid), str(path), wall_to_iso(int(taken)), int(w), int(h))
        return out

    def stored(self, ids: Sequence[int]) -> tuple[FloatArray, FloatArray]:
        """Stored (dequantised) embeddings (n, D), unit norm, and image tokens (n, T, Dt) of photos."""
        ids = [int(i) for i in ids]
        return self.embeddings(ids), self.tokens(ids)

    def embeddings(self, ids: Sequence[int]) -> FloatArray:
        """Stored embeddings of photos as used for rescoring and reranking -> (n, D), unit norm."""
        ids = [int(i) for i in ids]
        refine = self._blobs("SELECT id, embedding FROM rerank WHERE id IN ({})", ids)
        knn: dict[int, bytes | None] = dict.fromkeys(ids)
        if self.store.rescores_from_knn_vector:
            knn.update(self._vector_blobs(ids))
        return self.store.decode_many([knn[i] for i in ids], [refine[i] for i in ids])

    def tokens(self, ids: Sequence[int]) -> FloatArray:
        """Stored image tokens of photos, dequantised -> (n, T, Dt) float32."""
        ids = [int(i) for i in ids]
        blobs = self._blobs("SELECT id, tokens FROM rerank WHERE id IN ({})", ids)
        T, Dt = self._info.token_count, self._info.token_dim
        scale = self._info.token_scale or 1.0
        return _stack([dequantize(np.frombuffer(blobs[i] or b"", np.int8), scale).reshape(T, Dt) for i in ids],
                      (0, T, Dt))

    def _vector_blobs(self, ids: list[int]) -> dict[int, bytes | None]:
        """vec0 vectors by rowid. A join on json_each makes vec0 look each one up; ``rowid IN
        (...)`` would scan the whole table (0.1 s at 100k photos)."""
        out: dict[int, bytes | None] = {}
        for chunk in _chunks(ids, 4096):
            for rid, blob in self._conn.execute("SELECT v.rowid, v.embedding FROM json_each(?) j"
                                                " JOIN vectors v ON v.rowid = j.value", (json.dumps(chunk),)):
                out[int(rid)] = bytes(blob)
        missing = [i for i in ids if i not in out]
        if missing:
            raise LibraryError(f"photo ids not in the index: {missing[:5]}")
        return out

    def _blobs(self, sql: str, ids: list[int]) -> dict[int, bytes | None]:
        out: dict[int, bytes | None] = {}
        for chunk in _chunks(ids):
            for rid, blob in self._conn.execute(sql.format(_marks(chunk)), chunk):
                out[int(rid)] = bytes(blob) if blob is not None else None
        missing = [i for i in ids if i not in out]
        if missing:
            raise LibraryError(f"photo ids not in the index: {missing[:5]}")
        return out

    def candidates(self, query: FloatArray, n: int, filters: Filters | None = None) -> Candidates:
        """The ``n`` best photos for a unit query vector by cosine with their stored embeddings, among
        those passing ``filters``: the in-RAM first pass (``index.firstpass``; exact up to
        ``FirstPassConfig.exact_max`` photos), its best candidates rescored exactly above."""
        filters = filters or Filters()
        q = np.asarray(query, np.float32).reshape(-1)
        dim = self._info.dim
        fp = self.first_pass
        with fp.lock, read_transaction(self._conn):  # the catch-up and the rescoring see one state of the index
            fids = self.folder_ids(filters.folder) if filters.folder is not None else None
            if fids is not None and not fids:
                return Candidates(_EMPTY_IDS, np.zeros((0, dim), np.float32), np.zeros((0,), np.float32))
            fp.sync(self._conn)
            ids, embeds, scores = fp.search(q, n, filters.after, filters.before, fids)
            if embeds is None:  # codes: rescore the best of them from their stored vectors
                ids = np.sort(ids)
                embeds = self.embeddings(ids.tolist())
                scores = embeds @ q
                order = np.lexsort((ids, -scores))[:n]
                ids, embeds, scores = ids[order], embeds[order], scores[order]
        return Candidates(np.asarray(ids, np.int64), np.asarray(embeds, np.float32), np.asarray(scores, np.float32))

    def moments(self) -> LibraryMoments:
        """The moments of the indexed photos' stored embeddings (``score.LibraryMoments``): kept up to
        date by every write, O(D^2) to read."""
        with read_transaction(self._conn):
            return moments.read(self._conn, self._info.dim, self.embeddings)

    def folder_ids(self, key: str) -> list[int]:
        lo, hi = key_range(key)
        return [int(r[0]) for r in self._conn.execute("SELECT id FROM folders WHERE path >= ? AND path < ?", (lo, hi))]

    # ---- reading for the indexer ---------------------------------------------------------------
    def file_states(self, root: str) -> dict[str, tuple[int, int, int, bytes]]:
        """path -> (id, size, mtime_ns, hash) of indexed photos under ``root``."""
        lo, hi = path_range(root)
        return {str(p): (int(i), int(s), int(m), bytes(h)) for i, p, s, m, h in self._conn.execute(
            "SELECT id, path, size, mtime_ns, hash FROM photos WHERE path >= ? AND path < ?", (lo, hi))}

    def asset_states(self) -> tuple[dict[str, int], dict[str, tuple[int, str]]]:
        """Of the app's assets: id -> stamp of indexed ones, id -> (stamp, skip kind) of skipped ones."""
        lo, hi = ASSET_PREFIX, ASSET_PREFIX[:-1] + chr(ord(ASSET_PREFIX[-1]) + 1)
        n = len(ASSET_PREFIX)
        photos = {str(p)[n:]: int(m) for p, m in self._conn.execute(
            "SELECT path, mtime_ns FROM photos WHERE path >= ? AND path < ?", (lo, hi))}
        skipped = {str(p)[n:]: (int(m), str(k)) for p, m, k in self._conn.execute(
            "SELECT path, mtime_ns, kind FROM skipped WHERE path >= ? AND path < ?", (lo, hi))}
        return photos, skipped

    def skipped_states(self, root: str) -> dict[str, tuple[int, int]]:
        """path -> (size, mtime_ns) of skipped files under ``root``."""
        lo, hi = path_range(root)
        return {str(p): (int(s), int(m)) for p, s, m in self._conn.execute(
            "SELECT path, size, mtime_ns FROM skipped WHERE path >= ? AND path < ?", (lo, hi))}

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Several reads that see one state of the index, whatever other processes commit meanwhile."""
        with read_transaction(self._conn):
            yield

    # ---- writing -------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One batch of writes, committed together (or not at all)."""
        with self._write():
            yield

    @contextmanager
    def _write(self) -> Iterator[None]:
        """``write_transaction``; a rollback also drops the first pass's codes, which a search inside
        the transaction may have caught up with rows that were never committed."""
        try:
            with write_transaction(self._conn):
                yield
        except BaseException:
            self.first_pass.invalidate()
            raise

    def add_photos(self, records: Sequence[PhotoRecord], embeds: FloatArray, tokens: FloatArray) -> list[int]:
        """Insert (or replace, by path) photos with their float embeddings (n, D) and tokens (n, T, Dt)."""
        embeds = np.asarray(embeds, np.float32)
        tokens = np.asarray(tokens, np.float32)
        if len(records) != len(embeds) or len(records) != len(tokens):
            raise ValueError(f"{len(records)} records but {len(embeds)} embeddings and {len(tokens)} token sets")
        self._check_shapes(embeds, tokens)
        ids = []
        with self._write():
            self._ensure_scales(embeds, tokens)
            tscale = self._info.token_scale
            for start in range(0, len(records), _ENCODE_BATCH):
                part = slice(start, start + _ENCODE_BATCH)
                codes = [self.store.encode(e) for e in embeds[part]]
                stored = self.store.decode_many([k for k, _ in codes], [r for _, r in codes])
                for rec, (knn, refine), t in zip(records[part], codes, tokens[part]):
                    ids.append(self._insert(rec, knn, quantize(t, tscale).tobytes(), refine))
                moments.add(self._conn, self._info.dim, stored, self.embeddings)
        return ids

    def copy_photo(self, record: PhotoRecord, source_id: int) -> int:
        """Insert a photo whose content equals an indexed one's (a copied file): no re-embedding."""
        c = self._conn
        with self._write():
            row = c.execute("SELECT tokens, embedding FROM rerank WHERE id = ?", (source_id,)).fetchone()
            vec = c.execute("SELECT embedding FROM vectors WHERE rowid = ?", (source_id,)).fetchone()
            if row is None or vec is None:
                raise LibraryError(f"photo id {source_id} is not in the index")
            pid = self._insert(record, bytes(vec[0]), bytes(row[0]), bytes(row[1]) if row[1] is not None else None)
            moments.add(c, self._info.dim, self.embeddings([pid]), self.embeddings)
            return pid

    def _insert(self, rec: PhotoRecord, knn: bytes, tokens: bytes, refine: bytes | None) -> int:
        """One photo row, its vector and its rerank row."""
        c = self._conn
        old = c.execute("SELECT id FROM photos WHERE path = ?", (rec.path,)).fetchone()
        if old is not None:
            self.delete_photos([int(old[0])])
        fid = self._folder_id(rec.path)
        c.execute("INSERT INTO photos(path, folder_id, hash, size, mtime_ns, exif_time, taken, width, height)"
                  " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (rec.path, fid, rec.hash, rec.size, rec.mtime_ns, rec.exif_time, rec.taken, rec.width, rec.height))
        pid = int(c.last_insert_rowid())
        c.execute(f"INSERT INTO vectors(rowid, embedding, taken, folder) VALUES (?, {self.store.param_sql}, ?, ?)",
                  (pid, knn, rec.taken, fid))
        c.execute("INSERT INTO rerank(id, tokens, embedding) VALUES (?, ?, ?)", (pid, tokens, refine))
        log_changes(c, [pid], self._first_pass_cfg.log_keep)
        c.execute("DELETE FROM skipped WHERE path = ?", (rec.path,))
        return pid

    def _folder_id(self, path: str) -> int:
        key = ASSET_FOLDER if path.startswith(ASSET_PREFIX) else folder_key(os.path.dirname(path))
        self._conn.execute("INSERT INTO folders(path) VALUES (?) ON CONFLICT(path) DO NOTHING", (key,))
        return int(self._conn.execute("SELECT id FROM folders WHERE path = ?", (key,)).fetchone()[0])

    def move_photo(self, photo_id: int, record: PhotoRecord) -> None:
        """A known photo found at a new path (moved or renamed): keep its vectors, update the rest."""
        c = self._conn
        with self._write():
            other = self.key_id(record.path)
            if other is not None and other != photo_id:
                self.delete_photos([other])
            self._rekey(photo_id, record.path)
            c.execute("UPDATE photos SET size = ?, mtime_ns = ?, exif_time = ?, taken = ?, width = ?, height = ?"
                      " WHERE id = ?", (record.size, record.mtime_ns, record.exif_time, record.taken,
                                        record.width, record.height, photo_id))
            c.execute("UPDATE vectors SET taken = ? WHERE rowid = ?", (record.taken, photo_id))
            log_changes(c, [photo_id], self._first_pass_cfg.log_keep)

    def _rekey(self, photo_id: int, key: str) -> None:
        fid = self._folder_id(key)
        self._conn.execute("UPDATE photos SET path = ?, folder_id = ? WHERE id = ?", (key, fid, photo_id))
        self._conn.execute("UPDATE vectors SET folder = ? WHERE rowid = ?", (fid, photo_id))
        log_changes(self._conn, [photo_id], self._first_pass_cfg.log_keep)
        self._conn.execute("DELETE FROM skipped WHERE path = ?", (key,))

    def adopt_alias(self, alias: str, target: str) -> int:
        """Photos indexed under the key ``alias`` (a file or folder path that now resolves to the key
        ``target``: a symlink) take their resolved keys, keeping their vectors; a row whose resolved
        key is indexed too was the same photo twice and is dropped. Returns the rows dropped."""
        c, dropped = self._conn, 0
        lo, hi = path_range(alias)
        where = "path = ? OR (path >= ? AND path < ?)"
        with self._write():
            for pid, key in c.execute(f"SELECT id, path FROM photos WHERE {where}", (alias, lo, hi)).fetchall():
                new = target + str(key)[len(alias):]
                if self.key_id(new) is None:
                    self._rekey(int(pid), new)
                else:
                    self.delete_photos([int(pid)])
                    dropped += 1
            c.execute(f"DELETE FROM skipped WHERE {where}", (alias, lo, hi))  # found again under the target
            self.prune_folders()
        return dropped

    def touch_photo(self, photo_id: int, size: int, mtime_ns: int) -> None:
        """Same content, new size/mtime stamp (e.g. the file was rewritten unchanged, or read again
        after a failure)."""
        c = self._conn
        with self._write():
            c.execute("UPDATE photos SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, photo_id))
            c.execute("DELETE FROM skipped WHERE path = (SELECT path FROM photos WHERE id = ?)", (photo_id,))

    def forget_key(self, key: str) -> int:
        """The file at this key is gone: drop its photo and skipped rows; returns the photos dropped."""
        c = self._conn
        with self._write():
            pid = self.key_id(key)
            if pid is not None:
                self.delete_photos([pid])
            c.execute("DELETE FROM skipped WHERE path = ?", (key,))
        return int(pid is not None)

    def delete_photos(self, ids: Sequence[int]) -> None:
        c = self._conn
        with self._write():
            known = self.photo_info(ids)
            leaving = [i for i in dict.fromkeys(int(p) for p in ids) if i in known]
            try:
                gone: FloatArray | None = self.embeddings(leaving) if leaving else None
            except LibraryError:  # a photo row without its vectors
                gone = None
            if leaving:
                moments.remove(c, self._info.dim, gone)
            unique = list(dict.fromkeys(int(p) for p in ids))
            for pid in unique:
                c.execute("DELETE FROM vectors WHERE rowid = ?", (pid,))
                c.execute("DELETE FROM rerank WHERE id = ?", (pid,))
                c.execute("DELETE FROM photos WHERE id = ?", (pid,))
            log_changes(c, unique, self._first_pass_cfg.log_keep)

    def prune_folders(self) -> None:
        self._conn.execute("DELETE FROM folders WHERE id NOT IN (SELECT DISTINCT folder_id FROM photos)")

    def record_skipped(self, path: str, size: int, mtime_ns: int, reason: str,
                       kind: str = schema.SKIP_CONTENT) -> None:
        """Remember a file (by key) that could not be indexed, and when to try again (``kind``, see
        ``schema``). A file whose new content is unusable loses its indexed photo; a file that cannot
        be read now keeps it (the photo may well be fine: a scan error is not a change)."""
        c = self._conn
        with self._write():
            old = self.key_id(path)
            if old is not None and kind == schema.SKIP_CONTENT:
                self.delete_photos([old])
            c.execute("INSERT INTO skipped(path, size, mtime_ns, reason, at, kind) VALUES (?, ?, ?, ?, ?, ?)"
                      " ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,"
                      " reason = excluded.reason, at = excluded.at, kind = excluded.kind",
                      (path, size, mtime_ns, reason, int(time.time()), kind))

    def _check_shapes(self, embeds: FloatArray, tokens: FloatArray) -> None:
        i = self._info
        if embeds.ndim != 2 or embeds.shape[1] != i.dim:
            raise ValueError(f"embeddings must be (n, {i.dim}), got {embeds.shape}")
        if tokens.ndim != 3 or tokens.shape[1:] != (i.token_count, i.token_dim):
            raise ValueError(f"tokens must be (n, {i.token_count}, {i.token_dim}), got {tokens.shape}")

    def _ensure_scales(self, embeds: FloatArray, tokens: FloatArray) -> None:
        """Calibrate int8 scales on the first photos when the bundle's manifest has none."""
        if (self._info.embedding_scale and self._info.token_scale) or not len(embeds):
            return
        self._reload_info()  # inside the write transaction: another process may have calibrated first
        i = self._info
        if i.embedding_scale and i.token_scale:
            return
        schema.write_meta(self._conn, {
            "embedding_int8_scale": repr(i.embedding_scale or calibrate_scale(embeds, 1.0) * EMBEDDING_HEADROOM),
            "token_int8_scale": repr(i.token_scale or calibrate_scale(tokens))})
        self._reload_info()


# ---- helpers ------------------------------------------------------------------------------------
def _manifest_name(model: ModelCard) -> str:
    return str(model.manifest.get("model", {}).get("name", ""))


def _manifest_embedding_id(model: ModelCard) -> str:
    return str(model.manifest.get("model", {}).get("embedding_id", ""))


def _manifest_dim(model: ModelCard) -> int:
    return int(model.manifest["embedding"]["dim"])


def _new_meta(model: ModelCard, store: StoreKind, bundle_path: str) -> dict[str, str]:
    m = model.manifest
    storage = m.get("storage") or {}
    return {
        "model_name": _manifest_name(model), "model_id": model.model_id,
        "embedding_id": _manifest_embedding_id(model),
        "embedding_dim": str(_manifest_dim(model)), "metric": str(m.get("embedding", {}).get("metric", "cosine")),
        "store": store,
        "embedding_int8_scale": repr(float(storage.get("embedding_int8_scale") or 0.0) * EMBEDDING_HEADROOM),
        "token_int8_scale": repr(float(storage.get("token_int8_scale") or 0.0)),
        "token_count": str(int(m["image_tokens"]["count"])), "token_dim": str(int(m["image_tokens"]["dim"])),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "bundle_path": bundle_path,
    }


def require_model(bundle: EncoderBundle | None) -> EncoderBundle:
    """The loaded model bundle, or the error that says how to get one."""
    if bundle is None:
        raise LibraryError("no model bundle loaded: open the library with bundle=...")
    return bundle


def _marks(items: Sequence[object]) -> str:
    return ",".join("?" * len(items))


def _chunks(ids: list[int], size: int = 500) -> Iterator[list[int]]:
    for i in range(0, len(ids), size):
        yield ids[i:i + size]


def _stack(rows: list[FloatArray], empty_shape: tuple[int, ...]) -> FloatArray:
    return np.stack(rows).astype(np.float32) if rows else np.zeros(empty_shape, np.float32)
