"""The library's embedding moments (kept by every write), zero-shot labels over them, and the
first-stage prior: each against a brute-force oracle over all photos (fake bundle)."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
from runtime_fakes import FakeBundle
from runtime_photos import write_photo

from edge_xmr import Library, LibraryError
from edge_xmr.index import moments as moments_store
from edge_xmr.score import LibraryMoments
from edge_xmr.search import PRIOR_OVERFETCH


@pytest.fixture()
def lib(tmp_path, photo_tree):
    lib = Library.open(tmp_path / "i.db", FakeBundle())
    lib.index(photo_tree)
    yield lib
    lib.close()


def _brute(lib: Library) -> LibraryMoments:
    return LibraryMoments.of(lib.store.embeddings(lib.store.all_ids()))


def _stored(lib: Library) -> LibraryMoments | None:
    """The row the writes keep (None: none), read without the reader's recompute fallback."""
    return moments_store._row(lib.store.connection, lib.info.dim)


def _assert_same(a: LibraryMoments | None, b: LibraryMoments) -> None:
    assert a is not None
    assert a.count == b.count
    np.testing.assert_allclose(a.total, b.total, atol=1e-9)
    np.testing.assert_allclose(a.outer, b.outer, atol=1e-9)


def test_every_write_keeps_the_moments_of_the_photos_in_the_index(lib, photo_tree, tmp_path):
    _assert_same(_stored(lib), _brute(lib))
    assert _brute(lib).count == 9
    lib.remove(photo_tree / "a" / "deep")  # a folder
    _assert_same(_stored(lib), _brute(lib))
    assert _stored(lib).count == 7
    write_photo(photo_tree / "a" / "img0.jpg", 99)  # changed content: replaced in place
    shutil.copy(photo_tree / "b" / "b0.jpg", photo_tree / "b" / "copy.jpg")  # same bytes: copied vectors
    (photo_tree / "b" / "b1.jpg").unlink()  # gone
    lib.index(photo_tree)
    _assert_same(_stored(lib), _brute(lib))
    assert _stored(lib).count == lib.count() == 9  # a/deep indexed again (remove forgets, files stay), b1 gone, copy new
    lib.remove(photo_tree)
    _assert_same(_stored(lib), _brute(lib))
    assert _stored(lib).count == 0 and not np.abs(_stored(lib).outer).max() > 1e-9


def test_an_index_without_the_moments_row_recomputes_them(lib, photo_tree):
    lib.store.connection.execute("DROP TABLE library_moments")  # an index made before the table existed
    _assert_same(lib.store.moments(), _brute(lib))  # the reader computes them from the stored embeddings
    assert _stored(lib) is None  # ... without writing
    lib.remove(photo_tree / "b" / "b0.jpg")  # no row to update: still none
    assert _stored(lib) is None
    write_photo(photo_tree / "b" / "new.jpg", 42)
    lib.index(photo_tree)  # the first add writes the moments of every photo, the old ones included
    _assert_same(_stored(lib), _brute(lib))
    assert _stored(lib).count == lib.count() == 10  # b0 indexed again (its file stays) + new


def test_a_stale_row_is_not_trusted(lib):
    c = lib.store.connection
    c.execute("UPDATE library_moments SET count = count + 5")  # a count that is not the photo count
    _assert_same(lib.store.moments(), _brute(lib))


