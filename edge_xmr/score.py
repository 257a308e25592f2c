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

Both the PyTorch model (``edge_xmr.model.joint``) and the runtime bundle (``edge_xmr.bundle``) return
the terms by name and call :func:`combine`; the weights live in the model's ``config.json`` and the
bundle's manifest, not in the weights file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from .errors import EdgeXmrError

TERMS = ("cosine", "late_interaction", "joint", "photo_hubness", "text_hubness")  # names of the score's terms
PENALTIES = frozenset({"photo_hubness", "text_hubness"})  # terms subtracted from the score
NO_FLOOR = -1.0e4  # a floor below every statistic: none

FloatArray = npt.NDArray[np.float32]
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
