"""Distillation of the shared-weight model into a smaller student (needs torch: the ``[train]`` extra).

The student is cut from the teacher (:data:`quantize.distill_config.STUDENTS`): some of its text
blocks, fewer joint blocks, fewer image tokens, optionally a pruned vocabulary
(:mod:`quantize.vocab`); every other weight starts as the teacher's. It keeps the teacher's frozen
image tower, so the cached tower features (``edge_xmr.train.features``) serve both models. Losses
per batch of B (caption, photo) pairs, teacher outputs computed on the fly without gradients:

- ``kd_bi``: KL from the teacher's in-batch similarity distributions (text->image rows and
  image->text columns of the B x B logits) to the student's, at temperature ``temperature``;
- ``kd_ce``: for ``ce_queries`` captions, a group of the true photo + the teacher bi-encoder's top
  photos over the whole training set; KL from the teacher's cross-encoder scores over the group to
  the student's (hubness correction off in both: the student's is calibrated on dev at the end);
- ``emb``: 1 - cosine between student and teacher embeddings (texts and photos);
- ``gt_bi`` / ``gt_ce``: the ground-truth losses (InfoNCE; the true photo first in its group).

The student is a normal model directory (``edge_xmr.model.load``, ``edge-xmr eval / export``);
``OUT/last`` holds a resumable checkpoint, ``OUT`` the best student on dev (rerank@20 t2i R@1).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .distill_config import DistillConfig, StudentSpec

if TYPE_CHECKING:
    import torch

    from edge_xmr.data import CaptionSet
    from edge_xmr.model import JointModel

STATE = "distill_state.pt"


def make_student(teacher: JointModel, spec: StudentSpec, captions: list[str] | None = None) -> JointModel:
    """A student cut from ``teacher`` by ``spec`` (weights copied; see the module docstring).

    ``captions``: texts whose tokens a pruned vocabulary must keep (the training captions)."""
    import torch

    from edge_xmr.model import bases

    tc = teacher.cfg
    if not spec.text_layers or max(spec.text_layers) >= tc.text.layers or min(spec.text_layers) < 0:
        raise ValueError(f"student {spec.name}: text_layers {spec.text_layers} outside the teacher's "
                         f"{tc.text.layers} blocks")
    if not 1 <= spec.cross_layers <= len(spec.text_layers) or spec.n_image_tokens > tc.n_image_tokens:
        raise ValueError(f"student {spec.name}: cross_layers / n_image_tokens do not fit the teacher")
    n = len(spec.text_layers)
    cfg = replace(tc, name=f"{tc.name.split('+')[0]}+{spec.name}", text=replace(tc.text, layers=n),
                  cross_layers=spec.cross_layers, n_image_tokens=spec.n_image_tokens, trainable_text_layers=n)
    student = bases.build(cfg)
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    T = spec.n_image_tokens
    with torch.no_grad():
        for k, v in s_sd.items():
            src = k
            if k.startswith("text.blocks."):
                j, rest = k[len("text.blocks."):].split(".", 1)
                src = f"text.blocks.{spec.text_layers[int(j)]}.{rest}"
            w = t_sd[src]
            if k == "token_pool.queries":
                w = w[:T]
            elif k == "cross.pos":
                w = torch.cat([w[:T], w[-1:]])  # the kept tokens' rows + the embedding token's
            elif k in bases.CALIBRATED_BUFFERS:
                continue  # hubness banks: recalibrated for the student at the end
            v.copy_(w)
    student.tokenizer = teacher.tokenizer
    if spec.vocab_size:
        from .vocab import keep_tokens, make_tokenizer, prune_tokenizer, tokenizer_json

        tj = tokenizer_json(teacher)
        student.tokenizer = make_tokenizer(prune_tokenizer(tj, keep_tokens(tj, captions or [], spec.vocab_size)))
    student.freeze_pretrained()
    return student


def _kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)), mean over rows."""
    import torch.nn.functional as F

    p = F.log_softmax(teacher_logits / tau, dim=-1)
    q = F.log_softmax(student_logits / tau, dim=-1)
    return (tau * tau) * F.kl_div(q, p, log_target=True, reduction="batchmean")


