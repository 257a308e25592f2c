"""The rerank score: named terms, combined by a frozen :class:`ScoreConfig` (torch-free).

For a text t and a photo (embedding e, image tokens v)::

    score = cosine · cos(t, e) + late_interaction · LI(h, v) + joint · J(t, v, e)
            − photo_hubness · hub(e) − text_hubness · hub(t)

- ``cos(t, e)``: the bi-encoder cosine;
- ``LI(h, v)``: late interaction, the mean over the text's tokens of the cosine with the best-matching
  image token (``late_interaction`` below);
- ``J``: the joint-attention pass (image tokens through the shared text blocks, attending to the
  text); optional: with weight 0 it is never run (``ScoreConfig.uses_joint``);
- ``hub(e) = max(logsumexp(s · e · B_textᵀ), f_e)``: how close the photo is to a bank of training
  captions (a "hub" is close to many and gets pushed down); for text -> image it depends on the photo
  only: a per-photo prior. ``hub(t)`` likewise against a bank of training photos (constant for one
  text query, it reorders image -> text only).

The first stage (the KNN before the rerank) may use the photo prior too: it ranks its over-fetched
candidates by ``cosine · cos(t, e) − first_stage_prior · hub(e)`` (:func:`first_stage_key`) before the
top-k cut. :class:`LibraryMoments` holds the statistics of a user's own library that make one text's
cosines comparable with another's (zero-shot labels: ``Library.classify``).

Both the PyTorch model (``edge_xmr.model.joint``) and the runtime bundle (``edge_xmr.bundle``) return
the terms by name and call :func:`combine`; the weights live in the model's ``config.json`` and the
bundle's manifest, not in the weights file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from .errors import EdgeXmrError

TERMS = ("cosine", "late_interaction", "joint", "photo_hubness", "text_hubness")  # names of the score's terms
PENALTIES = frozenset({"photo_hubness", "text_hubness"})  # terms subtracted from the score
NO_FLOOR = -1.0e4  # a floor below every statistic: none

FloatArray = npt.NDArray[np.float32]
Normalization = Literal["none", "center", "zscore"]  # how LibraryMoments.normalized compares queries
NORMALIZATIONS: tuple[Normalization, ...] = ("none", "center", "zscore")
A = TypeVar("A")  # numpy arrays or torch tensors: combine uses operators only


class ScoreConfigError(EdgeXmrError, ValueError):
    """A score configuration that is malformed (unknown field, wrong type)."""


@dataclass(frozen=True)
class ScoreConfig:
    cosine: float = 20.0  # weight of the bi-encoder cosine (the trained scale, frozen by the calibration)
    late_interaction: float = 0.0  # λ: weight of late interaction LI(h, v) (0: not computed)
    joint: float = 0.0  # γ: weight of the joint-attention pass (0: the joint pass is never run)
    photo_hubness: float = 0.0  # β_i: weight of the photo's hubness hub(e), subtracted (a per-photo prior)
    text_hubness: float = 0.0  # β_t: weight of the text's hubness hub(t), subtracted (reorders image -> text only)
    hubness_temperature: float = 20.0  # s in hub(x) = logsumexp(s · x · bankᵀ)
    photo_hubness_floor: float = NO_FLOOR  # f_e: hub(e) is clamped from below here (a low percentile of the
    #                                        calibration photos': a photo unlike every bank caption gets no bonus)
    text_hubness_floor: float = NO_FLOOR  # f_t: hub(t) is clamped from below here (likewise for texts)
    first_stage_prior: float = 0.0  # weight of hub(e) subtracted in the FIRST stage, before the top-k cut
    #                                 (``first_stage_key``; 0: the first stage ranks by cosine alone)

    @property
    def uses_joint(self) -> bool:
        """Whether the score needs the joint-attention pass (γ ≠ 0)."""
        return self.joint != 0.0

    def weight(self, term: str) -> float:
        """The signed weight of ``term`` in the sum (hubness terms count negatively)."""
        if term not in TERMS:
            raise KeyError(f"unknown score term {term!r} (terms: {', '.join(TERMS)})")
        w = float(getattr(self, term))
        return -w if term in PENALTIES else w

    def needed(self) -> tuple[str, ...]:
        """The terms with a non-zero weight (the cosine always: it is the ranking's backbone)."""
        return tuple(t for t in TERMS if t == "cosine" or self.weight(t) != 0.0)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> ScoreConfig:
        known = {f.name for f in fields(ScoreConfig)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ScoreConfigError(f"unknown score config fields: {unknown}")
        try:
            return ScoreConfig(**{k: float(v) for k, v in d.items()})
        except (TypeError, ValueError) as e:
            raise ScoreConfigError(f"score config: {e}") from None


def combine(terms: Mapping[str, A], cfg: ScoreConfig) -> A:
    """The score from named terms (numpy arrays or torch tensors of one shape, or broadcastable):
    the sum of each term times its signed weight. A term with a non-zero weight must be present;
    terms with weight 0 may be absent (they were not computed)."""
    missing = [t for t in cfg.needed() if t not in terms]
    if missing:
        raise KeyError(f"score terms {missing} are weighted in the score config but were not computed")
    out: Any = cfg.weight("cosine") * terms["cosine"]
    for t in cfg.needed():
        if t != "cosine":
            out = out + cfg.weight(t) * terms[t]
    return out  # type: ignore[no-any-return]


# ---- the terms in numpy (the runtime's; the PyTorch model computes the same in torch) -------------
def unit(x: npt.NDArray[Any], axis: int = -1) -> FloatArray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def late_interaction(text_tokens: npt.NDArray[Any], image_tokens: npt.NDArray[Any]) -> FloatArray:
    """text_tokens (L, Dt) unit vectors of ONE text (its real tokens only), image_tokens (N, T, Dt)
    -> (N,): mean over text tokens of the cosine with the best image token."""
    v = unit(image_tokens)  # (N, T, Dt)
    sim = np.einsum("ld,ntd->nlt", np.asarray(text_tokens, np.float32), v)  # (N, L, T)
    return sim.max(-1).mean(-1).astype(np.float32)


def hubness(x: npt.NDArray[Any], bank: npt.NDArray[Any], temperature: float, floor: float) -> FloatArray:
    """x (N, D) unit vectors, bank (K, D) -> (N,) max(logsumexp(temperature · x · bankᵀ), floor);
    zeros when the bank is empty (no statistic: the term is off)."""
    x = np.asarray(x, np.float32)
    if len(bank) == 0:
        return np.zeros(len(x), np.float32)
    z = temperature * (x @ np.asarray(bank, np.float32).T)  # (N, K)
    top = z.max(-1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(z - top).sum(-1))
    return np.maximum(lse, floor).astype(np.float32)


# ---- the first stage: the per-photo prior before the top-k cut -----------------------------------
def first_stage_key(cosine: npt.NDArray[Any], prior: npt.NDArray[Any], cfg: ScoreConfig) -> FloatArray:
    """What the first stage ranks by: ``cosine · cos(t, e) − first_stage_prior · hub(e)`` (the photo
    hubness prior of the rerank score, applied before the top-k cut; weight 0: the cosine alone)."""
    key = cfg.cosine * np.asarray(cosine, np.float32)
    if cfg.first_stage_prior:
        key = key - cfg.first_stage_prior * np.asarray(prior, np.float32)
    return key.astype(np.float32)


# ---- library statistics: the moments of the photos' embeddings -----------------------------------
@dataclass(frozen=True)
class LibraryMoments:
    """The first two moments of a library's photo embeddings, kept as sums so that adding or removing
    a photo is exact and O(D²): ``count``, ``total = Σ e`` (D,) and ``outer = Σ e eᵀ`` (D, D), float64.

    For a text embedding q, the mean and variance of its cosine q·e over the library's photos are
    ``q·μ`` and ``qᵀ Σ q`` (μ = total / n, Σ = outer / n − μ μᵀ): one caption's scores can be
    centred or z-scored over the user's own photos without touching them (:meth:`normalized`)."""

    count: int
    total: npt.NDArray[np.float64]
    outer: npt.NDArray[np.float64]

    @staticmethod
    def empty(dim: int) -> LibraryMoments:
        return LibraryMoments(0, np.zeros(dim, np.float64), np.zeros((dim, dim), np.float64))

    @staticmethod
    def of(embeds: npt.NDArray[Any]) -> LibraryMoments:
        """The moments of the photos ``embeds`` (n, D), computed from scratch."""
        e = np.asarray(embeds, np.float64)
        return LibraryMoments(len(e), e.sum(0), e.T @ e)

    def add(self, embeds: npt.NDArray[Any], sign: int = 1) -> LibraryMoments:
        """These moments with the photos ``embeds`` (n, D) added (``sign`` −1: removed)."""
        d = LibraryMoments.of(embeds)
        return LibraryMoments(self.count + sign * d.count, self.total + sign * d.total, self.outer + sign * d.outer)

    def remove(self, embeds: npt.NDArray[Any]) -> LibraryMoments:
        return self.add(embeds, -1)

    @property
    def mean(self) -> npt.NDArray[np.float64]:
        """μ (D,): the mean photo embedding (zeros for an empty library)."""
        return self.total / max(self.count, 1)

    def query_stats(self, queries: npt.NDArray[Any]) -> tuple[FloatArray, FloatArray]:
        """(mean, std) over the library's photos of each query's cosine, queries (Q, D) -> two (Q,)."""
        q = np.asarray(queries, np.float64).reshape(-1, len(self.total))
        mu = self.mean
        mean = q @ mu
        second = np.einsum("qd,de,qe->q", q, self.outer, q) / max(self.count, 1)
        var = np.maximum(second - mean**2, 0.0)
        return mean.astype(np.float32), np.sqrt(var).astype(np.float32)

    def normalized(self, queries: npt.NDArray[Any], embeds: npt.NDArray[Any], how: Normalization = "center",
                   min_std: float = 1e-3) -> FloatArray:
        """(Q, N): each query's cosine with each photo, made comparable across queries by the library:
        ``none`` the cosine; ``center`` minus the query's mean over the library (q·μ); ``zscore`` also
        over its std there (√(qᵀΣq), floored at ``min_std``: a library of one photo, identical photos)."""
        if how not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {how!r}: choose one of {', '.join(NORMALIZATIONS)}")
        q = np.asarray(queries, np.float32).reshape(-1, len(self.total))
        cos = q @ np.asarray(embeds, np.float32).T
        if how == "none":
            return cos.astype(np.float32)
        mean, std = self.query_stats(q)
        out = cos - mean[:, None]
        if how == "zscore":
            out = out / np.maximum(std, min_std)[:, None]
        return out.astype(np.float32)
