"""The torch-free runtime loader ``edge_xmr.bundle``: hashes, schema, tamper refusal, no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edge_xmr.bundle import Bundle, BundleError, read_manifest, validate_manifest

REPO = Path(__file__).resolve().parents[2]


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_loads_and_runs(tiny_bundle):
    b = Bundle.load(tiny_bundle, precision="int8", threads=1)
    assert b.precision == "int8" and len(b.model_id) == 64
    e = b.embed_texts(["a dog on the beach", "two cats"])
    assert e.shape == (2, 16) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
    img = np.zeros((40, 60, 3), np.uint8)
    emb, tok = b.encode_images([img, img + 200])
    assert emb.shape == (2, 16) and tok.shape == (2, 4, 8)
    assert b.embed_images([img]).shape == (1, 16)
    s = b.score_candidates("a dog", tok, emb)
    assert s.shape == (2,) and s.dtype == np.float32
    # int8 as stored in the index: dequantized with the manifest's storage scales
    s8 = b.score_candidates("a dog", b.quantize(tok, "token"), b.quantize(emb, "embedding"))
    assert np.abs(s8 - s).max() < 0.5


def test_empty_inputs_never_call_onnxruntime(tiny_bundle):
    b = Bundle.load(tiny_bundle)
    assert b.embed_texts([]).shape == (0, 16)
    assert b.encode_images([])[1].shape == (0, 4, 8)
    assert b.score_candidates("x", np.zeros((0, 4, 8), np.float32), np.zeros((0, 16), np.float32)).shape == (0,)
    assert "cross_encoder" not in b._sessions and "text_encoder" not in b._sessions


def test_shape_mismatch_is_an_error(tiny_bundle):
    b = Bundle.load(tiny_bundle)
    with pytest.raises(ValueError, match="same N"):
        b.score_candidates("x", np.zeros((2, 4, 8), np.float32), np.zeros((3, 16), np.float32))


def test_unknown_precision(tiny_bundle):
    with pytest.raises(BundleError, match="no 'fp16'"):
        Bundle.load(tiny_bundle, precision="fp16")


@pytest.mark.parametrize("rel", ["onnx/int8/shared_weights.bin", "tokenizer.json", "onnx/fp32/text_encoder.onnx",
                                 "ort/fp32/cross_encoder.ort", "score.npz"])
def test_corrupted_file_is_refused(bundle_copy, rel):
    f = bundle_copy / rel
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 does not match") as e:
        Bundle.load(bundle_copy)
    assert rel.split("/")[-1] in str(e.value)


def test_missing_file_is_refused(bundle_copy):
    (bundle_copy / "onnx" / "int8" / "cross_encoder.onnx").unlink()
    with pytest.raises(BundleError, match="cross_encoder.onnx: missing"):
        Bundle.load(bundle_copy)


def test_missing_or_broken_manifest(bundle_copy, tmp_path):
    with pytest.raises(BundleError, match="not found"):
        Bundle.load(tmp_path / "nope")
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="unreadable"):
        Bundle.load(bundle_copy)
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json: missing"):
        Bundle.load(bundle_copy)


def test_manifest_schema_is_validated(tiny_bundle, bundle_copy):
    good = _manifest(tiny_bundle)
    assert validate_manifest(good) == []

    def problems(edit) -> list[str]:
        m = json.loads(json.dumps(good))
        edit(m)
        return validate_manifest(m)

    assert any("format_version" in p for p in problems(lambda m: m.update(format_version=4)))
    for old in (1, 2):  # token ids into the cross-encoder; the whole score inside the cross-encoder graph
        assert any("re-export" in p for p in problems(lambda m: m.update(format_version=old)))
    assert any("score.config" in p for p in problems(lambda m: m["score"].pop("config")))
    assert any("score.data" in p for p in problems(lambda m: m["files"].pop(m["score"]["data"])))
    assert any("model.id" in p for p in problems(lambda m: m["model"].update(id="xyz")))
    assert any("embedding.dim" in p for p in problems(lambda m: m["embedding"].update(dim="16")))
    assert any("storage.token_int8_scale" in p for p in problems(lambda m: m["storage"].update(token_int8_scale=0)))
    assert any("graphs.cross_encoder" in p for p in problems(lambda m: m["graphs"].pop("cross_encoder")))
    assert any("not listed in files" in p for p in problems(
        lambda m: m["files"].pop(m["graphs"]["text_encoder"]["variants"]["onnx/fp32"]["path"])))
    assert any("relative path" in p for p in problems(lambda m: m["files"].update({"../x": "0" * 64})))
    assert any("preprocessing.mean" in p for p in problems(lambda m: m["preprocessing"].update(mean="0.5")))
    assert validate_manifest([]) == ["manifest is not a JSON object"]
    bad = json.loads(json.dumps(good))
    del bad["index_schema_version"]
    (bundle_copy / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(BundleError, match="index_schema_version: missing"):
        read_manifest(bundle_copy)


def test_torch_free_subprocess_loads_the_bundle(tiny_bundle, tmp_path):
    """The runtime in a process where importing torch or transformers fails."""
    fake = tmp_path / "fake"
    for mod in ("torch", "transformers"):
        (fake / mod).mkdir(parents=True)
        (fake / mod / "__init__.py").write_text(f"raise ImportError('{mod} is not available in the runtime')\n")
    ref = Bundle.load(tiny_bundle).embed_texts(["a red car in the snow"])
    np.save(tmp_path / "ref.npy", ref)
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from edge_xmr.bundle import Bundle
        b = Bundle.load({str(tiny_bundle)!r}, precision="fp32")
        e = b.embed_texts(["a red car in the snow"])
        emb, tok = b.encode_images([np.full((32, 32, 3), 90, np.uint8)])
        s = b.score_candidates("a red car", tok, emb)
        assert np.abs(e - np.load({str(tmp_path / 'ref.npy')!r})).max() < 1e-6
        assert "torch" not in sys.modules or sys.modules["torch"] is None
        print("ok", b.model_id[:8], s.shape)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(REPO)])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")
    # and the fake really blocks torch
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "not available" in blocked.stderr


def test_encoded_queries_match_the_pytorch_model(tiny_bundle, _tiny_model):
    """A text's states leave the text encoder cut to its own length, even when it was encoded in a
    padded batch, and the cross-encoder started from them scores as the PyTorch model does."""
    b = Bundle.load(tiny_bundle, threads=1)
    img = np.random.default_rng(3).integers(0, 255, (3, 40, 50, 3), dtype=np.uint8)
    emb, tok = b.encode_images(list(img))
    texts = ["a dog", "two red cats sitting on the grass by the water"]
    batch = b.encode_texts(texts)
    for t, q in zip(texts, batch):
        alone = b.encode_query(t)
        assert q.states.shape == alone.states.shape and q.mask.shape[1] == q.states.shape[2]
        np.testing.assert_allclose(q.embedding, alone.embedding, atol=1e-5)
        ours = b.score_encoded(q, tok, emb)
        np.testing.assert_allclose(ours, b.score_encoded(alone, tok, emb), atol=1e-4)
        np.testing.assert_allclose(ours, _tiny_model.score_encoded(t, tok, emb), atol=1e-3)
        np.testing.assert_allclose(q.embedding, _tiny_model.embed_texts([t])[0], atol=1e-4)


def _sessions_made(monkeypatch) -> list[str]:
    made: list[str] = []
    original = Bundle.session

    def spy(self, graph):
        made.append(graph)
        return original(self, graph)

    monkeypatch.setattr(Bundle, "session", spy)
    return made


def test_the_score_runs_the_joint_graph_when_it_is_weighted(tiny_bundle, _tiny_model, monkeypatch):
    """γ > 0 (the tiny model's score): the cross_encoder graph gives the joint term, and the numpy terms +
    that graph reproduce the PyTorch model's score."""
    import torch

    made = _sessions_made(monkeypatch)
    b = Bundle.load(tiny_bundle, threads=1)
    assert b.score_config == _tiny_model.cfg.score and b.score_config.joint != 0.0
    emb, tok = b.encode_images(list(np.random.default_rng(4).integers(0, 255, (5, 40, 50, 3), dtype=np.uint8)))
    q = b.encode_query("a red car")
    terms = b.score_terms(q, tok, emb)
    assert "cross_encoder" in made
    mq = _tiny_model.encode_query("a red car")
    with torch.no_grad():
        ref = _tiny_model.score_terms(mq, torch.from_numpy(tok)[None], torch.from_numpy(emb)[None])
    for name, v in ref.items():
        np.testing.assert_allclose(terms[name], v[0].numpy(), atol=1e-4, err_msg=name)


def test_without_joint_weight_the_runtime_never_opens_the_joint_graph(bundle_copy, _tiny_model, monkeypatch):
    """γ = 0: the rerank needs no cross_encoder session, and works with that graph absent from the bundle."""
    from dataclasses import replace

    m = _manifest(bundle_copy)
    m["score"]["config"]["joint"] = 0.0
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    for f in bundle_copy.rglob("cross_encoder.*"):
        f.unlink()
    made = _sessions_made(monkeypatch)
    b = Bundle.load(bundle_copy, threads=1, verify=False)
    emb, tok = b.encode_images(list(np.random.default_rng(5).integers(0, 255, (4, 40, 50, 3), dtype=np.uint8)))
    got = b.score_candidates("a red car", tok, emb)
    assert "cross_encoder" not in made and "cross_encoder" not in b._sessions
    ref = replace(_tiny_model.cfg.score, joint=0.0)
    model = _tiny_model
    old = model.cfg
    try:
        model.cfg = replace(old, score=ref)
        np.testing.assert_allclose(got, model.score_encoded("a red car", tok, emb), atol=1e-4)
    finally:
        model.cfg = old
    with pytest.raises(KeyError, match="unknown score terms"):
        b.score_terms(b.encode_query("x"), tok, emb, ("jointx",))


def test_a_reranked_search_runs_the_text_encoder_once(tiny_bundle, tmp_path):
    from edge_xmr import Library

    root = tmp_path / "photos"
    root.mkdir()
    from PIL import Image

    for i in range(4):
        Image.fromarray(np.full((30, 40, 3), 60 * i, np.uint8)).save(root / f"p{i}.png")
    with Library.open(tmp_path / "i.db", tiny_bundle, threads=1) as lib:
        lib.index(root)
        sess = lib.bundle.session("text_encoder")
        calls = []

        class Counting:
            def run(self, *a, **k):
                calls.append(1)
                return sess.run(*a, **k)

        lib.bundle._sessions["text_encoder"] = Counting()
        hits = lib.search("a dark photo", k=3, rerank=4)
    assert len(hits) == 3 and all(h.cross_score is not None for h in hits)
    assert calls == [1]
