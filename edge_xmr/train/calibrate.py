"""After training: weight interpolation of two models (WiSE-FT) and the dev calibration on its own.

``interpolate`` averages two models of the same shape in place; ``recalibrate`` reruns the end of
training — hubness banks from the training split, score weights and floors chosen on the dev split —
for a model whose weights or test-time views (``ModelConfig.views``) changed, and saves it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..data import CaptionSet
from ..model import bases
from ..model.joint import JointModel
from ..train_config import TrainConfig


@torch.no_grad()
def interpolate(model: JointModel, other: JointModel, alpha: float) -> JointModel:
    """In place: every float tensor of ``model`` becomes ``alpha * other + (1 - alpha) * model``.

    The calibrated buffers (``bases.CALIBRATED_BUFFERS``: banks, hubness weights and floors) are left
    alone — ``recalibrate`` sets them afresh. The two models must have the same configuration shape.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    theirs = other.state_dict()
    own = model.state_dict()
    missing = sorted(set(own) - set(theirs))
    if missing:
        raise ValueError(f"models differ: {missing[0]} is not in the other model")
    for k, v in own.items():
        if k in bases.CALIBRATED_BUFFERS or not v.is_floating_point():
            continue
        if theirs[k].shape != v.shape:
            raise ValueError(f"models differ: {k} has shape {tuple(v.shape)} vs {tuple(theirs[k].shape)}")
        v.copy_(alpha * theirs[k].to(v.dtype) + (1.0 - alpha) * v)
    return model


def recalibrate(model: JointModel, train: CaptionSet, dev: CaptionSet, out: str | Path,
                cfg: TrainConfig | None = None, log: Callable[[str], None] | None = None,
                half: bool = False) -> dict[str, Any]:
    """Fill the hubness banks from ``train``, choose the score weights on ``dev``, save to ``out``.

    Returns the calibration's figures (the same dict as after ``edge-xmr train``)."""
    from dataclasses import replace

    from .loop import Trainer

    cfg = replace(cfg or TrainConfig(), class_distill=0.0)  # no training step runs: no class teacher needed
    trainer = Trainer(model, train, dev, Path(out), cfg, log=log or (lambda s: None), progress=False)
    trainer.load_features()
    result = trainer.calibrate_hubness()
    bases.save(model.eval(), out, half=half)
    return result
