"""The benchmarks time the search as it runs: one text-encoder pass per query (issue 16).

``bench_runtime.numpy_search`` / ``rerank_stage`` and ``bench_quantize.latency`` used to call
``score_candidates(text, ...)``, which encodes the text a second time; a counting bundle checks that
each timed query now encodes its text once, and that the scores are those of the reference path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
from runtime_fakes import FakeBundle

REPO = Path(__file__).resolve().parents[2]


def _bench(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class CountingBundle(FakeBundle):
    """FakeBundle counting text-encoder passes; ``score_encoded`` scores from the encoded query alone."""

    def __init__(self) -> None:
        super().__init__()
        self.text_passes = 0

    def embed_texts(self, texts: Any) -> np.ndarray:
        self.text_passes += len(texts)
        return super().embed_texts(texts)

    def score_encoded(self, query: Any, tokens: np.ndarray, embeds: np.ndarray) -> np.ndarray:
        t = np.asarray(query.embedding, np.float32)
        res = np.tanh(tokens.reshape(len(tokens), -1) @ np.resize(t, tokens[0].size))
        return (10.0 * embeds @ t + res).astype(np.float32)


def _data(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((n, 24)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb, rng.standard_normal((n, 4, 8)).astype(np.float32)


def test_numpy_search_and_rerank_stage_encode_the_query_once() -> None:
    br = _bench("bench_runtime")
    b, (emb, tok) = CountingBundle(), _data()
    got = br.numpy_search(b, emb, tok, "a dog on the beach")
    assert b.text_passes == 1
    ref = FakeBundle()  # reference: brute-force top 20 by cosine, scored by score_candidates
    q = ref.embed_texts(["a dog on the beach"])[0]
    top = np.argsort(-(emb @ q), kind="stable")[:20]
    np.testing.assert_allclose(got, ref.score_candidates("a dog on the beach", tok[top], emb[top]), rtol=1e-5)

    query = b.encode_query("two cats")
    b.text_passes = 0
    store = SimpleNamespace(tokens=lambda ids: tok[np.asarray(ids)])
    cands = SimpleNamespace(ids=top, embeds=emb[top])
    br.rerank_stage(b, query, store, cands)
    assert b.text_passes == 0  # the rerank stage times the cross-encoder alone


def test_quantize_latency_encodes_each_query_once() -> None:
    bq = _bench("bench_quantize")
    emb, tok = _data()
    rows = [{"name": n, "bundle": CountingBundle(), "embeds": emb, "tokens": tok} for n in ("a", "b")]
    queries = ["a red car", "two dogs", "a child on a swing"]
    bq.latency(rows, queries)
    for r in rows:
        assert r["bundle"].text_passes == 1 + len(queries)  # warm-up + one per timed query
        assert set(r["latency_ms"]) == {"bi_encoder", "rerank@20"}
