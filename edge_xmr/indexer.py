"""Incremental indexing of a folder tree into a Library.

1. Scan: every image file under the root (size, mtime) goes into a temporary table under one key
   per file (its resolved path, in valid Unicode whatever bytes its name holds: ``index.pathkeys``;
   a file reached twice, through a symlink or a hard link, counts once by device and inode); files
   whose key, size and mtime match an indexed photo (or a file whose content could not be used) are
   not touched again. Folders and entries that cannot be read are recorded as scan errors.
2. The rest is read by worker threads: sha256 of the bytes, header (size, EXIF orientation and
   capture time), and, unless the content is already indexed, a reduced-size decode (JPEG draft
   mode; 12 MP photos decode at 1/4 or 1/8 size) oriented and resized to the model's input.
3. The main thread runs decoded photos through the image encoder a few at a time
   (``IndexOptions.encoder_batch``; each decoded image is dropped once encoded) and commits
   ``batch_size`` photos per transaction:
   new files are added; changed files re-embedded; files with an indexed content hash are moved
   (the old path is gone) or copied (it still exists) without re-embedding; same content with a
   new mtime is re-stamped; files that fail are recorded in ``skipped`` with the reason and its
   kind: unusable content is tried again once the file changes, a file that could not be read
   (permission, I/O error) on every run.
4. Indexed photos under the root that are proven absent are removed: the folder holding them (or
   one above) was listed and they were not in it. Nothing below a folder or entry that could not be
   read is removed: a scan error is never read as "the file is gone".

Every batch is one transaction: a run killed at any point (even ``kill -9``) resumes where it
stopped, with no duplicate rows. Memory does not grow with library size (the scan lives in a
temporary table; at most ``IndexOptions.max_in_flight`` files are read and decoded ahead of the
encoder), and the encoder's working memory is bounded by its small batches (bench/bench_index_memory.py).
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO, Protocol

import apsw
from PIL import Image

from .index.db import connect
from .index.filters import path_range, to_wall_seconds
from .index.library import EncoderBundle, LibraryError, PhotoRecord, PhotoStore, require_model
from .index.pathkeys import fs_path, path_key, resolve
from .index.schema import SKIP_CONTENT, SKIP_UNREADABLE, SKIP_UNSUPPORTED
from .preprocess import ImageError, ImageReadError, load_image

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif"})
HEIF_MISSING = "HEIC/HEIF support is not installed (pip install 'edge-xmr[heif]')"
_EXTENSIONS = IMAGE_EXTENSIONS | HEIF_EXTENSIONS

_EXIF_IFD, _DATETIME_ORIGINAL, _DATETIME, _ORIENTATION = 0x8769, 0x9003, 0x0132, 0x0112
_GONE = (FileNotFoundError, NotADirectoryError)  # errors that prove a path absent
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)  # a FIFO never blocks
MAX_REPORTED_ERRORS = 100  # scan errors listed by path in an IndexReport


@dataclass(frozen=True)
class IndexOptions:
    batch_size: int = 32  # photos per committed transaction
    workers: int = 2  # threads that read, hash and decode files (local pipeline; Ray: RayOptions.decoders)
    encoder_batch: int = 4  # decoded photos per image-encoder call: the encoder's working memory grows
    # with it (about 20-25 MB per photo with the default model's views), its speed does not
    # (bench/bench_index_memory.py: 16 per call peaked far above the 500 MB budget, 4 is as fast)
    max_in_flight: int = 16  # files read and decoded ahead of the encoder (each waits as one decoded
    # S x S image, ~150 kB at 224 px; a worker decoding a non-JPEG photo holds it at full size
    # meanwhile); at least ``workers``. The local pipeline's; on Ray, Ray Data's backpressure bounds it
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
    merged: int = 0  # rows of a photo indexed twice under two paths (a symlink), folded into one
    unreadable: int = 0  # folders and entries the scan could not read (permission, I/O error)
    kept: int = 0  # indexed photos below those, kept as they were (not removed, not checked)
    errors: tuple[tuple[str, str], ...] = ()  # (path, reason) of the first scan errors


@dataclass(frozen=True)
class _Entry:
    key: str  # index key of the file (``pathkeys``: resolved path, valid Unicode)
    size: int  # bytes at scan time
    mtime_ns: int  # mtime at scan time
    dev: int | None = None  # st_dev, st_ino: one file reached by two paths is indexed once
    ino: int | None = None

    @property
    def path(self) -> str:
        """The OS path to open."""
        return fs_path(self.key)


@dataclass(frozen=True)
class _Prepared:
    entry: _Entry  # the file, with size/mtime as read
    record: PhotoRecord | None  # metadata and hash (None: the file failed)
    image: Image.Image | None  # decoded S x S RGB image (None: content already indexed, failed, or encoded)
    error: str | None  # why the file failed
    kind: str = SKIP_CONTENT  # when a failed file is tried again (``index.schema``)
    vanished: bool = False  # the file disappeared since the scan
    vectors: tuple[Any, Any] | None = None  # (embedding (1, D), tokens (1, T, Dt)) once encoded


@dataclass
class _ScanErrors:
    """Paths (keys) the scan could not read, with the reason; nothing below them is proven absent."""

    reasons: dict[str, str] = field(default_factory=dict)

    def add(self, path: str, error: OSError) -> None:
        self.reasons.setdefault(path_key(path), path_key(error.strerror or str(error)))

    def covers(self, key: str, root: str) -> bool:
        """Whether ``key`` (below ``root``) lies at or below a path that could not be read."""
        while True:
            if key in self.reasons:
                return True
            parent = os.path.dirname(key)
            if parent == key or len(parent) < len(root):
                return False
            key = parent


# ---- public entry points ---------------------------------------------------------------------------
def heif_available() -> bool:
    """Register pillow-heif's opener if the optional extra is installed."""
    try:
        from pillow_heif import register_heif_opener  # type: ignore[import-not-found]
    except ImportError:
        return False
    register_heif_opener()
    return True


