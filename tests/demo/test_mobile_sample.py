"""samples/mobile/reference.py (bundle + onnxruntime + SQL, no edge_xmr) gives the runtime's results."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "mobile" / "reference.py"


@pytest.fixture(scope="module")
def ref():
    spec = importlib.util.spec_from_file_location("mobile_reference", SAMPLE)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module", params=["int8", "float32", "bit"])
def index(request, provisioned, tmp_path_factory):
    """A small index built by the runtime (Library) in each store."""
    from edge_xmr import Library

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    for i in range(12):
        a = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
        Image.fromarray(a).resize((70, 50), Image.BICUBIC).save(root / f"p{i:02d}.png")
    db = tmp_path_factory.mktemp("db") / f"{request.param}.db"
    with Library.open(db, provisioned, store=request.param) as lib:
        lib.index(root)
    return db, root


QUERIES = ["a dog on the beach", "two children playing in the snow", "red", "ünïcödé 🐈 and a very long query " * 5]


@pytest.mark.parametrize("prior", [0.0, 3.0])
def test_text_search_matches_the_runtime(ref, provisioned, index, prior):
    from dataclasses import replace

    from edge_xmr import Library

    db, _ = index
    model, conn = ref.Model(provisioned), ref.connect(db)
    with Library.open(db, provisioned, create=False) as lib:
        lib.bundle.score_config = replace(lib.bundle.score_config, first_stage_prior=prior)  # the first stage too
        model.w = {**model.w, "first_stage_prior": prior}
        for q in QUERIES:
            for k, rerank in ((5, 0), (6, 3), (3, 8), (12, 12)):  # prior / prior / none / none
                want = lib.search(q, k=k, rerank=rerank)
                got = ref.search(model, conn, q, k=k, rerank=rerank)
                assert [h.photo_id for h in got] == [h.photo_id for h in want], (q, k, rerank)
                assert [h.path for h in got] == [h.path for h in want]
                np.testing.assert_allclose([h.bi_score for h in got], [h.bi_score for h in want], atol=1e-5)
                wc = [h.cross_score for h in want]
                gc = [h.cross_score for h in got]
                assert [c is None for c in gc] == [c is None for c in wc]
                np.testing.assert_allclose([c for c in gc if c is not None], [c for c in wc if c is not None],
                                           atol=1e-4)


def test_image_query_finds_the_photo_itself_first(ref, provisioned, index):
    db, root = index
    model, conn = ref.Model(provisioned), ref.connect(db)
    photo = root / "p03.png"
    meta = ref.read_meta(conn)
    e, _ = model.embed_image(photo)
    ids, _, bi = ref.knn(conn, meta, e, 3)
    first = ref.photos(conn, [int(ids[0])])[int(ids[0])][0]
    assert Path(first) == photo.resolve() and bi[0] > 0.99
    hits = ref.similar(model, conn, photo, k=4)
    assert len(hits) == 4 and all(Path(h.path) != photo.resolve() for h in hits)


def test_command_line(provisioned, index):
    db, _ = index
    out = subprocess.run([sys.executable, str(SAMPLE), str(provisioned), str(db), "a dog", "-k", "2"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.count("cross") == 2


def test_reference_imports_only_what_an_app_has():
    import ast

    tree = ast.parse(SAMPLE.read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert mods <= {"__future__", "argparse", "json", "sys", "dataclasses", "pathlib", "typing", "numpy",
                    "onnxruntime", "PIL", "tokenizers", "sqlite3", "sqlite_vec", "apsw"}, mods


def test_reference_accepts_an_index_of_the_same_encoders_only(ref):
    meta = ref.IndexMeta(store="int8", dim=4, emb_scale=1.0, tok_scale=1.0, tokens=(2, 2), model_id="a",
                         embedding_id="enc-1")
    assert ref.same_vectors(meta, {"model": {"id": "a", "embedding_id": ""}})  # same model
    assert ref.same_vectors(meta, {"model": {"id": "b", "embedding_id": "enc-1"}})  # another reranker
    assert not ref.same_vectors(meta, {"model": {"id": "b", "embedding_id": "enc-2"}})
    assert not ref.same_vectors(meta, {"model": {"id": "b"}})
    old = ref.IndexMeta(store="int8", dim=4, emb_scale=1.0, tok_scale=1.0, tokens=(2, 2), model_id="a",
                        embedding_id="")
    assert not ref.same_vectors(old, {"model": {"id": "b", "embedding_id": ""}})
