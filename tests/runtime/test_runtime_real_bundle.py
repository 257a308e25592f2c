"""Integration: the runtime with a real exported bundle (onnxruntime), not the fake."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_xmr.cli import main
from edge_xmr.index import ModelMismatchError
from edge_xmr import Library


@pytest.fixture()
def real_lib(tmp_path, photo_tree, real_bundle_dir):
    lib = Library.open(tmp_path / "i.db", real_bundle_dir, threads=1)
    lib.index(photo_tree)
    yield lib
    lib.close()


def test_index_and_search_with_real_graphs(real_lib, real_bundle_dir):
    assert real_lib.count() == 9
    assert real_lib.info.bundle_path == str(real_bundle_dir.resolve())
    hits = real_lib.search("a dog on the grass", k=5, rerank=9)
    assert len(hits) == 5 and all(h.cross_score is not None for h in hits)
    assert [h.cross_score for h in hits] == sorted([h.cross_score for h in hits], reverse=True)
    # the cross-encoder saw the stored (dequantised) tokens and embeddings
    emb, tok = real_lib.store.stored([h.photo_id for h in hits])
    np.testing.assert_allclose([h.cross_score for h in hits],
                               real_lib.bundle.score_candidates("a dog on the grass", tok, emb), rtol=1e-4, atol=1e-4)
    plain = real_lib.search("a dog on the grass", k=9, rerank=0)
    assert all(h.cross_score is None for h in plain) and len(plain) == 9


def test_stored_vectors_match_a_fresh_encoding(real_lib, photo_tree):
    from edge_xmr.preprocess import load_image

    path = photo_tree / "a" / "img0.jpg"
    size = int(real_lib.bundle.manifest["preprocessing"]["size"])
    e, t = real_lib.bundle.encode_images([load_image(path, size)])
    emb, tok = real_lib.store.stored([real_lib.photo_id(path)])
    assert float(emb[0] @ e[0]) > 0.999
    err = np.abs(tok[0] - t[0])
    assert np.median(err) <= 0.5 / real_lib.info.token_scale + 1e-6  # int8 rounding (a few clip)


def test_similar_and_rank_texts(real_lib, photo_tree):
    hits = real_lib.similar(photo_tree / "b" / "b0.jpg", k=3)
    assert len(hits) == 3
    ranked = real_lib.rank_texts(photo_tree / "b" / "b0.jpg", ["a red car", "two dogs", ""])
    assert len(ranked) == 3


def test_other_model_refused(tmp_path, photo_tree, real_bundle_dir):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from runtime_fakes import FakeBundle

    Library.open(tmp_path / "i.db", real_bundle_dir, threads=1).close()
    with pytest.raises(ModelMismatchError):
        Library.open(tmp_path / "i.db", FakeBundle())


def test_cli_with_real_bundle(tmp_path, photo_tree, real_bundle_dir, capsys):
    db = str(tmp_path / "cli.db")
    assert main(["index", str(photo_tree), "--db", db, "--bundle", str(real_bundle_dir), "--quiet",
                 "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "provider CPUExecutionProvider" in err
    queries = tmp_path / "q.txt"
    queries.write_text("a dog\nthe beach at sunset\n")
    # no --bundle: the index remembers the bundle it was built with
    assert main(["search", "--queries", str(queries), "--db", db, "--k", "3", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert len(lines) == 2 and all(len(json.loads(line)) == 3 for line in lines)
    assert main(["search", "x", "--db", db, "--provider", "warp-drive"]) == 2
    assert "unknown execution provider" in capsys.readouterr().err
