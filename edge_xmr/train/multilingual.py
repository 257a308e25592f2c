"""Distil the multilingual query encoder (``edge_xmr.model.multilingual``) onto a model's text encoder.

The teacher's embeddings of the English training captions are computed once and cached; so is the
student's frozen part (the USE base up to its pooled token sum), so an epoch trains only the DNN and
the head on cached vectors. Loss per batch: 1 - cos(student, teacher) plus an in-batch InfoNCE of the
student's embedding against the teacher's (the student must rank its own caption's teacher embedding
first, which is what retrieval needs). The epoch loop is ``edge_xmr.train.loop.run_stage``.

Optional parallel pairs (a translation, its English caption) add rows whose input is the translation
and whose target is the teacher's embedding of the English: the student learns the other languages'
wording directly instead of only through its base's multilingual pretraining. Rows that share a
target (a pair and its own English caption, repeats of a pair) are not each other's negatives in the
InfoNCE.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..model.multilingual import MultilingualStudent, save_student
from .loop import Stage, run_stage


@dataclass(frozen=True)
class DistilConfig:
    epochs: int = 12
    batch_size: int = 256
    lr: float = 1e-3  # head
    lr_base: float = 2e-4  # the base's DNN (pretrained: moved gently)
    weight_decay: float = 1e-4
    temperature: float = 0.05  # of the in-batch InfoNCE
    contrastive: float = 1.0  # weight of the InfoNCE next to the cosine loss
    parallel_repeat: int = 4  # each parallel pair appears this many times per epoch (the English captions once)
    seed: int = 0
    ckpt_every: int = 10_000


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def cached(path: Path, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()`` once, kept in ``path`` (.npy)."""
    if path.is_file():
        return np.load(path)
    arr = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)
    return arr


def teacher_embeddings(teacher: Any, captions: Sequence[str], cache: Path, tag: str) -> np.ndarray:
    """(N, D) the teacher's text embeddings of ``captions`` (cached under ``cache``)."""
    key = _digest(tag, len(captions), captions[0] if captions else "", captions[-1] if captions else "")
    return cached(cache / f"teacher_{key}.npy", lambda: np.asarray(teacher.embed_texts(list(captions)), np.float32))


@torch.no_grad()
def pooled_features(student: MultilingualStudent, captions: Sequence[str], cache: Path,
                    batch_size: int = 256) -> np.ndarray:
    """(N, F + 1): the student's frozen part per caption, [token-feature sum, token count] (cached)."""
    def compute() -> np.ndarray:
        out = []
        for i in range(0, len(captions), batch_size):
            ids, mask = student.tokenizer.encode(list(captions[i:i + batch_size]), student.cfg.max_text_len)
            s, n = student.base.pooled(torch.from_numpy(ids), torch.from_numpy(mask))
            out.append(torch.cat([s, n], 1).numpy())
        return np.concatenate(out).astype(np.float32)

    c = student.cfg
    key = _digest(c.base, c.vocab_size, c.keep, c.max_text_len, len(captions), captions[0], captions[-1])
    return cached(cache / f"pooled_{key}.npy", compute)


