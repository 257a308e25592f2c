"""The choice of the score's weights (oracle tests on hand-built terms), the dev halves, weight
interpolation (WiSE-FT) and ``edge-xmr calibrate`` on a tiny caption folder."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_xmr.cli import main  # noqa: E402
from edge_xmr.config import preset  # noqa: E402
from edge_xmr.model import bases, build, save  # noqa: E402
from edge_xmr.score import ScoreConfig  # noqa: E402
from edge_xmr.train.calibrate import (RerankSet, choose, choose_score, cost, dev_halves, hits,  # noqa: E402
                                      interpolate, t2i_grid)

FLICKR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "flickr8k"  # as tests/conftest.py


def _brute_r1(rs, cfg):
    """R@1 by plain loops: each query's best candidate under the weighted sum, right or not."""
    right = 0
    for q in range(len(rs.correct)):
        scores = []
        for k in range(rs.correct.shape[1]):
            s = sum(cfg.weight(t) * float(v[q, k]) for t, v in rs.terms.items() if cfg.weight(t) != 0.0)
            scores.append(s)
        right += bool(rs.correct[q, int(np.argmax(scores))])
    return 100.0 * right / len(rs.correct)


def _random_set(seed, q=60, k=5, terms=("cosine", "late_interaction", "photo_hubness")):
    rng = np.random.default_rng(seed)
    correct = np.zeros((q, k), bool)
    correct[np.arange(q), rng.integers(0, k, q)] = True
    t = {n: rng.normal(size=(q, k)) + (0.8 * correct if n != "photo_hubness" else -0.5 * correct) for n in terms}
    return RerankSet(t, correct)


def test_choose_returns_the_argmax_of_a_hand_built_grid():
    base = ScoreConfig(cosine=1.0)
    for seed in range(5):
        rs = _random_set(seed)
        grid = t2i_grid(1.0, rs.terms, joint=False)
        got, r1 = choose(rs, base, grid)
        from dataclasses import replace

        everything = [(_brute_r1(rs, replace(base, **w)), w) for w in grid]
        best = max(r for r, _ in everything)
        assert r1 == pytest.approx(best) and _brute_r1(rs, got) == pytest.approx(best)
        cheapest = min((w for r, w in everything if r == best), key=cost)
        assert {k: getattr(got, k) for k in cheapest} == cheapest  # the cheapest of the maxima


def test_ties_go_to_the_cheaper_score_whatever_the_grid_order():
    """A joint term that changes no ranking (constant per query) ties with γ = 0: γ = 0 wins, also when the
    grid lists larger weights first (the old grid took the first maximum, γ = 1.0)."""
    rs = _random_set(7, terms=("cosine", "late_interaction"))
    rs = RerankSet({**rs.terms, "joint": np.repeat(np.arange(len(rs.correct))[:, None], 5, 1) * 1.0}, rs.correct)
    base = ScoreConfig(cosine=1.0)
    grid = [{"late_interaction": li, "joint": g} for g in (1.0, 0.75, 0.1, 0.0) for li in (2.0, 1.0, 0.0)]
    got, _ = choose(rs, base, grid)
    assert got.joint == 0.0
    # the same R@1 at every γ, so among the late-interaction weights the best, and the smallest of equals
    by_li = {li: hits(rs, ScoreConfig(cosine=1.0, late_interaction=li)) for li in (2.0, 1.0, 0.0)}
    assert got.late_interaction == min(li for li, h in by_li.items() if h == max(by_li.values()))
    assert cost({"joint": 0.0, "late_interaction": 9.0}) < cost({"joint": 0.1})
    assert cost({"late_interaction": 1.0}) < cost({"late_interaction": 1.0, "photo_hubness": 0.25})


def _with_joint_gain(n_fixed):
    """200 queries, 2 candidates: the cosine gets every other query right; the joint term fixes
    ``n_fixed`` of the others and leaves every other ranking as the cosine has it."""
    q = 200
    correct = np.zeros((q, 2), bool)
    correct[:, 0] = True
    cos = np.zeros((q, 2))
    cos[::2, 0], cos[1::2, 1] = 1.0, 1.0
    joint = np.zeros((q, 2))
    joint[np.arange(1, 2 * n_fixed, 2), 0] = 10.0
    return RerankSet({"cosine": cos, "joint": joint}, correct)


