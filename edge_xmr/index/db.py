"""Opening the index file: apsw (its own SQLite, extension loading on every platform) + sqlite-vec.

Why apsw: the standard ``sqlite3`` module cannot load extensions in many Python builds (this
machine's pyenv 3.11, macOS's system Python, some distro builds: no ``enable_load_extension``).
apsw ships wheels for Linux, macOS and Windows that bundle a current SQLite compiled with
extension loading, so ``sqlite-vec`` loads the same way everywhere; it also leaves transactions
to us (no implicit BEGIN as in ``sqlite3``), which batch commits and WAL readers rely on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import apsw
import sqlite_vec

PAGE_SIZE = 8192  # 7 rows of rerank data (about 1.05 KB each) fit a page; 4096 fits only 3
BUSY_TIMEOUT_MS = 30_000  # how long a writer waits for another writer before failing


def connect(path: str | Path, readonly: bool = False) -> apsw.Connection:
    """Open (creating if needed) an index file with sqlite-vec loaded, WAL mode, NORMAL sync."""
    flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    conn = apsw.Connection(str(path), flags=flags)
    conn.enable_load_extension(True)
    conn.load_extension(sqlite_vec.loadable_path())
    conn.enable_load_extension(False)
    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    if not readonly:
        if _is_empty(conn):
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        # WAL: searches (readers) run while the indexer writes; the rollback journal lost writes
        # under contention in our tests
        _use_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")  # durable against process crashes (kill -9)
    return conn


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


def _is_empty(conn: apsw.Connection) -> bool:
    row = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return row is None or int(row[0]) == 0


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
