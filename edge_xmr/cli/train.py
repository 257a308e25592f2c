"""``edge-xmr train``: joint training of the shared-weight model on a caption folder."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from . import UserError
from . import options as opt


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the joint model (bi-encoder + cross-encoder) on a caption folder")
    p.add_argument("--data", required=True, help="caption folder (images/, captions.tsv, splits/)")
    p.add_argument("--split", default="train", help="training split name (default: train)")
    p.add_argument("--eval-split", default=None, help="split for periodic dev evaluation and best-model choice")
    p.add_argument("--base", default="lite", choices=["lite", "lite1", "lite2", "clip", "tiny"],
                   help="pretrained towers (lite: EfficientNet-Lite0 at 224; lite1 / lite2: Lite1 at 240 / Lite2 at 260)")
    p.add_argument("--clip-path", default="", help="CLIPModel checkpoint dir or hub id (base clip)")
    p.add_argument("--out", required=True, help="output model directory (rerun to resume)")
    p.add_argument("--half", action="store_true", help="store weights as float16 (the embedded default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (none either when stderr is no terminal)")
    p.add_argument("--tower-blocks", type=opt.int_range(0), default=None,
                   help="fine-tune the image tower's last N blocks too (lite; default: the preset's)")
    from ..train_config import TrainConfig

    for f in fields(TrainConfig):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default) if not isinstance(f.default, bool)
                       else _bool, default=f.default, help=f"(default: {f.default})")
    p.set_defaults(func=run)


def _bool(s: str) -> bool:
    return s.lower() in ("1", "true", "yes", "on")


def run(args: argparse.Namespace) -> int:
    from ..data import read_captions

    train = read_captions(args.data, args.split)
    dev = read_captions(args.data, args.eval_split) if args.eval_split else None
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError("training needs torch: pip install torch==2.13.0 'edge-xmr[train]'") from None
    from ..config import preset
    from ..model import bases
    from ..train.loop import Trainer
    from ..train_config import TrainConfig

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    out = Path(args.out)
    if (out / "last" / "config.json").is_file():
        from ..config import ModelConfig

        mcfg = ModelConfig.load(out / "last" / "config.json")
    elif args.base == "clip":
        if not args.clip_path:
            raise UserError("--base clip needs --clip-path (a CLIPModel checkpoint directory)")
        mcfg = bases.clip_config(args.clip_path)
    else:
        mcfg = preset(args.base)
    if args.tower_blocks is not None and not (out / "last" / "config.json").is_file():
        import dataclasses

        mcfg = dataclasses.replace(mcfg, tower_train_blocks=args.tower_blocks)
    try:
        model = bases.build(mcfg)
    except ValueError as e:
        raise UserError(str(e)) from None
    trainer = Trainer(model, train, dev, out, cfg, log=lambda s: print(s, file=sys.stderr, flush=True),
                      progress=not args.no_progress and opt.is_terminal(sys.stderr))
    result = trainer.fit()
    if args.half:
        bases.save(bases.load(out), out, half=True)
    print(f"saved {out} (best dev score {result['best']:.2f})")
    return 0