def test_joint_pass_joins_only_when_it_earns_its_place():
    base = ScoreConfig(cosine=1.0)
    small = choose_score(_with_joint_gain(1), base)  # +0.5 R@1
    assert small.score.joint == 0.0 and small.with_joint.joint > 0.0
    assert small.tune_t2i["with_joint"] == pytest.approx(small.tune_t2i["plain"] + 0.5)
    assert choose_score(_with_joint_gain(1), base, min_joint_gain=0.0).score.joint > 0.0  # any gain, when asked
    big = choose_score(_with_joint_gain(4), base)  # +2.0 R@1
    assert big.score.joint > 0.0 and big.tune_t2i["score"] == pytest.approx(52.0)


def test_text_hubness_is_chosen_on_image_to_text():
    rng = np.random.default_rng(3)
    t2i = _random_set(1)
    q, k = 40, 6
    correct = np.zeros((q, k), bool)
    correct[np.arange(q), rng.integers(0, k, q)] = True
    hub = rng.normal(size=(q, k)) - 2.0 * correct  # right captions are less "hubby"
    i2t = RerankSet({"cosine": rng.normal(size=(q, k)), "late_interaction": np.zeros((q, k)),
                     "photo_hubness": np.zeros((q, k)), "text_hubness": hub}, correct)
    ch = choose_score(t2i, ScoreConfig(cosine=1.0), i2t)
    assert ch.score.text_hubness > 0 and ch.plain.text_hubness == ch.score.text_hubness
    from dataclasses import replace

    assert ch.tune_i2t == pytest.approx(max(_brute_r1(i2t, replace(ch.score, text_hubness=b))
                                            for b in (0.0, 0.25, 0.4, 0.5, 0.6, 0.75, 1.0)))


def test_dev_halves_are_disjoint_cover_dev_and_follow_the_committed_lists():
    from edge_xmr.data import read_names
    from edge_xmr.train.calibrate import HALVES_DIR

    tune_names, report_names = (read_names(HALVES_DIR / f) for f in ("dev_tune.txt", "dev_report.txt"))
    assert len(tune_names) == len(report_names) == 500 and not set(tune_names) & set(report_names)
    other = [f"p{i}.png" for i in range(40)]  # photos of another folder: split by their names' hash
    names = tune_names[:7] + other + report_names[:5]
    tune, report = dev_halves(names)
    assert not set(tune) & set(report) and sorted([*tune, *report]) == list(range(len(names)))
    assert set(range(7)) <= set(tune) and set(range(47, 52)) <= set(report)
    assert 0 < len(set(tune) & set(range(7, 47))) < 40  # both halves get some of the other photos
    np.testing.assert_array_equal(dev_halves(names)[0], tune)  # fixed
    import hashlib

    same = [n for n in (f"x{i}.jpg" for i in range(200)) if hashlib.sha256(n.encode()).digest()[0] % 2 == 0][:3]
    tune, report = dev_halves(same)  # a small folder whose names' hashes all say "tuning": neither half empty
    assert len(tune) == 2 and len(report) == 1
    dev = FLICKR / "splits" / "dev.txt"
    if dev.is_file():  # the data is not in the repository; where it is, the lists cover dev exactly
        assert sorted(tune_names + report_names) == sorted(read_names(dev))


def _pair():
    a, b = build(preset("tiny")), build(preset("tiny"))  # the tiny build is deterministic: perturb b
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for v in b.state_dict().values():
            if v.is_floating_point():
                v.add_(0.1 * torch.randn(v.shape, generator=g))
    a.cfg = replace(a.cfg, score=ScoreConfig(photo_hubness=0.5, text_hubness=0.25, hubness_temperature=10.0))
    b.cfg = replace(b.cfg, score=ScoreConfig(photo_hubness=1.0, text_hubness=1.0, hubness_temperature=20.0))
    return a, b


