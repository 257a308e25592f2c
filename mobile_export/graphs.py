"""The exported forms of the three graphs: the JointModel's methods re-expressed with operators that
phone accelerators take (onnxruntime's CoreML and NNAPI execution providers), on the model's own
weights.

What changes against the training code (``edge_xmr.model``), with the same values up to float
rounding (every export compares each form with the model's own method, ``specs.GraphSpec.reference``):

- ``F.normalize`` (ONNX ReduceL2 + Clip + Expand + Div) -> ``unit``: mean of squares x D, Max, Sqrt, Div;
- ``einsum`` -> MatMul; masks broadcast instead of ``expand`` (no Expand / ConstantOfShape / Equal / Where);
- position ids ``arange(L)`` + Gather -> a Slice of the position table (no Range);
- the mean pool (ReduceSum, which NNAPI lacks) -> a MatMul with the mask; the last-token pool (CLIP)
  -> a MatMul with a one-hot row built from the mask;
- the joint pass attends to the query's text keys/values by a broadcasting MatMul (one copy for all
  candidates) instead of an expanded copy per candidate;
- the views' average: additions instead of stack + ReduceSum.

Shapes: B batch, L text length, n candidates, T image tokens, T1 = T + 1, W width, H heads, dh = W / H.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from edge_xmr.model import JointModel
    from edge_xmr.model.text import Block

EPS2 = 1e-24  # F.normalize's eps (1e-12), squared


def unit(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``F.normalize(x, dim=-1)`` for a last axis of size ``dim``: x / sqrt(max(mean(x²)·dim, eps²)).

    ReduceMean rather than ReduceSum / ReduceL2: every provider (NNAPI too) has it."""
    return x / torch.sqrt(_at_least((x * x).mean(-1, keepdim=True) * dim, EPS2))


def _at_least(x: torch.Tensor, lo: float) -> torch.Tensor:
    """max(x, lo) as a Max op (``clamp(min=)`` exports a Clip with an empty input, which the mobile
    checker counts as a dynamic shape)."""
    return torch.maximum(x, torch.tensor(lo, dtype=x.dtype))


