"""Incremental indexing: new/changed/unchanged/moved/copied/deleted files, the bad-file zoo, EXIF."""

from __future__ import annotations

import os
import shutil
from datetime import datetime
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from runtime_photos import write_photo
from runtime_fakes import FakeBundle
from PIL import Image

from edge_xmr import indexer
from edge_xmr import Library
from edge_xmr.indexer import HEIF_MISSING, IndexOptions


def _lib(tmp_path: Path, bundle: FakeBundle | None = None) -> Library:
    return Library.open(tmp_path / "i.db", bundle or FakeBundle())


def _consistent(lib: Library) -> int:
    c = lib.store.connection
    n = c.execute("SELECT count(*) FROM photos").fetchone()[0]
    assert c.execute("SELECT count(*) FROM vectors").fetchone()[0] == n
    assert c.execute("SELECT count(*) FROM rerank").fetchone()[0] == n
    assert c.execute("SELECT count(DISTINCT path) FROM photos").fetchone()[0] == n
    return int(n)


def test_first_run_then_nothing_to_do(tmp_path, photo_tree):
    bundle = FakeBundle()
    lib = _lib(tmp_path, bundle)
    seen = []
    r = lib.index(photo_tree, progress=seen.append, options=IndexOptions(batch_size=4))
    assert (r.scanned, r.added, r.skipped, r.removed) == (9, 9, 0, 0)
    assert _consistent(lib) == 9 and bundle.image_calls == 9
    assert [p.done for p in seen] == [4, 8, 9] and seen[-1].total == 9 and seen[-1].rate > 0
    r = lib.index(photo_tree)
    assert (r.unchanged, r.added, r.updated) == (9, 0, 0) and bundle.image_calls == 9


def test_changed_moved_copied_deleted(tmp_path, photo_tree):
    bundle = FakeBundle()
    lib = _lib(tmp_path, bundle)
    lib.index(photo_tree)
    a0 = photo_tree / "a" / "img0.jpg"
    old_id = lib.photo_id(photo_tree / "a" / "img1.jpg")
    write_photo(a0, 999)  # changed content
    os.rename(photo_tree / "a" / "img1.jpg", photo_tree / "b" / "renamed.jpg")  # moved
    shutil.copy(photo_tree / "b" / "b0.jpg", photo_tree / "copy.jpg")  # copied
    os.remove(photo_tree / "b" / "b1.jpg")  # deleted
    calls = bundle.image_calls
    r = lib.index(photo_tree)
    assert (r.updated, r.moved, r.copied, r.removed, r.added) == (1, 1, 1, 1, 0)
    assert bundle.image_calls == calls + 1  # only the changed file was embedded again
    assert lib.photo_id(photo_tree / "b" / "renamed.jpg") == old_id
    assert lib.photo_id(photo_tree / "b" / "b1.jpg") is None
    assert _consistent(lib) == 9
    # the moved photo is found under its new folder by a folder-filtered search
    hits = lib.search("x", k=20, folder=photo_tree / "b")
    assert str(photo_tree / "b" / "renamed.jpg") in {h.path for h in hits}
    # same bytes rewritten (new mtime): re-stamped, not re-embedded
    os.utime(photo_tree / "b" / "b2.jpg", ns=(1, 1))
    r = lib.index(photo_tree)
    assert (r.unchanged, r.updated) == (9, 0) and bundle.image_calls == calls + 1
    assert lib.index(photo_tree).unchanged == 9


def test_indexing_one_folder_keeps_the_others(tmp_path, photo_tree):
    lib = _lib(tmp_path)
    lib.index(photo_tree / "a")
    lib.index(photo_tree / "b")
    assert lib.stats().photos == 9
    shutil.rmtree(photo_tree / "b")
    r = lib.index(photo_tree / "a")
    assert r.removed == 0 and lib.stats().photos == 9
    assert lib.index(photo_tree).removed == 3


