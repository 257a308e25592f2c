"""Fault-injection suite of the photo library: a zoo of hostile files indexed with real
permissions, kill -9 at random points of ``index`` and ``remove``, concurrent writers and readers.

After every fault the index must hold: ``PRAGMA integrity_check`` ok, photos = vectors = rerank
rows, no photo twice, no photo lost, only files that exist and decode, and a re-run finishes the
rest (``runtime_zoo.check_index``). The default run tries a few kill points; ``-m slow`` soaks.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from runtime_fakes import FakeBundle
from runtime_faults import permissions_apply, unprivileged_preexec
from runtime_photos import write_photo
from runtime_zoo import BAD, build_zoo, check_index

from edge_xmr import Library
from edge_xmr.index import SCHEMA_VERSION
from edge_xmr.index.pathkeys import fs_path, path_key

WORKER = Path(__file__).resolve().parent / "runtime_index_worker.py"
SEED = 18
DEFAULT_INDEX_KILLS, DEFAULT_REMOVE_KILLS = 5, 3
SOAK_INDEX_KILLS, SOAK_REMOVE_KILLS = 36, 12


def _worker(*args: str) -> list[str]:
    return [sys.executable, str(WORKER), *args]


def _run(*args: str, timeout: float = 120) -> dict:
    """Run an ``index`` job with file permissions enforced; its report."""
    r = subprocess.run(_worker(*args), capture_output=True, text=True, timeout=timeout,
                       preexec_fn=unprivileged_preexec())
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("json "))
    return json.loads(line[5:])


@pytest.fixture(scope="module")
def lockable(tmp_path_factory: pytest.TempPathFactory) -> bool:
    return permissions_apply(tmp_path_factory.mktemp("probe"))


# ---- the zoo --------------------------------------------------------------------------------------
def test_hostile_zoo(tmp_path, lockable):
    if not lockable:
        pytest.skip("this machine cannot make a file unreadable to a child process (no chmod effect)")
    zoo = build_zoo(tmp_path / "zoo")
    db, root, aliases = tmp_path / "i.db", str(tmp_path / "zoo"), zoo.alias_keys()
    n_bad = sum(o == BAD for o in zoo.outcome.values())
    zoo.lock()
    try:
        r = _run("index", str(db), root)
        check_index(db, expected=zoo.expected_keys(), aliases=aliases)
        assert (r["unreadable"], r["skipped"]) == (1, n_bad + 1)  # the locked folder; bad files + locked file
        assert r["errors"] == [[path_key(str(zoo.locked[0])), "Permission denied"]]
        with Library.open(db, load_model=False) as lib:
            st = lib.stats()
            assert st.retrying == 1 and st.skipped == n_bad + 1
            for path, _ in st.skipped_files:
                path.encode("utf-8")
        r = _run("index", str(db), root)  # nothing changed: bad content is not read again
        assert (r["added"], r["removed"], r["unchanged"], r["skipped"]) == (0, 0, len(zoo.expected_keys()) + n_bad, 1)
        check_index(db, expected=zoo.expected_keys(), aliases=aliases)

        r = _run("index", str(tmp_path / "follow.db"), root, "--follow")  # the loop and the links, followed
        check_index(tmp_path / "follow.db", expected=zoo.expected_keys(), aliases=aliases)

        zoo.unlock()
        r = _run("index", str(db), root)
        assert (r["added"], r["unreadable"], r["skipped"]) == (3, 0, 0)
        check_index(db, expected=zoo.expected_keys(unlocked=True), aliases=aliases)

        zoo.lock()  # the folder becomes unreadable again, and a photo elsewhere is deleted
        os.remove(tmp_path / "zoo" / "ok" / "p5.jpg")
        r = _run("index", str(db), root)
        assert (r["removed"], r["kept"], r["unreadable"]) == (1, 2, 1)
        check_index(db, expected=zoo.expected_keys(unlocked=True) - {str(tmp_path / "zoo" / "ok" / "p5.jpg")},
                    aliases=aliases)
        with Library.open(db, FakeBundle()) as lib:
            hits = lib.search("anything", k=100)
            assert len(hits) == len({h.path for h in hits}) == lib.count()
            json.dumps([h.to_dict() for h in hits], ensure_ascii=False).encode("utf-8")
            assert all(os.path.isfile(fs_path(h.path)) for h in hits)
    finally:
        zoo.unlock()


def test_hostile_zoo_without_permissions(tmp_path):
    """The zoo without the unreadable entries, in-process (runs wherever the tests run)."""
    zoo = build_zoo(tmp_path / "zoo", lockable=False)
    with Library.open(tmp_path / "i.db", FakeBundle()) as lib:
        r = lib.index(tmp_path / "zoo")
        assert r.skipped == sum(o == BAD for o in zoo.outcome.values()) and r.unreadable == 0
    check_index(tmp_path / "i.db", expected=zoo.expected_keys(), aliases=zoo.alias_keys())


# ---- kill -9 ----------------------------------------------------------------------------------------
@dataclass
class KillFigures:
    points: int = 0  # kills that hit a live process
    mid_run: int = 0  # of those, after at least one committed batch
    unfinished: int = 0  # kills after which the re-run still had work to do
    rolled_back: int = 0  # remove kills whose transaction was rolled back (nothing removed)
    rows_lost: int = 0  # photos of existing files that a kill made disappear


def _tree(root: Path, first: int, n: int) -> None:
    for i in range(first, first + n):
        write_photo(root / f"f{i % 4}" / f"p{i:03d}.jpg", i)


def _keys(root: Path) -> set[str]:
    return {path_key(str(p)) for p in root.rglob("*.jpg")}


def _kill_when(proc: subprocess.Popen[str], rng: random.Random, lines: int, wait: float) -> bool:
    """Kill -9 after ``lines`` output lines plus up to ``wait`` seconds; whether it was still running."""
    assert proc.stdout is not None
    for _ in range(lines):
        if not proc.stdout.readline():
            break
    time.sleep(rng.uniform(0, wait))
    alive = proc.poll() is None
    proc.kill()
    proc.wait()
    proc.stdout.close()
    return alive


def _index_kill_point(base: Path, rng: random.Random, figures: KillFigures) -> None:
    """A library indexed, then changed (photos added, rewritten, deleted); kill -9 during the
    index run that catches up; check; a re-run finishes the rest."""
    root, db = base / "photos", base / "i.db"
    _tree(root, 0, 16)
    with Library.open(db, FakeBundle()) as lib:
        lib.index(root)
    before = _keys(root)
    deleted = {path_key(str(root / f"f{i % 4}" / f"p{i:03d}.jpg")) for i in (1, 6)}
    for key in deleted:
        os.remove(fs_path(key))
    write_photo(root / "f0" / "p000.jpg", 999)  # rewritten
    _tree(root, 16, 14)  # added
    expected = _keys(root)
    (root / "f2" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    proc = subprocess.Popen(_worker("index", str(db), str(root), "--delay", "0.04", "--batch", "3"),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = rng.randint(0, 5)  # "open", then one line per batch of 3 (5 batches)
    if _kill_when(proc, rng, lines, 0.06):
        figures.points += 1
        figures.mid_run += lines >= 2
    got = check_index(db, subset_of=expected | deleted)
    figures.rows_lost += len((before - deleted) - got)
    with Library.open(db, FakeBundle()) as lib:
        r = lib.index(root)
    figures.unfinished += (r.added + r.updated + r.removed) > 0
    check_index(db, expected=expected)


def _remove_kill_point(base: Path, rng: random.Random, figures: KillFigures) -> None:
    """kill -9 in the middle of ``remove`` of a folder: all of it or nothing, the rest intact."""
    root, db = base / "photos", base / "i.db"
    _tree(root, 0, 24)
    with Library.open(db, FakeBundle()) as lib:
        lib.index(root)
    everything = _keys(root)
    folder = {k for k in everything if "/f1/" in k}
    proc = subprocess.Popen(_worker("remove", str(db), str(root / "f1"), "--slow", "0.01"),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if _kill_when(proc, rng, 1, 0.08):  # after "ready": 6 photos, 10 ms apart, one transaction
        figures.points += 1
        figures.mid_run += 1
    got = check_index(db)
    assert got in (everything, everything - folder), "a remove was half applied"
    figures.rows_lost += len((everything - folder) - got)
    figures.rolled_back += got == everything
    with Library.open(db, FakeBundle()) as lib:
        figures.unfinished += lib.remove(root / "f1") > 0
    check_index(db, expected=everything - folder)


def _kill_suite(tmp_path: Path, n_index: int, n_remove: int) -> KillFigures:
    rng, figures = random.Random(SEED), KillFigures()
    for i in range(n_index):
        _index_kill_point(tmp_path / f"index{i}", rng, figures)
        shutil.rmtree(tmp_path / f"index{i}")
    for i in range(n_remove):
        _remove_kill_point(tmp_path / f"remove{i}", rng, figures)
        shutil.rmtree(tmp_path / f"remove{i}")
    assert figures.rows_lost == 0
    assert figures.points >= (n_index + n_remove) * 3 // 4, figures  # most kills land in a live run
    return figures


def test_kill_9_at_random_points(tmp_path):
    figures = _kill_suite(tmp_path, DEFAULT_INDEX_KILLS, DEFAULT_REMOVE_KILLS)
    print(f"kill -9: {figures}")


@pytest.mark.slow
def test_kill_9_soak(tmp_path):
    figures = _kill_suite(tmp_path, SOAK_INDEX_KILLS, SOAK_REMOVE_KILLS)
    print(f"kill -9 soak: {figures}")


# ---- concurrent writers and readers -----------------------------------------------------------------
def test_concurrent_writers_and_readers_on_a_new_index(tmp_path):
    """4 processes index the same tree into the same new index while 2 search it; all finish, and
    the index holds each photo once."""
    root, db = tmp_path / "photos", tmp_path / "i.db"
    _tree(root, 0, 40)
    writers = [subprocess.Popen(_worker("index", str(db), str(root), "--batch", "4", "--delay", "0.01"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    readers = [subprocess.Popen(_worker("search", str(db), "--until", "40"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in writers + readers:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
    assert all("searches" in p.stdout.read() if p.stdout and not p.stdout.closed else True for p in readers)
    check_index(db, expected=_keys(root))


def _open_new_index_at_once(db: Path, n: int) -> None:
    at = str(time.time() + 0.2 * n)  # started one by one, they open together (imports take ~0.3 s each)
    procs = [subprocess.Popen(_worker("open", str(db), "--at", at), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(n)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.startswith(f"opened {SCHEMA_VERSION}"), err[-3000:]
    check_index(db, expected=set())


def test_concurrent_processes_open_a_new_index(tmp_path):
    _open_new_index_at_once(tmp_path / "new.db", 8)


@pytest.mark.slow
def test_concurrent_processes_open_new_indexes_soak(tmp_path):
    """180 processes, 12 at a time on each new file: switching a new file to WAL at once made about
    1 in 100 fail with 'database is locked' (SQLite answers one of two upgrading readers BUSY
    without waiting)."""
    for i in range(15):
        _open_new_index_at_once(tmp_path / f"new{i}.db", 12)
