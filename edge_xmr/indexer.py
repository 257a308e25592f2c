"""Incremental indexing of a folder tree into a Library.

1. Scan: every image file under the root (size, mtime) goes into a temporary table; files whose
   path, size and mtime match an indexed photo (or a skipped file) are not touched again.
2. The rest is read by worker threads: sha256 of the bytes, header (size, EXIF orientation and
   capture time), and, unless the content is already indexed, a reduced-size decode (JPEG draft
   mode; 12 MP photos decode at 1/4 or 1/8 size) oriented and resized to the model's input.
3. The main thread embeds decoded photos in batches and commits each batch in one transaction:
   new files are added; changed files re-embedded; files with an indexed content hash are moved
   (the old path is gone) or copied (it still exists) without re-embedding; same content with a
   new mtime is re-stamped; unreadable files are recorded in ``skipped`` with the reason.
4. Indexed photos under the root that were not found are removed.

Every batch is one transaction: a run killed at any point (even ``kill -9``) resumes where it
stopped, with no duplicate rows. Memory does not grow with library size (the scan lives in a
temporary table; worker threads keep at most a few batches of decoded photos in flight).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import apsw
from PIL import Image

from .index.db import connect
from .index.filters import path_range, to_wall_seconds
from .index.library import Library, LibraryError, PhotoRecord
from .preprocess import ImageError, load_image

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif"})
HEIF_MISSING = "HEIC/HEIF support is not installed (pip install 'edge-xmr[heif]')"

_EXIF_IFD, _DATETIME_ORIGINAL, _DATETIME, _ORIENTATION = 0x8769, 0x9003, 0x0132, 0x0112


@dataclass(frozen=True)
class IndexOptions:
    batch_size: int = 32  # photos per encoder call and per committed transaction
    workers: int = 2  # threads that read, hash and decode files
    follow_symlinks: bool = False  # descend into symlinked folders and index symlinked files
    include_hidden: bool = False  # also index files and folders whose name starts with "."


@dataclass(frozen=True)
class Progress:
    done: int  # files processed so far (of those that needed work)
    total: int  # files that need work in this run
    added: int  # photos added or re-embedded so far
    skipped: int  # files that failed so far
    elapsed: float  # seconds since processing started

    @property
    def rate(self) -> float:
        """Files per second."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float:
        """Seconds left at the current rate."""
        return (self.total - self.done) / self.rate if self.rate > 0 else float("inf")


@dataclass(frozen=True)
class IndexReport:
    scanned: int = 0  # image files found
    added: int = 0  # new photos embedded
    updated: int = 0  # changed photos re-embedded
    moved: int = 0  # photos found at a new path (by content hash), not re-embedded
    copied: int = 0  # copies of indexed photos, not re-embedded
    unchanged: int = 0  # files already indexed as they are
    removed: int = 0  # photos whose file is gone
    skipped: int = 0  # files that could not be indexed in this run (see ``stats``)
    seconds: float = 0.0  # wall time of the run


@dataclass(frozen=True)
class _Entry:
    path: str  # absolute path
    size: int  # bytes at scan time
    mtime_ns: int  # mtime at scan time


@dataclass(frozen=True)
class _Prepared:
    entry: _Entry  # the file, with size/mtime as read
    record: PhotoRecord | None  # metadata and hash (None: the file failed)
    image: Image.Image | None  # decoded S x S RGB image (None: content already indexed, or failed)
    error: str | None  # why the file failed
    vanished: bool = False  # the file disappeared since the scan


# ---- public entry points ---------------------------------------------------------------------------
def heif_available() -> bool:
    """Register pillow-heif's opener if the optional extra is installed."""
    try:
        from pillow_heif import register_heif_opener  # type: ignore[import-not-found]
    except ImportError:
        return False
    register_heif_opener()
    return True


def index_folder(lib: Library, root: str | os.PathLike[str], progress: Callable[[Progress], None] | None = None,
                 options: IndexOptions = IndexOptions()) -> IndexReport:
    """Bring the index up to date with a folder tree (or a single file)."""
    root_s = os.path.abspath(os.path.expanduser(root))
    if os.path.isfile(root_s):
        return index_files(lib, [root_s], progress, options)
    if not os.path.isdir(root_s):
        raise LibraryError(f"not a folder: {root_s}")
    return _Run(lib, options, progress).run(_scan(root_s, options), root_s)