def index_folder(lib: PhotoStore, model: EncoderBundle | None, root: str | os.PathLike[str], progress: Callable[[Progress], None] | None = None,
                 options: IndexOptions = IndexOptions(), pipeline: Pipeline | None = None) -> IndexReport:
    """Bring the index up to date with a folder tree (or a single file). The folder is indexed
    under its resolved path, whatever symlink leads to it. ``pipeline``: where files are read,
    decoded and encoded (default: this process, ``local_pipeline``; ``edge_xmr.ray_index``: a Ray
    cluster); scanning and writing are the same either way."""
    given = os.path.abspath(os.path.expanduser(root))
    root_s = resolve(given)
    if os.path.isfile(root_s):
        return index_files(lib, model, [given], progress, options, pipeline)
    if not os.path.isdir(root_s):
        raise LibraryError(f"not a folder: {root_s}")
    errors = _ScanErrors()
    return _Run(lib, model, options, progress, pipeline).run(_scan(root_s, options, errors), errors, root_s,
                                                             {given: root_s})


def index_files(lib: PhotoStore, model: EncoderBundle | None, paths: Sequence[str | os.PathLike[str]],
                progress: Callable[[Progress], None] | None = None,
                options: IndexOptions = IndexOptions(), pipeline: Pipeline | None = None) -> IndexReport:
    """Index the given files, each under its resolved path (no removal of anything else)."""
    entries, aliases = [], {}
    for p in paths:
        given = os.path.abspath(os.path.expanduser(p))
        real = resolve(given)
        try:
            st = os.stat(real)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise LibraryError(f"not a file: {path_key(given)}")
        entries.append(_entry(real, st))
        aliases[given] = real
    return _Run(lib, model, options, progress, pipeline).run(iter(entries), _ScanErrors(), None, aliases)


# ---- scanning -----------------------------------------------------------------------------------
def _entry(path: str, st: os.stat_result) -> _Entry:
    ino = (st.st_dev, st.st_ino) if st.st_ino else (None, None)  # 0: no inode numbers (some Windows calls)
    return _Entry(path_key(path), st.st_size, st.st_mtime_ns, *ino)


