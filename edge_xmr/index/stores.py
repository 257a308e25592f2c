"""How embeddings are kept in the ``vec0`` table, and how stored data becomes floats again.

Three stores (``meta.store``), all searched by sqlite-vec's exact brute-force KNN followed by an
exact rescoring of an over-fetched candidate set with the float query:

- ``int8`` (default): ``int8[D]``, q = clip(round(x * scale), -127, 127) with the bundle's
  calibrated ``embedding_int8_scale`` (sqlite-vec's 'unit' scaling maps [-1, 1] to the int8
  range, but the components of a unit vector in 256 dimensions rarely exceed 0.3, so it wastes
  most of the range). KNN by L2 (about 3x faster than sqlite-vec's int8 cosine, the same order
  for unit vectors up to quantisation), fetches ``2 x n`` candidates, rescored by cosine.
- ``float32``: ``float[D]``, L2 on unit vectors (= cosine order), exact; 4x the bytes.
- ``bit``: ``bit[D]`` sign bits, Hamming KNN over ``16 x n`` candidates, rescored with int8
  copies kept in the ``rerank`` table. Fast, but Hamming in 256 bits is a coarse estimate of
  the angle, so recall suffers on real embeddings (see docs/runtime.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
StoreKind = Literal["int8", "float32", "bit"]
STORE_KINDS: tuple[StoreKind, ...] = ("int8", "float32", "bit")
DEFAULT_STORE: StoreKind = "int8"
MAX_K = 4096  # sqlite-vec's largest k

_OVERSAMPLE: dict[str, int] = {"int8": 2, "float32": 1, "bit": 16}


def quantize(x: npt.ArrayLike, scale: float) -> npt.NDArray[np.int8]:
    """Symmetric int8: clip(round(x * scale), -127, 127)."""
    return np.clip(np.rint(np.asarray(x, np.float32) * scale), -127, 127).astype(np.int8)


def dequantize(q: npt.NDArray[np.int8], scale: float) -> FloatArray:
    return q.astype(np.float32) / np.float32(scale)


def normalize(x: FloatArray) -> FloatArray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def calibrate_scale(x: npt.ArrayLike, quantile: float = 0.9999) -> float:
    """An int8 scale from sample values: the ``quantile`` of |x| maps to 127."""
    a = np.abs(np.asarray(x, np.float32)).ravel()
    hi = float(np.quantile(a, quantile)) if a.size else 0.0
    return 127.0 / max(hi, 1e-6)


@dataclass(frozen=True)
class Store:
    kind: StoreKind  # how vec0 keeps the embedding: int8, float32 or bit
    dim: int  # embedding dimension D
    scale: float  # int8 embedding scale (int8 and bit stores; ignored by float32)
    oversample: int = 0  # candidates fetched per wanted result before rescoring (0: the kind's default)

    def __post_init__(self) -> None:
        if self.kind not in STORE_KINDS:
            raise ValueError(f"unknown store {self.kind!r}: choose one of {', '.join(STORE_KINDS)}")
        if self.kind == "bit" and self.dim % 8:
            raise ValueError(f"bit store needs a dimension divisible by 8, got {self.dim}")

    @property
    def column_sql(self) -> str:
        """The vec0 vector column definition."""
        if self.kind == "int8":
            return f"embedding int8[{self.dim}] distance_metric=l2"
        if self.kind == "float32":
            return f"embedding float[{self.dim}] distance_metric=l2"
        return f"embedding bit[{self.dim}]"

    @property
    def param_sql(self) -> str:
        """How a bound vector blob is typed for vec0."""
        return {"int8": "vec_int8(?)", "float32": "vec_f32(?)", "bit": "vec_bit(?)"}[self.kind]

    @property
    def keeps_rescore_copy(self) -> bool:
        """True when vec0's vector is too coarse to rescore, so rerank.embedding keeps int8 values."""
        return self.kind == "bit"

    def fetch_count(self, n: int) -> int:
        """How many KNN candidates to fetch for ``n`` results."""
        over = self.oversample or _OVERSAMPLE[self.kind]
        return max(1, min(MAX_K, n * over))

    def knn_blob(self, x: FloatArray) -> bytes:
        """A unit vector -> what vec0 stores (and what a query binds)."""
        if self.kind == "int8":
            return quantize(x, self.scale).tobytes()
        if self.kind == "float32":
            return np.ascontiguousarray(x, np.float32).tobytes()
        return np.packbits(np.asarray(x) > 0, bitorder="little").tobytes()

    def rescore_blob(self, x: FloatArray) -> bytes:
        """The int8 copy used for rescoring (only kept by the bit store)."""
        return quantize(x, self.scale).tobytes()

    def decode(self, blob: bytes) -> FloatArray:
        """A stored int8 or float32 embedding blob -> unit float32 vector (D,)."""
        if len(blob) == self.dim * 4 and self.kind == "float32":
            return normalize(np.frombuffer(blob, np.float32).copy())
        return normalize(dequantize(np.frombuffer(blob, np.int8), self.scale))