def test_interpolate_is_the_weighted_mean_of_every_weight():
    a, b = _pair()
    ref_a = {k: v.clone() for k, v in a.state_dict().items()}
    ref_b = b.state_dict()
    interpolate(a, b, 0.25)
    assert a.cfg.score.photo_hubness == 0.5  # the score's weights are the calibration's to set
    got = a.state_dict()
    for k, v in got.items():
        if k in bases.CALIBRATED_BUFFERS or not v.is_floating_point():
            assert torch.equal(v, ref_a[k]), k  # set by the calibration, not averaged
        else:
            np.testing.assert_allclose(v.numpy(), 0.25 * ref_b[k].numpy() + 0.75 * ref_a[k].numpy(), atol=1e-6,
                                       err_msg=k)
    assert any(not torch.equal(ref_a[k], got[k]) for k in got)


def test_interpolate_refuses_models_of_another_shape():
    a, _ = _pair()
    with pytest.raises(ValueError, match="models differ"):
        interpolate(a, build(preset("tiny", n_image_tokens=3)), 0.5)
    with pytest.raises(ValueError, match="alpha"):
        interpolate(a, a, 1.5)


def test_cli_calibrate_mixes_sets_views_and_recalibrates(caption_folder, tmp_path, capsys):
    a, b = _pair()
    save(a, tmp_path / "a")
    save(b, tmp_path / "b")
    out = tmp_path / "out"
    rc = main(["calibrate", "--model", str(tmp_path / "a"), "--mix", str(tmp_path / "b"), "--data", str(caption_folder),
               "--split", "all", "--eval-split", "all", "--out", str(out), "--views", "32,40m",
               "--hub-bank", "8", "--hub-bank-images", "6"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    for half in ("tuning", "reporting"):
        assert 0 <= result[half]["t2i_rerank20_R@1"] <= 100
    assert result["tuning"]["t2i_queries"] + result["reporting"]["t2i_queries"] == 24  # every caption, once
    m = bases.load(out)
    assert m.cfg.views == ((32, False), (40, True))
    assert m.cross.text_bank.shape[0] == 8 and m.cross.image_bank.shape[0] == 6
    assert m.cfg.score.to_dict() == result["score"] and m.cfg.score.photo_hubness_floor > -1e3
    mixed, _ = _pair()
    interpolate(mixed, b, 0.5)
    np.testing.assert_allclose(m.text_proj.weight.detach().numpy(), mixed.text_proj.weight.detach().numpy(), atol=1e-6)
    # the banks hold the photos as the model now encodes them: the photo and its enlarged mirror image
    photos = sorted((caption_folder / "images").iterdir())
    got = m.cross.image_bank.numpy()
    dist = lambda e: np.abs(e[:, None] - got[None]).sum(-1).min(0).max()  # noqa: E731
    assert dist(m.embed_images(photos)) < 2e-2  # cached float16 tower features: not exact
    plain = bases.load(out)
    plain.cfg = replace(plain.cfg, views=())
    assert dist(plain.embed_images(photos)) > 5e-2
    caps = [ln.split("\t")[1] for ln in (caption_folder / "captions.tsv").read_text().splitlines()[1:]]
    np.testing.assert_allclose(np.linalg.norm(m.cross.text_bank.numpy(), axis=1), 1.0, atol=1e-5)
    bank = m.cross.text_bank.numpy()
    assert np.abs(m.embed_texts(caps)[:, None] - bank[None]).sum(-1).min(0).max() < 1e-4  # training captions


def test_cli_calibrate_user_errors(caption_folder, tmp_path, capsys):
    a, _ = _pair()
    save(a, tmp_path / "a")
    save(build(preset("tiny", n_image_tokens=3)), tmp_path / "c")
    args = ["calibrate", "--model", str(tmp_path / "a"), "--data", str(caption_folder), "--split", "all", "--eval-split",
            "all", "--out", str(tmp_path / "o")]
    assert main(args + ["--mix", str(tmp_path / "c")]) == 2
    assert "models differ" in capsys.readouterr().err
    assert main(args[:2] + [str(tmp_path / "nope")] + args[3:]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(args[:-4] + ["--eval-split", "nosuch", "--out", str(tmp_path / "o")]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert main(args + ["--views", "16m"]) == 2  # below the input size (32)
    assert "--views 16m: bad view (16, True)" in capsys.readouterr().err
    assert main(args + ["--views", "32,big"]) == 2
    assert "'big' is not a side" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
