"""Index file: meta table, model identity, schema migration from the committed v1 fixture."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from runtime_fakes import FakeBundle

from edge_xmr.index import SCHEMA_VERSION, LibraryError, ModelMismatchError, SchemaError

from edge_xmr import Library
from edge_xmr.index.db import connect
from edge_xmr.index.schema import read_meta

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "index_v1.db"


def test_meta_records_model_and_quantisation(tmp_path, fake_bundle):
    with Library.open(tmp_path / "i.db", fake_bundle) as lib:
        meta = read_meta(lib.store.connection)
    assert meta["schema_version"] == str(SCHEMA_VERSION)
    assert meta["model_id"] == "fake-model-0001" and meta["model_name"] == "edge-xmr-fake"
    assert meta["embedding_dim"] == "24" and meta["metric"] == "cosine" and meta["store"] == "int8"
    assert float(meta["embedding_int8_scale"]) == pytest.approx(127 / 0.9 * 0.5)  # manifest x headroom
    assert float(meta["token_int8_scale"]) == pytest.approx(127 / 4.0)
    assert (meta["token_count"], meta["token_dim"]) == ("4", "8")


def test_wal_mode(tmp_path, fake_bundle):
    with Library.open(tmp_path / "i.db", fake_bundle) as lib:
        assert lib.store.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_other_model_is_refused_with_a_clear_message(tmp_path, fake_bundle):
    Library.open(tmp_path / "i.db", fake_bundle).close()
    other = FakeBundle(model_id="another-model-9999", name="edge-xmr-other")
    with pytest.raises(ModelMismatchError) as e:
        Library.open(tmp_path / "i.db", other)
    msg = str(e.value)
    assert "edge-xmr-fake" in msg and "edge-xmr-other" in msg and "new database" in msg


def _with_embedding_id(b: FakeBundle, eid: str) -> FakeBundle:
    b.manifest["model"]["embedding_id"] = eid
    return b


def test_same_encoders_other_reranker_keeps_the_index(tmp_path, photo_tree):
    first = _with_embedding_id(FakeBundle(model_id="model-a"), "enc-1")
    with Library.open(tmp_path / "i.db", first) as lib:
        lib.index(photo_tree)
        before = lib.search("a red photo", k=3, rerank=0)
    assert read_meta(connect(tmp_path / "i.db"))["embedding_id"] == "enc-1"
    # a bundle with a recalibrated cross-encoder: other model id, same encoders -> opens, id moves on
    second = _with_embedding_id(FakeBundle(model_id="model-b", name="edge-xmr-recal"), "enc-1")
    with Library.open(tmp_path / "i.db", second) as lib:
        assert [r.path for r in lib.search("a red photo", k=3, rerank=0)] == [r.path for r in before]
        assert lib.info.model_id == "model-b" and lib.info.model_name == "edge-xmr-recal"
        assert lib.stats().photos == 9
    # other encoders: refused, whatever the model id
    with pytest.raises(ModelMismatchError):
        Library.open(tmp_path / "i.db", _with_embedding_id(FakeBundle(model_id="model-c"), "enc-2"))
    # a bundle without an embedding id (older export) only matches by model id
    with pytest.raises(ModelMismatchError):
        Library.open(tmp_path / "i.db", FakeBundle(model_id="model-d"))


def test_index_from_before_embedding_ids_gets_one(tmp_path, fake_bundle):
    Library.open(tmp_path / "i.db", fake_bundle).close()  # the fake has no embedding id
    assert read_meta(connect(tmp_path / "i.db"))["embedding_id"] == ""
    with Library.open(tmp_path / "i.db", _with_embedding_id(FakeBundle(), "enc-1")) as lib:
        assert lib.info.embedding_id == "enc-1"


def test_open_without_a_model_for_maintenance(tmp_path, fake_bundle):
    Library.open(tmp_path / "i.db", fake_bundle).close()
    with Library.open(tmp_path / "i.db", load_model=False) as lib:
        assert lib.stats().photos == 0
        with pytest.raises(LibraryError, match="no model bundle"):
            lib.search("x")
    with pytest.raises(LibraryError, match="model bundle is needed"):
        Library.open(tmp_path / "new.db", load_model=False)
    with pytest.raises(LibraryError, match="no index"):
        Library.open(tmp_path / "missing.db", fake_bundle, create=False)


def test_newer_schema_is_refused(tmp_path, fake_bundle):
    Library.open(tmp_path / "i.db", fake_bundle).close()
    conn = connect(tmp_path / "i.db")
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(SchemaError, match="newer"):
        Library.open(tmp_path / "i.db", fake_bundle)


def test_scales_calibrated_when_the_manifest_has_none(tmp_path):
    from edge_xmr.index import PhotoRecord

    bundle = FakeBundle(with_scales=False)
    with Library.open(tmp_path / "i.db", bundle) as lib:
        assert lib.info.embedding_scale == 0
        e = np.eye(24, dtype=np.float32)[:3]
        t = np.full((3, 4, 8), 2.0, np.float32)
        recs = [PhotoRecord(f"/p/{i}.jpg", bytes([i]) * 32, 1, 1, None, 1, 1) for i in range(3)]
        lib.store.add_photos(recs, e, t)
        assert lib.info.embedding_scale == pytest.approx(127.0 * 0.5)
        assert lib.info.token_scale == pytest.approx(127 / 2.0)
        np.testing.assert_allclose(lib.store.tokens([1])[0], 2.0, atol=1e-2)


def test_migrates_the_v1_fixture(tmp_path, fake_bundle):
    db = tmp_path / "old.db"
    shutil.copy(FIXTURE, db)
    with Library.open(db, fake_bundle) as lib:
        assert lib.info.schema_version == SCHEMA_VERSION
        st = lib.stats()
        assert (st.photos, st.folders, st.skipped) == (5, 3, 1)
        # vectors and tokens survived, now with filter metadata inside vec0
        assert lib.store.connection.execute("SELECT count(*) FROM vectors").fetchone()[0] == 5
        emb, tok = lib.store.stored([1, 2, 3, 4, 5])
        assert emb.shape == (5, 24) and tok.shape == (5, 4, 8)
        hits = lib.search("anything", k=10, folder="/photos/2019")
        assert sorted(h.path for h in hits) == ["/photos/2019/beach.jpg", "/photos/2019/trip/hill.jpg",
                                                "/photos/2019/trip/lake.jpg"]
        hits = lib.search("anything", k=10, after="2021-01-01")
        assert sorted(h.path for h in hits) == ["/photos/2021/cat.png", "/photos/2021/dog.jpg"]
        assert [h.taken for h in lib.search("x", k=10, folder="/photos/2021/dog.jpg".rsplit("/", 1)[0])
                if h.path.endswith("dog.jpg")] == [datetime(2021, 6, 1, 10, 0, 0)]
        # the stored photo is its own nearest neighbour
        assert lib.similar(1, k=1)[0].photo_id != 1
    with Library.open(db, fake_bundle) as lib:  # idempotent
        assert lib.stats().photos == 5
