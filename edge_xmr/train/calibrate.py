"""After training: the choice of the score's weights (a pure function of the score terms), weight
interpolation of two models (WiSE-FT) and the calibration on its own.

The honest protocol (docs/model.md): dev is split BY PHOTO into a fixed tuning half and a reporting half
(``dev_tune.txt`` / ``dev_report.txt`` next to this file, for Flickr8k dev; :func:`dev_halves`). Every
weight is chosen on the tuning half's queries (:func:`choose_score`); the reporting half's queries are
scored once, with the chosen weights (:func:`recall_at_1`). Ties go to the cheaper score (no joint pass
before the joint pass, fewer terms, smaller weights: :func:`cost`).

``interpolate`` averages two models of the same shape in place; ``recalibrate`` reruns the end of
training — hubness banks from the training split, score weights and floors chosen on dev's tuning
half — for a model whose weights or test-time views (``ModelConfig.views``) changed, and saves it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data import CaptionSet, read_names
from ..score import NO_FLOOR, ScoreConfig, combine
from ..train_config import TrainConfig

if TYPE_CHECKING:
    from ..model.joint import JointModel

HALVES_DIR = Path(__file__).resolve().parent
LI_STEPS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0)  # λ grid, in units of the cosine weight
JOINT_STEPS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)  # γ grid
BETA_STEPS = (0.0, 0.25, 0.4, 0.5, 0.6, 0.75, 1.0)  # β_i and β_t grids

Weights = Mapping[str, float]  # ScoreConfig weight fields -> values


@dataclass(frozen=True)
class RerankSet:
    """One direction's rerank problem: Q queries, K candidates each (the first stage's top K)."""

    terms: Mapping[str, np.ndarray]  # score term name -> (Q, K) unweighted values (edge_xmr/score.py)
    correct: np.ndarray  # (Q, K) bool: candidate k is a right answer to query q

    def rows(self, idx: np.ndarray) -> RerankSet:
        return RerankSet({k: v[idx] for k, v in self.terms.items()}, self.correct[idx])


def hits(rs: RerankSet, cfg: ScoreConfig) -> int:
    """Queries whose best-scored candidate is a right answer."""
    if not len(rs.correct):
        return 0
    pick = np.asarray(combine(rs.terms, cfg)).argmax(1)
    return int(rs.correct[np.arange(len(pick)), pick].sum())


def recall_at_1(rs: RerankSet, cfg: ScoreConfig) -> float:
    """R@1 (percent) of reranking ``rs`` with ``cfg``; nan for no queries."""
    return 100.0 * hits(rs, cfg) / len(rs.correct) if len(rs.correct) else float("nan")


def cost(w: Weights) -> tuple[bool, int, float, float]:
    """Order of cheapness of a weight choice: without the joint pass first, then fewer terms, then a
    smaller joint weight, then smaller weights."""
    used = [k for k, v in w.items() if v != 0.0 and k != "cosine"]
    return (w.get("joint", 0.0) != 0.0, len(used), w.get("joint", 0.0),
            sum(abs(v) for k, v in w.items() if k != "cosine"))


def choose(rs: RerankSet, base: ScoreConfig, grid: Sequence[Weights]) -> tuple[ScoreConfig, float]:
    """The grid point (weights replacing ``base``'s) with the most hits on ``rs``; among equals the
    cheapest (:func:`cost`). Returns (config, R@1)."""
    if not grid:
        raise ValueError("empty weight grid")
    best, best_hits = base, -1
    for w in sorted(grid, key=cost):  # cheapest first: a later point must be strictly better
        cfg = replace(base, **w)
        h = hits(rs, cfg)
        if h > best_hits:
            best, best_hits = cfg, h
    return best, 100.0 * best_hits / len(rs.correct) if len(rs.correct) else float("nan")


def t2i_grid(cosine: float, terms: Collection[str], joint: bool) -> list[dict[str, float]]:
    """λ (in units of ``cosine``), γ and β_i, every combination, for the terms among ``terms`` (0 for the
    others); γ = 0 only unless ``joint``."""
    lis = LI_STEPS if "late_interaction" in terms else (0.0,)
    gammas = JOINT_STEPS if joint and "joint" in terms else (0.0,)
    betas = BETA_STEPS if "photo_hubness" in terms else (0.0,)
    return [{"late_interaction": li * cosine, "joint": g, "photo_hubness": b}
            for li in lis for g in gammas for b in betas]


@dataclass(frozen=True)
class Choice:
    """What :func:`choose_score` picked on the tuning half, and the runner-ups it compared."""

    score: ScoreConfig  # the chosen score (γ = 0 unless the joint pass earned its place)
    plain: ScoreConfig  # the best without the joint pass (γ = 0)
    with_joint: ScoreConfig | None  # the best with it (γ > 0); None when no joint term was given
    tune_t2i: dict[str, float]  # tuning-half R@1 of each ("score", "plain", "with_joint")
    tune_i2t: float  # tuning-half i2t R@1 of the chosen score (nan without an i2t set)


def choose_score(t2i: RerankSet, base: ScoreConfig, i2t: RerankSet | None = None,
                 min_joint_gain: float = 1.0) -> Choice:
    """The score's weights from the tuning half's terms (pure: arrays in, a frozen config out).

    t2i: the tuning captions' rerank sets (terms: cosine, late_interaction, photo_hubness, and joint to
    consider the joint pass); λ, γ, β_i by grid search (``t2i_grid``). The joint pass is kept only if
    its best weights beat the best without it by ``min_joint_gain`` R@1 or more. i2t: the tuning photos'
    sets (terms as for t2i plus text_hubness, which only reorders this direction): β_t, the others fixed.
    ``base`` gives the cosine weight, the hubness temperature and floors (already applied to the terms).
    """
    plain, r_plain = choose(t2i, base, t2i_grid(base.cosine, t2i.terms, joint=False))
    with_joint, r_joint, chosen, r_chosen = None, float("nan"), plain, r_plain
    if "joint" in t2i.terms:
        grid = [w for w in t2i_grid(base.cosine, t2i.terms, joint=True) if w["joint"] != 0.0]
        with_joint, r_joint = choose(t2i, base, grid)
        if r_joint >= r_plain + min_joint_gain:
            chosen, r_chosen = with_joint, r_joint
    r_i2t = float("nan")
    if i2t is not None:
        chosen, r_i2t = choose(i2t, chosen, [{"text_hubness": b} for b in BETA_STEPS])
        plain = replace(plain, text_hubness=chosen.text_hubness)
        if with_joint is not None:
            with_joint = replace(with_joint, text_hubness=chosen.text_hubness)
    return Choice(chosen, plain, with_joint, {"score": r_chosen, "plain": r_plain, "with_joint": r_joint}, r_i2t)


def floor(stats: np.ndarray, pct: float) -> float:
    """A hubness floor: the ``pct`` percentile of the calibration photos' (captions') statistics
    (no floor at pct 0 or without statistics)."""
    return float(np.percentile(stats, pct)) if pct > 0 and len(stats) else NO_FLOOR


def dev_halves(images: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``images`` in the tuning half and in the reporting half: disjoint, together all of them.

    A photo named in the committed lists (``dev_tune.txt`` / ``dev_report.txt``, Flickr8k dev) is in its
    list's half; any other photo (another data set) by the parity of its name's sha256, so the split
    is by photo and fixed for any folder."""
    tune_names = set(read_names(HALVES_DIR / "dev_tune.txt"))
    report_names = set(read_names(HALVES_DIR / "dev_report.txt"))
    digest = [hashlib.sha256(n.encode()).digest() for n in images]
    mask = np.array([n in tune_names or (n not in report_names and d[0] % 2 == 0)
                     for n, d in zip(images, digest)], bool)
    free = [i for i, n in enumerate(images) if n not in tune_names and n not in report_names]
    if len(images) >= 2 and free and (mask.all() or not mask.any()):  # a small folder: neither half empty
        mask[min(free, key=lambda i: digest[i])] = not mask[0]
    return np.flatnonzero(mask), np.flatnonzero(~mask)


def interpolate(model: JointModel, other: JointModel, alpha: float) -> JointModel:
    """In place: every float tensor of ``model`` becomes ``alpha * other + (1 - alpha) * model``.

    The hubness banks (``bases.CALIBRATED_BUFFERS``) and the score's weights (``cfg.score``) are left
    alone — ``recalibrate`` sets them afresh. The two models must have the same configuration shape.
    """
    import torch

    from ..model import bases

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    theirs = other.state_dict()
    own = model.state_dict()
    missing = sorted(set(own) - set(theirs))
    if missing:
        raise ValueError(f"models differ: {missing[0]} is not in the other model")
    with torch.no_grad():
        for k, v in own.items():
            if k in bases.CALIBRATED_BUFFERS or not v.is_floating_point():
                continue
            if theirs[k].shape != v.shape:
                raise ValueError(f"models differ: {k} has shape {tuple(v.shape)} vs {tuple(theirs[k].shape)}")
            v.copy_(alpha * theirs[k].to(v.dtype) + (1.0 - alpha) * v)
    return model
