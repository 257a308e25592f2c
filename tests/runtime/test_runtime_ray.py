"""Bulk indexing on Ray (``edge_xmr.ray_index``) against the local path, on a local Ray instance
(``ray.init(num_cpus=2)``) with the real exported tiny bundle: the same index contents on the same
photos, through an incremental rerun too, and resume after the driver is killed (``kill -9``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from runtime_photos import write_photo

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from edge_xmr import Library  # noqa: E402
from edge_xmr.index.db import connect  # noqa: E402
from edge_xmr.indexer import IndexOptions  # noqa: E402
from edge_xmr.ray_index import RayOptions  # noqa: E402

pytestmark = pytest.mark.slow
WORKER = Path(__file__).resolve().parent / "runtime_ray_worker.py"
COUNTS = ("added", "updated", "moved", "copied", "unchanged", "removed", "skipped", "scanned")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def _tree(root: Path, n: int) -> Path:
    for i in range(n):
        fmt = "PNG" if i % 5 == 4 else "JPEG"
        write_photo(root / f"f{i % 3}" / f"p{i:03d}.{'png' if fmt == 'PNG' else 'jpg'}", i, size=(64, 48),
                    exif_time=f"2021:0{1 + i % 9}:1{i % 10} 10:00:00" if i % 2 else None, fmt=fmt)
    return root


def _rows(db: Path, bundle: Path) -> tuple[dict[str, tuple[Any, ...]], dict[str, np.ndarray], dict[str, np.ndarray],
                                           list[tuple[Any, ...]]]:
    """(path -> metadata, path -> embedding, path -> tokens, skipped rows) of an index."""
    with Library.open(db, bundle) as lib:
        c = lib.store.connection
        ids = lib.store.all_ids()
        emb, tok = lib.store.stored(ids)
        meta = {str(p): (bytes(h), int(s), int(m), t, w, hh) for p, h, s, m, t, w, hh in c.execute(
            "SELECT path, hash, size, mtime_ns, taken, width, height FROM photos").fetchall()}
        path = {int(i): str(p) for i, p in c.execute("SELECT id, path FROM photos").fetchall()}
        skipped = sorted(tuple(r) for r in c.execute("SELECT path, size, mtime_ns, reason, kind FROM skipped").fetchall())
    return (meta, {path[i]: emb[j] for j, i in enumerate(ids)}, {path[i]: tok[j] for j, i in enumerate(ids)}, skipped)


def _same_index(a: Path, b: Path, bundle: Path) -> None:
    ma, ea, ta, sa = _rows(a, bundle)
    mb, eb, tb, sb = _rows(b, bundle)
    assert ma == mb and sa == sb
    for p in ma:
        np.testing.assert_allclose(eb[p], ea[p], atol=1e-4)
        np.testing.assert_allclose(tb[p], ta[p], atol=1e-4)


def _counts(r: Any) -> dict[str, int]:
    return {k: getattr(r, k) for k in COUNTS}


def test_ray_index_matches_the_local_path(tmp_path, real_bundle_dir, local_ray):
    root = _tree(tmp_path / "photos", 23)
    shutil.copy(root / "f0" / "p000.jpg", root / "f1" / "copy.jpg")  # same content twice
    (root / "f2" / "bad.jpg").write_bytes(b"not a jpeg")
    opts = IndexOptions(batch_size=5, encoder_batch=3)
    local, on_ray = tmp_path / "local.db", tmp_path / "ray.db"
    with Library.open(local, real_bundle_dir) as lib:
        r_local = lib.index(root, options=opts)
    with Library.open(on_ray, real_bundle_dir) as lib:
        r_ray = lib.index(root, options=opts, ray=RayOptions(chunk=7))  # 4 datasets
    assert r_ray.added + r_ray.copied == 24 and r_ray.skipped == 1
    assert (r_ray.added + r_ray.copied, r_ray.skipped) == (r_local.added + r_local.copied, r_local.skipped)
    _same_index(local, on_ray, real_bundle_dir)

    write_photo(root / "f0" / "p003.jpg", 999, size=(64, 48))  # changed
    os.rename(root / "f1" / "p001.jpg", root / "moved.jpg")  # moved: reused, not re-encoded
    os.remove(root / "f2" / "p002.jpg")  # deleted
    write_photo(root / "new.jpg", 1000, size=(64, 48))  # new
    with Library.open(local, real_bundle_dir) as lib:
        r_local = lib.index(root, options=opts)
    with Library.open(on_ray, real_bundle_dir) as lib:
        r_ray = lib.index(root, options=opts, ray=RayOptions(chunk=7))
    assert (r_ray.updated, r_ray.moved, r_ray.removed, r_ray.added) == (1, 1, 1, 1)
    assert _counts(r_ray) == _counts(r_local)
    _same_index(local, on_ray, real_bundle_dir)


def _db_counts(db: Path) -> tuple[int, ...]:
    c = connect(db)
    try:
        return tuple(int(c.execute(q).fetchone()[0]) for q in (
            "SELECT count(*) FROM photos", "SELECT count(*) FROM vectors", "SELECT count(*) FROM rerank",
            "SELECT count(DISTINCT path) FROM photos"))
    finally:
        c.close()


def test_resume_after_the_driver_is_killed(tmp_path, real_bundle_dir, local_ray):
    n = 40
    root, db = _tree(tmp_path / "photos", n), tmp_path / "ray.db"
    proc = subprocess.Popen([sys.executable, str(WORKER), str(db), str(root), str(real_bundle_dir), "--batch", "4",
                             "--pause", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: the Ray instance it starts too
    try:
        t0, photos = time.time(), 0
        while photos < 8:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.time() - t0 < 180, "the Ray run made no progress"
            time.sleep(0.05)
            photos = _db_counts(db)[0] if db.exists() else 0
        os.kill(proc.pid, signal.SIGKILL)  # the driver, mid-way
        proc.wait()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # what is left of the Ray instance the driver started
        except ProcessLookupError:
            pass
    photos, vectors, rerank, distinct = _db_counts(db)
    assert 8 <= photos < n and photos % 4 == 0  # whole batches only
    assert photos == vectors == rerank == distinct
    with Library.open(db, real_bundle_dir) as lib:
        r = lib.index(root, options=IndexOptions(batch_size=4), ray=RayOptions())
    assert (r.added, r.unchanged) == (n - photos, photos)
    assert _db_counts(db) == (n, n, n, n)
    local = tmp_path / "local.db"
    with Library.open(local, real_bundle_dir) as lib:
        lib.index(root)
    _same_index(local, db, real_bundle_dir)


def test_cli_index_on_ray(tmp_path, real_bundle_dir, local_ray, capsys):
    import json

    from edge_xmr.cli import main

    root, db = _tree(tmp_path / "photos", 6), tmp_path / "cli.db"
    args = ["index", str(root), "--db", str(db), "--bundle", str(real_bundle_dir), "--ray", "--quiet", "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 6
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["unchanged"] == 6
