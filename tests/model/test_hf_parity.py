"""Our text transformer equals Hugging Face's BERT / CLIP text models; the CLIP base works end to end."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from edge_xmr.config import TextConfig  # noqa: E402
from edge_xmr.model.text import TextTransformer, load_bert, load_clip_text  # noqa: E402


def _ids(vocab, B=3, L=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab - 1, (B, L), generator=g)  # vocab-1 is reserved for EOS
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids, mask


def test_bert_parity_with_hf():
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=40)
    torch.manual_seed(0)
    hf = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    ours = TextTransformer(TextConfig(vocab_size=100, width=32, layers=2, heads=4, mlp=64, max_positions=40))
    load_bert(ours, hf.state_dict())
    ids, mask = _ids(100)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours.run(ours.embed(ids), ours.text_bias(mask), 0, 2)
    m = mask.bool()
    assert torch.allclose(ref[m], got[m], atol=1e-5)


def test_clip_text_parity_with_hf():
    cfg = transformers.CLIPTextConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=40, eos_token_id=99)
    torch.manual_seed(0)
    hf = transformers.CLIPTextModel(cfg).eval()
    ours = TextTransformer(TextConfig(flavour="clip", vocab_size=100, width=32, layers=2, heads=4, mlp=64,
                                      max_positions=40, type_vocab=0, act="quick_gelu", eps=1e-5))
    load_clip_text(ours, hf.state_dict())
    ids, mask = _ids(100)
    lengths = mask.sum(1)
    ids[torch.arange(3), lengths - 1] = 99  # EOS at the end of each text
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).pooler_output
        got = ours.pool(ours.final(ours.run(ours.embed(ids), ours.text_bias(mask), 0, 2)), mask)
    assert torch.allclose(ref, got, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from edge_xmr.tokenizer import tiny_tokenizer

    tok = tiny_tokenizer(128)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=32),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_clip")
    transformers.CLIPModel(cfg).save_pretrained(d)
    tok.save(d / "tokenizer.json")
    return d


def test_clip_base_builds_and_matches_hf_features(tiny_clip_dir):
    from edge_xmr.model.bases import build, clip_config

    cfg = clip_config(str(tiny_clip_dir))
    m = build(cfg).eval()
    hf = transformers.CLIPModel.from_pretrained(tiny_clip_dir).eval()
    ids, mask = m._tokens(["a dog", "two red cats on grass"])
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        t_ref = torch.nn.functional.normalize(hf.get_text_features(input_ids=ids, attention_mask=mask), dim=-1)
        i_ref = torch.nn.functional.normalize(hf.get_image_features(pixel_values=px), dim=-1)
        t = m.encode_text(ids, mask)
        i, tok = m.encode_image(px)
    # HF pools CLIP text at the EOS token id (our tiny tokenizer's [SEP] is the last token)
    assert torch.allclose(i, i_ref, atol=1e-5)
    assert t.shape == t_ref.shape
    assert tok.shape == (2, cfg.n_image_tokens, cfg.token_dim)
    from dataclasses import replace

    m.cfg = replace(m.cfg, score=replace(m.cfg.score, joint=1.0))  # the joint pass over CLIP's causal blocks
    e, tk = m.encode_images([np.zeros((32, 32, 3), np.uint8)] * 2)
    s = m.score_encoded("a dog", tk, e)
    assert s.shape == (2,) and np.isfinite(s).all()


def test_clip_base_trains_and_saves(tiny_clip_dir, tmp_path):
    from edge_xmr.model.bases import build, clip_config, load, save

    m = build(clip_config(str(tiny_clip_dir)))
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert any(n.startswith("cross.") for n in trainable)
    assert not any(n.startswith("image_tower.") for n in trainable)
    save(m, tmp_path / "m")
    m2 = load(tmp_path / "m")
    e, tk = m.eval().encode_images([np.full((32, 32, 3), 100, np.uint8)])
    np.testing.assert_allclose(m.score_encoded("a dog", tk, e), m2.score_encoded("a dog", tk, e), atol=1e-5)
