"""A deterministic numpy stand-in for ``edge_xmr.bundle.Bundle`` (same interface, no onnxruntime).

Used for the pure index logic; integration tests use the real exported ``tiny_bundle``.
Images are embedded from their average-pooled pixels, texts from a hash of the text, so results
are reproducible; the "cross-encoder" adds a token-dependent residual to a scaled cosine so that
reranking visibly reorders candidates.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_xmr.preprocess import to_pixels
from edge_xmr.score import ScoreConfig



@dataclass(frozen=True)
class FakeQuery:
    """What a fake bundle's ``encode_query`` returns: the text and its embedding."""

    text: str
    embedding: np.ndarray

class FakeBundle:
    def __init__(self, dim: int = 24, n_tokens: int = 4, token_dim: int = 8, size: int = 32,
                 model_id: str = "fake-model-0001", name: str = "edge-xmr-fake", with_scales: bool = True,
                 delay: float = 0.0):
        self.manifest: dict[str, Any] = {
            "format_version": 2,
            "model": {"name": name, "id": model_id},
            "max_text_len": 16,
            "preprocessing": {"size": size, "resize": "squash", "mean": [0.5] * 3, "std": [0.5] * 3},
            "embedding": {"dim": dim, "metric": "cosine", "normalized": True},
            "image_tokens": {"count": n_tokens, "dim": token_dim},
            "storage": {"embedding_int8_scale": 127 / 0.9, "token_int8_scale": 127 / 4.0} if with_scales else {},
            "index_schema_version": 2,
        }
        rng = np.random.default_rng(1234)
        self._proj = rng.standard_normal((3 * 4 * 4, dim)).astype(np.float32)
        self._tproj = rng.standard_normal((3 * 4 * 4, n_tokens * token_dim)).astype(np.float32) * 0.3
        self._shape = (n_tokens, token_dim)
        self.delay = delay  # seconds slept per encode_images call (to make indexing slow in tests)
        self.image_calls = 0  # images embedded so far
        self.path = Path("/nonexistent/fake-bundle")
        self.score_config = ScoreConfig()  # the first stage by cosine alone unless a test sets a prior
        self.prior_direction = rng.standard_normal(dim).astype(np.float32)  # photo_prior: a made-up hub(e)

    @property
    def model_id(self) -> str:
        return str(self.manifest["model"]["id"])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self._proj.shape[1]), np.float32)
        for i, t in enumerate(texts):
            v = np.random.default_rng(zlib.crc32(t.encode("utf-8", "replace"))).standard_normal(out.shape[1])
            out[i] = v / np.linalg.norm(v)
        return out

    def encode_images(self, images: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        if self.delay:
            time.sleep(self.delay)
        self.image_calls += len(images)
        px = to_pixels(list(images), self.manifest["preprocessing"])  # (N, 3, S, S)
        n, c, s, _ = px.shape
        pooled = px.reshape(n, c, 4, s // 4, 4, s // 4).mean(axis=(3, 5)).reshape(n, -1)
        emb = pooled @ self._proj + 1e-3
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        tok = np.tanh(pooled @ self._tproj).reshape(n, *self._shape) * 3.0
        return emb.astype(np.float32), tok.astype(np.float32)

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        return self.encode_images(images)[0]

    def encode_query(self, text: str) -> FakeQuery:
        return FakeQuery(text, self.embed_texts([text])[0])

    def score_encoded(self, query: FakeQuery, tokens: np.ndarray, embeds: np.ndarray) -> np.ndarray:
        return self.score_candidates(query.text, tokens, embeds)

    def photo_prior(self, embeds: np.ndarray) -> np.ndarray:
        return (np.asarray(embeds, np.float32) @ self.prior_direction).astype(np.float32)

    def score_candidates(self, text: str, tokens: np.ndarray, embeds: np.ndarray) -> np.ndarray:
        assert len(tokens) >= 1, "the cross-encoder is never called with no candidates"
        t = self.embed_texts([text])[0]
        res = np.tanh(tokens.reshape(len(tokens), -1) @ np.resize(t, tokens[0].size))
        return (10.0 * embeds @ t + res).astype(np.float32)
