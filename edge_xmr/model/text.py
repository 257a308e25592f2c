"""The shared text transformer (BERT or CLIP flavour), written out so both roles can use its blocks.

Shapes: B batch, L text length, T image tokens, W width, H heads.
Weights load from Hugging Face checkpoints by a plain key map (see ``load_bert`` / ``load_clip_text``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TextConfig

NEG = -1e4  # additive mask value (fp16-safe)


class Block(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.q = nn.Linear(w, w)
        self.k = nn.Linear(w, w)
        self.v = nn.Linear(w, w)
        self.o = nn.Linear(w, w)
        self.ln1 = nn.LayerNorm(w, eps=cfg.eps)
        self.fc1 = nn.Linear(w, cfg.mlp)
        self.fc2 = nn.Linear(cfg.mlp, w)
        self.ln2 = nn.LayerNorm(w, eps=cfg.eps)

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.act == "quick_gelu":
            return x * torch.sigmoid(1.702 * x)
        return F.gelu(x)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, L, W = x.shape
        return x.view(B, L, self.cfg.heads, W // self.cfg.heads).transpose(1, 2)  # (B, H, L, W/H)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, Lq, W = q.shape
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(W // self.cfg.heads) + bias  # (B, H, Lq, Lk)
        y = att.softmax(-1) @ v  # (B, H, Lq, W/H)
        return self.o(y.transpose(1, 2).reshape(B, Lq, W))  # (B, Lq, W)

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.act == "quick_gelu":
            return x * torch.sigmoid(1.702 * x)
        return F.gelu(x)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.flavour == "bert":
            return self.ln2(x + self.fc2(self._act(self.fc1(x))))
        return x + self.fc2(self._act(self.fc1(self.ln2(x))))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        # x: (B, L, W); bias: (B, 1, L, L) additive attention mask
        h = self.ln1(x) if self.cfg.flavour == "clip" else x  # pre-LN (CLIP) or post-LN (BERT)
        a = self._attend(self.q(h), self.k(h), self.v(h), bias)
        x = self.ln1(x + a) if self.cfg.flavour == "bert" else x + a
        return self._ffn(x)

    def text_kv(self, x_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of text states (B, L, W), computed once per query and reused per candidate."""
        h = self.ln1(x_text) if self.cfg.flavour == "clip" else x_text
        return self.k(h), self.v(h)

    def forward_image(self, x: torch.Tensor, k_text: torch.Tensor, v_text: torch.Tensor,
                      bias: torch.Tensor) -> torch.Tensor:
        """Joint step for image tokens: they attend to [text; image] with this block's weights.

        x: (N, T, W) image tokens; k_text, v_text: (N, L, W); bias: (N, 1, 1, L+T). Returns (N, T, W).
        """
        h = self.ln1(x) if self.cfg.flavour == "clip" else x
        k = torch.cat([k_text, self.k(h)], dim=1)  # (N, L+T, W)
        v = torch.cat([v_text, self.v(h)], dim=1)
        a = self._attend(self.q(h), k, v, bias)  # (N, T, W)
        x = self.ln1(x + a) if self.cfg.flavour == "bert" else x + a
        return self._ffn(x)


