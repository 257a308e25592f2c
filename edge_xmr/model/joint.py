"""JointModel: one shared-weight model in two roles (Geigle et al., "Retrieve Fast, Rerank Smart").

- bi-encoder: text and image encoded apart, L2-normalised, cosine similarity;
- reranker: the score of ``edge_xmr/score.py``, named terms (``JointModel.score_terms``) weighted by
  ``cfg.score`` (``JointModel.score_encoded``): the cosine, late interaction of the caption's final
  token states (from the SAME blocks) with the photo's stored tokens, the hubness terms, and,
  optionally, the joint pass: the SAME top text blocks run over a few image tokens that attend to the
  text and to each other (text keys/values come from the text pass, so one query is encoded once and
  each candidate costs only its T image tokens; its read-out is zero-initialised).

Shapes: B/N/Q batch, K candidates per query, L text length, T image tokens, Dt stored token size,
W text width, D embedding size, P grid positions, C grid channels.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..score import TERMS, combine
from .text import TextTransformer
from .views import average_views, make_view


class ImageHead(nn.Module):
    """Global vector -> bi-encoder embedding (MLP, or a plain projection for CLIP)."""

    def __init__(self, c_in: int, hidden: int, d: int, bias: bool = True):
        super().__init__()
        if hidden:
            self.net: nn.Module = nn.Sequential(nn.LayerNorm(c_in), nn.Linear(c_in, hidden), nn.GELU(),
                                                nn.Linear(hidden, d))
        else:
            self.net = nn.Linear(c_in, d, bias=bias)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.net(g)


class TokenPool(nn.Module):
    """Grid (B, P, C) -> T image tokens (B, T, Dt) by learned-query attention pooling."""

    def __init__(self, c_in: int, n_tokens: int, d_tok: int):
        super().__init__()
        # per-channel standardisation of the grid (set from training features): backbone grids share a
        # large common component that would otherwise make every photo's tokens look alike
        self.register_buffer("feat_mean", torch.zeros(c_in))
        self.register_buffer("feat_std", torch.ones(c_in))
        self.proj = nn.Linear(c_in, d_tok)
        self.queries = nn.Parameter(torch.randn(n_tokens, d_tok) * d_tok ** -0.5)
        self.ln = nn.LayerNorm(d_tok)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        k = self.proj((grid - self.feat_mean) / self.feat_std)  # (B, P, Dt)
        att = torch.einsum("td,bpd->btp", self.queries, k) / math.sqrt(k.shape[-1])  # (B, T, P)
        return self.ln(att.softmax(-1) @ k)  # (B, T, Dt)


class CrossHead(nn.Module):
    """Cross-encoder-only parameters: late interaction, the joint pass's lift and read-out, the banks."""

    def __init__(self, d_tok: int, n_tokens: int, width: int, embed_dim: int):
        super().__init__()
        self.up = nn.Linear(d_tok, width)
        self.emb_up = nn.Linear(embed_dim, width)  # the photo's embedding joins as one more image token
        self.pos = nn.Parameter(torch.zeros(n_tokens + 1, width))
        self.ln = nn.LayerNorm(width)
        self.fc = nn.Linear(width, width)
        self.out = nn.Linear(width, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.skip = nn.Linear(width, width)  # skip path from the joint pass's image-token input
        self.proj = nn.Linear(width, embed_dim)  # text-conditioned image tokens -> embedding space
        self.log_scale = nn.Parameter(torch.tensor(math.log(20.0)))  # trained weight of the bi-encoder cosine
        # hubness banks (edge_xmr/score.py): embeddings of a sample of training captions / photos, set by
        # the calibration after training; empty: the hubness terms are 0
        self.register_buffer("text_bank", torch.zeros(0, embed_dim))  # (Kt, D)
        self.register_buffer("image_bank", torch.zeros(0, embed_dim))  # (Ki, D)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(2.0)))  # weight of the joint-pass similarity
        # late interaction: each caption token (its final state from the shared blocks, projected to the
        # token size) is matched with its best image token; the score is the mean over caption tokens
        self.li_text = nn.Linear(width, d_tok)
        self.li_log_scale = nn.Parameter(torch.tensor(math.log(20.0)))  # temperature of its training loss

    def lift(self, tokens: torch.Tensor, img_emb: torch.Tensor) -> torch.Tensor:
        """tokens (..., T, Dt), img_emb (..., D) -> image tokens in the text width (..., T+1, W)."""
        x = torch.cat([self.up(tokens), self.emb_up(img_emb)[..., None, :]], dim=-2)
        return x + self.pos

    def text_tokens(self, h: torch.Tensor) -> torch.Tensor:
        """h (..., L, W) final text states -> (..., L, Dt) unit vectors for late interaction."""
        return F.normalize(self.li_text(h), dim=-1)

    def late_interaction(self, t_tok: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """t_tok (Q, L, Dt), mask (Q, L), tokens (Q, K, T, Dt) -> (Q, K): mean over caption tokens of
        the cosine with the best-matching image token."""
        v = F.normalize(tokens, dim=-1)
        sim = torch.einsum("qld,qktd->qklt", t_tok, v).amax(-1)  # (Q, K, L)
        m = mask[:, None, :].to(sim.dtype)  # (Q, 1, L)
        return (sim * m).sum(-1) / m.sum(-1).clamp(min=1.0)

    def late_interaction_all(self, t_tok: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Every caption against every photo: t_tok (Q, L, Dt), tokens (N, T, Dt) -> (Q, N)."""
        v = F.normalize(tokens, dim=-1)
        sim = torch.einsum("qld,ntd->qnlt", t_tok, v).amax(-1)  # (Q, N, L)
        m = mask[:, None, :].to(sim.dtype)
        return (sim * m).sum(-1) / m.sum(-1).clamp(min=1.0)

    def residual(self, pooled: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """pooled: (..., W) joint-pass image tokens, averaged; t_emb: (..., D) text embedding -> (...)."""
        h = self.ln(pooled)
        sim = (F.normalize(self.proj(h), dim=-1) * t_emb).sum(-1)  # (...)
        return self.log_alpha.exp() * sim + self.out(F.gelu(self.fc(h))).squeeze(-1)


def hubness(x: torch.Tensor, bank: torch.Tensor, temperature: float, floor: float) -> torch.Tensor:
    """x (..., D) unit vectors, bank (K, D) -> (...) max(logsumexp(temperature * x @ bank.T), floor);
    zeros for an empty bank (``edge_xmr.score.hubness`` in numpy)."""
    if not bank.shape[0]:
        return torch.zeros(x.shape[:-1], dtype=x.dtype)
    return torch.logsumexp(temperature * x @ bank.T, dim=-1).clamp(min=floor)


@dataclass(frozen=True)
class EncodedQuery:
    """Q texts after one pass through the shared blocks (``JointModel.encode_queries``)."""

    t_emb: torch.Tensor  # (Q, D) bi-encoder embeddings, L2-normalised: what retrieval searches with
    states: list[torch.Tensor]  # inputs of the joint blocks, then the final states, each (Q, L, W)
    mask: torch.Tensor  # (Q, L) attention mask

    @property
    def embedding(self) -> np.ndarray:
        """(D,) the first text's embedding as numpy (a single query's)."""
        return self.t_emb[0].detach().numpy()


class JointModel(nn.Module):
    def __init__(self, cfg: ModelConfig, text: TextTransformer, image_tower: nn.Module,
                 text_proj: nn.Module | None = None, image_head: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.text = text
        self.image_tower = image_tower
        W, D = cfg.text.width, cfg.embed_dim
        self.text_proj = text_proj if text_proj is not None else nn.Linear(W, D)
        self.image_head = image_head if image_head is not None else ImageHead(
            cfg.image.global_channels, cfg.image_head_hidden, D)
        self.token_pool = TokenPool(cfg.image.grid_channels, cfg.n_image_tokens, cfg.token_dim)
        self.cross = CrossHead(cfg.token_dim, cfg.n_image_tokens, W, D)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.05)))
        self.tokenizer: Any = None  # edge_xmr.tokenizer.Tokenizer, set by the builder

    # ---- tensor-level API -------------------------------------------------------------------
    @property
    def split(self) -> int:
        """Index of the first block that runs jointly in the cross-encoder."""
        return self.cfg.text.layers - self.cfg.cross_layers

    def text_lower(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Text alone through blocks [0, split) -> (B, L, W); shared by both roles."""
        return self.text.run(self.text.embed(ids), self.text.text_bias(mask), 0, self.split)

    def text_upper(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Blocks [split, layers) over text alone -> (embedding (B, D), text states): the input of each
        of these blocks (what the joint pass attends to) and, last, the final states (B, L, W)."""
        states = self.text.run_states(x, self.text.text_bias(mask), self.split)
        h = self.text.final(states[-1])  # (B, L, W)
        pooled = self.text.pool(h, mask)  # (B, W)
        return F.normalize(self.text_proj(pooled), dim=-1), states[:-1] + [h]  # (B, D)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) ids + mask -> (B, D) normalised bi-encoder text embedding."""
        return self.text_upper(self.text_lower(ids, mask), mask)[0]

    def encode_queries(self, ids: torch.Tensor, mask: torch.Tensor) -> EncodedQuery:
        """(Q, L) ids + mask -> the texts' embeddings and the states the score reuses (one text pass)."""
        t, states = self.text_upper(self.text_lower(ids, mask), mask)
        return EncodedQuery(t_emb=t, states=states, mask=mask)

    def query_states(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) ids + mask -> (embedding (B, D), text states stacked (J, B, L, W)), J = cross_layers + 1:
        one text pass whose states the score reuses (the bundle's text_encoder graph)."""
        q = self.encode_queries(ids, mask)
        return q.t_emb, torch.stack(q.states)

    def image_outputs(self, g: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tower features -> (embedding (B, D) normalised, image tokens (B, T, Dt))."""
        return F.normalize(self.image_head(g), dim=-1), self.token_pool(grid)

    def encode_image(self, px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) pixels -> (embedding (B, D), image tokens (B, T, Dt)).

        With ``cfg.views`` each view of the photo (its mirror image, a bicubic enlargement: ``views.py``)
        goes through the tower and the outputs are averaged (``average_views``); views of the input's size
        run as one batch."""
        views = self.cfg.views
        if not views:
            return self.image_outputs(*self.image_tower(px))
        b = px.shape[0]
        embs, toks = [], []
        for size in dict.fromkeys(v[0] for v in views):  # sizes in order, each once
            mirrors = [m for s, m in views if s == size]
            big = make_view(px, size, False, self.cfg.image.size)  # enlarged once per size: (B, 3, size, size)
            x = torch.cat([big.flip(-1) if m else big for m in mirrors])  # (n B, 3, size, size)
            emb, tok = self.image_outputs(*self.image_tower(x))  # (n B, D), (n B, T, Dt)
            embs += [emb[j * b:(j + 1) * b] for j in range(len(mirrors))]  # slices: CoreML needs no
            toks += [tok[j * b:(j + 1) * b] for j in range(len(mirrors))]  # const split sizes
        return average_views(embs, toks)

    def _joint(self, query: EncodedQuery, tokens: torch.Tensor, img_emb: torch.Tensor) -> torch.Tensor:
        """The joint pass's term (Q, K): the candidates' image tokens through the shared top blocks,
        attending to the text's states, read out against the text embedding."""
        img = self.cross.lift(tokens, img_emb)  # (Q, K, T+1, W)
        out = self.text.joint(query.states[:-1], query.mask, img, self.split)  # (Q, K, T+1, W)
        # read out the joint pass plus a skip from its image-token input: the joint layers mix text into
        # every image token, and the skip keeps what tells one photo from another
        pooled = out.mean(2) + self.cross.skip(img.mean(2))  # (Q, K, W)
        return self.cross.residual(pooled, query.t_emb[:, None].expand(-1, out.shape[1], -1))

    def score_terms(self, query: EncodedQuery, tokens: torch.Tensor, img_emb: torch.Tensor,
                    terms: Collection[str] = TERMS) -> dict[str, torch.Tensor]:
        """The score's named terms (``edge_xmr.score``), unweighted, each (Q, K), for Q encoded queries
        against K candidates each: tokens (Q, K, T, Dt), img_emb (Q, K, D). Only ``terms`` are computed
        (the joint pass only when asked for); the hubness terms use ``cfg.score``'s temperature and floors.
        Differentiable (training runs it with gradients)."""
        unknown = set(terms) - set(TERMS)
        if unknown:
            raise KeyError(f"unknown score terms {sorted(unknown)}")
        sc, out = self.cfg.score, {}
        if "cosine" in terms:
            out["cosine"] = torch.einsum("qd,qkd->qk", query.t_emb, img_emb)
        if "late_interaction" in terms:
            t_tok = self.cross.text_tokens(query.states[-1])  # (Q, L, Dt)
            out["late_interaction"] = self.cross.late_interaction(t_tok, query.mask, tokens)
        if "joint" in terms:
            out["joint"] = self._joint(query, tokens, img_emb)
        if "photo_hubness" in terms:
            out["photo_hubness"] = hubness(img_emb, self.cross.text_bank, sc.hubness_temperature,
                                           sc.photo_hubness_floor)
        if "text_hubness" in terms:
            h = hubness(query.t_emb, self.cross.image_bank, sc.hubness_temperature, sc.text_hubness_floor)
            out["text_hubness"] = h[:, None].expand(-1, img_emb.shape[1])
        return out

    # ---- user-level API (strings and images in, numpy out) ------------------------------------
    def _tokens(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenizer.encode(list(texts), self.cfg.max_text_len)
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def _pixels(self, images: Sequence[Any]) -> torch.Tensor:
        from ..preprocess import to_pixels

        return torch.from_numpy(to_pixels(images, self.cfg.image))

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Texts -> (M, D) float32, L2-normalised."""
        out = [self.encode_text(*self._tokens(texts[i:i + batch_size]))
               for i in range(0, len(texts), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.cfg.embed_dim), np.float32)

    @torch.no_grad()
    def embed_images(self, images: Sequence[Any], batch_size: int = 64) -> np.ndarray:
        """Images (paths, PIL images or HxWx3 uint8 arrays) -> (N, D) float32, L2-normalised."""
        return self.encode_images(images, batch_size)[0]

    @torch.no_grad()
    def encode_images(self, images: Sequence[Any], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Images -> (embeddings (N, D), image tokens (N, T, Dt)): what the index keeps per photo."""
        embs, toks = [], []
        for i in range(0, len(images), batch_size):
            e, t = self.encode_image(self._pixels(images[i:i + batch_size]))
            embs.append(e)
            toks.append(t)
        if not embs:
            return (np.zeros((0, self.cfg.embed_dim), np.float32),
                    np.zeros((0, self.cfg.n_image_tokens, self.cfg.token_dim), np.float32))
        return torch.cat(embs).numpy(), torch.cat(toks).numpy()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> list[EncodedQuery]:
        """Texts -> one :class:`EncodedQuery` each (cut to its own length), from batched text passes: the
        embedding to retrieve with and the states to rerank with (the runtime ``Bundle``'s contract)."""
        out: list[EncodedQuery] = []
        for i in range(0, len(texts), batch_size):
            q = self.encode_queries(*self._tokens(texts[i:i + batch_size]))
            for j in range(len(q.mask)):
                n = max(1, int(q.mask[j].sum()))
                out.append(EncodedQuery(t_emb=q.t_emb[j:j + 1], states=[s[j:j + 1, :n] for s in q.states],
                                        mask=q.mask[j:j + 1, :n]))
        return out

    def encode_query(self, text: str) -> EncodedQuery:
        """One text through the shared blocks ONCE: its bi-encoder embedding (to retrieve) and the
        states the score reuses (to rerank), so a reranked search pays one text pass."""
        return self.encode_texts([text])[0]

    @torch.no_grad()
    def score_encoded(self, query: EncodedQuery | str, tokens: np.ndarray, embeds: np.ndarray) -> np.ndarray:
        """The rerank score (``cfg.score`` applied to ``score_terms``) of one query (encoded, or a text)
        against N photos' stored data (tokens (N, T, Dt), embeddings (N, D)) -> (N,) float32. The joint
        pass runs only when the score weights it. Same contract as the runtime bundle's method."""
        if len(tokens) == 0:
            return np.zeros((0,), np.float32)
        q = self.encode_query(query) if isinstance(query, str) else query
        tok = torch.as_tensor(np.ascontiguousarray(tokens), dtype=torch.float32)[None]  # (1, N, T, Dt)
        emb = torch.as_tensor(np.ascontiguousarray(embeds), dtype=torch.float32)[None]  # (1, N, D)
        sc = self.cfg.score
        return combine(self.score_terms(q, tok, emb, sc.needed()), sc)[0].numpy()

    # ---- bookkeeping ---------------------------------------------------------------------------
    def bi_encoder_parameters(self) -> list[nn.Parameter]:
        mods = [self.text, self.image_tower, self.text_proj, self.image_head]
        return [p for m in mods for p in m.parameters()] + [self.logit_scale]

    def cross_only_parameters(self) -> list[nn.Parameter]:
        return list(self.token_pool.parameters()) + list(self.cross.parameters())

    def frozen_prefixes(self) -> list[str]:
        """State-dict prefixes that come unchanged from the pretrained base (not saved in a model dir)."""
        if self.cfg.base == "tiny":
            return []
        pre = []
        if self.cfg.freeze_image_tower:
            n = self.cfg.tower_train_blocks
            if n == 0:
                pre.append("image_tower.")
            elif not hasattr(self.image_tower, "frozen_prefixes"):
                raise ValueError(f"tower_train_blocks={n}: this image tower cannot fine-tune only its last blocks")
            else:
                pre += ["image_tower." + p for p in self.image_tower.frozen_prefixes(n)]
        n_frozen = self.cfg.text.layers - self.cfg.trainable_text_layers
        if n_frozen > 0:
            pre += ["text.tok.", "text.pos.", "text.typ.", "text.ln_emb."]
            pre += [f"text.blocks.{i}." for i in range(n_frozen)]
        return pre

    def freeze_pretrained(self) -> None:
        """Set requires_grad=False on the frozen prefixes (and eval-mode BN in a frozen tower)."""
        pre = tuple(self.frozen_prefixes())
        for name, p in self.named_parameters():
            p.requires_grad_(not name.startswith(pre) if pre else True)

    def train(self, mode: bool = True) -> JointModel:
        super().train(mode)
        if self.cfg.freeze_image_tower and self.cfg.base != "tiny":
            self.image_tower.eval()  # frozen BatchNorm statistics
        return self

    def saved_state(self) -> dict[str, torch.Tensor]:
        pre = tuple(self.frozen_prefixes())
        return {k: v for k, v in self.state_dict().items() if not (pre and k.startswith(pre))}