def test_normalized_scores_match_the_statistics_of_each_query_over_the_photos():
    rng = np.random.default_rng(0)
    e = rng.standard_normal((50, 8))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    q = rng.standard_normal((3, 8)).astype(np.float32)
    m = LibraryMoments.empty(8).add(e[:60]).remove(e[40:]).add(e[40:])  # incremental = from scratch
    cos = q @ e.T
    mean, std = m.query_stats(q)
    np.testing.assert_allclose(mean, cos.mean(1), atol=1e-5)
    np.testing.assert_allclose(std, cos.std(1), atol=1e-5)
    np.testing.assert_allclose(m.normalized(q, e, "none"), cos, atol=1e-5)
    np.testing.assert_allclose(m.normalized(q, e, "center"), cos - cos.mean(1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(m.normalized(q, e, "zscore"), (cos - cos.mean(1, keepdims=True)) / cos.std(1, keepdims=True),
                               atol=1e-4)
    with pytest.raises(ValueError, match="normalization"):
        m.normalized(q, e, "rank")  # type: ignore[arg-type]


def test_centering_stops_a_label_close_to_every_photo_from_winning_everywhere():
    """Hand-built: 'hub' is 0.6 from every photo; each photo is 0.5 from its own label and 0.2 from the
    other's. Raw cosines give 'hub' to every photo; over the library, 'hub' never stands out."""
    e = np.eye(4)[:, :4]  # photos 0, 1 of kind a; 2, 3 of kind b (their own axes)
    labels = np.array([[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.5, 0.5], [0.6, 0.6, 0.6, 0.6]])  # a, b, hub
    m = LibraryMoments.of(e)
    assert list(m.normalized(labels, e, "none").argmax(0)) == [2, 2, 2, 2]
    assert list(m.normalized(labels, e, "center").argmax(0)) == [0, 0, 1, 1]
    assert list(m.normalized(labels, e, "zscore").argmax(0)) == [0, 0, 1, 1]


@pytest.mark.parametrize("how", ["none", "center", "zscore"])
def test_classify_is_the_argmax_of_the_normalised_cosines_over_all_photos(lib, how):
    labels = ["a red thing", "a blue thing", "a green field", "the sky"]
    q = lib.bundle.embed_texts(labels)
    ids = lib.store.all_ids()
    e = lib.store.embeddings(ids)
    cos = q @ e.T
    mean, std = cos.mean(1, keepdims=True), cos.std(1, keepdims=True)
    want = {"none": cos, "center": cos - mean, "zscore": (cos - mean) / std}[how]
    got = lib.classify(labels, normalize=how)
    assert [h.photo_id for h in got] == ids
    assert [h.index for h in got] == list(want.argmax(0))
    assert [h.label for h in got] == [labels[i] for i in want.argmax(0)]
    np.testing.assert_allclose([h.score for h in got], want.max(0), atol=1e-4)
    some = lib.classify(labels, photos=[got[3].path, ids[5]], normalize=how)  # statistics of the whole library
    assert [(h.photo_id, h.index) for h in some] == [(got[3].photo_id, got[3].index), (ids[5], got[5].index)]


def test_classify_refuses_bad_arguments(lib, tmp_path):
    with pytest.raises(ValueError):
        lib.classify([])
    with pytest.raises(ValueError):
        lib.classify(["a"], normalize="softmax")  # type: ignore[arg-type]
    with pytest.raises(LibraryError):
        lib.classify(["a"], photos=[tmp_path / "not_indexed.jpg"])


def test_first_stage_prior_reorders_the_overfetched_candidates_before_the_cut(lib):
    """Oracle: the cosine's top PRIOR_OVERFETCH * n over ALL photos, ranked by cosine * w - beta * prior,
    when some hits are returned unreranked; a full rerank gets the cosine's top n."""
    b = lib.bundle
    text, n = "a dog on the beach", 3
    q = b.embed_texts([text])[0]
    ids = np.asarray(lib.store.all_ids())
    e = lib.store.embeddings(ids.tolist())
    cos = e @ q
    plain = [h.photo_id for h in lib.search(text, k=n, rerank=0)]
    assert plain == list(ids[np.argsort(-cos, kind="stable")[:n]])
    b.score_config = replace(b.score_config, cosine=10.0, first_stage_prior=2.0)
    pool = np.argsort(-cos, kind="stable")[:PRIOR_OVERFETCH * n]
    key = 10.0 * cos[pool] - 2.0 * b.photo_prior(e[pool])
    want = list(ids[pool[np.argsort(-key, kind="stable")[:n]]])
    hits = lib.search(text, k=n, rerank=0)
    assert [h.photo_id for h in hits] == want
    assert want != plain  # the prior changed what the first stage keeps
    np.testing.assert_allclose([h.bi_score for h in hits], e[np.searchsorted(ids, want)] @ q, atol=1e-5)
    partial = lib.search(text, k=n, rerank=1)  # some hits unreranked: the prior chose the candidates
    assert sorted(h.photo_id for h in partial) == sorted(want)
    full = lib.search(text, k=n, rerank=n)  # all reranked: the cosine's n (the rerank score holds the prior)
    assert sorted(h.photo_id for h in full) == sorted(plain)


def test_the_demo_timed_search_uses_the_same_first_stage(lib):
    from edge_xmr.demo import timed_search

    lib.bundle.score_config = replace(lib.bundle.score_config, cosine=10.0, first_stage_prior=2.0)
    for k, rerank in ((3, 0), (3, 2), (5, 5)):
        want = [(h.photo_id, h.cross_score) for h in lib.search("a dog on the beach", k=k, rerank=rerank)]
        got = [(h.photo_id, h.cross_score) for h in timed_search(lib, "a dog on the beach", k=k, rerank=rerank).hits]
        assert got == want
