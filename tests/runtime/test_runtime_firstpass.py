"""The in-RAM first pass (edge_xmr.index.firstpass): the search against brute force over the stored
embeddings, exact and PCA codes, filters, kept current through adds, removals, replacements and
moves by another connection, a pruned change log, a rolled-back write; migration from schemas 3 and 4."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from runtime_firstpass_data import CONFIG, StoreModel, clustered, records, tokens

from edge_xmr.index import SCHEMA_VERSION, Filters, PhotoStore, make_filters, schema
from edge_xmr.index.db import connect
from edge_xmr.index.firstpass import FirstPassConfig
from edge_xmr.index.library import PhotoRecord

EXACT = replace(CONFIG, exact_max=10**6)  # the same library searched with exact codes


def _fill(db: Path, n: int, cfg: FirstPassConfig = CONFIG, seed: int = 0, batch: int = 250) -> PhotoStore:
    lib = PhotoStore.open(db, StoreModel(), first_pass=cfg)
    x, recs = clustered(n, seed), records(n)
    for i in range(0, n, batch):
        lib.add_photos(recs[i:i + batch], x[i:i + batch], tokens(len(recs[i:i + batch])))
    return lib


def _queries(n: int, seed: int, data_seed: int = 0) -> np.ndarray:
    """Queries near the library's photos (photos drawn like the library's, perturbed)."""
    x = clustered(n, seed=data_seed)
    rng = np.random.default_rng(seed)
    q = x + 0.3 * rng.standard_normal(x.shape) / math.sqrt(x.shape[1]) * 3
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _stored(lib: PhotoStore) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ids, stored embeddings, taken, folder id of every photo: read through SQL, not the first pass."""
    rows = lib.connection.execute("SELECT id, taken, folder_id FROM photos ORDER BY id").fetchall()
    ids = np.array([r[0] for r in rows], np.int64)
    return ids, lib.embeddings(ids.tolist()), np.array([r[1] for r in rows]), np.array([r[2] for r in rows])


def _oracle(lib: PhotoStore, q: np.ndarray, k: int, f: Filters = Filters(), stored=None) -> list[int]:
    ids, e, taken, folder = stored or _stored(lib)
    keep = np.ones(len(ids), bool)
    if f.after is not None:
        keep &= taken >= f.after
    if f.before is not None:
        keep &= taken < f.before
    if f.folder is not None:
        keep &= np.isin(folder, lib.folder_ids(f.folder))
    s = np.where(keep, e @ q, -np.inf)
    top = np.argsort(-s, kind="stable")[:k]
    return [int(ids[i]) for i in top if np.isfinite(s[i])]


def _recall(lib: PhotoStore, qs: np.ndarray, f: Filters = Filters()) -> float:
    stored = _stored(lib)
    hits = []
    for q in qs:
        truth = set(_oracle(lib, q, 10, f, stored))
        got = lib.candidates(q, 10, f)
        assert set(got.ids.tolist()) <= set(_oracle(lib, q, len(stored[0]), f, stored))  # only photos passing f
        hits.append(len(truth & set(got.ids.tolist())) / len(truth) if truth else float(not len(got.ids)))
    return float(np.mean(hits))


def _exact(lib: PhotoStore, qs: np.ndarray, f: Filters = Filters()) -> None:
    stored = _stored(lib)
    for q in qs:
        got = lib.candidates(q, 10, f)
        assert got.ids.tolist() == _oracle(lib, q, 10, f, stored)
        np.testing.assert_allclose(got.scores, stored[1][np.searchsorted(stored[0], got.ids)] @ q, atol=1e-5)


def test_exact_codes_below_exact_max_pca_codes_above(tmp_path):
    n = CONFIG.exact_max - 50
    with _fill(tmp_path / "i.db", n) as lib:
        _exact(lib, _queries(100, 1)[:20])
        assert lib.first_pass.exact
        lib.add_photos(records(100, start=n), clustered(100, seed=5), tokens(100))  # past exact_max
        qs = _queries(200, 2)[:40]
        assert _recall(lib, qs) >= 0.98
        assert not lib.first_pass.exact and lib.first_pass.codes.shape[1] == CONFIG.dims


