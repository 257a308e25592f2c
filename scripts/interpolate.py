"""WiSE-FT-style weight interpolation of two models of the same shape, then the dev calibration.

    python scripts/interpolate.py TEACHER_DIR STUDENT_DIR ALPHA OUT_DIR [--data ../shared/data/flickr8k]

Every float tensor becomes ALPHA * teacher + (1 - ALPHA) * student (the calibrated buffers are set
afresh by the hubness calibration on the dev split). Needs the [train] extra.
"""

from __future__ import annotations

import argparse
import json

import torch

from edge_xmr.data import read_captions
from edge_xmr.model import bases
from edge_xmr.train.loop import Trainer
from edge_xmr.train_config import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("teacher")
    ap.add_argument("student")
    ap.add_argument("alpha", type=float)
    ap.add_argument("out")
    ap.add_argument("--data", default="../shared/data/flickr8k")
    a = ap.parse_args()
    t, s = bases.load(a.teacher), bases.load(a.student)
    ts = t.state_dict()
    with torch.no_grad():
        for k, v in s.state_dict().items():
            if k in bases.CALIBRATED_BUFFERS or not v.is_floating_point() or k not in ts:
                continue
            if ts[k].shape != v.shape:
                raise SystemExit(f"{k}: shapes differ ({tuple(ts[k].shape)} vs {tuple(v.shape)})")
            v.copy_(a.alpha * ts[k] + (1 - a.alpha) * v)
    tr = Trainer(s, read_captions(a.data, "train"), read_captions(a.data, "dev"), a.out,
                 TrainConfig(hub_bank=512), log=print, progress=False)
    tr.load_features()
    print(json.dumps(tr.calibrate_hubness()), flush=True)
    bases.save(s.eval(), a.out)


if __name__ == "__main__":
    main()
