"""``edge-xmr eval``: Recall@1/5/10 of bi-encoder, rerank@k and cross-encoder on a caption folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..multilingual import ROUTINGS
from . import UserError
from . import options as opt


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate retrieval (bi-encoder, rerank@k, cross-encoder) on a caption folder")
    p.add_argument("--model", required=True,
                   help="model directory, 'default' (the embedded default model) or a bundle directory")
    p.add_argument("--data", required=True, help="caption folder (images/, captions.tsv, splits/)")
    p.add_argument("--split", default=None, help="split name (default: every captioned image)")
    p.add_argument("--max-queries", type=opt.COUNT, default=None, help="deterministic sample of N queries per direction")
    p.add_argument("--ce-subset", type=opt.COUNT, default=None,
                   help="restrict the comparison to N images (cross-encoder over all is expensive)")
    p.add_argument("--rerank", default="10,20,50", help="rerank depths (default 10,20,50)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--skip-cross-all", action="store_true",
                   help="do not run the cross-encoder over all candidates (it scores every pair)")
    p.add_argument("--queries", default=None, metavar="FILE",
                   help="only these photos (one name per line) and their captions are queries; the gallery stays "
                        "whole (e.g. edge_xmr/train/dev_report.txt: dev's reporting half)")
    p.add_argument("--queries-lang", default=None, metavar="FILE",
                   help="text -> image per language instead: a TSV 'image<TAB>en<TAB>de...' of the same photos' "
                        "captions in several languages (e.g. bench/multilingual/dev_report_captions.tsv); needs a bundle")
    p.add_argument("--routing", choices=ROUTINGS, default=None,
                   help="bundle with a multilingual encoder: which encoder a query goes to (default: the manifest's)")
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32", help="bundle graphs to run")
    opt.add_json(p, "the results", out_file=True)
    p.add_argument("--threads", type=opt.THREADS, default=0, help="CPU threads (0: all)")
    p.set_defaults(func=run)


def load_encoder(model: str, threads: int = 0, routing: str | None = None, precision: str = "fp32"):
    """A model directory / 'default' (PyTorch) or a bundle directory (onnxruntime)."""
    path = Path(model)
    if (path / "manifest.json").is_file():
        from ..bundle import Bundle

        return Bundle.load(path, precision=precision, threads=threads or None, routing=routing)  # type: ignore[arg-type]
    if routing or precision != "fp32":
        raise UserError("--routing and --precision apply to a bundle directory")
    try:
        import torch
    except ImportError:
        raise UserError("evaluating a model directory needs torch: pip install torch==2.13.0 'edge-xmr[train]' "
                        "(or pass an exported bundle directory)") from None
    from ..model import bases

    if threads:
        torch.set_num_threads(threads)
    return bases.load(bases.resolve(model))


def run(args: argparse.Namespace) -> int:
    from ..data import DataError, read_captions, read_names, read_query_table
    from ..evaluate import EvalSettings, evaluate

    try:
        ks = tuple(int(k) for k in args.rerank.split(",") if k.strip())
    except ValueError:
        raise UserError(f"--rerank: expected comma-separated integers, got {args.rerank!r}") from None
    try:
        data = read_captions(args.data, args.split)
        queries = frozenset(read_names(args.queries)) if args.queries else None
        table = read_query_table(args.queries_lang) if args.queries_lang else None
    except DataError as e:
        raise UserError(str(e)) from None
    if table is not None and not (Path(args.model) / "manifest.json").is_file():
        raise UserError("--queries-lang evaluates a bundle directory (export one with 'edge-xmr export')")
    enc = load_encoder(args.model, args.threads, args.routing, args.precision)
    if table is not None:
        return _run_languages(args, enc, data, table, ks)
    settings = EvalSettings(rerank_ks=ks, max_queries=args.max_queries, ce_subset=args.ce_subset, seed=args.seed,
                            cross_all=not args.skip_cross_all, query_images=queries)
    res = evaluate(enc, data, settings, progress=lambda s: print(s, file=sys.stderr, flush=True))
    res["model"] = str(args.model)
    res["data"] = {"root": str(args.data), "split": args.split, "queries": args.queries}
    return _emit(args, res, format_table)


def _emit(args: argparse.Namespace, res: dict, table) -> int:
    """The results: to --json-out, then as JSON or as a table on stdout."""
    opt.write_json(args.json_out, res)
    if args.json:
        opt.print_json(res)
    else:
        print(table(res))
    return 0


def _run_languages(args: argparse.Namespace, enc, data, table, ks: tuple[int, ...]) -> int:
    from ..data import DataError
    from ..evaluate import evaluate_languages

    try:
        res = evaluate_languages(enc, data, table, rerank_k=max(ks) if ks else 20,
                                 progress=lambda s: print(s, file=sys.stderr, flush=True))
    except DataError as e:
        raise UserError(str(e)) from None
    res["model"] = str(args.model)
    res["routing"] = enc.router.mode
    res["precision"] = args.precision
    res["data"] = {"root": str(args.data), "split": args.split, "queries_lang": args.queries_lang}
    return _emit(args, res, format_language_table)


def format_language_table(res: dict) -> str:
    k = res["rerank_k"]
    lines = [f"{res['n_images']} images, routing {res['routing']}, {res['precision']}",
             f"{'lang':<6}{'n':>5}" + "".join(f"{m + ' ' + r:>12}" for m in ("bi", f"rr@{k}") for r in ("R@1", "R@5", "R@10"))
             + f"{'multi':>7}{'ms/query':>10}"]
    for lang, r in res["languages"].items():
        vals = "".join(f"{r[m][x]:>12.1f}" for m in ("bi_encoder", f"rerank@{k}") for x in ("R@1", "R@5", "R@10"))
        lines.append(f"{lang:<6}{r['queries']:>5}{vals}{r['multilingual_share']:>7.2f}{r['latency_ms']:>10.2f}")
    return "\n".join(lines)


def format_table(res: dict) -> str:
    head = f"{'method':<16}" + "".join(f"{d + ' ' + k:>10}" for d in ("t2i", "i2t") for k in ("R@1", "R@5", "R@10"))
    lines = [f"{res['n_images']} images, {res['n_captions']} captions, queries {res['n_queries']}", head + f"{'ms/query':>10}"]
    for m, r in res["results"].items():
        vals = "".join(f"{r[d][k]:>10.1f}" for d in ("t2i", "i2t") for k in ("R@1", "R@5", "R@10"))
        lines.append(f"{m:<16}{vals}{res['latency_ms'].get(m, float('nan')):>10.2f}")
    return "\n".join(lines)