@pytest.mark.parametrize("cfg", [CONFIG, EXACT], ids=["pca", "exact"])
def test_filters_inside_the_search(tmp_path, cfg):
    n = 3 * CONFIG.exact_max
    with _fill(tmp_path / "i.db", n, cfg=cfg) as lib:
        qs = _queries(100, 3)[:20]
        t0 = records(1)[0].taken
        for f in (make_filters(folder="/nonexistent-photos/f3"), Filters(after=t0 + 86400 * n // 2),
                  Filters(after=t0 + 86400 * 100, before=t0 + 86400 * 160),
                  Filters(after=t0 + 86400 * 10, folder=make_filters(folder="/nonexistent-photos/f1").folder),
                  make_filters(folder="/nowhere")):
            if cfg is EXACT:
                _exact(lib, qs, f)
            else:
                assert _recall(lib, qs, f) >= 0.98, f


@pytest.mark.parametrize("cfg", [CONFIG, EXACT], ids=["pca", "exact"])
def test_another_connection_sees_every_write(tmp_path, cfg):
    """A reader that loaded its codes, then a writer in another connection adds, removes, replaces
    (same path, new vector) and moves photos: the reader's next searches are the oracle's."""
    db, n = tmp_path / "i.db", 2 * CONFIG.exact_max
    _fill(db, n, cfg=cfg).close()
    reader = PhotoStore.open(db, StoreModel(), first_pass=cfg)
    writer = PhotoStore.open(db, StoreModel(), first_pass=cfg)
    qs = _queries(100, 4)[:15]
    check = _exact if cfg is EXACT else (lambda lib, q: _recall(lib, q) >= 0.98 or pytest.fail("recall"))
    check(reader, qs)
    rng = np.random.default_rng(0)
    gone = rng.choice(writer.all_ids(), 80, replace=False).tolist()
    writer.delete_photos(gone)
    new = clustered(40, seed=9)
    writer.add_photos(records(40, start=10 * n), new, tokens(40))
    recs = records(n)
    swapped = [r for r in recs[:30] if writer.key_id(r.path) is not None]
    writer.add_photos(swapped, clustered(len(swapped), seed=11), tokens(len(swapped)))  # replaced by path
    moved = writer.key_id(recs[31].path) or writer.key_id(recs[32].path)
    assert moved is not None
    writer.move_photo(moved, PhotoRecord("/nonexistent-photos/elsewhere/m.jpg", bytes(32), 1, 10**18, 5, 4, 3))
    check(reader, qs)
    for q in new[:10]:  # each new photo is found by its own vector; no removed one ever comes back
        got = reader.candidates(q, 5).ids.tolist()
        assert got[0] == reader.key_id(records(1, start=10 * n + int(np.argmax(new @ q)))[0].path)
    for q in qs:
        assert not set(reader.candidates(q, 50).ids.tolist()) & set(gone)
    assert reader.candidates(qs[0], 5, Filters(before=6)).ids.tolist() == [moved]  # its new date
    assert reader.candidates(qs[0], 5, make_filters(folder="/nonexistent-photos/elsewhere")).ids.tolist() == [moved]
    reader.close()
    writer.close()


def test_a_reader_behind_the_pruned_log_reloads(tmp_path):
    cfg = replace(EXACT, log_keep=5)
    db = tmp_path / "i.db"
    _fill(db, 200, cfg=cfg).close()
    reader = PhotoStore.open(db, StoreModel(), first_pass=cfg)
    qs = _queries(100, 5)[:10]
    _exact(reader, qs)
    with PhotoStore.open(db, StoreModel(), first_pass=cfg) as w:
        w.delete_photos(w.all_ids()[:50])
        w.add_photos(records(30, start=5000), clustered(30, seed=6), tokens(30))
        assert w.connection.execute("SELECT count(*) FROM changes").fetchone()[0] == 5
    _exact(reader, qs)
    reader.close()


def test_a_rolled_back_write_is_not_searched(tmp_path):
    with _fill(tmp_path / "i.db", 200, cfg=EXACT) as lib:
        qs = _queries(100, 6)[:5]
        _exact(lib, qs)
        extra = clustered(5, seed=7)
        with pytest.raises(RuntimeError):
            with lib.transaction():
                ids = lib.add_photos(records(5, start=9000), extra, tokens(5))
                assert lib.candidates(extra[0], 1).ids.tolist() == [ids[0]]  # seen inside the transaction
                raise RuntimeError("abort")
        assert lib.count() == 200
        _exact(lib, qs)
        assert not set(lib.candidates(extra[0], 10).ids.tolist()) & set(ids)


def test_the_basis_is_refitted_as_the_library_grows_and_shrinks(tmp_path):
    with _fill(tmp_path / "i.db", CONFIG.exact_max + 50) as lib:
        qs = _queries(100, 8)[:20]
        _recall(lib, qs)
        fitted = lib.first_pass.fitted_at
        more = clustered(4 * fitted, seed=0)[fitted:]  # the same clusters, 3x the photos
        lib.add_photos(records(len(more), start=20_000), more, tokens(len(more)))
        assert _recall(lib, qs) >= 0.9 and lib.first_pass.fitted_at == 4 * fitted  # 60 rescored of 4x the photos
        lib.delete_photos(lib.all_ids()[:int(3.7 * fitted)])  # below exact_max / 2: exact again
        _exact(lib, qs)
        assert lib.first_pass.exact


@pytest.mark.parametrize("old", [3, 4])
def test_schema_3_and_4_indexes_are_migrated(tmp_path, old):
    db = tmp_path / "i.db"
    n = 400
    with _fill(db, n, cfg=EXACT) as lib:
        qs = _queries(100, 8)[:10]
        want = [lib.candidates(q, 10).ids.tolist() for q in qs]
    conn = connect(db)  # the layout of schema 3 (vec0 as today, no changes table) or 4 (partitioned)
    rows = conn.execute("SELECT rowid, embedding, taken, folder FROM vectors").fetchall()
    store = schema.store_from_meta(schema.read_meta(conn))
    conn.execute(f"DROP TABLE vectors; DROP TABLE changes; UPDATE meta SET value = '{old}' WHERE key = 'schema_version'")
    if old == 4:
        conn.execute(f"CREATE VIRTUAL TABLE vectors USING vec0(list integer partition key, {store.column_sql},"
                     " taken integer, folder integer, chunk_size=128)")
        conn.execute("CREATE TABLE partitions(id INTEGER PRIMARY KEY, centroid BLOB NOT NULL, size INTEGER NOT NULL)")
        conn.execute("INSERT INTO meta(key, value) VALUES ('partition_epoch', '3')")
        conn.executemany(f"INSERT INTO vectors(rowid, list, embedding, taken, folder) VALUES (?, ?, {store.param_sql}, ?, ?)",
                         [(r, 1 + r % 3, e, t, f) for r, e, t, f in rows])
    else:
        schema.create_vectors(conn, store)
        conn.executemany(f"INSERT INTO vectors(rowid, embedding, taken, folder) VALUES (?, {store.param_sql}, ?, ?)", rows)
    conn.close()
    with PhotoStore.open(db, StoreModel(), first_pass=EXACT) as lib:
        assert lib.info.schema_version == SCHEMA_VERSION == 5
        tables = {r[0] for r in lib.connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "partitions" not in tables and "changes" in tables
        assert [lib.candidates(q, 10).ids.tolist() for q in qs] == want  # same search
        lib.delete_photos(lib.all_ids()[:10])
        _exact(lib, qs)


@pytest.mark.parametrize("cfg", [CONFIG, EXACT], ids=["pca", "exact"])
def test_loading_without_the_chunk_tables_reads_through_vec0(tmp_path, monkeypatch, cfg):
    """The codes loaded from sqlite-vec's chunk tables equal those read row by row through vec0
    (the path taken when the tables are not laid out as in sqlite-vec 0.1.9)."""
    from edge_xmr.index import firstpass

    with _fill(tmp_path / "i.db", 2 * CONFIG.exact_max, cfg=cfg) as lib:
        lib.delete_photos(lib.all_ids()[::7])  # holes in vec0's chunks
        q = _queries(100, 9)[0]
        lib.candidates(q, 10)
        fast = lib.first_pass
        monkeypatch.setattr(firstpass, "_scan_vec0", lambda conn, ids, width: (
            np.zeros((len(ids), width), np.uint8), np.zeros((len(ids),), bool)))
        slow = firstpass.FirstPass(lib.store, cfg)
        with lib.snapshot():
            slow.sync(lib.connection)
        for a in ("ids", "live", "taken", "folder", "codes"):
            np.testing.assert_array_equal(getattr(slow, a)[:slow.n], getattr(fast, a)[:fast.n], err_msg=a)
        assert fast.n == len(lib.all_ids())


def test_stores_of_one_process_share_the_codes_and_search_from_threads(tmp_path):
    """Stores opening one file share its first pass; searches from several threads (each its own
    connection, as the web gallery's requests) while another connection writes never fail and never
    return a photo their own snapshot does not hold."""
    import threading

    db = tmp_path / "i.db"
    _fill(db, 2 * CONFIG.exact_max).close()
    a, b = (PhotoStore.open(db, StoreModel(), first_pass=CONFIG) for _ in range(2))
    assert a.first_pass is b.first_pass
    with PhotoStore.open(db, StoreModel(), first_pass=EXACT) as other:  # another config: its own codes
        assert other.first_pass is not a.first_pass
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader(seed: int) -> None:
        lib = PhotoStore.open(db, StoreModel(), first_pass=CONFIG)
        try:
            for q in _queries(60, seed):
                if stop.is_set():
                    break
                with lib.snapshot():
                    got = lib.candidates(q, 10).ids.tolist()
                    assert set(got) <= set(lib.all_ids())
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)
        finally:
            lib.close()

    threads = [threading.Thread(target=reader, args=(s,)) for s in (20, 21, 22)]
    for t in threads:
        t.start()
    with PhotoStore.open(db, StoreModel(), first_pass=CONFIG) as w:
        for i in range(6):
            w.delete_photos(w.all_ids()[:20])
            w.add_photos(records(20, start=50_000 + 20 * i), clustered(20, seed=30 + i), tokens(20))
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    _recall(a, _queries(100, 23)[:10])
    a.close()
    b.close()
