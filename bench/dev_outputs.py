"""Shared by the dev benches: the model, Flickr8k dev and its photos' and captions' embeddings.

The photos' embeddings and image tokens come from the cached tower features (EDGE_XMR_CACHE), in
each view the model indexes photos in; torch, CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Dev:
    model: Any  # the JointModel
    dev: Any  # edge_xmr.data captions of the dev split
    trainer: Any  # the Trainer holding the dev features (t2i_set / i2t_set)
    iemb: Any  # (I, D) torch: every dev photo's embedding
    itok: Any  # (I, T, Dt) torch: their image tokens
    temb: Any  # (C, D) torch: every dev caption's embedding


def load_dev(model: str, data: str, threads: int) -> Dev:
    import torch

    from edge_xmr.data import read_captions
    from edge_xmr.model import bases
    from edge_xmr.train.loop import Trainer
    from edge_xmr.train_config import TrainConfig

    torch.set_num_threads(threads)
    m = bases.load(bases.resolve(model)).eval()
    train, dev = read_captions(data, "train"), read_captions(data, "dev")
    trainer = Trainer(m, train, dev, Path("/nonexistent"), TrainConfig(class_distill=0.0), progress=False)
    trainer.load_dev_features()
    with torch.no_grad():
        iemb, itok = trainer.dev_outputs()
        temb = torch.from_numpy(m.embed_texts(list(dev.captions)))
    return Dev(m, dev, trainer, iemb, itok, temb)
