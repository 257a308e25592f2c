"""JointModel: one shared-weight model in two roles (Geigle et al., "Retrieve Fast, Rerank Smart").

- bi-encoder: text and image encoded apart, L2-normalised, cosine similarity;
- cross-encoder: the SAME top text blocks run jointly over text tokens + a few image tokens (the image
  tokens attend to the text and to each other; text keys/values come from the text pass, so one query
  is encoded once and each candidate costs only its T image tokens).
  Its score is ``scale * cosine + residual``: it starts from the bi-encoder's similarity and the
  joint pass learns a correction (zero-initialised), so reranking starts where retrieval left off.

Shapes: B/N/Q batch, K candidates per query, L text length, T image tokens, Dt stored token size,
W text width, D embedding size, P grid positions, C grid channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
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
    """Cross-encoder-only parameters: lift stored tokens into the text width, read out a residual."""

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
        self.log_scale = nn.Parameter(torch.tensor(math.log(20.0)))  # weight of the bi-encoder cosine
        # hubness correction (inverted softmax): a photo that is close to MANY training captions (or a
        # text close to many training photos) is a "hub" and is pushed down. Banks are embeddings of a
        # sample of training captions / photos, set after training; beta 0 disables a term.
        self.register_buffer("text_bank", torch.zeros(0, embed_dim))  # (Kt, D)
        self.register_buffer("image_bank", torch.zeros(0, embed_dim))  # (Ki, D)
        self.register_buffer("hub", torch.tensor([0.0, 0.0, 20.0]))  # beta_image, beta_text, temperature
        # floor of each hubness statistic (photo's, text's): a low percentile of the calibration photos' /
        # captions'. Below it a photo (text) is far from every bank entry, out of the banks' domain, and
        # the correction would only extrapolate (reward it for being unlike the training data).
        self.register_buffer("hub_floor", torch.tensor([-1.0e4, -1.0e4]))
        self.register_buffer("res_weight", torch.tensor(1.0))  # weight of the joint-pass terms (set on dev)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(2.0)))  # weight of the joint-pass similarity
        # late interaction: each caption token (its final state from the shared blocks, projected to the
        # token size) is matched with its best image token; the score is the mean over caption tokens
        self.li_text = nn.Linear(width, d_tok)
        self.li_log_scale = nn.Parameter(torch.tensor(math.log(20.0)))  # temperature of its training loss
        self.register_buffer("li_weight", torch.tensor(0.0))  # its weight in the score (set on dev)

    def lift(self, tokens: torch.Tensor, img_emb: torch.Tensor) -> torch.Tensor:
        """tokens (..., T, Dt), img_emb (..., D) -> image tokens in the text width (..., T+1, W)."""
        x = torch.cat([self.up(tokens), self.emb_up(img_emb)[..., None, :]], dim=-2)
        return x + self.pos

    def hubness(self, t_emb: torch.Tensor, img_emb: torch.Tensor) -> torch.Tensor:
        """t_emb (Q, D), img_emb (Q, K, D) -> (Q, K) correction
        beta_i*max(LSE(t*bank@img), floor_i) + beta_t*max(LSE(t*bank@txt), floor_t)."""
        b_img, b_txt, temp = self.hub[0], self.hub[1], self.hub[2]
        out = torch.zeros(img_emb.shape[:2], dtype=img_emb.dtype, device=img_emb.device)
        if self.text_bank.shape[0]:
            h_img = torch.logsumexp(temp * img_emb @ self.text_bank.T, dim=-1)  # (Q, K)
            out = out + b_img * torch.maximum(h_img, self.hub_floor[0])
        if self.image_bank.shape[0]:
            h_txt = torch.logsumexp(temp * t_emb @ self.image_bank.T, dim=-1)  # (Q,)
            out = out + b_txt * torch.maximum(h_txt, self.hub_floor[1])[:, None]  # (Q, 1)
        return out

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


@dataclass(frozen=True)
class EncodedQuery:
    """A text after one pass through the shared blocks (``JointModel.encode_query``)."""

    embedding: np.ndarray  # (D,) bi-encoder embedding, L2-normalised: what retrieval searches with
    t_emb: torch.Tensor  # (1, D) the same embedding as a tensor (the cross-encoder's cosine term)
    states: list[torch.Tensor]  # inputs of the joint blocks, then the final states, each (1, L, W)
    mask: torch.Tensor  # (1, L) attention mask of the text


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

    def cross_logits(self, states: list[torch.Tensor], mask: torch.Tensor, t_emb: torch.Tensor,
                     tokens: torch.Tensor, img_emb: torch.Tensor) -> torch.Tensor:
        """Cross-encoder scores of Q queries against K candidates each.

        states: text states from ``text_upper`` (inputs of blocks split.., then the final states), each
        (Q, L, W); mask: (Q, L); t_emb: (Q, D); tokens: (Q, K, T, Dt); img_emb: (Q, K, D). Returns (Q, K).
        """
        cos = torch.einsum("qd,qkd->qk", t_emb, img_emb)  # (Q, K)
        li = self.cross.late_interaction(self.cross.text_tokens(states[-1]), mask, tokens)  # (Q, K)
        img = self.cross.lift(tokens, img_emb)  # (Q, K, T+1, W)
        out = self.text.joint(states[:-1], mask, img, self.split)  # (Q, K, T+1, W)
        # read out the joint pass plus a skip from its image-token input: the joint layers mix text into
        # every image token, and the skip keeps what tells one photo from another
        pooled = out.mean(2) + self.cross.skip(img.mean(2))  # (Q, K, W)
        res = self.cross.residual(pooled, t_emb[:, None].expand(-1, out.shape[1], -1))  # (Q, K)
        return (self.cross.log_scale.exp() * cos + self.cross.li_weight * li + self.cross.res_weight * res
                - self.cross.hubness(t_emb, img_emb))

    def score_query(self, ids: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor,
                    img_emb: torch.Tensor) -> torch.Tensor:
        """One query (1, L) against N candidates (tokens (N, T, Dt), embeddings (N, D)) -> (N,)."""
        t, states = self.text_upper(self.text_lower(ids, mask), mask)  # (1, D)
        return self.cross_logits(states, mask, t, tokens[None], img_emb[None])[0]

    def query_states(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) ids + mask -> (embedding (B, D), text states stacked (J, B, L, W)), J = cross_layers + 1:
        one text pass whose states the cross-encoder reuses (the bundle's text_encoder graph)."""
        t, states = self.text_upper(self.text_lower(ids, mask), mask)
        return t, torch.stack(states)

    def score_states(self, states: torch.Tensor, mask: torch.Tensor, t_emb: torch.Tensor, tokens: torch.Tensor,
                     img_emb: torch.Tensor) -> torch.Tensor:
        """One encoded query (states (J, 1, L, W), mask (1, L), t_emb (1, D)) against N candidates
        (tokens (N, T, Dt), embeddings (N, D)) -> (N,) (the bundle's cross_encoder graph)."""
        return self.cross_logits(list(states.unbind(0)), mask, t_emb, tokens[None], img_emb[None])[0]

    def score_aligned(self, ids: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor,
                      img_emb: torch.Tensor) -> torch.Tensor:
        """N (text, image) pairs -> (N,) scores."""
        t, states = self.text_upper(self.text_lower(ids, mask), mask)
        return self.cross_logits(states, mask, t, tokens[:, None], img_emb[:, None])[:, 0]

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
    def score_pairs(self, texts: Sequence[str], images: Sequence[Any]) -> np.ndarray:
        """Cross-encoder match scores of aligned (text, image) pairs -> (N,) float32."""
        if len(texts) != len(images):
            raise ValueError(f"score_pairs needs as many texts as images ({len(texts)} vs {len(images)})")
        emb, tok = self.encode_images(images)
        ids, mask = self._tokens(texts)
        return self.score_aligned(ids, mask, torch.from_numpy(tok), torch.from_numpy(emb)).numpy()

    @torch.no_grad()
    def score_candidates(self, text: str, tokens: np.ndarray, embeds: np.ndarray) -> np.ndarray:
        """Cross-encoder scores of one text against N photos' stored data (tokens (N, T, Dt),
        embeddings (N, D)) -> (N,) float32. Same contract as the runtime bundle's method."""
        return self.score_encoded(self.encode_query(text), tokens, embeds)

    @torch.no_grad()
    def encode_query(self, text: str) -> EncodedQuery:
        """One text through the shared blocks ONCE: its bi-encoder embedding (to retrieve) and the
        states the joint pass attends to (to rerank), so a reranked search pays one text pass."""
        ids, mask = self._tokens([text])
        t, states = self.text_upper(self.text_lower(ids, mask), mask)  # (1, D), [(1, L, W)]
        return EncodedQuery(embedding=t[0].numpy(), t_emb=t, states=states, mask=mask)

    @torch.no_grad()
    def score_encoded(self, query: EncodedQuery, tokens: np.ndarray, embeds: np.ndarray) -> np.ndarray:
        """``score_candidates`` for a query from ``encode_query`` (no second text pass) -> (N,) float32."""
        if len(tokens) == 0:
            return np.zeros((0,), np.float32)
        tok = torch.as_tensor(np.ascontiguousarray(tokens), dtype=torch.float32)[None]  # (1, N, T, Dt)
        emb = torch.as_tensor(np.ascontiguousarray(embeds), dtype=torch.float32)[None]  # (1, N, D)
        return self.cross_logits(query.states, query.mask, query.t_emb, tok, emb)[0].numpy()

    @torch.no_grad()
    def score_batch(self, texts: Sequence[str], tokens: np.ndarray, embeds: np.ndarray) -> np.ndarray:
        """Scores (Q, K) of texts[q] against K candidates each (tokens (Q, K, T, Dt), embeds (Q, K, D)).

        The text pass of each distinct text is cached (evaluation scores the same captions against
        many images); the cache is cleared whenever the model is put in training mode.
        """
        cache = self.__dict__.setdefault("_text_cache", {})
        new = sorted({t for t in texts if t not in cache})
        for i in range(0, len(new), 256):
            chunk = new[i:i + 256]
            ids, mask = self._tokens(chunk)
            t, states = self.text_upper(self.text_lower(ids, mask), mask)
            for j, txt in enumerate(chunk):
                n = int(mask[j].sum())
                cache[txt] = (t[j], [s[j, :n] for s in states])
        L = max(cache[t][1][0].shape[0] for t in texts)
        W = self.cfg.text.width
        mask = torch.zeros(len(texts), L, dtype=torch.long)
        states = [torch.zeros(len(texts), L, W) for _ in range(self.cfg.cross_layers + 1)]
        for q, txt in enumerate(texts):
            _, st = cache[txt]
            mask[q, : st[0].shape[0]] = 1
            for layer, s in enumerate(st):
                states[layer][q, : s.shape[0]] = s
        t_emb = torch.stack([cache[t][0] for t in texts])
        return self.cross_logits(states, mask, t_emb, torch.as_tensor(np.ascontiguousarray(tokens), dtype=torch.float32),
                                 torch.as_tensor(np.ascontiguousarray(embeds), dtype=torch.float32)).numpy()

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
        self.__dict__.pop("_text_cache", None)
        if self.cfg.freeze_image_tower and self.cfg.base != "tiny":
            self.image_tower.eval()  # frozen BatchNorm statistics
        return self

    def saved_state(self) -> dict[str, torch.Tensor]:
        pre = tuple(self.frozen_prefixes())
        return {k: v for k, v in self.state_dict().items() if not (pre and k.startswith(pre))}