def _scan(root: str, options: IndexOptions, errors: _ScanErrors) -> Iterator[_Entry]:
    """Image files below ``root`` (depth first, names sorted). What cannot be read goes to ``errors``;
    what vanished meanwhile is simply not there. Each folder is walked once (by device and inode):
    symlink loops and a folder reached twice are harmless."""
    walked: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        items = _list(folder, walked, errors)
        for d in items or ():
            if d.name.startswith(".") and not options.include_hidden:
                continue
            try:
                entry, sub = _visit(d, options.follow_symlinks)
            except _GONE:
                continue  # vanished since the listing: absent
            except OSError as e:
                errors.add(d.path, e)
                continue
            if sub is not None:
                stack.append(sub)
            elif entry is not None:
                yield entry


def _list(folder: str, walked: set[tuple[int, int]], errors: _ScanErrors) -> list[os.DirEntry[str]] | None:
    """The folder's entries sorted by name; None if it was walked already, vanished or failed."""
    try:
        st = os.stat(folder)
        if st.st_ino and (st.st_dev, st.st_ino) in walked:
            return None
        walked.add((st.st_dev, st.st_ino))
        with os.scandir(folder) as it:
            return sorted(it, key=lambda d: d.name)  # a read error midway fails the whole folder
    except _GONE:
        return None
    except OSError as e:
        errors.add(folder, e)
        return None


def _visit(d: os.DirEntry[str], follow: bool) -> tuple[_Entry | None, str | None]:
    """(an image file, or a folder to walk) for one directory entry; links resolved when followed."""
    link = follow and d.is_symlink()
    if d.is_dir(follow_symlinks=follow):
        return None, resolve(d.path) if link else d.path
    if os.path.splitext(d.name)[1].lower() not in _EXTENSIONS or not d.is_file(follow_symlinks=follow):
        return None, None
    path = resolve(d.path) if link else d.path
    return _entry(path, os.stat(path) if link else d.stat(follow_symlinks=False)), None


# ---- reading one file (worker threads) ------------------------------------------------------------
def _sha256(f: BinaryIO) -> bytes:
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


def _header(f: BinaryIO) -> tuple[int, int, int | None]:
    """(width, height) after EXIF orientation and the EXIF capture time, from the header only."""
    with Image.open(f) as im:
        w, h = im.size
        exif = im.getexif()
        if exif.get(_ORIENTATION) in (5, 6, 7, 8):
            w, h = h, w
        return w, h, _exif_time(exif)


def _decode(source: str | BinaryIO, size: int) -> Image.Image:
    im = load_image(source, size)  # draft-mode decode, EXIF orientation, RGB
    return im if im.size == (size, size) else im.resize((size, size), Image.BICUBIC)


def _prepare(entry: _Entry, size: int, known: Callable[[bytes], bool], heif: bool) -> _Prepared:
    """Read one file: its hash, header and (unless its content is indexed) decoded image, all from
    one open file, so that what is hashed is what is decoded."""
    path = entry.path
    if os.path.splitext(path)[1].lower() in HEIF_EXTENSIONS and not heif:
        return _Prepared(entry, None, None, HEIF_MISSING, SKIP_UNSUPPORTED)
    try:
        with open(path, "rb", opener=lambda p, _: os.open(p, _OPEN_FLAGS)) as f:
            st = os.fstat(f.fileno())
            entry = replace(entry, size=st.st_size, mtime_ns=st.st_mtime_ns)
            if not stat.S_ISREG(st.st_mode):
                return _Prepared(entry, None, None, "not a regular file")
            if st.st_size == 0:
                return _Prepared(entry, None, None, "empty file")
            digest = _sha256(f)
            f.seek(0)
            w, h, taken = _header(f)
            record = PhotoRecord(entry.key, digest, entry.size, entry.mtime_ns, taken, w, h)
            f.seek(0)
            image = None if known(digest) else _decode(f, size)
    except _GONE:
        return _Prepared(entry, None, None, "vanished", vanished=True)
    except Exception as e:  # noqa: BLE001 - one file never stops the run; _failed sorts the cause
        return _failed(entry, e)
    return _Prepared(entry, record, image, None)


