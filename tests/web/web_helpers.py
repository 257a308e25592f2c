"""Helpers of the gallery tests: a colour-aware fake bundle, colour photos, a server in a thread."""

from __future__ import annotations

from dataclasses import dataclass

import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edge_xmr.preprocess import to_pixels
from edge_xmr.score import ScoreConfig

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
           "black": (10, 10, 10), "white": (245, 245, 245)}



@dataclass(frozen=True)
class FakeQuery:
    """What a fake bundle's ``encode_query`` returns: the text and its embedding."""

    text: str
    embedding: np.ndarray

class ColourBundle:
    """A numpy stand-in for ``edge_xmr.bundle.Bundle``: colour words find photos of that colour."""

    def __init__(self, dim: int = 16):
        self.dim = dim
        self.manifest: dict[str, Any] = {
            "format_version": 2, "model": {"name": "colour-fake", "id": "colour-fake-0001"},
            "max_text_len": 16,
            "preprocessing": {"size": 16, "resize": "squash", "mean": [0.5] * 3, "std": [0.5] * 3},
            "embedding": {"dim": dim, "metric": "cosine", "normalized": True},
            "image_tokens": {"count": 2, "dim": 4},
            "storage": {"embedding_int8_scale": 127 / 1.0, "token_int8_scale": 127 / 2.0},
            "index_schema_version": 2,
        }
        self.path = Path("/nonexistent/colour-fake")
        self.score_config = ScoreConfig()  # no first-stage prior: the KNN's cosine order

    def photo_prior(self, embeds: np.ndarray) -> np.ndarray:
        return np.zeros(len(embeds), np.float32)

    @property
    def model_id(self) -> str:
        return str(self.manifest["model"]["id"])

    def _rgb_vec(self, rgb: np.ndarray) -> np.ndarray:
        v = np.zeros(self.dim, np.float32)
        v[:3] = rgb - rgb.mean()
        v[3] = rgb.mean() - 0.5
        return v

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            noise = np.random.default_rng(zlib.crc32(t.encode("utf-8", "replace"))).standard_normal(self.dim)
            v = 0.01 * noise.astype(np.float32)
            for w in t.lower().split():
                if w in COLOURS:
                    v += self._rgb_vec(np.asarray(COLOURS[w], np.float32) / 255)
            out[i] = v / np.linalg.norm(v)
        return out

    def encode_images(self, images: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        px = to_pixels(list(images), self.manifest["preprocessing"]) * 0.5 + 0.5  # back to [0, 1]
        rgb = px.mean(axis=(2, 3))  # (n, 3)
        emb = np.stack([self._rgb_vec(c) + 1e-3 for c in rgb])
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        tok = np.repeat(rgb[:, None, :], 2, axis=1)
        tok = np.concatenate([tok, np.ones((len(rgb), 2, 1), np.float32)], axis=2)
        return emb.astype(np.float32), tok.astype(np.float32)

    def encode_query(self, text: str) -> FakeQuery:
        return FakeQuery(text, self.embed_texts([text])[0])

    def score_encoded(self, query: FakeQuery, tokens: np.ndarray, embeds: np.ndarray) -> np.ndarray:
        return self.score_candidates(query.text, tokens, embeds)

    def score_candidates(self, text: str, tokens: np.ndarray, embeds: np.ndarray) -> np.ndarray:
        assert len(tokens) >= 1
        t = self.embed_texts([text])[0]
        return (10.0 * embeds @ t + 0.1 * tokens[:, 0, 0]).astype(np.float32)


def write_colour_photo(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((size[1], size[0], 3), np.uint8) + np.asarray(rgb, np.uint8)
    a[::7, ::5] = 128  # a little texture
    Image.fromarray(a).save(path)
    return path


def run_server(gallery: Any, **config: Any) -> Iterator[Any]:
    """A server in a thread (``config``: ServerConfig fields; the host defaults to 127.0.0.1)."""
    from edge_xmr.server import ServerConfig, make_server

    server = make_server(gallery, ServerConfig(**config))
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