def index_files(lib: Library, paths: Sequence[str], progress: Callable[[Progress], None] | None = None,
                options: IndexOptions = IndexOptions()) -> IndexReport:
    """Index the given files (no removal of anything else)."""
    entries = []
    for p in paths:
        st = _stat(p, options.follow_symlinks)
        if st is None:
            raise LibraryError(f"not a file: {p}")
        entries.append(_Entry(os.path.abspath(p), st.st_size, st.st_mtime_ns))
    return _Run(lib, options, progress).run(iter(entries), None)


# ---- scanning -----------------------------------------------------------------------------------
def _scan(root: str, options: IndexOptions) -> Iterator[_Entry]:
    exts = IMAGE_EXTENSIONS | HEIF_EXTENSIONS
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                items = sorted(it, key=lambda d: d.name)
        except OSError:
            continue  # unreadable folder
        for d in items:
            if d.name.startswith(".") and not options.include_hidden:
                continue
            try:
                if d.is_dir(follow_symlinks=options.follow_symlinks):
                    stack.append(d.path)
                elif os.path.splitext(d.name)[1].lower() in exts and d.is_file(follow_symlinks=options.follow_symlinks):
                    st = d.stat(follow_symlinks=options.follow_symlinks)
                    yield _Entry(d.path, st.st_size, st.st_mtime_ns)
            except OSError:
                continue


def _stat(path: str, follow: bool) -> os.stat_result | None:
    try:
        st = os.stat(path, follow_symlinks=follow)
    except OSError:
        return None
    return st if os.path.isfile(path) else None


# ---- reading one file (worker threads) ------------------------------------------------------------
def _sha256(f: io.BufferedReader) -> bytes:
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.digest()


def _exif_time(exif: Image.Exif) -> int | None:
    raw = exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
    if not isinstance(raw, str):
        return None
    text = raw.strip().replace("\x00", "")
    try:  # "YYYY:MM:DD HH:MM:SS"
        return to_wall_seconds(text[:10].replace(":", "-") + "T" + text[11:19])
    except ValueError:
        return None


def _header(path: str) -> tuple[int, int, int | None]:
    """(width, height) after EXIF orientation and the EXIF capture time, from the header only."""
    with Image.open(path) as im:
        w, h = im.size
        exif = im.getexif()
        if exif.get(_ORIENTATION) in (5, 6, 7, 8):
            w, h = h, w
        return w, h, _exif_time(exif)


def _decode(path: str, size: int) -> Image.Image:
    im = load_image(path, size)  # draft-mode decode, EXIF orientation, RGB
    return im if im.size == (size, size) else im.resize((size, size), Image.BICUBIC)


def _prepare(entry: _Entry, size: int, known: Callable[[bytes], bool], heif: bool) -> _Prepared:
    path = entry.path
    if os.path.splitext(path)[1].lower() in HEIF_EXTENSIONS and not heif:
        return _Prepared(entry, None, None, HEIF_MISSING)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            entry = _Entry(path, st.st_size, st.st_mtime_ns)
            if st.st_size == 0:
                return _Prepared(entry, None, None, "empty file")
            digest = _sha256(f)  # type: ignore[arg-type]
    except FileNotFoundError:
        return _Prepared(entry, None, None, "vanished", vanished=True)
    except OSError as e:
        return _Prepared(entry, None, None, f"cannot read file ({e.strerror or e})")
    try:
        w, h, taken = _header(path)
        record = PhotoRecord(path, digest, entry.size, entry.mtime_ns, taken, w, h)
        image = None if known(digest) else _decode(path, size)
    except ImageError as e:
        return _Prepared(entry, None, None, _reason(str(e), path))
    except Image.DecompressionBombError as e:
        return _Prepared(entry, None, None, f"decompression bomb ({e})")
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        return _Prepared(entry, None, None, f"cannot decode image ({e})")
    return _Prepared(entry, record, image, None)


def _reason(message: str, path: str) -> str:
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


