"""The score's configuration and combination (edge_xmr/score.py), torch-free."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_xmr.score import TERMS, ScoreConfig, ScoreConfigError, combine, hubness, late_interaction


def _terms(rng, q=3, k=5):
    return {t: rng.normal(size=(q, k)) for t in TERMS}


def test_combine_is_the_signed_weighted_sum():
    rng = np.random.default_rng(0)
    terms = _terms(rng)
    cfg = ScoreConfig(cosine=2.0, late_interaction=0.5, joint=0.25, photo_hubness=0.75, text_hubness=0.125)
    oracle = (2.0 * terms["cosine"] + 0.5 * terms["late_interaction"] + 0.25 * terms["joint"]
              - 0.75 * terms["photo_hubness"] - 0.125 * terms["text_hubness"])
    np.testing.assert_allclose(combine(terms, cfg), oracle, atol=1e-12)


def test_terms_with_weight_zero_need_not_be_computed():
    rng = np.random.default_rng(1)
    terms = _terms(rng)
    cfg = ScoreConfig(cosine=1.0, late_interaction=0.5)
    assert cfg.needed() == ("cosine", "late_interaction") and not cfg.uses_joint
    only = {t: terms[t] for t in cfg.needed()}
    np.testing.assert_allclose(combine(only, cfg), terms["cosine"] + 0.5 * terms["late_interaction"])
    with pytest.raises(KeyError, match="joint"):
        combine(only, ScoreConfig(joint=0.1))


def test_config_round_trips_through_json_and_refuses_unknown_fields():
    cfg = ScoreConfig(cosine=17.9, late_interaction=8.96, photo_hubness=0.75, photo_hubness_floor=11.8)
    assert ScoreConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ScoreConfigError, match="unknown score config fields"):
        ScoreConfig.from_dict({**cfg.to_dict(), "gamma": 1.0})
    with pytest.raises(ScoreConfigError):
        ScoreConfig.from_dict({"joint": "a lot"})


def test_numpy_hubness_is_the_floored_logsumexp():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 4))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    bank = rng.normal(size=(9, 4))
    raw = np.array([np.log(np.sum(np.exp(10.0 * (bank @ v)))) for v in x])  # direct
    floor = float(np.median(raw))
    np.testing.assert_allclose(hubness(x, bank, 10.0, floor), np.maximum(raw, floor), rtol=1e-5)
    assert (raw < floor).any() and (raw > floor).any()
    assert (hubness(x, np.zeros((0, 4)), 10.0, floor) == 0).all()  # no bank: the term is off


def test_numpy_late_interaction_ignores_image_token_scale():
    rng = np.random.default_rng(3)
    t = rng.normal(size=(4, 8))
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    v = rng.normal(size=(2, 3, 8))
    np.testing.assert_allclose(late_interaction(t, v), late_interaction(t, 5.0 * v), atol=1e-6)
    one = np.stack([t[0]] * 3)[None]  # every image token = the first text token
    assert late_interaction(t[:1], one)[0] == pytest.approx(1.0, abs=1e-6)
