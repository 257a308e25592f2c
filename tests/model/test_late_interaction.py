"""Late interaction (caption tokens vs image tokens) inside the cross-encoder score, and the training
helpers that feed it: class names of the classifier teacher and random-crop views."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_xmr.model import build, load, save  # noqa: E402
from edge_xmr.config import preset  # noqa: E402


def _oracle(t_tok, mask, tokens):
    """Plain loops: mean over real caption tokens of the best cosine with any image token."""
    Q, K = tokens.shape[:2]
    out = np.zeros((Q, K))
    for q in range(Q):
        for k in range(K):
            vals = []
            for i in range(t_tok.shape[1]):
                if mask[q, i]:
                    t = t_tok[q, i] / np.linalg.norm(t_tok[q, i])
                    v = tokens[q, k] / np.linalg.norm(tokens[q, k], axis=1, keepdims=True)
                    vals.append(max(float(t @ v[j]) for j in range(len(v))))
            out[q, k] = np.mean(vals)
    return out


def test_late_interaction_matches_loop_oracle(tiny_model):
    g = torch.Generator().manual_seed(0)
    Q, K, L, T, Dt = 3, 4, 5, tiny_model.cfg.n_image_tokens, tiny_model.cfg.token_dim
    t_tok = torch.nn.functional.normalize(torch.randn(Q, L, Dt, generator=g), dim=-1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    tokens = torch.randn(Q, K, T, Dt, generator=g)
    got = tiny_model.cross.late_interaction(t_tok, mask, tokens).numpy()
    np.testing.assert_allclose(got, _oracle(t_tok.numpy(), mask.numpy(), tokens.numpy()), atol=1e-5)
    # every caption against every photo == the aligned form with each photo repeated per caption
    photos = torch.randn(K, T, Dt, generator=g)
    all_ = tiny_model.cross.late_interaction_all(t_tok, mask, photos)
    aligned = tiny_model.cross.late_interaction(t_tok, mask, photos[None].expand(Q, K, T, Dt))
    torch.testing.assert_close(all_, aligned)


def test_late_interaction_is_part_of_the_score(tiny_model):
    from dataclasses import replace

    texts = ["a dog", "two cats on a red sofa"]
    rng = np.random.default_rng(0)
    tok = rng.normal(size=(5, tiny_model.cfg.n_image_tokens, tiny_model.cfg.token_dim)).astype(np.float32)
    emb = rng.normal(size=(5, tiny_model.cfg.embed_dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    with_li = np.stack([tiny_model.score_encoded(t, tok, emb) for t in texts])
    w = tiny_model.cfg.score.late_interaction
    assert w != 0.0
    tiny_model.cfg = replace(tiny_model.cfg, score=replace(tiny_model.cfg.score, late_interaction=0.0))
    without = np.stack([tiny_model.score_encoded(t, tok, emb) for t in texts])
    ids, mask = tiny_model._tokens(texts)
    with torch.no_grad():
        _, states = tiny_model.text_upper(tiny_model.text_lower(ids, mask), mask)
        li = tiny_model.cross.late_interaction(tiny_model.cross.text_tokens(states[-1]), mask,
                                               torch.from_numpy(tok)[None].expand(2, -1, -1, -1)).numpy()
    np.testing.assert_allclose(with_li - without, w * li, atol=1e-4)


def test_numpy_late_interaction_matches_loop_oracle():
    from edge_xmr.score import late_interaction

    rng = np.random.default_rng(1)
    t_tok = rng.normal(size=(5, 8))
    t_tok /= np.linalg.norm(t_tok, axis=1, keepdims=True)
    tokens = rng.normal(size=(3, 4, 8))
    np.testing.assert_allclose(late_interaction(t_tok, tokens), _oracle(t_tok[None], np.ones((1, 5)),
                                                                        tokens[None])[0], atol=1e-5)


def test_model_dir_without_late_interaction_loads_with_it_off(tiny_model, tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    save(tiny_model, tmp_path)
    f = tmp_path / "model.safetensors"
    sd = {k: v for k, v in load_file(str(f)).items() if not k.startswith("cross.li_")}
    save_file({**sd, "cross.hub": torch.tensor([0.0, 0.0, 20.0])}, str(f))
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["score"]  # written before the score's weights moved into config.json
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    m = load(tmp_path)
    assert m.cfg.score.late_interaction == 0.0


def test_class_names_follow_the_classifier_order():
    from edge_xmr.train.loop import class_names

    names = class_names()
    assert len(names) == 1000
    assert (names[0], names[281], names[285], names[812], names[999]) == (
        "tench", "tabby", "Egyptian cat", "space shuttle", "toilet tissue")


def test_random_crop_views_are_deterministic_and_inside_the_photo(tmp_path):
    from PIL import Image

    from edge_xmr.train.features import random_crop

    p = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8)).save(p)
    a, b, c = random_crop(p, 64, 7), random_crop(p, 64, 7), random_crop(p, 64, 8)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert a.size != c.size or not np.array_equal(np.asarray(a), np.asarray(c))
    for s in range(20):
        w, h = random_crop(p, 64, s).size
        assert 0 < w <= 200 and 0 < h <= 120 and w * h >= 0.3 * 200 * 120
