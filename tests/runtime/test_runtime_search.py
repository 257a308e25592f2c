"""search / similar / rank_texts over an indexed folder (fake bundle)."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_photos import write_photo
from runtime_fakes import FakeBundle

from edge_xmr.index import LibraryError

from edge_xmr import Library
from edge_xmr.search import MAX_QUERY_CHARS, QueryError


def test_rerank_orders_by_cross_score_and_keeps_both_scores(lib):
    hits = lib.search("a dog on the beach", k=5, rerank=9)
    assert len(hits) == 5
    cross = [h.cross_score for h in hits]
    assert cross == sorted(cross, reverse=True)
    q = lib.bundle.embed_texts(["a dog on the beach"])[0]
    emb, tok = lib.store.stored([h.photo_id for h in hits])
    np.testing.assert_allclose([h.bi_score for h in hits], emb @ q, atol=1e-5)
    np.testing.assert_allclose(cross, lib.bundle.score_candidates("a dog on the beach", tok, emb), atol=1e-5)
    # the reranked top-5 are the cross-encoder's best of ALL 9 bi-encoder candidates
    plain = lib.search("a dog on the beach", k=9, rerank=0)
    emb9, tok9 = lib.store.stored([h.photo_id for h in plain])
    best = np.argsort(-lib.bundle.score_candidates("a dog on the beach", tok9, emb9))[:5]
    assert [h.photo_id for h in hits] == [plain[i].photo_id for i in best]


def test_rerank_zero_is_pure_knn(lib):
    hits = lib.search("red", k=4, rerank=0)
    assert all(h.cross_score is None for h in hits)
    assert [h.bi_score for h in hits] == sorted([h.bi_score for h in hits], reverse=True)


def test_rerank_smaller_than_k(lib):
    hits = lib.search("red", k=6, rerank=2)
    assert [h.cross_score is not None for h in hits] == [True] * 2 + [False] * 4
    assert hits[2].bi_score >= hits[5].bi_score


def test_k_larger_than_library_and_odd_queries(lib):
    assert len(lib.search("x", k=1000)) == 9
    for empty in ("", "  \t\n"):  # any result would be arbitrary: refused, as by the web API
        with pytest.raises(QueryError, match="empty"):
            lib.search(empty, k=3)
    huge = "dog " * 100_000
    assert len(lib.search(huge, k=3)) == 3
    assert len(huge) > MAX_QUERY_CHARS
    with pytest.raises(ValueError):
        lib.search("x", k=0)
    with pytest.raises(ValueError):
        lib.search("x", rerank=-1)
    with pytest.raises(ValueError, match="not a date"):
        lib.search("x", after="yesterday")


def test_filters(lib, photo_tree):
    assert {h.path for h in lib.search("x", k=20, folder=photo_tree / "a")} == \
        {str(p) for p in (photo_tree / "a").rglob("*") if p.is_file()}
    assert len(lib.search("x", k=20, folder=photo_tree / "a" / "deep")) == 2
    assert lib.search("x", k=20, folder=photo_tree / "nope") == []
    jan_to_mar_2020 = lib.search("x", k=20, after="2020-01-01", before="2020-03-16")
    assert sorted(h.path.rsplit("/", 1)[1] for h in jan_to_mar_2020) == ["img0.jpg", "img1.jpg", "img2.jpg"]


def test_similar(lib, photo_tree, tmp_path):
    target = photo_tree / "b" / "b0.jpg"
    hits = lib.similar(target, k=3)
    assert len(hits) == 3 and str(target) not in {h.path for h in hits}
    assert all(h.cross_score is None for h in hits)
    # an identical copy outside the library is closest to the original
    outside = write_photo(tmp_path / "elsewhere" / "same.jpg", 20)
    assert lib.similar(outside, k=1)[0].path == str(target)
    with pytest.raises(LibraryError):
        lib.similar(tmp_path / "missing.jpg")
    with pytest.raises(LibraryError):
        lib.similar(99999)


def test_rank_texts(lib, photo_tree):
    texts = ["a dog", "a cat", "", "mountains at dawn"]
    ranked = lib.rank_texts(photo_tree / "a" / "img0.jpg", texts)
    assert sorted(r.index for r in ranked) == [0, 1, 2, 3]
    assert [r.cross_score for r in ranked] == sorted([r.cross_score for r in ranked], reverse=True)
    assert {r.text for r in ranked} == set(texts)
    assert lib.rank_texts(photo_tree / "a" / "img0.jpg", []) == []


def test_to_dict(lib):
    d = lib.search("x", k=1)[0].to_dict()
    assert {"path", "bi_score", "cross_score", "taken", "width", "height"} <= set(d)