class Distiller:
    """One distillation run (see the module docstring); ``fit`` resumes from ``out/last`` if present."""

    def __init__(self, teacher: JointModel, student: JointModel, train: CaptionSet, dev: CaptionSet | None,
                 out: Path, cfg: DistillConfig, spec: StudentSpec, log: Callable[[str], None] = lambda s: None,
                 progress: bool = True):
        import torch

        from edge_xmr.train.loop import Trainer
        from edge_xmr.train_config import TrainConfig

        self.teacher, self.student, self.cfg, self.spec = teacher.eval(), student, cfg, spec
        self.train_set, self.dev, self.out, self.log, self.progress = train, dev, Path(out), log, progress
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # the project's Trainer provides the cached tower features, the dev evaluation and the hubness
        # calibration for the student (its own optimiser and loop are not used)
        self.base = Trainer(student, train, dev, self.out,
                            TrainConfig(batch_size=cfg.batch_size, hub_bank=spec.hub_bank,
                                        hub_bank_images=spec.hub_bank_images, seed=cfg.seed,
                                        eval_queries=cfg.eval_queries, threads=cfg.threads), log=log,
                            progress=progress)
        s_ids, s_mask = student.tokenizer.encode(list(train.captions), student.cfg.max_text_len)
        t_ids, t_mask = teacher.tokenizer.encode(list(train.captions), teacher.cfg.max_text_len)
        self.s_tok = (torch.from_numpy(s_ids), torch.from_numpy(s_mask))
        self.t_tok = (torch.from_numpy(t_ids), torch.from_numpy(t_mask))
        self.img_caps = train.image_captions()
        self.n_img = len(train.images)
        self.steps_per_epoch = max(1, self.n_img // cfg.batch_size)
        self.total = self.steps_per_epoch * cfg.epochs
        text_p = [p for n, p in student.named_parameters() if p.requires_grad and n.startswith("text.")]
        other = [p for n, p in student.named_parameters() if p.requires_grad and not n.startswith("text.")]
        self.opt = torch.optim.AdamW([{"params": text_p, "lr": cfg.lr_text}, {"params": other, "lr": cfg.lr_head}],
                                     weight_decay=cfg.weight_decay)
        self.base_lrs = [cfg.lr_text, cfg.lr_head]
        self.step, self.epoch, self.best = 0, 0, -1.0
        self.history: list[dict[str, Any]] = []
        self.rng = np.random.default_rng(cfg.seed)

    # ---- features ----------------------------------------------------------------------------------
    def _grid(self, img: np.ndarray, flip: np.ndarray | None = None) -> torch.Tensor:
        import torch

        grids = self.base.grids
        g = np.empty((len(img), *grids[0].shape[1:]), np.float32)
        order = np.argsort(img)
        for src in (0, 1):
            sel = order if flip is None else order[flip[order] == src]
            if flip is None and src == 1:
                break
            g[sel] = grids[src][img[sel]]
        return torch.from_numpy(g)

    def _teacher_gallery(self) -> torch.Tensor:
        """The teacher's embeddings of every training photo (unflipped), for mining candidates."""
        import torch
        import torch.nn.functional as F

        out = []
        with torch.no_grad():
            for i in range(0, self.n_img, 512):
                g = self._grid(np.arange(i, min(i + 512, self.n_img)))
                out.append(F.normalize(self.teacher.image_head(g.mean(1)), dim=-1))
        return torch.cat(out)

    # ---- one step ------------------------------------------------------------------------------------
    def train_step(self, img: np.ndarray) -> dict[str, float]:
        import torch
        import torch.nn.functional as F

        from edge_xmr.model.joint import EncodedQuery
        from edge_xmr.train.loop import CE_TERMS, ce_logits

        t, s, cfg, rng = self.teacher, self.student, self.cfg, self.rng
        cap = np.array([rng.choice(self.img_caps[i]) for i in img])
        flip = rng.integers(0, 2, len(img))
        g = self._grid(img, flip)  # (B, P, C)
        glob = g.mean(1)  # (B, C)
        target = torch.arange(len(img))
        t_ids, t_mask = self.t_tok[0][cap], self.t_tok[1][cap]
        s_ids, s_mask = self.s_tok[0][cap], self.s_tok[1][cap]
        t_ids, t_mask = t_ids[:, : int(t_mask.sum(1).max())], t_mask[:, : int(t_mask.sum(1).max())]
        s_ids, s_mask = s_ids[:, : int(s_mask.sum(1).max())], s_mask[:, : int(s_mask.sum(1).max())]
        with torch.no_grad():
            t_temb, t_states = t.text_upper(t.text_lower(t_ids, t_mask), t_mask)  # (B, D)
            t_iemb = F.normalize(t.image_head(glob), dim=-1)
            t_logits = t.logit_scale.exp() * t_temb @ t_iemb.T  # (B, B)
        s_temb, s_states = s.text_upper(s.text_lower(s_ids, s_mask), s_mask)
        s_iemb = F.normalize(s.image_head(F.dropout(glob, cfg.feature_dropout, training=True)), dim=-1)
        s_logits = s.logit_scale.clamp(max=math.log(100)).exp() * s_temb @ s_iemb.T
        kd_bi = 0.5 * (_kl(t_logits, s_logits, cfg.temperature) + _kl(t_logits.T, s_logits.T, cfg.temperature))
        gt_bi = 0.5 * (F.cross_entropy(s_logits, target) + F.cross_entropy(s_logits.T, target))
        emb = (1 - (s_temb * t_temb).sum(1)).mean() + (1 - (s_iemb * t_iemb).sum(1)).mean()
        loss = cfg.kd_bi_weight * kd_bi + cfg.gt_bi_weight * gt_bi + cfg.emb_weight * emb
        stats = {"kd_bi": float(kd_bi.detach()), "gt_bi": float(gt_bi.detach()), "emb": float(emb.detach())}
        if cfg.kd_li_weight or cfg.gt_li_weight:  # late interaction, every caption against every photo
            with torch.no_grad():
                t_li = t.cross.li_log_scale.clamp(max=math.log(100)).exp() * t.cross.late_interaction_all(
                    t.cross.text_tokens(t_states[-1]), t_mask, t.token_pool(g))  # (B, B)
            s_li = s.cross.li_log_scale.clamp(max=math.log(100)).exp() * s.cross.late_interaction_all(
                s.cross.text_tokens(s_states[-1]), s_mask, s.token_pool(F.dropout(g, cfg.feature_dropout)))
            kd_li = 0.5 * (_kl(t_li, s_li, cfg.temperature) + _kl(t_li.T, s_li.T, cfg.temperature))
            gt_li = 0.5 * (F.cross_entropy(s_li, target) + F.cross_entropy(s_li.T, target))
            loss = loss + cfg.kd_li_weight * kd_li + cfg.gt_li_weight * gt_li
            stats.update(kd_li=float(kd_li.detach()), gt_li=float(gt_li.detach()))
        Q = min(cfg.ce_queries, len(img))
        if Q and cfg.ce_candidates > 1 and (cfg.kd_ce_weight or cfg.gt_ce_weight):
            K = cfg.ce_candidates
            with torch.no_grad():
                sims = t_temb[:Q] @ self.gallery.T  # (Q, n_img)
                sims[torch.arange(Q), torch.from_numpy(img[:Q])] = -1e9  # the true photo goes first
                top = sims.topk(K - 1, dim=1).indices.numpy()
            cand = np.concatenate([img[:Q, None], top], axis=1)  # (Q, K)
            cflip = np.zeros_like(cand)
            cflip[:, 0] = flip[:Q]
            gc = self._grid(cand.reshape(-1), cflip.reshape(-1))  # (QK, P, C)
            with torch.no_grad():
                t_cemb = F.normalize(t.image_head(gc.mean(1)), dim=-1).view(Q, K, -1)
                t_ctok = t.token_pool(gc).view(Q, K, *t.token_pool.queries.shape)
                t_q = EncodedQuery(t_emb=t_temb[:Q], states=[x[:Q] for x in t_states], mask=t_mask[:Q])
                t_sc = ce_logits(t, t.score_terms(t_q, t_ctok, t_cemb, CE_TERMS))  # (Q, K)
            s_cemb = F.normalize(s.image_head(gc.mean(1)), dim=-1).view(Q, K, -1)
            s_ctok = s.token_pool(gc).view(Q, K, *s.token_pool.queries.shape)
            s_q = EncodedQuery(t_emb=s_temb[:Q], states=[x[:Q] for x in s_states], mask=s_mask[:Q])
            s_sc = ce_logits(s, s.score_terms(s_q, s_ctok, s_cemb, CE_TERMS))
            kd_ce = _kl(t_sc, s_sc, cfg.temperature)
            gt_ce = F.cross_entropy(s_sc, torch.zeros(Q, dtype=torch.long))
            loss = loss + cfg.kd_ce_weight * kd_ce + cfg.gt_ce_weight * gt_ce
            stats.update(kd_ce=float(kd_ce.detach()), gt_ce=float(gt_ce.detach()),
                         agree=float((s_sc.argmax(1) == t_sc.argmax(1)).float().mean()))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for grp in self.opt.param_groups for p in grp["params"]], 5.0)
        self.opt.step()
        return stats

    def _set_lr(self) -> None:
        warm = min(1.0, (self.step + 1) / max(1, self.cfg.warmup_steps))
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, self.step / max(1, self.total))))
        for grp, lr in zip(self.opt.param_groups, self.base_lrs):
            grp["lr"] = lr * warm * max(cos, 0.05)

    # ---- checkpoints -------------------------------------------------------------------------------
    def _save(self, out: Path) -> None:
        """Save the student as it trains: with the training score in its config (``training_score``)."""
        from edge_xmr.model import bases
        from edge_xmr.train.loop import training_score

        self.student.cfg = replace(self.student.cfg, score=training_score(self.student))
        bases.save(self.student, out)

    def save_checkpoint(self) -> None:
        import torch

        from edge_xmr.model import bases

        last = self.out / "last"
        self._save(last)
        state = {"opt": self.opt.state_dict(), "step": self.step, "epoch": self.epoch, "best": self.best,
                 "history": self.history, "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                 "distill_config": asdict(self.cfg), "student": asdict(self.spec)}
        tmp = last / (STATE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, last / STATE)

    def try_resume(self) -> bool:
        import torch

        from edge_xmr.model import bases

        f = self.out / "last" / STATE
        if not f.is_file():
            return False
        loaded = bases.load(self.out / "last")
        self.student.load_state_dict(loaded.state_dict())
        self.student.cfg = replace(self.student.cfg, score=loaded.cfg.score)
        st = torch.load(f, map_location="cpu", weights_only=False)
        self.opt.load_state_dict(st["opt"])
        self.step, self.epoch, self.best, self.history = st["step"], st["epoch"], st["best"], st["history"]
        self.rng.bit_generator.state = st["rng"]
        torch.set_rng_state(st["torch_rng"])
        return True

    # ---- main loop -------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        import torch

        from edge_xmr.model import bases
        from edge_xmr.train.loop import Stage, run_stage

        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        self.base.load_features()
        if self.try_resume():
            self.log(f"resumed from {self.out / 'last'} at epoch {self.epoch} step {self.step}")
        self.gallery = self._teacher_gallery()
        self.student.train()
        t_start = time.time()

        def step(s: int, batch: np.ndarray) -> dict[str, float]:
            self._set_lr()
            return self.train_step(batch)

        def end_epoch() -> None:
            rec: dict[str, Any] = {"epoch": self.epoch, "step": self.step,
                                   "minutes": round((time.time() - t_start) / 60, 2)}
            if self.dev is not None:
                rec.update(self.base.quick_eval())
                if rec["dev_rerank20_R@1"] > self.best:
                    self.best = rec["dev_rerank20_R@1"]
                    self._save(self.out)
                    rec["saved_best"] = True
            else:
                self._save(self.out)
            self.history.append(rec)
            self.log(json.dumps(rec))
            self.save_checkpoint()

        run_stage(self, Stage("distil epoch", 0, cfg.epochs, self.steps_per_epoch, 0, cfg.batch_size), self.n_img,
                  cfg.seed, step, lambda: None, end_epoch, self.progress, cfg.ckpt_every)
        if (self.out / "model.safetensors").is_file():  # the best student, then its hubness correction
            best = {k: v for k, v in bases.load(self.out).state_dict().items()
                    if k not in bases.CALIBRATED_BUFFERS}
            self.student.load_state_dict(best, strict=False)
        if self.spec.hub_bank:
            cal = self.base.calibrate_hubness()
            self.log("hubness correction: " + json.dumps(cal))
            self.history.append({"hubness": cal})
        self.student.eval()
        bases.save(self.student, self.out)
        (self.out / "distill_log.json").write_text(json.dumps(
            {"config": asdict(cfg), "student": asdict(self.spec), "history": self.history}, indent=2) + "\n")
        return {"history": self.history, "best": self.best}


def distill(teacher: str | Path | JointModel, train: CaptionSet, dev: CaptionSet | None, out: str | Path,
            spec: StudentSpec, cfg: DistillConfig = DistillConfig(), log: Callable[[str], None] = lambda s: None,
            progress: bool = True) -> dict[str, Any]:
    """Distil ``teacher`` (a model directory, ``"default"`` or a JointModel) into a ``spec`` student
    saved to ``out`` (a model directory); rerunning with the same ``out`` resumes."""
    from edge_xmr.model import JointModel, bases

    t = teacher if isinstance(teacher, JointModel) else bases.load(bases.resolve(teacher))
    out = Path(out)
    if (out / "last" / STATE).is_file():
        from .vocab import load_tokenizer

        student = bases.load(out / "last")
        student.tokenizer = load_tokenizer(out / "last")
    else:
        student = make_student(t, spec, list(train.captions))
    return Distiller(t, student, train, dev, out, cfg, spec, log=log, progress=progress).fit()


def export_student(student_dir: str | Path, bundle: str | Path, calib_data: CaptionSet | None = None,
                   n_calib: int = 128, log: Callable[[str], None] = lambda s: None, **export_kw: Any) -> dict[str, Any]:
    """Export a (distilled) model directory as a bundle (ONNX fp32 + int8) with its vocabulary
    compacted (:func:`quantize.vocab.compact_model`); calibration photos / captions from ``calib_data``."""
    from edge_xmr.model import bases
    from mobile_export import export_bundle

    from .vocab import compact_model, load_tokenizer

    src = bases.load(bases.resolve(student_dir))
    src.tokenizer = load_tokenizer(bases.resolve(student_dir))
    model = compact_model(src)
    images = texts = None
    if calib_data is not None:
        idx = np.random.default_rng(0).permutation(len(calib_data.images))[:n_calib]
        images = [calib_data.image_paths()[i] for i in sorted(idx)]
        texts = [calib_data.captions[c] for c in range(0, len(calib_data.captions), 5)][:n_calib]
    kw: dict[str, Any] = {"precisions": ("fp32", "int8"), "overwrite": True, **export_kw}
    log(f"exporting {student_dir} (vocabulary {model.cfg.text.vocab_size} tokens) to {bundle}")
    return export_bundle(model, bundle, calib_images=images, calib_texts=texts, **kw)