class Distiller:
    """One distillation run; ``epoch`` / ``step`` / ``save_checkpoint`` for ``run_stage``."""

    def __init__(self, student: MultilingualStudent, pooled: np.ndarray, target: np.ndarray, out: Path,
                 cfg: DistilConfig, dev: tuple[np.ndarray, np.ndarray] | None = None,
                 log: Callable[[str], None] = lambda s: None, progress: bool = False,
                 target_id: np.ndarray | None = None):
        self.student, self.cfg, self.out, self.log, self.progress = student, cfg, out, log, progress
        self.x, self.y = torch.from_numpy(pooled), torch.from_numpy(target)
        # (N,) rows with the same id share a target (not each other's negatives); default: all distinct
        self.tid = torch.from_numpy(np.arange(len(pooled)) if target_id is None else np.asarray(target_id, np.int64))
        self.dev = None if dev is None else (torch.from_numpy(dev[0]), torch.from_numpy(dev[1]))
        student.set_trainable()
        head = [p for k, p in student.named_parameters() if p.requires_grad and k.startswith("head.")]
        base = [p for k, p in student.named_parameters() if p.requires_grad and not k.startswith("head.")]
        self.opt = torch.optim.AdamW([{"params": head, "lr": cfg.lr}, {"params": base, "lr": cfg.lr_base}],
                                     weight_decay=cfg.weight_decay)
        self.base_lrs = [cfg.lr, cfg.lr_base]
        self.steps_per_epoch = max(1, len(self.x) // cfg.batch_size)
        self.total = self.steps_per_epoch * cfg.epochs
        self.epoch = self.step = 0
        self.history: list[dict[str, Any]] = []

    def save_checkpoint(self) -> None:  # a run takes minutes: nothing to resume
        return None

    def loss(self, x: torch.Tensor, y: torch.Tensor, tid: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        e = self.student.from_pooled(x[:, :-1], x[:, -1:])  # (B, D)
        cos = (e * y).sum(-1)
        logits = e @ y.T / self.cfg.temperature  # (B, B)
        shared = (tid[:, None] == tid[None, :]) & ~torch.eye(len(e), dtype=torch.bool)  # same target, not self
        logits = logits.masked_fill(shared, float("-inf"))
        nce = F.cross_entropy(logits, torch.arange(len(e)))
        total = (1.0 - cos).mean() + self.cfg.contrastive * nce
        return total, {"cos": float(cos.detach().mean()), "nce": float(nce.detach())}

    def train_step(self, idx: np.ndarray) -> dict[str, float]:
        frac = self.step / max(1, self.total)
        for g, lr in zip(self.opt.param_groups, self.base_lrs):
            g["lr"] = lr * 0.5 * (1 + np.cos(np.pi * frac))  # cosine decay
        t = torch.from_numpy(idx)
        loss, stats = self.loss(self.x[t], self.y[t], self.tid[t])
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return stats

    @torch.no_grad()
    def dev_stats(self) -> dict[str, float]:
        """Mean cosine with the teacher on held-out captions, and how often the student's embedding is
        closest to its own caption's teacher embedding among them (R@1, percent)."""
        if self.dev is None:
            return {}
        e = self.student.from_pooled(self.dev[0][:, :-1], self.dev[0][:, -1:])
        y = self.dev[1]
        r1 = (e @ y.T).argmax(1) == torch.arange(len(e))
        return {"dev_cos": float((e * y).sum(-1).mean()), "dev_match_R@1": float(100 * r1.float().mean())}

    def fit(self) -> dict[str, Any]:
        torch.manual_seed(self.cfg.seed)
        self.student.train()
        t0 = time.time()

        def end_epoch() -> None:
            rec = {"epoch": self.epoch, "minutes": round((time.time() - t0) / 60, 2), **self.dev_stats()}
            self.history.append(rec)
            self.log(json.dumps(rec))

        run_stage(self, Stage("distil-multilingual epoch", 0, self.cfg.epochs, self.steps_per_epoch, 0,
                              self.cfg.batch_size), len(self.x), self.cfg.seed, lambda s, b: self.train_step(b),
                  lambda: None, end_epoch, self.progress, self.cfg.ckpt_every)
        self.student.eval()
        save_student(self.student, self.out)
        (self.out / "distil_log.json").write_text(json.dumps(
            {"config": asdict(self.cfg), "student": {**asdict(self.student.cfg), "keep": len(self.student.cfg.keep)},
             "history": self.history}, indent=2) + "\n")
        return {"history": self.history}


def distil(teacher: Any, student: MultilingualStudent, captions: Sequence[str], out: str | Path, cache: str | Path,
           cfg: DistilConfig = DistilConfig(), dev_captions: Sequence[str] = (), teacher_tag: str = "",
           log: Callable[[str], None] = lambda s: None, progress: bool = False,
           parallel: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """Train ``student`` onto ``teacher``'s embeddings of ``captions`` (both cached under ``cache``) and
    save it to ``out``; ``dev_captions`` give the per-epoch check; ``parallel`` holds (translation,
    English caption) pairs, each trained ``cfg.parallel_repeat`` times per epoch onto the teacher's
    embedding of its English."""
    cache = Path(cache)
    tag = teacher_tag or getattr(getattr(teacher, "cfg", None), "name", "teacher")
    x = pooled_features(student, captions, cache)
    y = teacher_embeddings(teacher, captions, cache, tag)
    first = {c: i for i, c in reversed(list(enumerate(captions)))}  # an English caption -> its target id
    tid = np.arange(len(captions))
    if parallel:
        texts, english = [t for t, _ in parallel], [e for _, e in parallel]
        xp = pooled_features(student, texts, cache)
        yp = teacher_embeddings(teacher, english, cache, tag)
        tp = np.array([first.get(e, len(captions) + i) for i, e in enumerate(english)], np.int64)
        r = max(1, cfg.parallel_repeat)
        x, y = np.concatenate([x, *[xp] * r]), np.concatenate([y, *[yp] * r])
        tid = np.concatenate([tid, *[tp] * r])
    dev = None
    if dev_captions:
        dev = (pooled_features(student, dev_captions, cache), teacher_embeddings(teacher, dev_captions, cache, tag))
    student.cfg = type(student.cfg)(**{**asdict(student.cfg), "teacher": tag})
    student.base.cfg = student.cfg
    return Distiller(student, x, y, Path(out), cfg, dev, log, progress, tid).fit()
