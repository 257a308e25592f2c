"""Per-language evaluation (``evaluate_languages``) on a hand-built case, and the query-table reader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_xmr.data import CaptionSet, DataError, read_query_table
from edge_xmr.evaluate import evaluate_languages


@dataclass(frozen=True)
class _Q:
    embedding: np.ndarray
    multilingual: bool


class _Enc:
    """Photo i has embedding e_i (one-hot); a text names its photo's index after '#', and a text with
    'far' lands on photo (i + 1) instead. Reranking scores a candidate by -|its index - 2| (prefers 2)."""

    def encode_images(self, paths):
        n = len(paths)
        return np.eye(n, dtype=np.float32), np.arange(n, dtype=np.float32)[:, None, None] * np.ones((1, 1, 1), np.float32)

    def encode_texts(self, texts):
        return [self.encode_query(t) for t in texts]

    def encode_query(self, text):
        i = int(text.split("#")[1]) + (1 if "far" in text else 0)
        e = np.zeros(4, np.float32)
        e[i % 4] = 1.0
        return _Q(e, text.startswith("de"))

    def score_encoded(self, q, tok, emb):
        return -np.abs(tok[:, 0, 0] - 2.0)


def test_recalls_per_language_hand_built() -> None:
    data = CaptionSet(Path("/nowhere"), ("p0", "p1", "p2", "p3"), (), ())
    table = {"en": [("p0", "en #0"), ("p1", "en #1"), ("p2", "en #2"), ("p3", "en #3")],
             "de": [("p0", "de far #0"), ("p1", "de #1"), ("p2", "de far #2"), ("p3", "de #3")]}
    res = evaluate_languages(_Enc(), data, table, rerank_k=2, latency_queries=2)
    en, de = res["languages"]["en"], res["languages"]["de"]
    assert en["bi_encoder"]["R@1"] == 100.0 and de["bi_encoder"]["R@1"] == 50.0
    # rerank@2, by hand: en #0: top [0, 1] -> scores [-2, -1] -> [1, 0]: miss at 1; #1: [1, 0] -> [1, 0] hit; #2: [2, 0] hit; #3: [3, 0] -> [3, 0] hit
    assert en["rerank@2"]["R@1"] == 75.0 and en["rerank@2"]["R@5"] == 100.0
    assert de["multilingual_share"] == 1.0 and en["multilingual_share"] == 0.0
    assert res["n_images"] == 4 and res["rerank_k"] == 2 and en["latency_ms"] >= 0


def test_unknown_photo_is_a_data_error() -> None:
    data = CaptionSet(Path("/nowhere"), ("p0",), (), ())
    with pytest.raises(DataError, match="not in the evaluated data"):
        evaluate_languages(_Enc(), data, {"en": [("p9", "en #0")]})


def test_read_query_table(tmp_path: Path) -> None:
    f = tmp_path / "q.tsv"
    f.write_text("image\ten\tzh\na.jpg\ta dog\t一只狗\nb.jpg\ttwo cats\t两只猫\n", encoding="utf-8")
    assert read_query_table(f) == {"en": [("a.jpg", "a dog"), ("b.jpg", "two cats")],
                                   "zh": [("a.jpg", "一只狗"), ("b.jpg", "两只猫")]}
    f.write_text("image\ten\tde\na.jpg\ta dog\n", encoding="utf-8")
    with pytest.raises(DataError, match=":2: expected 3"):
        read_query_table(f)
    f.write_text("photo\ten\n", encoding="utf-8")
    with pytest.raises(DataError, match="header"):
        read_query_table(f)


def test_committed_table_has_the_same_photos_in_every_language() -> None:
    t = read_query_table(Path(__file__).resolve().parents[2] / "bench" / "multilingual" / "dev_report_captions.tsv")
    assert set(t) == {"en", "de", "es", "zh"} and all(len(v) == 300 for v in t.values())
    assert len({tuple(img for img, _ in v) for v in t.values()}) == 1