class TextTransformer(nn.Module):
    """Token embeddings + blocks. ``encode`` runs text alone; ``joint`` continues over text + image tokens."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos = nn.Embedding(cfg.max_positions, cfg.width)
        self.typ = nn.Embedding(cfg.type_vocab, cfg.width) if cfg.type_vocab else None
        self.ln_emb = nn.LayerNorm(cfg.width, eps=cfg.eps) if cfg.flavour == "bert" else None
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.layers)])
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.eps) if cfg.flavour == "clip" else None

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        L = ids.shape[1]
        pos = torch.arange(L, device=ids.device)
        x = self.tok(ids) + self.pos(pos)[None]  # (B, L, W)
        if self.typ is not None:
            x = x + self.typ.weight[0]
        if self.ln_emb is not None:
            x = self.ln_emb(x)
        return x

    def text_bias(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) 0/1 padding mask -> (B, 1, L, L) additive bias (causal for CLIP)."""
        B, L = mask.shape
        bias = (1.0 - mask[:, None, None, :].to(torch.float32)) * NEG  # (B, 1, 1, L)
        bias = bias.expand(B, 1, L, L)
        if self.cfg.flavour == "clip":
            causal = torch.triu(torch.full((L, L), NEG, device=mask.device), diagonal=1)
            bias = bias + causal
        return bias

    def run(self, x: torch.Tensor, bias: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for blk in self.blocks[start:stop]:
            x = blk(x, bias)
        return x

    def final(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_final(x) if self.ln_final is not None else x

    def pool(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, W) hidden states -> (B, W): mean over tokens (bert) or the last real token (clip)."""
        m = mask.to(x.dtype)
        if self.cfg.flavour == "bert":
            return (x * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1.0)
        last = (m.sum(1).long() - 1).clamp(min=0)  # index of EOS
        return x[torch.arange(x.shape[0], device=x.device), last]

    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Text alone through all blocks -> pooled (B, W)."""
        x = self.run(self.embed(ids), self.text_bias(mask), 0, self.cfg.layers)
        return self.pool(self.final(x), mask)

    def run_states(self, x: torch.Tensor, bias: torch.Tensor, start: int) -> list[torch.Tensor]:
        """Blocks ``start..`` over text alone; returns each block's input and the last output."""
        states = [x]
        for blk in self.blocks[start:]:
            states.append(blk(states[-1], bias))
        return states

    def joint(self, text_states: list[torch.Tensor], mask: torch.Tensor, img: torch.Tensor,
              start: int) -> torch.Tensor:
        """Cross-encoder pass: image tokens go through blocks ``start..`` attending to the text.

        text_states: inputs of blocks start.. from the text-alone pass, each (Q, L, W);
        mask: (Q, L); img: (Q, K, T, W) image tokens of K candidates per query.
        Returns the image tokens' final states (Q, K, T, W). Text tokens do not see the image, so
        their keys/values are computed once per query: the cost per candidate is T tokens.
        """
        Q, K, T, W = img.shape
        L = mask.shape[1]
        x = img.reshape(Q * K, T, W)
        mbias = (1.0 - mask.to(torch.float32)) * NEG  # (Q, L)
        bias = torch.cat([mbias, torch.zeros(Q, T, device=mask.device)], dim=1)  # (Q, L+T)
        bias = bias[:, None].expand(Q, K, L + T).reshape(Q * K, 1, 1, L + T)
        for j, blk in enumerate(self.blocks[start:]):
            kt, vt = blk.text_kv(text_states[j])  # (Q, L, W) each
            kt = kt[:, None].expand(Q, K, L, W).reshape(Q * K, L, W)
            vt = vt[:, None].expand(Q, K, L, W).reshape(Q * K, L, W)
            x = blk.forward_image(x, kt, vt, bias)
        return self.final(x).view(Q, K, T, W)


def load_bert(model: TextTransformer, sd: dict[str, torch.Tensor]) -> None:
    """Copy a Hugging Face BertModel state dict (keys without the ``bert.`` prefix) into ``model``."""
    p = "encoder.layer.{}."
    m = {"tok.weight": "embeddings.word_embeddings.weight",
         "pos.weight": "embeddings.position_embeddings.weight",
         "typ.weight": "embeddings.token_type_embeddings.weight",
         "ln_emb.weight": "embeddings.LayerNorm.weight", "ln_emb.bias": "embeddings.LayerNorm.bias"}
    names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "o": "attention.output.dense", "ln1": "attention.output.LayerNorm",
             "fc1": "intermediate.dense", "fc2": "output.dense", "ln2": "output.LayerNorm"}
    for i in range(model.cfg.layers):
        for ours, theirs in names.items():
            for t in ("weight", "bias"):
                m[f"blocks.{i}.{ours}.{t}"] = p.format(i) + f"{theirs}.{t}"
    _copy(model, sd, m)


def load_clip_text(model: TextTransformer, sd: dict[str, torch.Tensor]) -> None:
    """Copy the text half of a Hugging Face CLIPModel state dict into ``model``."""
    p = "text_model.encoder.layers.{}."
    m = {"tok.weight": "text_model.embeddings.token_embedding.weight",
         "pos.weight": "text_model.embeddings.position_embedding.weight",
         "ln_final.weight": "text_model.final_layer_norm.weight",
         "ln_final.bias": "text_model.final_layer_norm.bias"}
    names = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
             "o": "self_attn.out_proj", "ln1": "layer_norm1", "fc1": "mlp.fc1", "fc2": "mlp.fc2",
             "ln2": "layer_norm2"}
    for i in range(model.cfg.layers):
        for ours, theirs in names.items():
            for t in ("weight", "bias"):
                m[f"blocks.{i}.{ours}.{t}"] = p.format(i) + f"{theirs}.{t}"
    _copy(model, sd, m)


def _copy(model: nn.Module, sd: dict[str, torch.Tensor], m: dict[str, str]) -> None:
    own = model.state_dict()
    missing = [v for v in m.values() if v not in sd]
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} expected tensors, e.g. {missing[:3]}")
    with torch.no_grad():
        for ours, theirs in m.items():
            src = sd[theirs]
            if own[ours].shape != src.shape:
                raise ValueError(f"shape mismatch for {theirs}: {tuple(src.shape)} vs {tuple(own[ours].shape)}")
            own[ours].copy_(src)
