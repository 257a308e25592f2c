"""The façade ``edge_xmr.Library``: its small public surface, batch search, use from 4 threads, and
bundle discovery shared with the CLI (``edge_xmr.discovery``)."""

from __future__ import annotations

import json
import threading
from datetime import datetime
from pathlib import Path

import pytest
from runtime_fakes import FakeBundle

from edge_xmr import Library, NoBundleError, QueryError
from edge_xmr import discovery

# what users call; everything else lives in the store (``lib.store``) or below
PUBLIC = {"open", "path", "info", "bundle", "store", "close", "index", "add", "remove", "search", "search_many",
          "similar", "rank_texts", "classify", "stats", "count", "photo_id", "sync_assets", "remove_assets"}


def test_public_surface_is_the_verbs():
    public = {n for n in dir(Library) if not n.startswith("_")}
    assert public == PUBLIC
    for internal in ("add_photos", "touch_photo", "transaction", "candidates", "connection", "require_bundle"):
        assert not hasattr(Library, internal)


def test_hit_taken_is_a_datetime_and_json_keeps_iso_text(lib):
    h = lib.search("a dog", k=1)[0]
    assert isinstance(h.taken, datetime) and h.taken.tzinfo is None
    d = h.to_dict()
    assert d["taken"] == h.taken.isoformat(timespec="seconds") and json.loads(json.dumps(d))["path"] == h.path


def test_search_many_equals_one_search_per_text(lib):
    texts = ["a dog", "a cat on a sofa", "a dog", "snow"]
    assert lib.search_many(texts, k=4, rerank=5, after="2020-01-01") == [
        lib.search(t, k=4, rerank=5, after="2020-01-01") for t in texts]
    assert lib.search_many([]) == []
    with pytest.raises(QueryError):
        lib.search_many(["a dog", "  "])


def test_one_library_shared_by_four_threads(lib, photo_tree):
    """4 threads share one Library: searches, similar, stats and an indexing run at once; every
    read answers exactly what it answers alone (the writer re-indexes unchanged photos: no change)."""
    texts = [f"query {i}" for i in range(6)]
    photo = photo_tree / "a" / "img0.jpg"
    want = {t: lib.search(t, k=5, rerank=6) for t in texts}
    want_similar = lib.similar(photo, k=4)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def reader(i: int) -> None:
        try:
            start.wait()
            for r in range(40):
                t = texts[(i + r) % len(texts)]
                assert lib.search(t, k=5, rerank=6) == want[t]
                assert lib.similar(photo, k=4) == want_similar
                assert lib.stats().photos == 9
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def writer() -> None:
        try:
            start.wait()
            for _ in range(10):
                assert lib.index(photo_tree).unchanged == 9
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(3)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


# ---- bundle discovery ------------------------------------------------------------------------------
def _bundle_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text("{}")
    return path


def _index_naming(tmp_path: Path, bundle: Path) -> Path:
    """An index file whose meta records ``bundle`` as the bundle it was opened with."""
    db = tmp_path / "named.db"
    fake = FakeBundle()
    fake.path = bundle
    Library.open(db, fake).close()
    return db


def test_discovery_order(tmp_path, monkeypatch):
    given, recorded, env, packaged = (_bundle_dir(tmp_path / n) for n in ("given", "recorded", "env", "packaged"))
    db = _index_naming(tmp_path, recorded)
    monkeypatch.setenv("EDGE_XMR_BUNDLE", str(env))
    monkeypatch.setattr(discovery, "packaged_bundle_dir", lambda: packaged)
    assert discovery.find_bundle(given, db) == given
    assert discovery.find_bundle(None, db) == recorded.resolve()
    assert discovery.find_bundle(None, tmp_path / "new.db") == env
    (recorded / "manifest.json").unlink()  # the recorded folder is no bundle any more
    assert discovery.find_bundle(None, db) == env
    monkeypatch.delenv("EDGE_XMR_BUNDLE")
    assert discovery.find_bundle(None, db) == packaged


def test_discovery_without_any_bundle_says_how_to_get_one(tmp_path, monkeypatch):
    from edge_xmr import demo

    def no_model(**kw: object) -> Path:
        raise demo.DemoError("no default model here")

    monkeypatch.delenv("EDGE_XMR_BUNDLE", raising=False)
    monkeypatch.setattr(discovery, "packaged_bundle_dir", lambda: None)
    monkeypatch.setattr(demo, "default_bundle", no_model)
    with pytest.raises(NoBundleError, match="--bundle DIR.*EDGE_XMR_BUNDLE.*no default model here"):
        Library.open(tmp_path / "x.db")


def test_open_without_a_bundle_falls_back_like_the_cli(tmp_path, photo_tree, real_bundle_dir, monkeypatch):
    """``Library.open(db)``: the index's recorded bundle, else $EDGE_XMR_BUNDLE (as ``edge-xmr``)."""
    monkeypatch.setattr(discovery, "packaged_bundle_dir", lambda: None)
    monkeypatch.delenv("EDGE_XMR_BUNDLE", raising=False)
    db = tmp_path / "i.db"
    with Library.open(db, real_bundle_dir, threads=1) as lib:
        lib.index(photo_tree / "a")
        want = lib.search("a dog", k=3)
    with Library.open(db, threads=1) as lib:  # the recorded bundle
        assert lib.bundle is not None and lib.search("a dog", k=3) == want
    monkeypatch.setenv("EDGE_XMR_BUNDLE", str(real_bundle_dir))
    with Library.open(tmp_path / "new.db", threads=1) as lib:  # a new index: $EDGE_XMR_BUNDLE
        assert lib.info.bundle_path == str(real_bundle_dir.resolve())
