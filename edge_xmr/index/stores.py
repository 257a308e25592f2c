"""How embeddings are kept in the ``vec0`` table, and how stored data becomes floats again.

Three stores (``meta.store``); a search ranks photos by cosine with their decoded stored vectors
(``decode``: exactly in the in-RAM first pass up to ``FirstPassConfig.exact_max`` photos, by
rescoring its best candidates above):

- ``int8`` (default): ``int8[D]``, q = clip(round(x * scale), -127, 127) with the bundle's
  calibrated ``embedding_int8_scale`` (sqlite-vec's 'unit' scaling maps [-1, 1] to the int8
  range, but the components of a unit vector in 256 dimensions rarely exceed 0.3, so it wastes
  most of the range), refined by a stored 4-bit rounding residual (D/2 bytes): int8 alone loses
  recall@10 on dense libraries (neighbours closer than its rounding error).
- ``float32``: ``float[D]``, exact; 4x the bytes.
- ``bit``: ``bit[D]`` sign bits in vec0 (for sqlite-vec's Hamming KNN, e.g. on a phone), the int8
  codes + residual kept in the ``rerank`` table (what the search decodes).
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
StoreKind = Literal["int8", "float32", "bit"]
STORE_KINDS: tuple[StoreKind, ...] = ("int8", "float32", "bit")
DEFAULT_STORE: StoreKind = "int8"
MAX_K = 4096  # the most results one search returns (the command line's limit too)

# The index's embedding scale is the bundle's calibrated scale times this headroom: the manifest
# maps the 99.9th percentile of sample components to 127, so about 0.2% of components clip, and a
# clipped component is an error the residual cannot repair (measured: recall@10 0.9835 -> 0.9995 on
# Flickr8k text->image, 0.985 -> 0.997 on 100k random vectors). The 4-bit residual keeps rescoring
# precision at 1 / (16 * scale) anyway.
EMBEDDING_HEADROOM = 0.5


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


def residual_nibbles(x: FloatArray, q: npt.NDArray[np.int8], scale: float) -> bytes:
    """The rounding error of int8 codes, x * scale - q in [-0.5, 0.5], as 4-bit steps of 1/16,
    two per byte (low nibble first)."""
    r = np.clip(np.rint((np.asarray(x, np.float32) * scale - q) * 16), -8, 7).astype(np.int16) + 8
    r = r.reshape(-1, 2)
    return (r[:, 0] | (r[:, 1] << 4)).astype(np.uint8).tobytes()


def unpack_nibbles(blob: bytes) -> FloatArray:
    b = np.frombuffer(blob, np.uint8)
    out = np.empty(b.size * 2, np.float32)
    out[0::2] = (b & 15).astype(np.float32) - 8
    out[1::2] = (b >> 4).astype(np.float32) - 8
    return out / 16


@dataclass(frozen=True)
class Store:
    kind: StoreKind  # how vec0 keeps the embedding: int8, float32 or bit
    dim: int  # embedding dimension D
    scale: float  # int8 embedding scale (int8 and bit stores; ignored by float32)

    def __post_init__(self) -> None:
        if self.kind not in STORE_KINDS:
            raise ValueError(f"unknown store {self.kind!r}: choose one of {', '.join(STORE_KINDS)}")
        if self.kind == "bit" and self.dim % 8:
            raise ValueError(f"bit store needs a dimension divisible by 8, got {self.dim}")
        if self.dim % 2:
            raise ValueError(f"the embedding dimension must be even, got {self.dim}")

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
    def rescores_from_knn_vector(self) -> bool:
        """True when rescoring starts from vec0's own vector (int8, float32); the bit store keeps
        its int8 codes in the ``rerank`` table instead."""
        return self.kind != "bit"

    def encode(self, x: FloatArray) -> tuple[bytes, bytes | None]:
        """A unit vector -> (vec0 vector, refinement kept in rerank.embedding).

        int8: int8 codes in vec0 + their 4-bit rounding residual (D/2 bytes): rescoring sees
        12-bit precision. bit: sign bits in vec0 + int8 codes and residual. float32: no refinement.
        """
        x = np.ascontiguousarray(x, np.float32)
        if self.kind == "float32":
            return x.tobytes(), None
        q = quantize(x, self.scale)
        res = residual_nibbles(x, q, self.scale)
        if self.kind == "int8":
            return q.tobytes(), res
        return np.packbits(x > 0, bitorder="little").tobytes(), q.tobytes() + res

    def decode(self, knn: bytes | None, refine: bytes | None) -> FloatArray:
        """Stored blobs -> the unit float32 vector (D,) used for rescoring and the cross-encoder."""
        return self.decode_many([knn], [refine])[0]

    def decode_many(self, knn: Sequence[bytes | None], refine: Sequence[bytes | None] | None) -> FloatArray:
        """Stored blobs of n photos -> their unit float32 vectors (n, D), in one pass over the batch.

        ``refine=None``: without the refinement (int8 store: the int8 codes alone, a 4-bit coarser
        approximation; what the in-RAM PCA codes are computed from). The bit store's codes live in
        its refinement, so it always needs it; a missing int8 residual (None) counts as zero."""
        k = None if self.kind == "bit" else _rows(knn, self.knn_bytes)
        r = None
        if refine is not None and self.kind != "float32":
            if self.kind == "int8":  # 0x88: two zero nibbles
                refine = [b if b else b"\x88" * self.refine_bytes for b in refine]
            r = _rows(refine, self.refine_bytes)
        return self.decode_arrays(k, r, len(knn))

    @property
    def knn_bytes(self) -> int:
        """Bytes of one vec0 vector."""
        return {"float32": 4 * self.dim, "int8": self.dim, "bit": self.dim // 8}[self.kind]

    @property
    def refine_bytes(self) -> int:
        """Bytes of one refinement (rerank.embedding; 0: none)."""
        return {"float32": 0, "int8": self.dim // 2, "bit": self.dim + self.dim // 2}[self.kind]

    def decode_arrays(self, knn: npt.NDArray[np.uint8] | None, refine: npt.NDArray[np.uint8] | None,
                      n: int) -> FloatArray:
        """``decode_many`` of stored bytes already in arrays: vec0 vectors (n, knn_bytes) and
        refinements (n, refine_bytes), either None where not read."""
        d = self.dim
        if self.kind == "bit":
            if refine is None:
                raise ValueError("the bit store keeps its codes in the refinement: refine is needed")
            x = refine[:, :d].view(np.int8).astype(np.float32)
            x += _unpack(refine[:, d:])
        else:
            if knn is None:
                raise ValueError("the vec0 vectors are needed")
            if self.kind == "float32":
                return normalize(np.ascontiguousarray(knn).view(np.float32).reshape(n, d))
            x = np.ascontiguousarray(knn).view(np.int8).astype(np.float32)
            if refine is not None:
                x += _unpack(refine)
        x = x.reshape(n, d)
        x /= np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), 1e-30)[:, None]  # unit norm (the scale cancels)
        return x


def _rows(blobs: Sequence[bytes | None], width: int) -> npt.NDArray[np.uint8]:
    """Equal-sized blobs -> one (n, width) byte array."""
    if not len(blobs):
        return np.zeros((0, width), np.uint8)
    if any(b is None for b in blobs):
        raise ValueError("a stored vector is missing")
    return np.frombuffer(b"".join(blobs), np.uint8).reshape(len(blobs), width)  # type: ignore[arg-type]


def _unpack(b: npt.NDArray[np.uint8]) -> FloatArray:
    """Packed nibbles (n, D/2) -> (n, D) steps of 1/16 (low nibble first, as ``residual_nibbles``)."""
    out = np.empty((b.shape[0], b.shape[1] * 2), np.float32)
    out[:, 0::2] = (b & 15).astype(np.float32) - 8
    out[:, 1::2] = (b >> 4).astype(np.float32) - 8
    return out / 16
