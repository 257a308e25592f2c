"""``edge-xmr distill``, ``edge-xmr quantize`` and ``edge-xmr check`` (thin wrappers over ``quantize``).

- distill: train a smaller shared-weight student to match a teacher model directory;
- quantize: add quantized variants (static QDQ int8, CoreML int8 / palettised) to a bundle, each with
  its measured accuracy in the manifest;
- check: the accuracy gate, candidate bundle vs reference bundle on labelled photos. Exit status 0 when
  the metric drops by at most the threshold, 1 when it drops more, 2 on a usage or input error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import UserError
from . import options as opt


def register(subparsers: Any) -> None:
    _register_distill(subparsers)
    _register_quantize(subparsers)
    _register_check(subparsers)


# ---- check ----------------------------------------------------------------------------------------
def _register_check(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "check", help="accuracy gate: a candidate bundle vs a reference bundle on labelled photos",
        description="Run both bundles (torch-free runtime) on the same caption folder, report every recall "
                    "of 'edge-xmr eval' for both and the drop, embedding cosines and top-10 agreement. "
                    "Exit 0: the metric dropped by at most --max-drop points; 1: it dropped more; "
                    "2: usage or input error.")
    p.add_argument("--reference", required=True, help="reference bundle folder")
    p.add_argument("--candidate", required=True, help="candidate bundle folder")
    p.add_argument("--data", required=True, help="caption folder (images/, captions.tsv, splits/)")
    p.add_argument("--split", default=None, help="split name (default: every captioned image)")
    p.add_argument("--metric", default="rerank@20.t2i.R@1", help="gated metric METHOD.DIR.R@K "
                   "(METHOD bi_encoder, rerank@N, cross_encoder; default rerank@20.t2i.R@1)")
    p.add_argument("--max-drop", type=float, default=0.5, help="largest allowed drop in points (default 0.5)")
    p.add_argument("--max-queries", type=opt.COUNT, default=None, help="deterministic sample of N queries per direction")
    p.add_argument("--reference-precision", default="fp32", help="ONNX variant of the reference (default fp32)")
    p.add_argument("--candidate-precision", default="fp32",
                   help="ONNX variant of the candidate: fp32, int8, or one added by 'edge-xmr quantize'")
    p.add_argument("--rerank", default="10,20,50", help="rerank depths reported (default 10,20,50)")
    p.add_argument("--cross-all", action="store_true", help="also run the cross-encoder over every pair (slow)")
    p.add_argument("--seed", type=int, default=0, help="query sampling seed")
    p.add_argument("--threads", type=opt.THREADS, default=0, help="onnxruntime threads (0: its default)")
    opt.add_json(p, "the report", out_file=True)
    p.add_argument("--markdown", type=Path, default=None, help="write a markdown report (pull-request comment)")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=run_check)


def _ints(value: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(k) for k in value.split(",") if k.strip())
    except ValueError:
        raise UserError(f"{flag}: expected comma-separated integers, got {value!r}") from None


def run_check(args: argparse.Namespace) -> int:
    from quantize.gate import check, render_markdown, render_text

    for flag, path in (("--reference", args.reference), ("--candidate", args.candidate), ("--data", args.data)):
        if not Path(path).is_dir():
            raise UserError(f"{flag} {path}: folder not found")
    say = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    rep = check(args.reference, args.candidate, args.data, metric=args.metric, max_drop=args.max_drop,
                split=args.split, max_queries=args.max_queries, reference_precision=args.reference_precision,
                candidate_precision=args.candidate_precision, rerank_ks=_ints(args.rerank, "--rerank"),
                cross_all=args.cross_all, threads=args.threads or None, seed=args.seed, progress=say)
    opt.write_json(args.json_out, rep.to_dict())
    if args.json:
        opt.print_json(rep.to_dict())
    else:
        print(render_text(rep))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(render_markdown(rep))
    return 0 if rep.passed else 1


# ---- quantize -------------------------------------------------------------------------------------
def _register_quantize(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "quantize", help="add quantized variants to a bundle (static int8, CoreML int8 / palettised)",
        description="Add quantized graph variants to an exported bundle, each written into the manifest with "
                    "its measured accuracy against the bundle's fp32 graphs. Dynamic per-channel int8 "
                    "(onnx/int8) is written by 'edge-xmr export --precision fp32,int8'.")
    p.add_argument("--bundle", required=True, type=Path, help="bundle folder (changed in place)")
    p.add_argument("--variant", default="int8-static",
                   help="comma list of: int8-static (QDQ, MatMul/Gemm/Conv, calibrated), coreml-int8 "
                        "(linear int8 weights), coreml-pal6, coreml-pal4 (k-means palettised weights)")
    p.add_argument("--calib-images", type=Path, help="calibration photos: a folder or a text file of paths")
    p.add_argument("--calib-captions", type=Path, help="calibration captions: text file or captions.tsv")
    p.add_argument("--max-samples", type=opt.COUNT, default=128, help="calibration photos / captions (default 128)")
    p.add_argument("--data", type=Path, help="caption folder to measure each variant's recall on (optional)")
    p.add_argument("--split", default=None, help="split of --data")
    p.add_argument("--max-queries", type=opt.COUNT, default=None, help="query sample of the recall measurement")
    p.add_argument("--overwrite", action="store_true", help="replace a variant that is already there")
    opt.add_json(p, "the report of each variant")
    p.set_defaults(func=run_quantize)


def run_quantize(args: argparse.Namespace) -> int:
    from .export import _captions, _images

    variants = tuple(v.strip() for v in args.variant.split(",") if v.strip())
    from quantize.variants import VARIANTS, add_variants

    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise UserError(f"--variant {args.variant!r}: choose from {', '.join(VARIANTS)}")
    if not (args.bundle / "manifest.json").is_file():
        raise UserError(f"--bundle {args.bundle}: not a bundle folder (no manifest.json)")
    images = _images(args.calib_images, args.max_samples) if args.calib_images else None
    captions = _captions(args.calib_captions, args.max_samples) if args.calib_captions else None
    if args.data is not None and not args.data.is_dir():
        raise UserError(f"--data {args.data}: folder not found")
    report = add_variants(args.bundle, variants, calib_images=images, calib_texts=captions, data=args.data,
                          split=args.split, max_queries=args.max_queries, overwrite=args.overwrite,
                          progress=lambda s: print(s, file=sys.stderr, flush=True))
    if args.json:
        opt.print_json(report)
        return 0
    for v, r in report.items():
        line = f"{v}: {r['size_mb']:.2f} MB"
        par = r.get("parity_vs_fp32")
        if par:
            line += (f", cosine vs fp32: text {par['text_cosine']['mean']}, image {par['image_cosine']['mean']}, "
                     f"tokens {par['token_cosine']['mean']}")
        rec = r.get("recall_vs_fp32")
        if rec:
            line += f", {rec['metric']} fp32 {rec['fp32']:.2f} -> {rec['variant']:.2f} (drop {rec['drop']:+.2f})"
        print(line + (f"; {r['note']}" if r.get("note") else ""))
    return 0


# ---- distill --------------------------------------------------------------------------------------
def _register_distill(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "distill", help="train a smaller shared-weight student to match a teacher model",
        description="Distil a teacher model directory into a smaller student preset: KL to the teacher's "
                    "bi-encoder similarity distributions over a batch and to its cross-encoder scores over "
                    "the bi-encoder's top-k candidates, plus the ground-truth losses. Rerun to resume.")
    p.add_argument("--teacher", required=True, help="teacher model directory, or 'default'")
    p.add_argument("--data", required=True, help="caption folder (images/, captions.tsv, splits/)")
    p.add_argument("--split", default="train", help="training split (default train)")
    p.add_argument("--eval-split", default=None, help="dev split: periodic evaluation, best checkpoint, hubness")
    p.add_argument("--student", default="lite-half", help="student preset (default lite-half)")
    p.add_argument("--out", required=True, type=Path, help="student model directory (rerun to resume)")
    p.add_argument("--bundle", type=Path, default=None,
                   help="also export the student as a compact bundle (fp32 + int8) to this folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (none either when stderr is no terminal)")
    from quantize.distill_config import DistillConfig
    from dataclasses import fields

    for f in fields(DistillConfig):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                       help=f"(default: {f.default})")
    p.set_defaults(func=run_distill)


def run_distill(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from quantize.distill_config import STUDENTS, DistillConfig

    from ..data import read_captions

    if args.student not in STUDENTS:
        raise UserError(f"--student {args.student!r}: choose from {', '.join(STUDENTS)}")
    train = read_captions(args.data, args.split)
    dev = read_captions(args.data, args.eval_split) if args.eval_split else None
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError("distillation needs torch: pip install torch==2.13.0 'edge-xmr[train]'") from None
    from quantize.distill import distill, export_student

    cfg = DistillConfig(**{f.name: getattr(args, f.name) for f in fields(DistillConfig)})
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    result = distill(args.teacher, train, dev, args.out, STUDENTS[args.student], cfg, log=log,
                     progress=not args.no_progress and opt.is_terminal(sys.stderr))
    print(f"saved student {args.out} (best dev rerank@20 t2i R@1 {result['best']:.2f})")
    if args.bundle:
        rep = export_student(args.out, args.bundle, calib_data=dev or train, log=log)
        print(f"bundle {args.bundle}: " + ", ".join(f"{v} {s['total']:.2f} MB" for v, s in rep["sizes"].items()))
    return 0