def _failed(entry: _Entry, e: Exception) -> _Prepared:
    """Why a file failed and when to try it again: I/O errors every run, bad content once it changes."""
    if isinstance(e, ImageReadError) or (isinstance(e, OSError) and e.errno is not None):
        cause = e.__cause__ if isinstance(e, ImageReadError) else e
        return _Prepared(entry, None, None, f"cannot read file ({getattr(cause, 'strerror', None) or cause})",
                         SKIP_UNREADABLE)
    if isinstance(e, Image.UnidentifiedImageError):
        reason = "cannot identify image file"
    elif isinstance(e, ImageError):
        reason = _reason(str(e), entry.path)
    elif isinstance(e, Image.DecompressionBombError):
        reason = f"decompression bomb ({e})"
    elif isinstance(e, OSError):
        reason = f"cannot decode image ({e})"
    else:  # a decoder tripping over malformed bytes (struct.error, IndexError, ...)
        reason = f"cannot decode image ({type(e).__name__}: {e})"
    return _Prepared(entry, None, None, path_key(reason))  # a message may quote an undecodable name


def _reason(message: str, path: str) -> str:
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def encode_group(bundle: EncoderBundle, group: list[_Prepared], step: int) -> list[_Prepared]:
    """``group`` with each decoded photo run through the image encoder, ``step`` photos per call:
    vectors set, image dropped (what the local pipeline and the Ray encoder actors both run)."""
    out = list(group)
    todo = [i for i, p in enumerate(out) if p.image is not None]
    for k in range(0, len(todo), step):
        part = todo[k:k + step]
        embeds, tokens = bundle.encode_images([out[i].image for i in part])
        for j, i in enumerate(part):
            out[i] = replace(out[i], image=None, vectors=(embeds[j:j + 1], tokens[j:j + 1]))
    return out


# ---- one run -------------------------------------------------------------------------------------
class Pipeline(Protocol):
    """Turns the files that need work into prepared ones (hashed, header read, decoded unless the
    content is indexed, encoded), in any order; the run writes them. ``local_pipeline`` is the
    default; ``edge_xmr.ray_index.RayPipeline`` runs the same steps on a Ray cluster."""

    def __call__(self, run: _Run, todo: Iterator[_Entry]) -> Iterator[_Prepared]: ...


def local_pipeline(run: _Run, todo: Iterator[_Entry]) -> Iterator[_Prepared]:
    """Worker threads read and decode (``workers``, ``max_in_flight`` ahead), this thread encodes."""
    with ThreadPoolExecutor(run.options.workers, thread_name_prefix="edge-xmr-decode") as pool:
        yield from run.encoded(run.prepared(pool, todo))


