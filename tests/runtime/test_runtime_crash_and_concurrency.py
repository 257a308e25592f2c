"""kill -9 during indexing then resume (no lost, no duplicate rows); search while indexing (WAL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runtime_photos import write_photo
from runtime_fakes import FakeBundle

from edge_xmr import Library
from edge_xmr.index.db import connect

WORKER = Path(__file__).resolve().parent / "runtime_index_worker.py"
N = 48


def _photos(root: Path, n: int = N) -> Path:
    for i in range(n):
        write_photo(root / f"f{i % 3}" / f"p{i:03d}.jpg", i)
    return root


def _start(db: Path, root: Path, delay: float, batch: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(WORKER), "index", str(db), str(root), "--delay", str(delay),
                             "--batch", str(batch)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _counts(db: Path) -> tuple[int, int, int, int]:
    c = connect(db)
    try:
        return tuple(int(c.execute(q).fetchone()[0]) for q in (  # type: ignore[return-value]
            "SELECT count(*) FROM photos", "SELECT count(*) FROM vectors", "SELECT count(*) FROM rerank",
            "SELECT count(DISTINCT path) FROM photos"))
    finally:
        c.close()


def _wait_for(db: Path, proc: subprocess.Popen[str], at_least: int, timeout: float = 60) -> int:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if db.exists():
            try:
                n = _counts(db)[0]
            except Exception:  # schema not created yet
                n = 0
            if n >= at_least:
                return n
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.02)
    raise AssertionError("indexing made no progress")


def test_kill_9_then_resume(tmp_path):
    root, db = _photos(tmp_path / "photos"), tmp_path / "i.db"
    proc = _start(db, root, delay=0.15, batch=4)
    _wait_for(db, proc, at_least=12)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    photos, vectors, rerank, distinct = _counts(db)
    assert 12 <= photos < N
    assert photos == vectors == rerank == distinct  # only whole batches were committed
    with Library.open(db, FakeBundle()) as lib:
        r = lib.index(root)
        assert r.added == N - photos and r.unchanged == photos
    assert _counts(db) == (N, N, N, N)


def test_search_while_indexing(tmp_path):
    root, db = _photos(tmp_path / "photos"), tmp_path / "i.db"
    proc = _start(db, root, delay=0.05, batch=4)
    _wait_for(db, proc, at_least=1)
    lib = Library.open(db, FakeBundle())
    seen, searches = [], 0
    while proc.poll() is None:
        hits = lib.search("a photo", k=10, rerank=5, folder=root / "f1")
        assert all("/f1/" in h.path for h in hits) and len(hits) <= 10
        seen.append(lib.count())
        searches += 1
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert f"report {N} 0" in out
    assert searches > 3 and seen == sorted(seen)
    assert lib.count() == N and len(lib.search("a photo", k=100)) == N
    lib.close()


@pytest.mark.parametrize("n", [0, 5])
def test_empty_or_small_library_search(tmp_path, n):
    _photos(tmp_path / "photos", n) if n else (tmp_path / "photos").mkdir()
    with Library.open(tmp_path / "i.db", FakeBundle()) as lib:
        lib.index(tmp_path / "photos")
        assert len(lib.search("anything", k=50)) == n
