"""Test-time views of a photo at index time: the photo itself, its mirror image and bicubic enlargements
of it, each encoded by the image tower and averaged (``ModelConfig.views``).

Every view is made from the (B, 3, S, S) input inside the model, so exported image graphs keep one input
and apps preprocess a photo once. An enlargement is a fixed linear map, R · x · Rᵀ per channel, with
R (S', S) the bicubic resampling matrix of ``torch.nn.functional.interpolate`` (align_corners False):
matrix products export to ONNX and CoreML alike, which have no common bicubic resize op.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=8)
def resize_matrix(s_in: int, s_out: int) -> torch.Tensor:
    """(s_out, s_in) float32: the 1-D bicubic resampling ``F.interpolate(mode="bicubic",
    align_corners=False)`` applies along each axis (cubic convolution, a = -0.75, border pixels repeated).

    Built in numpy, so an exported graph holds it as a constant rather than a traced resize op."""
    a = -0.75
    scale = s_in / s_out
    src = (np.arange(s_out) + 0.5) * scale - 0.5  # (s_out,) source coordinate of each output pixel
    left = np.floor(src).astype(np.int64)
    t = src - left
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # noqa: E731 - |x| <= 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # noqa: E731 - 1 < |x| < 2
    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)  # (s_out, 4)
    r = np.zeros((s_out, s_in), np.float64)
    for k in range(4):
        np.add.at(r, (np.arange(s_out), np.clip(left - 1 + k, 0, s_in - 1)), weights[:, k])
    return torch.from_numpy(r.astype(np.float32))


def make_view(px: torch.Tensor, size: int, mirror: bool, s: int | None = None) -> torch.Tensor:
    """(B, 3, S, S) pixels -> the view (B, 3, size, size): enlarged to ``size`` (bicubic), then mirrored.
    ``s``: the input side S when known (a traced graph's shapes are tensors; the side is fixed)."""
    s = int(px.shape[-1]) if s is None else s
    if size != s:
        r = resize_matrix(s, size).to(px.dtype)  # (size, S)
        px = r @ px  # (B, 3, size, S): the rows
        # the columns as r @ pxᵀ, not px @ rᵀ: with the constant on the left, int8 export (which
        # quantizes constant right-hand MatMul weights) leaves the resampling in float
        px = (r @ px.transpose(-1, -2)).transpose(-1, -2)  # (B, 3, size, size)
    return px.flip(-1) if mirror else px


def average_views(embs: list[torch.Tensor], toks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of the same photos (embeddings (B, D) normalised, tokens (B, T, Dt) each) -> one:
    the normalised sum of the embeddings and the mean of the tokens."""
    return F.normalize(torch.stack(embs).sum(0), dim=-1), torch.stack(toks).mean(0)