class _Run:
    """State of one indexing run: counters, the worker pool and per-thread read connections."""

    def __init__(self, lib: PhotoStore, model: EncoderBundle | None, options: IndexOptions,
                 progress: Callable[[Progress], None] | None, pipeline: Pipeline | None = None):
        if min(options.batch_size, options.workers, options.encoder_batch, options.max_in_flight) < 1:
            raise ValueError("batch_size, workers, encoder_batch and max_in_flight must be >= 1")
        self.lib = lib
        self.bundle = require_model(model)
        self.size = int(self.bundle.manifest["preprocessing"]["size"])
        self.options = options
        self.progress = progress
        self.pipeline: Pipeline = pipeline or local_pipeline
        self.heif = heif_available()
        self.counts: dict[str, int] = {k: 0 for k, f in IndexReport.__dataclass_fields__.items()
                                       if f.type in (int, "int")}
        self._local = threading.local()
        self._conns: list[apsw.Connection] = []
        self._lock = threading.Lock()

    # reads from worker threads use their own connections (WAL snapshots of committed batches)
    def known(self, digest: bytes) -> bool:
        """Whether a photo with this content hash is indexed (committed batches; any thread)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.lib.path)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn.execute("SELECT 1 FROM photos WHERE hash = ? LIMIT 1", (digest,)).fetchone() is not None

    def run(self, entries: Iterator[_Entry], errors: _ScanErrors, root: str | None,
            aliases: dict[str, str]) -> IndexReport:
        """Index ``entries`` (scan errors collect in ``errors`` meanwhile); below ``root`` remove what
        is proven absent. ``aliases``: given path -> resolved path, for rows indexed under the former."""
        t0 = time.perf_counter()
        conn = self.lib.connection
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS scan(path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
                     " dev INTEGER, ino INTEGER, todo INTEGER NOT NULL DEFAULT 1, UNIQUE(dev, ino))")
        conn.execute("DELETE FROM temp.scan")
        try:
            for given, real in aliases.items():
                if given != real:
                    self.counts["merged"] += self.lib.adopt_alias(path_key(given), path_key(real))
            total = self._load_scan(entries)
            self._process(total)
            if root is not None:
                self._remove_missing(path_key(root), errors)
        finally:
            conn.execute("DROP TABLE IF EXISTS temp.scan")
            for c in self._conns:
                c.close()
        listed = tuple(list(errors.reasons.items())[:MAX_REPORTED_ERRORS])
        return IndexReport(**{**self.counts, "unreadable": len(errors.reasons), "errors": listed,
                              "seconds": round(time.perf_counter() - t0, 3)})

    def _load_scan(self, entries: Iterator[_Entry]) -> int:
        """Fill temp.scan (one row per key and per file: a hard link or alias seen again is ignored);
        mark files unchanged since the last run; returns how many need work."""
        conn = self.lib.connection
        while True:
            chunk = [(e.key, e.size, e.mtime_ns, e.dev, e.ino) for e in _take(entries, 2000)]
            if not chunk:
                break
            conn.executemany("INSERT OR IGNORE INTO temp.scan(path, size, mtime_ns, dev, ino) VALUES (?, ?, ?, ?, ?)",
                             chunk)
        conn.execute(
            "UPDATE temp.scan SET todo = 0 WHERE EXISTS (SELECT 1 FROM main.photos p WHERE p.path = scan.path"
            " AND p.size = scan.size AND p.mtime_ns = scan.mtime_ns) OR EXISTS (SELECT 1 FROM main.skipped s"
            " WHERE s.path = scan.path AND s.size = scan.size AND s.mtime_ns = scan.mtime_ns AND s.kind = ?)",
            (SKIP_CONTENT,))
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
            for rid, key, size, mtime in rows:
                yield _Entry(str(key), int(size), int(mtime))
            last = int(rows[-1][0])

    def prepared(self, pool: ThreadPoolExecutor, todo: Iterator[_Entry]) -> Iterator[_Prepared]:
        """Worker results in scan order, with a bounded number in flight."""
        window: deque[Future[_Prepared]] = deque()
        limit = max(self.options.max_in_flight, self.options.workers)
        for entry in todo:
            window.append(pool.submit(_prepare, entry, self.size, self.known, self.heif))
            if len(window) >= limit:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    def _process(self, total: int) -> None:
        t0 = time.perf_counter()
        done = 0
        for batch in _batches(self.pipeline(self, self._todo()), self.options.batch_size):
            self._apply(batch)
            done += len(batch)
            if self.progress is not None:
                self.progress(Progress(done, total, self.counts["added"] + self.counts["updated"],
                                       self.counts["skipped"], time.perf_counter() - t0))

    def encoded(self, prepared: Iterator[_Prepared]) -> Iterator[_Prepared]:
        """``prepared`` in order, decoded photos run through the image encoder ``encoder_batch`` at a
        time (their images dropped once encoded)."""
        group: list[_Prepared] = []
        images = 0
        for p in prepared:
            group.append(p)
            images += p.image is not None
            if images >= self.options.encoder_batch:
                yield from encode_group(self.bundle, group, self.options.encoder_batch)
                group, images = [], 0
        yield from encode_group(self.bundle, group, self.options.encoder_batch)

    def _apply(self, batch: list[_Prepared]) -> None:
        batch = encode_group(self.bundle, self._fix_stale_copies(batch), self.options.encoder_batch)
        lib = self.lib
        with lib.transaction():
            for p in batch:
                if p.vectors is not None:
                    self._add(p, *p.vectors)
                elif p.vanished:  # open() said ENOENT: proven absent
                    self.counts["removed"] += lib.forget_key(p.entry.key)
                elif p.record is None:
                    self._skip(p)
                else:
                    self._reuse(p.record)

    def _add(self, p: _Prepared, embed: Any, tokens: Any) -> None:
        assert p.record is not None
        existed = self.lib.key_id(p.record.path) is not None
        self.lib.add_photos([p.record], embed, tokens)
        self.counts["updated" if existed else "added"] += 1

    def _skip(self, p: _Prepared) -> None:
        self.lib.record_skipped(p.entry.key, p.entry.size, p.entry.mtime_ns, p.error or "unknown error", p.kind)
        self.counts["skipped"] += 1

    def _reuse(self, rec: PhotoRecord) -> None:
        """Content already indexed: same path (re-stamp), a path that is gone or leads to this same
        file (move), else a copy."""
        lib, conn = self.lib, self.lib.connection
        rows = conn.execute("SELECT id, path FROM photos WHERE hash = ? ORDER BY id", (rec.hash,)).fetchall()
        for pid, key in rows:
            if key == rec.path:
                lib.touch_photo(int(pid), rec.size, rec.mtime_ns)
                self.counts["unchanged"] += 1
                return
        for pid, key in rows:
            if _gone_or_same(fs_path(str(key)), fs_path(rec.path)):
                lib.move_photo(int(pid), rec)
                self.counts["moved"] += 1
                return
        lib.copy_photo(rec, int(rows[0][0]))
        self.counts["copied"] += 1

    def _fix_stale_copies(self, batch: list[_Prepared]) -> list[_Prepared]:
        """A worker saw the content as indexed, but that photo changed since: decode it after all."""
        out = []
        for p in batch:
            if p.record is not None and p.image is None and p.vectors is None and not self._known_now(p.record.hash):
                try:
                    p = replace(p, image=_decode(p.entry.path, self.size))
                except _GONE:
                    p = _Prepared(p.entry, None, None, "vanished", vanished=True)
                except Exception as e:  # noqa: BLE001 - sorted by _failed, as in the workers
                    p = _failed(p.entry, e)
            out.append(p)
        return out

    def _known_now(self, digest: bytes) -> bool:
        row = self.lib.connection.execute("SELECT 1 FROM photos WHERE hash = ? LIMIT 1", (digest,)).fetchone()
        return row is not None

    def _remove_missing(self, root: str, errors: _ScanErrors) -> None:
        """Photos and skipped entries below ``root`` (a key) that this scan proved absent: not found,
        and not below a folder or entry that could not be read (those are kept as they are)."""
        lib, conn = self.lib, self.lib.connection
        lo, hi = path_range(root)
        unseen = "path >= ? AND path < ? AND path NOT IN (SELECT path FROM temp.scan)"
        gone = []
        for pid, key in conn.execute(f"SELECT id, path FROM photos WHERE {unseen}", (lo, hi)).fetchall():
            if errors.covers(str(key), root):
                self.counts["kept"] += 1
            else:
                gone.append(int(pid))
        stale = [(str(k),) for (k,) in conn.execute(f"SELECT path FROM skipped WHERE {unseen}", (lo, hi)).fetchall()
                 if not errors.covers(str(k), root)]
        for chunk in _chunked(gone, 500):
            with lib.transaction():
                lib.delete_photos(chunk)
        with lib.transaction():
            conn.executemany("DELETE FROM skipped WHERE path = ?", stale)
            lib.prune_folders()
        self.counts["removed"] += len(gone)


def _gone_or_same(old: str, new: str) -> bool:
    """Whether an indexed path no longer exists, or leads to the file at ``new`` (an alias). A path
    that cannot be checked (permission, I/O error) is neither: it is kept."""
    try:
        return os.path.samefile(old, new)
    except _GONE:
        return True
    except OSError:
        return False


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


__all__ = ["HEIF_EXTENSIONS", "IMAGE_EXTENSIONS", "IndexOptions", "IndexReport", "Pipeline", "Progress",
           "default_workers", "encode_group", "heif_available", "index_files", "index_folder", "local_pipeline"]