# ---- one run -------------------------------------------------------------------------------------
class _Run:
    """State of one indexing run: counters, the worker pool and per-thread read connections."""

    def __init__(self, lib: Library, options: IndexOptions, progress: Callable[[Progress], None] | None):
        if options.batch_size < 1 or options.workers < 1:
            raise ValueError("batch_size and workers must be >= 1")
        self.lib = lib
        self.bundle = lib.require_bundle()
        self.size = int(self.bundle.manifest["preprocessing"]["size"])
        self.options = options
        self.progress = progress
        self.heif = heif_available()
        self.counts: dict[str, int] = dict.fromkeys(IndexReport.__dataclass_fields__, 0)
        self._local = threading.local()
        self._conns: list[apsw.Connection] = []
        self._lock = threading.Lock()

    # reads from worker threads use their own connections (WAL snapshots of committed batches)
    def _known(self, digest: bytes) -> bool:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.lib.path)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn.execute("SELECT 1 FROM photos WHERE hash = ? LIMIT 1", (digest,)).fetchone() is not None

    def run(self, entries: Iterator[_Entry], root: str | None) -> IndexReport:
        t0 = time.perf_counter()
        conn = self.lib.connection
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS scan(path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
                     " todo INTEGER NOT NULL DEFAULT 1)")
        conn.execute("DELETE FROM temp.scan")
        try:
            total = self._load_scan(entries)
            self._process(total)
            if root is not None:
                self._remove_missing(root)
        finally:
            conn.execute("DROP TABLE IF EXISTS temp.scan")
            for c in self._conns:
                c.close()
        return IndexReport(**{**self.counts, "seconds": round(time.perf_counter() - t0, 3)})

    def _load_scan(self, entries: Iterator[_Entry]) -> int:
        """Fill temp.scan; mark files unchanged since the last run; returns how many need work."""
        conn = self.lib.connection
        while True:
            chunk = [(e.path, e.size, e.mtime_ns) for e in _take(entries, 2000)]
            if not chunk:
                break
            conn.executemany("INSERT OR IGNORE INTO temp.scan(path, size, mtime_ns) VALUES (?, ?, ?)", chunk)
        conn.execute(
            "UPDATE temp.scan SET todo = 0 WHERE EXISTS (SELECT 1 FROM main.photos p WHERE p.path = scan.path"
            " AND p.size = scan.size AND p.mtime_ns = scan.mtime_ns) OR EXISTS (SELECT 1 FROM main.skipped s"
            " WHERE s.path = scan.path AND s.size = scan.size AND s.mtime_ns = scan.mtime_ns)")
        n, todo = conn.execute("SELECT count(*), coalesce(sum(todo), 0) FROM temp.scan").fetchone()
        self.counts["scanned"] = int(n)
        self.counts["unchanged"] = int(n) - int(todo)
        return int(todo)

    def _todo(self) -> Iterator[_Entry]:
        last = 0
        while True:
            rows = self.lib.connection.execute(
                "SELECT rowid, path, size, mtime_ns FROM temp.scan WHERE todo = 1 AND rowid > ? ORDER BY rowid"
                " LIMIT 1000", (last,)).fetchall()
            if not rows:
                return
            for rid, path, size, mtime in rows:
                yield _Entry(str(path), int(size), int(mtime))
            last = int(rows[-1][0])

    def _prepared(self, pool: ThreadPoolExecutor) -> Iterator[_Prepared]:
        """Worker results in scan order, with a bounded number in flight."""
        window: deque[Future[_Prepared]] = deque()
        todo = self._todo()
        limit = 2 * self.options.batch_size + self.options.workers
        for entry in todo:
            window.append(pool.submit(_prepare, entry, self.size, self._known, self.heif))
            if len(window) >= limit:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    def _process(self, total: int) -> None:
        t0 = time.perf_counter()
        done = 0
        with ThreadPoolExecutor(self.options.workers, thread_name_prefix="edge-xmr-decode") as pool:
            for batch in _batches(self._prepared(pool), self.options.batch_size):
                self._apply(batch)
                done += len(batch)
                if self.progress is not None:
                    self.progress(Progress(done, total, self.counts["added"] + self.counts["updated"],
                                           self.counts["skipped"], time.perf_counter() - t0))

    def _apply(self, batch: list[_Prepared]) -> None:
        batch = self._fix_stale_copies(batch)
        images = [p.image for p in batch if p.image is not None]
        embeds, tokens = self.bundle.encode_images(images) if images else (None, None)
        lib, j = self.lib, 0
        with lib.transaction():
            for p in batch:
                if p.image is not None:
                    self._add(p, embeds[j:j + 1], tokens[j:j + 1])  # type: ignore[index]
                    j += 1
                elif p.record is None:
                    self._skip(p)
                else:
                    self._reuse(p.record)

    def _add(self, p: _Prepared, embed: Any, tokens: Any) -> None:
        assert p.record is not None
        existed = self.lib.photo_id(p.record.path) is not None
        self.lib.add_photos([p.record], embed, tokens)
        self.counts["updated" if existed else "added"] += 1

    def _skip(self, p: _Prepared) -> None:
        if p.vanished:
            return
        self.lib.record_skipped(p.entry.path, p.entry.size, p.entry.mtime_ns, p.error or "unknown error")
        self.counts["skipped"] += 1

    def _reuse(self, rec: PhotoRecord) -> None:
        """Content already indexed: same path (re-stamp), a vanished path (move), else a copy."""
        lib, conn = self.lib, self.lib.connection
        rows = conn.execute("SELECT id, path FROM photos WHERE hash = ? ORDER BY id", (rec.hash,)).fetchall()
        for pid, path in rows:
            if path == rec.path:
                lib.touch_photo(int(pid), rec.size, rec.mtime_ns)
                self.counts["unchanged"] += 1
                return
        for pid, path in rows:
            if not os.path.exists(str(path)):
                lib.move_photo(int(pid), rec)
                self.counts["moved"] += 1
                return
        lib.copy_photo(rec, int(rows[0][0]))
        self.counts["copied"] += 1

    def _fix_stale_copies(self, batch: list[_Prepared]) -> list[_Prepared]:
        """A worker saw the content as indexed, but that photo changed since: decode it after all."""
        out = []
        for p in batch:
            if p.record is not None and p.image is None and not self._known_now(p.record.hash):
                try:
                    p = replace(p, image=_decode(p.entry.path, self.size))
                except (ImageError, OSError) as e:
                    p = _Prepared(p.entry, None, None, _reason(str(e), p.entry.path))
            out.append(p)
        return out

    def _known_now(self, digest: bytes) -> bool:
        row = self.lib.connection.execute("SELECT 1 FROM photos WHERE hash = ? LIMIT 1", (digest,)).fetchone()
        return row is not None

    def _remove_missing(self, root: str) -> None:
        """Photos and skipped entries under ``root`` whose file was not found in this scan."""
        lib, conn = self.lib, self.lib.connection
        lo, hi = path_range(root)
        gone = [int(r[0]) for r in conn.execute(
            "SELECT id FROM photos WHERE path >= ? AND path < ? AND path NOT IN (SELECT path FROM temp.scan)",
            (lo, hi))]
        for chunk in _chunked(gone, 500):
            with lib.transaction():
                lib.delete_photos(chunk)
        with lib.transaction():
            conn.execute("DELETE FROM skipped WHERE path >= ? AND path < ? AND path NOT IN"
                         " (SELECT path FROM temp.scan)", (lo, hi))
            lib.prune_folders()
        self.counts["removed"] = len(gone)


def _take(it: Iterator[_Entry], n: int) -> list[_Entry]:
    out = []
    for e in it:
        out.append(e)
        if len(out) >= n:
            break
    return out


def _batches(it: Iterator[_Prepared], n: int) -> Iterator[list[_Prepared]]:
    batch: list[_Prepared] = []
    for p in it:
        batch.append(p)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


def _chunked(ids: list[int], n: int) -> Iterator[list[int]]:
    for i in range(0, len(ids), n):
        yield ids[i:i + n]


def default_workers() -> int:
    """Decoding threads: one per CPU core (the encoder's own threads overlap with them)."""
    return max(1, min(8, os.cpu_count() or 1))


__all__ = ["HEIF_EXTENSIONS", "IMAGE_EXTENSIONS", "IndexOptions", "IndexReport", "Progress", "default_workers",
           "heif_available", "index_files", "index_folder"]
