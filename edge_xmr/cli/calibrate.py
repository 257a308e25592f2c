"""``edge-xmr calibrate``: rerun the dev calibration of a trained model, optionally after averaging its
weights with another model's (WiSE-FT) or changing the test-time views photos are encoded in."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from . import UserError
from . import options as opt


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="recalibrate a trained model's rerank score on a dev split "
                                         "(optionally averaged with another model first)")
    p.add_argument("--model", required=True, help="trained model directory (or 'default')")
    p.add_argument("--data", required=True, help="caption folder (images/, captions.tsv, splits/)")
    p.add_argument("--split", default="train", help="split the hubness banks are drawn from (default: train)")
    p.add_argument("--eval-split", default="dev", help="split the score weights are chosen on (default: dev)")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--mix", default=None, help="another model directory of the same shape to average with")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of --mix in the average (default: 0.5)")
    p.add_argument("--views", default=None, metavar="SPEC",
                   help="test-time views each photo is encoded in and averaged: comma-separated sides in pixels, "
                        "'m' for mirrored, e.g. 224,320m (the photo + its mirror image enlarged to 320); "
                        "'none' for the photo alone (default: as the model)")
    p.add_argument("--hub-bank", type=opt.COUNT, default=None, help="training captions in the hubness bank")
    p.add_argument("--hub-bank-images", type=opt.COUNT, default=None, help="training photos in the caption bank")
    p.add_argument("--half", action="store_true", help="save the compact form (the embedded default's)")
    opt.add_json(p, "the calibration result")
    p.set_defaults(func=run)


def parse_views(spec: str) -> tuple[tuple[int, bool], ...]:
    """'224,320m' -> ((224, False), (320, True)); 'none' -> ()."""
    if spec.strip().lower() == "none":
        return ()
    out = []
    for part in spec.split(","):
        part = part.strip().lower()
        mirror = part.endswith("m")
        side = part[:-1] if mirror else part
        if not side.isdigit():
            raise ValueError(f"{part!r} is not a side in pixels with an optional 'm' (mirrored)")
        out.append((int(side), mirror))
    return tuple(out)


def run(args: argparse.Namespace) -> int:
    from ..data import read_captions

    train = read_captions(args.data, args.split)
    dev = read_captions(args.data, args.eval_split)
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError("calibration needs torch: pip install torch==2.13.0 'edge-xmr[train]'") from None
    from ..model import ModelDirError, bases
    from ..train.calibrate import interpolate
    from ..train.loop import recalibrate
    from ..train_config import TrainConfig

    try:
        model = bases.load(bases.resolve(args.model))
        if args.mix:
            interpolate(model, bases.load(args.mix), args.alpha)
    except (ModelDirError, ValueError) as e:
        raise UserError(str(e)) from None
    if args.views is not None:
        try:
            model.cfg = dataclasses.replace(model.cfg, views=parse_views(args.views))
        except ValueError as e:
            raise UserError(f"--views {args.views}: {e}") from None
    cfg = TrainConfig(**{k: getattr(args, k) for k in ("hub_bank", "hub_bank_images") if getattr(args, k) is not None})
    result = recalibrate(model, train, dev, args.out, cfg, log=lambda s: print(s, file=sys.stderr, flush=True),
                         half=args.half)
    if args.json:
        opt.print_json(result)
    else:
        print(json.dumps(result))
        print(f"saved {args.out}")
    return 0