def test_exif_time_and_orientation(tmp_path):
    root = tmp_path / "p"
    write_photo(root / "rot.jpg", 1, size=(60, 30), orientation=6, exif_time="2019:12:24 18:30:05")
    write_photo(root / "plain.jpg", 2, size=(60, 30))
    lib = _lib(tmp_path)
    lib.index(root)
    hits = {Path(h.path).name: h for h in lib.search("q", k=5)}
    assert (hits["rot.jpg"].width, hits["rot.jpg"].height) == (30, 60)
    assert hits["rot.jpg"].taken == datetime(2019, 12, 24, 18, 30, 5)
    assert (hits["plain.jpg"].width, hits["plain.jpg"].height) == (60, 30)
    assert [Path(h.path).name for h in lib.search("q", after="2019-12-24", before="2019-12-25")] == ["rot.jpg"]


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def _zoo(root: Path) -> dict[str, str | None]:
    """file name -> expected skip reason fragment (None: must be indexed)."""
    root.mkdir(parents=True)
    write_photo(root / "ok.jpg", 1)
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8))
    big.save(root / "full.jpg", quality=95)
    data = (root / "full.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("this is not an image\n")
    (root / "bomb.png").write_bytes(_png_header(30_000, 30_000))
    Image.new("CMYK", (40, 30), (10, 200, 30, 5)).save(root / "cmyk.jpg")
    Image.fromarray((np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16)).save(root / "gray16.png")
    Image.new("RGBA", (20, 20), (255, 0, 0, 100)).save(root / "alpha.png")
    Image.new("P", (20, 20)).save(root / "palette.gif")
    (root / "folder.jpg").mkdir()  # a folder with an image name
    write_photo(root / "folder.jpg" / "inner.jpg", 3)
    (root / "notes.txt").write_text("ignored: not an image extension")
    return {"ok.jpg": None, "full.jpg": None, "truncated.jpg": "truncated", "empty.jpg": "empty",
            "text.jpg": "cannot identify", "bomb.png": "decompression bomb", "cmyk.jpg": None,
            "gray16.png": None, "alpha.png": None, "palette.gif": None, "inner.jpg": None}


def test_bad_file_zoo_is_skipped_with_reasons(tmp_path):
    expected = _zoo(tmp_path / "zoo")
    lib = _lib(tmp_path)
    r = lib.index(tmp_path / "zoo", options=IndexOptions(batch_size=3))
    bad = {k: v for k, v in expected.items() if v}
    assert r.skipped == len(bad) and r.added == len(expected) - len(bad)
    st = lib.stats()
    reasons = {Path(p).name: reason for p, reason in st.skipped_files}
    assert set(reasons) == set(bad)
    for name, fragment in bad.items():
        assert fragment in reasons[name], (name, reasons[name])
    assert _consistent(lib) == len(expected) - len(bad)
    # skipped files are not retried until they change; a fixed file is indexed
    assert lib.index(tmp_path / "zoo").skipped == 0
    write_photo(tmp_path / "zoo" / "text.jpg", 5)
    r = lib.index(tmp_path / "zoo")
    assert r.added == 1 and "text.jpg" not in {Path(p).name for p, _ in lib.stats().skipped_files}


def test_heic_needs_the_extra(tmp_path, monkeypatch):
    write_photo(tmp_path / "p" / "a.jpg", 1)
    (tmp_path / "p" / "b.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    monkeypatch.setattr(indexer, "heif_available", lambda: False)
    lib = _lib(tmp_path)
    r = lib.index(tmp_path / "p")
    assert (r.added, r.skipped) == (1, 1)
    assert lib.stats().skipped_files[0][1] == HEIF_MISSING


def test_heic_is_indexed_with_pillow_heif(tmp_path):
    pytest.importorskip("pillow_heif")
    assert indexer.heif_available()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    (tmp_path / "p").mkdir()
    img.save(tmp_path / "p" / "phone.heic")
    lib = _lib(tmp_path)
    r = lib.index(tmp_path / "p")
    assert (r.added, r.skipped) == (1, 0)
    assert (lib.search("x")[0].width, lib.search("x")[0].height) == (48, 40)


def test_add_explicit_files_and_remove(tmp_path, photo_tree):
    lib = _lib(tmp_path)
    r = lib.add([photo_tree / "a" / "img0.jpg", photo_tree / "b" / "b0.jpg"])
    assert r.added == 2
    lib.index(photo_tree)
    assert lib.remove(photo_tree / "a") == 6
    assert lib.remove(photo_tree / "b" / "b0.jpg") == 1
    assert lib.remove(photo_tree / "nothing") == 0
    st = lib.stats()
    assert (st.photos, st.folders) == (2, 1)
    assert _consistent(lib) == 2


def test_empty_and_missing_folders(tmp_path):
    lib = _lib(tmp_path)
    (tmp_path / "empty").mkdir()
    assert lib.index(tmp_path / "empty").scanned == 0
    from edge_xmr.index import LibraryError

    with pytest.raises(LibraryError, match="not a folder"):
        lib.index(tmp_path / "missing")


def _rows(lib: Library) -> dict[str, tuple[bytes, np.ndarray, np.ndarray]]:
    ids = lib.store.all_ids()
    info = lib.store.photo_info(ids)
    emb, tok = lib.store.stored(ids)
    hashes = dict(lib.store.connection.execute("SELECT id, hash FROM photos").fetchall())
    return {info[i].path: (hashes[i], emb[j], tok[j]) for j, i in enumerate(ids)}


def test_encoder_batch_and_in_flight_bound_memory_not_results(tmp_path, monkeypatch):
    """Small encoder calls and a short read-ahead give the same index as one big batch; the encoder
    never sees more than ``encoder_batch`` photos at once and decoded photos waiting for it stay
    within ``max_in_flight + encoder_batch``."""
    root = tmp_path / "photos"
    for i in range(37):
        write_photo(root / f"f{i % 3}" / f"p{i:02d}.jpg", i)
    shutil.copy(root / "f0" / "p00.jpg", root / "copy.jpg")  # a copy: reused, never encoded
    (root / "bad.jpg").write_bytes(b"not a jpeg")
    ref = _lib(tmp_path / "ref")
    ref.index(root, options=IndexOptions(batch_size=64, encoder_batch=64, max_in_flight=64))

    bundle, lock = FakeBundle(), threading.Lock()
    waiting, peak, calls = [0], [0], []
    prepare, encode = indexer._prepare, bundle.encode_images

    def counting_prepare(*a):
        p = prepare(*a)
        with lock:
            waiting[0] += p.image is not None
            peak[0] = max(peak[0], waiting[0])
        return p

    def counting_encode(images):
        calls.append(len(images))
        with lock:
            waiting[0] -= len(images)
        return encode(images)

    monkeypatch.setattr(indexer, "_prepare", counting_prepare)
    bundle.encode_images = counting_encode
    lib = _lib(tmp_path / "small", bundle)
    r = lib.index(root, options=IndexOptions(batch_size=8, workers=2, encoder_batch=3, max_in_flight=4))
    assert (r.added, r.copied, r.skipped) == (37, 1, 1) and sum(calls) == 37
    assert max(calls) == 3 and peak[0] <= 4 + 3
    got, want = _rows(lib), _rows(ref)
    assert set(got) == set(want)
    for path, (h, e, t) in want.items():
        assert got[path][0] == h
        np.testing.assert_allclose(got[path][1], e, atol=1e-6)
        np.testing.assert_allclose(got[path][2], t, atol=1e-6)


@pytest.mark.parametrize("bad", [{"encoder_batch": 0}, {"max_in_flight": 0}, {"batch_size": 0}])
def test_index_options_must_be_positive(tmp_path, photo_tree, bad):
    with pytest.raises(ValueError, match="must be >= 1"):
        _lib(tmp_path).index(photo_tree, options=IndexOptions(**bad))
