"""Data of the first-pass tests: a store-level model card, clustered unit vectors, photo rows."""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_xmr.index import PhotoRecord
from edge_xmr.index.firstpass import FirstPassConfig

DIM = 32
# a small library already takes the PCA path: 16 of 32 dimensions, 60 photos rescored
CONFIG = FirstPassConfig(exact_max=300, dims=16, rescore=60)
FOLDERS = 10


class StoreModel:
    """What the store needs of a model (``index.ModelCard``): a manifest and an id."""

    manifest: dict[str, Any] = {
        "model": {"name": "store-test", "embedding_id": "enc"},
        "embedding": {"dim": DIM, "metric": "cosine"},
        "image_tokens": {"count": 2, "dim": 4},
        "storage": {"embedding_int8_scale": 127 / 0.6, "token_int8_scale": 10.0},
    }
    model_id = "store-test-model"


def clustered(n: int, seed: int, clusters: int = 40, spread: float = 0.25) -> np.ndarray:
    """n unit vectors around ``clusters`` random centres (a clustered library)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((clusters, DIM))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, DIM)) / np.sqrt(DIM) * 3
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def records(n: int, start: int = 0) -> list[PhotoRecord]:
    """Photo rows in FOLDERS folders, taken one day apart."""
    return [PhotoRecord(f"/nonexistent-photos/f{i % FOLDERS}/p{i}.jpg", bytes(32), 1, 10**18, 1_600_000_000 + 86400 * i, 4, 3)
            for i in range(start, start + n)]


def tokens(n: int) -> np.ndarray:
    return np.zeros((n, 2, 4), np.float32)
