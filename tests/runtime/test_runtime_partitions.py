"""Partitioned KNN (edge_xmr.index.partitions): recall against brute force, filters, lists kept
consistent through adds, removals and splits, migration from schema 3, kill -9 mid-rebalance."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from runtime_partition_data import CONFIG, FOLDERS, StoreModel, clustered, records, tokens

from edge_xmr.index import SCHEMA_VERSION, Filters, PhotoStore, make_filters, schema
from edge_xmr.index.db import connect
from edge_xmr.index.partitions import PartitionConfig

WORKER = Path(__file__).resolve().parent / "runtime_partition_worker.py"


def _fill(db: Path, n: int, cfg: PartitionConfig = CONFIG, seed: int = 0, batch: int = 250) -> PhotoStore:
    lib = PhotoStore.open(db, StoreModel(), partitions=cfg)
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


def _oracle(lib: PhotoStore, q: np.ndarray, k: int, keep: np.ndarray | None = None,
            stored: tuple[np.ndarray, np.ndarray] | None = None) -> list[int]:
    """Brute force over the stored embeddings (what the exact search rescores with)."""
    ids, e = stored or _stored(lib)
    s = e @ q
    if keep is not None:
        s = np.where(keep, s, -np.inf)
    top = np.argsort(-s, kind="stable")[:k]
    return [int(ids[i]) for i in top if np.isfinite(s[i])]


def _stored(lib: PhotoStore) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array(lib.all_ids())
    return ids, lib.embeddings(ids.tolist())


def _recall(lib: PhotoStore, qs: np.ndarray, filters: Filters | None = None, keep: np.ndarray | None = None) -> float:
    hits = []
    stored = _stored(lib)
    for q in qs:
        truth = set(_oracle(lib, q, 10, keep, stored))
        got = set(lib.candidates(q, 10, filters).ids.tolist())
        hits.append(len(truth & got) / max(1, len(truth)))
    return float(np.mean(hits))


def _lists(lib: PhotoStore) -> dict[int, int]:
    return {int(r): int(li) for r, li in lib.connection.execute("SELECT rowid, list FROM vectors")}


def test_small_library_stays_exact(tmp_path):
    with _fill(tmp_path / "i.db", CONFIG.train_at - 1) as lib:
        assert lib.partitions.nlist == 0 and set(_lists(lib).values()) == {0}
        for q in _queries(20, 1):
            assert lib.candidates(q, 10).ids.tolist() == _oracle(lib, q, 10)


def test_training_at_the_threshold(tmp_path):
    with _fill(tmp_path / "i.db", CONFIG.train_at, batch=CONFIG.train_at // 2) as lib:
        assert lib.partitions.nlist == math.ceil(CONFIG.train_at / CONFIG.list_size)
        assert lib.partitions.check() == []
        assert 0 not in set(_lists(lib).values())


def test_recall_against_brute_force(tmp_path):
    """Clustered library grown from train_at to 8x by inserts (lists trained once, then split):
    recall@10 vs brute force >= 0.98 while reading a minority of the lists; probing one list
    (the test can fail) loses recall."""
    n = 8 * CONFIG.train_at
    with _fill(tmp_path / "i.db", n) as lib:
        nlist = lib.partitions.nlist
        assert lib.partitions.check() == []
        sizes = lib.partitions.sizes()
        assert max(sizes.values()) <= CONFIG.split_at and nlist > n / CONFIG.split_at
        assert CONFIG.nprobe(nlist) < nlist / 3  # sub-linear: most lists are not read
        qs = _queries(200, 2)[:60]
        assert _recall(lib, qs) >= 0.98
    one = replace(CONFIG, nprobe_min=1, nprobe_sqrt=0.0)
    with PhotoStore.open(tmp_path / "i.db", StoreModel(), partitions=one) as lib:
        assert _recall(lib, qs) < 0.9


def test_filters_inside_the_partitioned_search(tmp_path):
    n = 6 * CONFIG.train_at
    with _fill(tmp_path / "i.db", n) as lib:
        recs = records(n)
        taken = np.array([r.taken for r in recs])
        folder = np.array([int(r.path.split("/")[2][1:]) for r in recs])
        ids = np.array(lib.all_ids())
        assert ids.tolist() == list(range(1, n + 1))
        qs = _queries(300, 3)[:40]
        after = int(taken[n // 2])
        f = make_filters(after=after, folder="/nonexistent-photos/f3")
        keep = (taken >= after) & (folder == 3)
        for q in qs[:10]:
            got = lib.candidates(q, 10, f).ids
            assert len(got) == 10 and all(keep[i - 1] for i in got)
        assert _recall(lib, qs, f, keep) >= 0.95
        # a very selective filter (30 photos in all): the search widens until it finds them all
        lo, hi = int(taken[100]), int(taken[100 + 30 * FOLDERS])
        f = make_filters(after=lo, before=hi, folder="/nonexistent-photos/f0")
        keep = (taken >= lo) & (taken < hi) & (folder == 0)
        assert keep.sum() == 30
        for q in qs[:5]:
            got = lib.candidates(q, 10, f).ids.tolist()
            assert got == _oracle(lib, q, 10, keep)


def test_add_remove_replace_keep_lists_consistent(tmp_path):
    n = 3 * CONFIG.train_at
    with _fill(tmp_path / "i.db", n) as lib:
        rng = np.random.default_rng(5)
        gone = rng.choice(np.arange(1, n + 1), n // 3, replace=False).tolist()
        lib.delete_photos(gone)
        assert lib.partitions.check() == [] and lib.count() == n - len(gone)
        # replace photos by path (a re-indexed file) with vectors from elsewhere
        x = clustered(200, seed=9)
        lib.add_photos(records(200, start=n - 200), x, tokens(200))
        assert lib.partitions.check() == []
        pid = lib.all_ids()[0]
        lib.copy_photo(records(1, start=10 * n)[0], pid)
        assert lib.partitions.check() == []
        # removing every member of a list drops it
        lists = _lists(lib)
        target = next(iter(lib.partitions.sizes()))
        before = lib.partitions.nlist
        lib.delete_photos([r for r, li in lists.items() if li == target])
        assert lib.partitions.nlist == before - 1 and target not in lib.partitions.sizes()
        assert lib.partitions.check() == []
        for q in _queries(50, 6)[:10]:  # the search never returns a removed photo
            assert set(lib.candidates(q, 10).ids.tolist()) <= set(lib.all_ids())


def test_rebalance_splits_only_full_lists(tmp_path):
    """Growth splits the lists that fill up and moves only their members; a retrain re-clusters all."""
    with _fill(tmp_path / "i.db", 2 * CONFIG.train_at) as lib:
        before, sizes = _lists(lib), lib.partitions.sizes()
        x = clustered(400, seed=11)
        lib.add_photos(records(400, start=10**6), x, tokens(400))
        after = _lists(lib)
        still = set(lib.partitions.sizes())
        split = set(sizes) - still
        assert split, "400 photos into full lists split some"
        for rid, li in before.items():
            if li in still:
                assert after[rid] == li  # members of lists that did not split stay put
            else:
                assert after[rid] in still and after[rid] not in sizes  # moved to a new list
        assert max(lib.partitions.sizes().values()) <= CONFIG.split_at
        assert lib.partitions.check() == []
        n = lib.count()
        assert lib.retrain_partitions() == math.ceil(n / CONFIG.list_size)
        assert lib.partitions.check() == [] and _recall(lib, _queries(100, 7)[:30]) >= 0.98


def test_identical_photos_split_anyway(tmp_path):
    with PhotoStore.open(tmp_path / "i.db", StoreModel(), partitions=CONFIG) as lib:
        x = np.tile(clustered(1, seed=1), (CONFIG.train_at + 3 * CONFIG.split_at, 1))
        recs = records(len(x))
        for i in range(0, len(x), 300):
            lib.add_photos(recs[i:i + 300], x[i:i + 300], tokens(len(recs[i:i + 300])))
        assert lib.partitions.check() == [] and max(lib.partitions.sizes().values()) <= CONFIG.split_at
        assert len(lib.candidates(x[0], 10).ids) == 10


def test_schema_3_index_is_migrated_then_trained(tmp_path):
    db = tmp_path / "i.db"
    n = CONFIG.train_at + 100
    with _fill(db, n, cfg=replace(CONFIG, train_at=10 * n)) as lib:  # not partitioned yet
        qs = _queries(100, 8)[:10]
        want = [lib.candidates(q, 10).ids.tolist() for q in qs]
    conn = connect(db)  # make it a schema-3 index: vec0 without the partition key, no partitions table
    rows = conn.execute("SELECT rowid, embedding, taken, folder FROM vectors").fetchall()
    store = schema.store_from_meta(schema.read_meta(conn))
    conn.execute("DROP TABLE vectors; DROP TABLE partitions; UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    schema.create_vectors(conn, store, partitioned=False)
    conn.executemany(f"INSERT INTO vectors(rowid, embedding, taken, folder) VALUES (?, {store.param_sql}, ?, ?)", rows)
    conn.close()
    with PhotoStore.open(db, StoreModel(), partitions=CONFIG) as lib:
        assert lib.info.schema_version == SCHEMA_VERSION and lib.partitions.nlist == 0
        assert [lib.candidates(q, 10).ids.tolist() for q in qs] == want  # same exact search
        lib.add_photos(records(1, start=10**6), clustered(1, seed=4), tokens(1))  # the next write trains
        assert lib.partitions.nlist > 1 and lib.partitions.check() == []


def _kill_mid_rebalance(tmp_path: Path, kills: int) -> None:
    db, n = tmp_path / "i.db", 4 * CONFIG.train_at
    rng = np.random.default_rng(0)
    for k in range(kills):
        p = subprocess.Popen([sys.executable, str(WORKER), str(db), str(n)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert p.stdout is not None
        while not p.stdout.readline().startswith("ready"):
            assert p.poll() is None, "worker died"
        p.stdout.readline()  # "retrain 0": a retrain (one transaction moving every photo) runs now
        time.sleep(float(rng.uniform(0.05, 0.6)))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        with PhotoStore.open(db, StoreModel(), partitions=CONFIG) as lib:
            assert lib.count() == n
            assert lib.partitions.check() == [], f"kill {k}"
            assert lib.partitions.nlist == math.ceil(n / CONFIG.list_size) or \
                max(lib.partitions.sizes().values()) <= CONFIG.split_at
            assert _recall(lib, _queries(n, 10, data_seed=3)[:20]) >= 0.95


def test_kill_9_mid_rebalance_leaves_a_consistent_index(tmp_path):
    _kill_mid_rebalance(tmp_path, 1)


@pytest.mark.slow
def test_kill_9_mid_rebalance_soak(tmp_path):
    _kill_mid_rebalance(tmp_path, 8)


def test_probing_most_lists_runs_the_exact_search(tmp_path):
    """When nprobe would read more than max_probe_share of the lists, one plain KNN reads them all:
    the results are the exact search's."""
    with _fill(tmp_path / "i.db", 3 * CONFIG.train_at):
        pass
    wide = replace(CONFIG, nprobe_sqrt=100.0)
    with PhotoStore.open(tmp_path / "i.db", StoreModel(), partitions=wide) as lib:
        nlist = lib.partitions.nlist
        assert nlist > 1 and wide.nprobe(nlist) == nlist
        stored = _stored(lib)
        for q in _queries(100, 12)[:10]:
            assert lib.candidates(q, 10).ids.tolist() == _oracle(lib, q, 10, stored=stored)
    assert replace(CONFIG, nprobe_sqrt=1.0, max_probe_share=0.5).nprobe(100) == 10
    assert replace(CONFIG, nprobe_sqrt=6.0, max_probe_share=0.5).nprobe(100) == 100
