"""Oracle tests: the candidate search with filters equals numpy brute force on random data, odd sizes."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_fakes import FakeBundle

from edge_xmr.index import Filters, PhotoRecord

from edge_xmr import Library
from edge_xmr.index.filters import folder_key, key_range
from edge_xmr.index.stores import Store

FOLDERS = ["/lib/a", "/lib/a/x", "/lib/a/x/y", "/lib/ab", "/lib/b", "/other"]
DIM = 24


def _fill(lib: Library, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    tok = rng.standard_normal((n, 4, 8)).astype(np.float32)
    taken = rng.integers(1_500_000_000, 1_700_000_000, n)
    folders = [FOLDERS[i] for i in rng.integers(0, len(FOLDERS), n)]
    recs = [PhotoRecord(f"{f}/p{i}.jpg", rng.bytes(32), 10, 10, int(t), 4, 3)
            for i, (f, t) in enumerate(zip(folders, taken))]
    for s in range(0, n, 500):  # several batches
        lib.store.add_photos(recs[s:s + 500], emb[s:s + 500], tok[s:s + 500])
    return emb, taken, folders


def _brute(stored: np.ndarray, q: np.ndarray, mask: np.ndarray, n: int) -> list[int]:
    s = np.where(mask, stored @ q, -np.inf)
    order = np.argsort(-s, kind="stable")
    return [int(i) + 1 for i in order[:n] if mask[i]]


def _mask(taken: np.ndarray, folders: list[str], f: Filters) -> np.ndarray:
    m = np.ones(len(taken), bool)
    if f.after is not None:
        m &= taken >= f.after
    if f.before is not None:
        m &= taken < f.before
    if f.folder is not None:
        lo, hi = key_range(f.folder)
        m &= np.array([lo <= folder_key(x) < hi for x in folders])
    return m


FILTERS = [Filters(), Filters(after=1_600_000_000), Filters(before=1_550_000_000),
           Filters(after=1_520_000_000, before=1_530_000_000), Filters(folder="/lib/a/"),
           Filters(folder="/lib/a/x/", after=1_600_000_000), Filters(folder="/nowhere/")]


@pytest.mark.parametrize("store", ["float32", "int8"])
@pytest.mark.parametrize("size", [1, 7, 1023, 1025])
def test_knn_with_filters_equals_brute_force(tmp_path, store, size):
    lib = Library.open(tmp_path / "i.db", FakeBundle(dim=DIM), store=store)
    emb, taken, folders = _fill(lib, size, seed=size)
    stored = emb if store == "float32" else lib.store.embeddings(list(range(1, size + 1)))
    rng = np.random.default_rng(0)
    for n in (1, 10, 37, size + 5):
        for f in FILTERS:
            q = rng.standard_normal(DIM).astype(np.float32)
            q /= np.linalg.norm(q)
            got = lib.store.candidates(q, n, f)
            want = _brute(stored, q, _mask(taken, folders, f), n)
            assert got.ids.tolist() == want, (store, size, n, f)
            np.testing.assert_allclose(got.scores, stored[np.array(want, int) - 1] @ q if want else [], atol=1e-5)
    lib.close()


@pytest.mark.parametrize("size", [7, 1025])
def test_bit_store_rescores_within_filters(tmp_path, size):
    lib = Library.open(tmp_path / "i.db", FakeBundle(dim=DIM), store="bit")
    emb, taken, folders = _fill(lib, size, seed=size)
    stored = lib.store.embeddings(list(range(1, size + 1)))
    rng = np.random.default_rng(1)
    for f in FILTERS:
        q = rng.standard_normal(DIM).astype(np.float32)
        q /= np.linalg.norm(q)
        mask = _mask(taken, folders, f)
        got = lib.store.candidates(q, 10, f)
        assert all(mask[i - 1] for i in got.ids)
        assert np.all(np.diff(got.scores) <= 1e-7)
        np.testing.assert_allclose(got.scores, stored[got.ids - 1] @ q, atol=1e-5)
        assert got.ids.tolist() == _brute(stored, q, mask, 10)  # the first pass is exact at this size
    lib.close()


def test_int8_scores_are_close_to_float(tmp_path):
    lib = Library.open(tmp_path / "i.db", FakeBundle(dim=DIM))
    emb, _, _ = _fill(lib, 300, seed=3)
    q = emb[5]
    got = lib.store.candidates(q, 5)
    assert got.ids[0] == 6 and got.scores[0] == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(got.scores, emb[got.ids - 1] @ q, atol=0.02)


def test_store_validation():
    with pytest.raises(ValueError, match="unknown store"):
        Store("int4", 16, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="divisible by 8"):
        Store("bit", 12, 1.0)


def test_residual_refinement_is_12_bit_precise():
    from edge_xmr.index.stores import residual_nibbles, unpack_nibbles

    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 256)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    store = Store("int8", 256, 127 / 0.3)
    for v in x:
        knn, refine = store.encode(v)
        assert len(knn) == 256 and refine is not None and len(refine) == 128
        assert np.abs(store.decode(knn, refine) - v).max() < 1.5 / (16 * store.scale) + 1e-4
        assert np.abs(store.decode(knn, None) - v).max() < 1.0 / store.scale  # plain int8
    bit = Store("bit", 256, 127 / 0.3)
    knn, refine = bit.encode(x[0])
    assert len(knn) == 32 and refine is not None and len(refine) == 384
    np.testing.assert_allclose(bit.decode(None, refine), store.decode(*store.encode(x[0])))
    r = np.array([-0.5, -0.25, 0.0, 0.4375], np.float32)
    np.testing.assert_allclose(unpack_nibbles(residual_nibbles(r, np.zeros(4, np.int8), 1.0)), r)


def test_int8_store_matches_exact_float_search(tmp_path):
    lib = Library.open(tmp_path / "i.db", FakeBundle(dim=DIM))
    emb, taken, folders = _fill(lib, 1025, seed=11)
    rng = np.random.default_rng(5)
    agree = []
    for _ in range(50):
        q = rng.standard_normal(DIM).astype(np.float32)
        q /= np.linalg.norm(q)
        want = _brute(emb, q, np.ones(len(emb), bool), 10)
        agree.append(len(set(lib.store.candidates(q, 10).ids.tolist()) & set(want)) / 10)
    assert np.mean(agree) >= 0.99
    lib.close()
