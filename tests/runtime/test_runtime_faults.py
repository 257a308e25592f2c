"""The photo library under faults (issue 18, items 1-5): names that are not UTF-8, folders that
cannot be read, failures that go away, one photo reached by several paths, two processes creating
one index. Each test fails on the code before the fix."""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
from pathlib import Path

import pytest
from runtime_fakes import FakeBundle
from runtime_faults import Faults
from runtime_photos import write_photo

from edge_xmr import indexer
from edge_xmr.index import SCHEMA_VERSION, PhotoRecord
from edge_xmr import Library
from edge_xmr.index.db import connect
from edge_xmr.index.pathkeys import ESCAPE, fs_path, lookup_keys, path_key
from edge_xmr.indexer import IndexOptions

FIXTURE_V1 = Path(__file__).resolve().parent.parent / "fixtures" / "index_v1.db"


@pytest.fixture()
def faults(monkeypatch: pytest.MonkeyPatch) -> Faults:
    return Faults(monkeypatch)


def _lib(tmp_path: Path) -> Library:
    return Library.open(tmp_path / "i.db", FakeBundle())


def _keys(lib: Library) -> list[str]:
    return [str(r[0]) for r in lib.store.connection.execute("SELECT path FROM photos ORDER BY path")]


# ---- 1. names that are not UTF-8 ------------------------------------------------------------------
def test_path_keys_round_trip_and_keep_order():
    """Oracle: random names over an alphabet of surrogates, U+FFFD, escape look-alikes and '/':
    fs_path inverts path_key, keys are valid UTF-8, distinct names give distinct keys, and a
    folder's key is a prefix of its files' keys."""
    rng = random.Random(18)
    alphabet = ["a", "/", "F", "0", "u", ESCAPE, "\udcff", "\udc80", "\udc7f", "\ud800", "\udfff", "é", "📷"]
    names = {"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))) for _ in range(4000)}
    keys = {n: path_key(n) for n in names}
    assert len(set(keys.values())) == len(names)
    for name, key in keys.items():
        key.encode("utf-8")
        assert fs_path(key) == name
        for i in range(len(name)):
            assert key.startswith(path_key(name[:i]))
    assert path_key("/photos/ordinary name.jpg") == "/photos/ordinary name.jpg"
    assert path_key(os.fsdecode(b"/p/x\xff.jpg")) == f"/p/x{ESCAPE}FF.jpg"


def test_non_utf8_names_are_indexed_searchable_and_printable(tmp_path):
    root = tmp_path / "p"
    write_photo(root / "plain.jpg", 1)
    raw = os.fsencode(root)
    names = [b"x\xff.jpg", b"caf\xe9.jpg", f"x{ESCAPE}FF.jpg".encode(), b"\xed\xa0\x80.jpg"]
    for seed, name in enumerate(names, 2):
        write_photo(Path(os.fsdecode(raw + b"/" + name)), seed)
    (Path(os.fsdecode(raw + b"/bad\xfe.jpg"))).write_text("not an image")
    lib = _lib(tmp_path)
    r = lib.index(root)
    assert (r.added, r.skipped) == (5, 1)
    hits = lib.search("x", k=10)
    assert len(hits) == 5
    json.dumps([h.to_dict() for h in hits], ensure_ascii=False).encode("utf-8")  # printable as shown
    for h in hits:
        assert os.path.isfile(fs_path(h.path)) and lib.photo_id(fs_path(h.path)) == h.photo_id
    latin1 = next(h for h in hits if "caf" in h.path)
    assert lib.photo_id(latin1.path) == latin1.photo_id  # a path as printed is found again
    for name in names:
        os_path = os.fsdecode(raw + b"/" + name)
        pid = lib.photo_id(os_path)
        assert pid is not None and fs_path(lib.store.photo_info([pid])[pid].path) == os_path
    (skipped_path, reason), = lib.stats().skipped_files
    skipped_path.encode("utf-8")
    assert fs_path(skipped_path) == os.fsdecode(raw + b"/bad\xfe.jpg") and "cannot identify" in reason
    assert lib.index(root).unchanged == 6
    assert lib.remove(os.fsdecode(raw + b"/x\xff.jpg")) == 1
    assert lib.photo_id(os.fsdecode(raw + f"/x{ESCAPE}FF.jpg".encode())) is not None  # its look-alike stays
    assert lib.count() == 4


# ---- 2. unreadable is not absent ------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["denied", "dropped"])
def test_unreadable_folder_keeps_its_indexed_photos(tmp_path, photo_tree, faults, fault):
    lib = _lib(tmp_path)
    lib.index(photo_tree)
    before = _keys(lib)
    (faults.deny if fault == "denied" else faults.drop)(photo_tree / "a")
    os.remove(photo_tree / "b" / "b1.jpg")  # really deleted: still removed
    r = lib.index(photo_tree)
    assert faults.hits[str(photo_tree / "a")] >= 1
    assert _keys(lib) == [k for k in before if not k.endswith("b1.jpg")]
    assert (r.removed, r.unreadable, r.kept) == (1, 1, 6)  # a listing that failed midway is not used at all
    assert r.errors[0][0] == str(photo_tree / "a")
    faults.heal()
    os.remove(photo_tree / "a" / "img2.jpg")
    r = lib.index(photo_tree)  # the folder is back: now its absences are proven
    assert (r.removed, r.unreadable, r.kept) == (1, 0, 0) and lib.count() == 7


def test_file_gone_when_read_is_removed_at_once(tmp_path, photo_tree, faults):
    target = photo_tree / "a" / "img1.jpg"
    lib = _lib(tmp_path)
    lib.index(photo_tree)
    os.utime(target, ns=(10**18, 10**18))  # changed, so it is read again ... and is gone by then
    faults.vanish(target)
    r = lib.index(photo_tree)
    assert faults.hits[str(target)] == 1 and (r.removed, r.skipped) == (1, 0)
    assert lib.photo_id(target) is None and lib.count() == 8


@pytest.mark.timeout(30)
def test_a_fifo_in_place_of_a_photo_never_blocks(tmp_path):
    """A photo replaced by a FIFO between the scan and its reading (no writer: a blocking open would hang)."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(tmp_path / "fifo.jpg")
    entry = indexer._Entry(str(tmp_path / "fifo.jpg"), 100, 1)
    p = indexer._prepare(entry, 32, lambda digest: False, heif=False)
    assert (p.record, p.error) == (None, "not a regular file")


def test_unreadable_root_removes_nothing(tmp_path, photo_tree, faults):
    lib = _lib(tmp_path)
    lib.index(photo_tree)
    faults.deny(photo_tree)
    r = lib.index(photo_tree)
    assert lib.count() == 9 and faults.hits[str(photo_tree)] >= 1
    assert (r.scanned, r.removed, r.kept, r.unreadable) == (0, 0, 9, 1)


# ---- 3. failures that can go away are retried ------------------------------------------------------
def test_unreadable_file_is_retried_once_readable(tmp_path, photo_tree, faults):
    target = photo_tree / "a" / "img1.jpg"
    (photo_tree / "b" / "text.jpg").write_text("not an image")
    faults.deny(target)
    lib = _lib(tmp_path)
    r = lib.index(photo_tree)
    assert faults.hits[str(target)] >= 1 and (r.added, r.skipped) == (8, 2)
    assert "cannot read file" in dict(lib.stats().skipped_files)[str(target)]
    faults.heal()  # permissions fixed: same size, same mtime
    r = lib.index(photo_tree)
    assert (r.added, r.skipped) == (1, 0) and lib.photo_id(target) is not None
    st = lib.stats()
    assert (st.photos, st.skipped, st.retrying) == (9, 1, 0)


def test_unreadable_file_is_tried_every_run_and_bad_content_only_once(tmp_path, photo_tree, faults):
    target, text = photo_tree / "a" / "img1.jpg", photo_tree / "b" / "text.jpg"
    text.write_text("not an image")
    faults.deny(target)
    lib = _lib(tmp_path)
    lib.index(photo_tree)
    assert dict(lib.stats().skipped_files)[str(target)] == "cannot read file (Permission denied)"
    hits, opens = faults.hits[str(target)], faults.opens[str(text)]
    r = lib.index(photo_tree)  # still unreadable: tried again, still skipped; the bad file is not re-read
    assert faults.hits[str(target)] > hits and faults.opens[str(text)] == opens
    assert (r.added, r.skipped) == (0, 1) and lib.stats().retrying == 1


def test_indexed_photo_that_turns_unreadable_is_kept(tmp_path, photo_tree, faults):
    target = photo_tree / "a" / "img1.jpg"
    lib = _lib(tmp_path)
    lib.index(photo_tree)
    pid = lib.photo_id(target)
    os.utime(target, ns=(10**18, 10**18))  # changed, so it is read again ... and cannot be
    faults.deny(target)
    r = lib.index(photo_tree)
    assert (r.skipped, r.removed) == (1, 0) and lib.photo_id(target) == pid and lib.count() == 9
    faults.heal()
    r = lib.index(photo_tree)  # same bytes: re-stamped, the failure forgotten
    assert (r.unchanged, r.skipped) == (9, 0) and lib.stats().skipped == 0 and lib.photo_id(target) == pid


def test_skipped_kinds_of_v2_indexes_are_migrated(tmp_path, photo_tree):
    """(New with schema 3, no older counterpart.)"""
    with _lib(tmp_path) as lib:
        lib.index(photo_tree)
        lib.store.record_skipped(str(photo_tree / "x.jpg"), 1, 1, "cannot read file (Permission denied)", "unreadable")
        lib.store.record_skipped(str(photo_tree / "y.jpg"), 1, 1, "cannot identify image file")
    conn = connect(tmp_path / "i.db")  # make it a schema-2 index
    conn.execute("ALTER TABLE skipped DROP COLUMN kind; UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.close()
    with _lib(tmp_path) as lib:
        assert lib.info.schema_version == SCHEMA_VERSION and lib.stats().retrying == 1


# ---- 4. one photo, one row --------------------------------------------------------------------------
def test_folder_through_a_symlink_is_one_photo_per_file(tmp_path, photo_tree):
    link = tmp_path / "Pictures"
    os.symlink(photo_tree, link)
    lib = _lib(tmp_path)
    lib.index(photo_tree)
    r = lib.index(link)
    assert (r.added, r.copied, r.unchanged) == (0, 0, 9) and lib.count() == 9
    paths = [h.path for h in lib.search("x", k=50)]
    assert len(paths) == 9 == len(set(paths)) and all(p.startswith(str(photo_tree)) for p in paths)
    assert lib.photo_id(link / "a" / "img0.jpg") == lib.photo_id(photo_tree / "a" / "img0.jpg")
    assert len(lib.search("x", k=50, folder=link / "a")) == 6
    lib.add([link / "b" / "b0.jpg", photo_tree / "b" / "b0.jpg", photo_tree / "b" / ".." / "b" / "b0.jpg"])
    assert lib.count() == 9
    assert lib.remove(link / "b") == 3 and lib.count() == 6


def test_duplicates_from_an_index_built_through_a_symlink_are_merged(tmp_path, photo_tree):
    """An index from before resolved paths holds each photo under the link and the real path."""
    link = tmp_path / "Pictures"
    os.symlink(photo_tree, link)
    lib = _lib(tmp_path)
    lib.index(photo_tree)
    for pid, key in lib.store.connection.execute("SELECT id, path FROM photos").fetchall():
        alias = str(link) + str(key)[len(str(photo_tree)):]
        h, size, mtime = lib.store.connection.execute("SELECT hash, size, mtime_ns FROM photos WHERE id = ?",
                                                (pid,)).fetchone()
        lib.store.copy_photo(PhotoRecord(alias, bytes(h), int(size), int(mtime), None, 4, 4), int(pid))
    assert lib.count() == 18
    r = lib.index(link)
    assert lib.count() == 9 and len({h.path for h in lib.search("x", k=50)}) == 9
    assert r.merged == 9


def test_photos_indexed_under_a_symlink_move_to_the_real_path(tmp_path, photo_tree):
    """An index from before resolved paths, built through a link only: indexing the real folder
    moves each photo to its real path (no re-embedding, no second row)."""
    link = tmp_path / "Pictures"
    os.symlink(photo_tree, link)
    bundle = FakeBundle()
    lib = Library.open(tmp_path / "i.db", bundle)
    lib.index(photo_tree)
    for pid, key in lib.store.connection.execute("SELECT id, path FROM photos").fetchall():
        lib.store.move_photo(int(pid), PhotoRecord(str(link) + str(key)[len(str(photo_tree)):], b"", 0, 0, None, 4, 4))
    calls = bundle.image_calls
    r = lib.index(photo_tree)
    assert lib.count() == 9 and all(k.startswith(str(photo_tree)) for k in _keys(lib))
    assert (r.moved, r.copied, bundle.image_calls) == (9, 0, calls)


def test_links_loops_and_hard_links_inside_the_tree(tmp_path, photo_tree):
    os.symlink(photo_tree, photo_tree / "a" / "loop")  # followed: a loop back to the root
    os.symlink(photo_tree / "b", photo_tree / "b-again")  # the same folder twice
    os.symlink(photo_tree / "a" / "img0.jpg", photo_tree / "a" / "alias.jpg")
    os.link(photo_tree / "b" / "b0.jpg", photo_tree / "b" / "hard.jpg")
    for follow in (False, True):
        lib = Library.open(tmp_path / f"i{follow}.db", FakeBundle())
        r = lib.index(photo_tree, options=IndexOptions(follow_symlinks=follow))
        assert (r.scanned, lib.count()) == (9, 9), follow
        assert len({os.stat(fs_path(k)).st_ino for k in _keys(lib)}) == 9
        lib.close()


def test_same_file_in_one_explicit_list_is_indexed_once(tmp_path, photo_tree):
    lib = _lib(tmp_path)
    p = photo_tree / "a" / "img0.jpg"
    r = lib.add([p, p, photo_tree / "a" / "deep" / ".." / "img0.jpg"])
    assert (r.scanned, r.added, lib.count()) == (1, 1, 1)


def test_lookup_keys_cover_the_printed_path():
    assert lookup_keys("/nonexistent/x.jpg") == ["/nonexistent/x.jpg"]
    printed = f"/nonexistent/x{ESCAPE}FF.jpg"
    assert lookup_keys(printed) == [path_key(printed), printed]


# ---- 5. two processes creating one index ---------------------------------------------------------
def _open_at_once(db: Path, n: int) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def work() -> None:
        barrier.wait()
        try:
            Library.open(db, FakeBundle()).close()
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_opens_create_one_index(tmp_path):
    for round_ in range(3):
        db = tmp_path / f"new{round_}.db"
        assert _open_at_once(db, 30) == []
        with Library.open(db, FakeBundle()) as lib:
            assert lib.info.schema_version == SCHEMA_VERSION and lib.count() == 0


def test_concurrent_opens_migrate_once(tmp_path):
    for round_ in range(3):
        db = tmp_path / f"old{round_}.db"
        shutil.copy(FIXTURE_V1, db)
        assert _open_at_once(db, 30) == []
        with Library.open(db, FakeBundle()) as lib:
            assert lib.info.schema_version == SCHEMA_VERSION and lib.count() == 5
