"""Opening the index file: apsw (its own SQLite, extension loading on every platform) + sqlite-vec.

Why apsw: the standard ``sqlite3`` module cannot load extensions in many Python builds (this
machine's pyenv 3.11, macOS's system Python, some distro builds: no ``enable_load_extension``).
apsw ships wheels for Linux, macOS and Windows that bundle a current SQLite compiled with
extension loading, so ``sqlite-vec`` loads the same way everywhere; it also leaves transactions
to us (no implicit BEGIN as in ``sqlite3``), which batch commits and WAL readers rely on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import apsw
import sqlite_vec

from ..errors import EdgeXmrError

PAGE_SIZE = 8192  # 7 rows of rerank data (about 1.05 KB each) fit a page; 4096 fits only 3
BUSY_TIMEOUT_MS = 30_000  # how long a writer waits for another writer before failing
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


class IndexFileError(EdgeXmrError):
    """The index file cannot be used: a folder, not an SQLite file, another program's database,
    unreadable or in a folder that cannot be written. The file is left as it was.

    ``str(e)`` names the file (for the command line); ``e.reason`` says why without the path
    (for a message shown to someone who should not learn the machine's paths)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def connect(path: str | Path, readonly: bool = False) -> apsw.Connection:
    """Open (creating if needed) an index file with sqlite-vec loaded, WAL mode, NORMAL sync.

    Raises:
        IndexFileError: the path is no usable index file; nothing was written to it (the header
            and tables are checked before any write, so a file given by mistake stays unchanged).
    """
    p = Path(path)
    check_index_file(p)
    flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    try:
        conn = apsw.Connection(str(p), flags=flags)
    except apsw.Error as e:
        raise IndexFileError(p, _cannot_open(p, e)) from None
    try:
        conn.enable_load_extension(True)
        conn.load_extension(sqlite_vec.loadable_path())
        conn.enable_load_extension(False)
        conn.set_busy_timeout(BUSY_TIMEOUT_MS)
        tables = _tables(conn)  # the first read: a damaged or foreign file shows here, before any write
        if tables and "meta" not in tables:
            raise IndexFileError(p, "an SQLite database of another program, not an edge-xmr index")
        if not readonly:
            if not tables:
                conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            # WAL: searches (readers) run while the indexer writes; the rollback journal lost writes
            # under contention in our tests
            _use_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")  # durable against process crashes (kill -9)
    except apsw.Error as e:
        conn.close()
        raise IndexFileError(p, _cannot_open(p, e)) from None
    except BaseException:
        conn.close()
        raise
    return conn


def check_index_file(path: Path) -> None:
    """Refuse, without writing anything, a path that cannot be an index: a folder or other non-file,
    an unreadable file, a file that is not SQLite. A missing or empty file is fine (a new index)."""
    if not path.exists():
        return
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "a special file (device, pipe or socket)"
        raise IndexFileError(path, f"{kind}, not an index file")
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as e:
        raise IndexFileError(path, f"cannot be read ({e.strerror or e})") from None
    if head and head != SQLITE_HEADER:
        raise IndexFileError(path, "not an edge-xmr index (not an SQLite file)")


def _cannot_open(path: Path, e: apsw.Error) -> str:
    if not path.exists() and path.parent.is_dir() and not os.access(path.parent, os.W_OK):
        return "cannot be created: its folder is not writable"
    return f"cannot be opened as an index ({e})"


def _tables(conn: apsw.Connection) -> set[str]:
    return {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _use_wal(conn: apsw.Connection) -> None:
    """``PRAGMA journal_mode = WAL``, retried while busy. On a new file, connections switching at
    once each hold a read lock while upgrading it: SQLite answers one of them BUSY at once, without
    its busy handler (that would deadlock); a retry then finds the file in WAL mode already."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except apsw.BusyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@contextmanager
def write_transaction(conn: apsw.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): one batch of writes, all or nothing."""
    if not conn.getautocommit():  # already inside a transaction: join it
        yield
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def read_transaction(conn: apsw.Connection) -> Iterator[None]:
    """A consistent snapshot for several SELECTs while a writer commits in another connection."""
    if not conn.getautocommit():
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def file_bytes(path: str | Path) -> int:
    """Size on disk of the database with its -wal and -shm files."""
    p = Path(path)
    return sum(f.stat().st_size for f in (p, Path(f"{p}-wal"), Path(f"{p}-shm")) if f.exists())