def _heads(blk: Block, x: torch.Tensor) -> torch.Tensor:
    """(B, L, W) -> (B, H, L, dh), the batch size taken from the tensor (-1) so no Shape op is needed."""
    h = blk.cfg.heads
    return x.reshape(-1, x.shape[1], h, blk.cfg.width // h).transpose(1, 2)


class TextGraph(nn.Module):
    """``JointModel.query_states``: (input_ids, attention_mask) (B, L) -> text_embeds (B, D), text_states (J, B, L, W)."""

    def __init__(self, model: JointModel):
        super().__init__()
        self.model = model
        t = model.text
        self.clip = t.cfg.flavour == "clip"
        if self.clip:  # causal bias of the longest text; a text of length L uses its top-left L x L
            L = model.cfg.max_text_len
            self.register_buffer("causal", torch.triu(torch.full((L, L), -1e4), diagonal=1), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, t = self.model, self.model.text
        L = input_ids.shape[1]
        x = t.tok(input_ids) + t.pos.weight[:L]  # (B, L, W)
        if t.typ is not None:
            x = x + t.typ.weight[0]
        if t.ln_emb is not None:
            x = t.ln_emb(x)
        mask = attention_mask.to(torch.float32)  # (B, L)
        bias = ((1.0 - mask) * -1e4)[:, None, None, :]  # (B, 1, 1, L), broadcast over heads and queries
        if self.clip:
            bias = bias + self.causal[:L, :L]  # (B, 1, L, L)
        x = t.run(x, bias, 0, m.split)
        states = t.run_states(x, bias, m.split)  # inputs of the joint blocks, then the last output
        h = t.final(states[-1])  # (B, L, W)
        pooled = (self._pool_weights(mask)[:, None, :] @ h).reshape(-1, h.shape[2])  # (B, W); reshape, not [:, 0] (Gather)
        emb = unit(m.text_proj(pooled), m.cfg.embed_dim)  # (B, D)
        return emb, torch.stack(states[:-1] + [h])  # (B, D), (J, B, L, W)

    def _pool_weights(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) 0/1 mask -> (B, L) pooling weights: 1/count on real tokens (bert, mean pool), or a one-hot
        row on the last real token (clip, EOS pool: the mask minus itself shifted left by one)."""
        if self.clip:
            return mask - torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
        count = mask.mean(-1, keepdim=True) * mask.shape[1]  # (B, 1)
        return mask / _at_least(count, 1.0)


class ImageGraph(nn.Module):
    """``JointModel.encode_image``: pixel_values (B, 3, S, S) -> image_embeds (B, D), image_tokens (B, T, Dt)."""

    def __init__(self, model: JointModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from edge_xmr.model.views import make_view

        m = self.model
        views = m.cfg.views
        if not views:
            return self._outputs(*m.image_tower(pixel_values))
        b = pixel_values.shape[0]
        embs, toks = [], []
        for size in dict.fromkeys(v[0] for v in views):  # as JointModel.encode_image
            mirrors = [mi for s, mi in views if s == size]
            big = make_view(pixel_values, size, False, m.cfg.image.size)
            x = torch.cat([big.flip(-1) if mi else big for mi in mirrors])
            emb, tok = self._outputs(*m.image_tower(x))
            embs += [emb[j * b:(j + 1) * b] for j in range(len(mirrors))]
            toks += [tok[j * b:(j + 1) * b] for j in range(len(mirrors))]
        return unit(sum(embs[1:], embs[0]), m.cfg.embed_dim), sum(toks[1:], toks[0]) / len(toks)

    def _outputs(self, g: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``JointModel.image_outputs``: tower features (B, C), (B, P, C) -> (B, D) unit, (B, T, Dt)."""
        m, p = self.model, self.model.token_pool
        k = p.proj((grid - p.feat_mean) / p.feat_std)  # (B, P, Dt)
        att = (p.queries @ k.transpose(1, 2)) / math.sqrt(m.cfg.token_dim)  # (B, T, P)
        return unit(m.image_head(g), m.cfg.embed_dim), p.ln(att.softmax(-1) @ k)


class CrossGraph(nn.Module):
    """The joint pass's term (``JointModel.score_terms(..., ("joint",))``) of one query against n candidates:
    (text_states (J, 1, L, W), attention_mask (1, L), text_embeds (1, D), image_tokens (n, T, Dt),
    image_embeds (n, D)) -> joint (n,)."""

    def __init__(self, model: JointModel):
        super().__init__()
        self.model = model

    def forward(self, text_states: torch.Tensor, attention_mask: torch.Tensor, text_embeds: torch.Tensor,
                image_tokens: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        m, c = self.model, self.model.cross
        img = c.lift(image_tokens, image_embeds)  # (n, T1, W)
        text_bias = ((1.0 - attention_mask.to(torch.float32)) * -1e4)[:, None, None, :]  # (1, 1, 1, L)
        x = img
        texts = text_states.unbind(0)  # Split, not J Gathers
        for j, blk in enumerate(m.text.blocks[m.split:]):
            x = self._joint_block(blk, x, texts[j], text_bias)
        out = m.text.final(x)  # (n, T1, W)
        pooled = out.mean(1) + c.skip(img.mean(1))  # (n, W)
        h = c.ln(pooled)
        sim = (unit(c.proj(h), m.cfg.embed_dim) * text_embeds).mean(-1) * m.cfg.embed_dim  # (n,)
        return c.log_alpha.exp() * sim + c.out(torch.nn.functional.gelu(c.fc(h))).reshape(-1)  # (n,)

    @staticmethod
    def _joint_block(blk: Block, x: torch.Tensor, text: torch.Tensor, text_bias: torch.Tensor) -> torch.Tensor:
        """``Block.forward_image``: image tokens x (n, T1, W) attend to [the text's keys/values (1, L, W),
        their own]; the text part is one copy that the MatMuls broadcast over the n candidates."""
        kt, vt = blk.text_kv(text)  # (1, L, W) each
        h = blk.ln1(x) if blk.cfg.flavour == "clip" else x
        q, ki, vi = _heads(blk, blk.q(h)), _heads(blk, blk.k(h)), _heads(blk, blk.v(h))  # (n, H, T1, dh)
        kt, vt = _heads(blk, kt), _heads(blk, vt)  # (1, H, L, dh)
        scale = math.sqrt(blk.cfg.width // blk.cfg.heads)
        s_text = q @ kt.transpose(-1, -2) / scale + text_bias  # (n, H, T1, L)
        s_img = q @ ki.transpose(-1, -2) / scale  # (n, H, T1, T1)
        att = torch.cat([s_text, s_img], dim=-1).softmax(-1)
        L = kt.shape[2]
        y = att[..., :L] @ vt + att[..., L:] @ vi  # (n, H, T1, dh)
        a = blk.o(y.transpose(1, 2).reshape(-1, x.shape[1], blk.cfg.width))  # (n, T1, W)
        x = blk.ln1(x + a) if blk.cfg.flavour == "bert" else x + a
        return blk._ffn(x)
