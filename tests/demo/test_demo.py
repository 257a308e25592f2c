"""The demo's library part: cache folders, sample photos, the default bundle's cache key, timed search."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "web"))

from web_helpers import COLOURS, ColourBundle, write_colour_photo  # noqa: E402

from edge_xmr import demo  # noqa: E402


def test_cache_dir_follows_each_platform(tmp_path):
    home = tmp_path
    assert demo.cache_dir("linux", {}, home) == home / ".cache" / "edge-xmr"
    assert demo.cache_dir("linux", {"XDG_CACHE_HOME": "/x"}, home) == Path("/x/edge-xmr")
    assert demo.cache_dir("darwin", {}, home) == home / "Library" / "Caches" / "edge-xmr"
    assert demo.cache_dir("win32", {"LOCALAPPDATA": "C:/L"}, home) == Path("C:/L/edge-xmr/Cache")
    assert demo.cache_dir("linux", {"EDGE_XMR_CACHE": "~/c"}, home) == Path("~/c").expanduser()


def test_default_model_dir_matches_the_model_package():
    src = (Path(demo.__file__).parent / "model" / "bases.py").read_text()
    assert '"assets" / "default_model"' in src  # same place as bases.default_model_dir(), without torch
    assert demo.default_model_dir() == Path(demo.__file__).resolve().parent / "assets" / "default_model"


def test_model_hash_changes_with_any_model_file(tmp_path):
    for name in demo.MODEL_FILES:
        (tmp_path / name).write_bytes(b"x")
    h = demo.model_hash(tmp_path)
    assert h == demo.model_hash(tmp_path) and len(h) == 64
    (tmp_path / "model.safetensors").write_bytes(b"y")
    assert demo.model_hash(tmp_path) != h
    (tmp_path / "unrelated.txt").write_text("z")
    assert demo.bundle_cache_path(tmp_path, tmp_path / "c").parent == tmp_path / "c" / "bundles"


def test_default_bundle_prefers_a_cached_export(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGE_XMR_BUNDLE", raising=False)
    model = tmp_path / "model"
    model.mkdir()
    for name in demo.MODEL_FILES:
        (model / name).write_bytes(name.encode())
    target = demo.bundle_cache_path(model, tmp_path / "cache")
    target.mkdir(parents=True)
    (target / "manifest.json").write_text("{}")
    assert demo.default_bundle(tmp_path / "cache", model_dir=model) == target


def test_default_bundle_without_a_model_says_how_to_get_one(tmp_path):
    with pytest.raises(demo.DemoError, match="no default model"):
        demo.default_bundle(tmp_path / "cache", model_dir=tmp_path / "nothing")


def test_missing_export_extras_name_the_pip_command(tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    for name in demo.MODEL_FILES:
        (model / name).write_bytes(b"m")
    real = demo.importlib.util.find_spec
    monkeypatch.setattr(demo.importlib.util, "find_spec", lambda n, *a: None if n == "torch" else real(n, *a))
    with pytest.raises(demo.DemoError, match=r"pip install torch==2\.13\.0 'edge-xmr\[train,export\]'"):
        demo.default_bundle(tmp_path / "cache", model_dir=model)


def test_sample_photos_come_from_the_installed_wheel(tmp_path):
    pytest.importorskip("skimage")
    out = demo.sample_photos(tmp_path / "photos")
    names = {p.name for p in out.iterdir()}
    assert {"cat.png", "rocket_launch.jpg", "coffee_cup.png", "astronaut.png"} <= names
    assert all(q.expect in names for q in demo.SAMPLE_QUERIES)
    assert demo.SAMPLE_IMAGE_QUERY in names
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    demo.sample_photos(out)  # again: nothing rewritten (so re-indexing finds nothing new)
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}


def test_demo_db_is_keyed_by_folder_and_model(tmp_path):
    a = demo.demo_db_path(tmp_path / "a", "m1", tmp_path)
    assert a == demo.demo_db_path(tmp_path / "a", "m1", tmp_path)
    assert a != demo.demo_db_path(tmp_path / "b", "m1", tmp_path) != demo.demo_db_path(tmp_path / "a", "m2", tmp_path)


@pytest.fixture()
def colour_library(tmp_path):
    from edge_xmr import Library

    root = tmp_path / "photos"
    for i, (name, rgb) in enumerate(COLOURS.items()):
        write_colour_photo(root / ("a" if i % 2 else "b") / f"{name}.jpg", rgb)
    lib = Library.open(tmp_path / "i.db", ColourBundle())
    lib.index(root)
    yield lib
    lib.close()


@pytest.mark.parametrize("k,rerank", [(1, 0), (3, 2), (2, 5), (6, 20), (10, 3)])
def test_timed_search_gives_library_search_results(colour_library, k, rerank):
    for text in ("red", "a blue sky", "white and black", "nothing in particular"):
        r = demo.timed_search(colour_library, text, k=k, rerank=rerank)
        assert r.hits == colour_library.search(text, k=k, rerank=rerank)
        t = r.times
        assert t.candidates == min(rerank, 6) and min(t.embed_ms, t.knn_ms, t.rerank_ms) >= 0
        assert t.total_ms >= t.embed_ms + t.knn_ms + t.rerank_ms


def test_timed_search_with_filters_matches_too(colour_library, tmp_path):
    folder = tmp_path / "photos" / "a"
    r = demo.timed_search(colour_library, "green", k=5, folder=folder)
    assert r.hits == colour_library.search("green", k=5, folder=folder)
    assert {Path(h.path).parent for h in r.hits} == {folder}
    assert demo.timed_search(colour_library, "red", before="1990-01-01").hits == []


def test_timed_search_rejects_bad_arguments(colour_library):
    with pytest.raises(ValueError):
        demo.timed_search(colour_library, "red", k=0)
    with pytest.raises(ValueError):
        demo.timed_search(colour_library, "red", rerank=-1)
