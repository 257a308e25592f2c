"""``edge-xmr export``: a model directory -> a checked bundle folder (thin wrapper over
``mobile_export.export_bundle``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from . import UserError
from . import options as opt

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".heic", ".heif", ".tif", ".tiff"}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export", help="export a model to a bundle (ONNX, ORT, CoreML) and check it",
        description="Export the joint model's three graphs (text encoder, image encoder, cross-encoder) "
                    "into one bundle folder with manifest.json; parity checks fail the export loudly.")
    p.add_argument("--model", required=True, help="model directory, or 'default' for the embedded model")
    p.add_argument("--out", required=True, type=Path, help="bundle folder to create")
    p.add_argument("--format", default="onnx", help="comma list of onnx, coreml (ONNX fp32 is always written)")
    p.add_argument("--precision", default="fp32", help="comma list of fp32, int8")
    p.add_argument("--calib-images", type=Path,
                   help="sample photos for the checks and int8 storage scales: a folder, or a text file "
                        "listing image paths (default: synthetic images)")
    p.add_argument("--calib-captions", type=Path,
                   help="sample captions: a text file with one per line, or a captions.tsv (image<TAB>caption)")
    p.add_argument("--max-samples", type=opt.COUNT, default=200, help="at most this many sample photos / captions")
    p.add_argument("--fusion", choices=("spec", "on", "off"), default="spec",
                   help="onnxruntime transformer fusions: spec = measure them and ship what the graph "
                        "specs say (measured slower on lite: plain graphs); on = ship fused; off = skip")
    p.add_argument("--int8-weight-only", metavar="REGEX",
                   help="MatMul/Gemm node names kept in float compute with int8 weights (e.g. 'fc2')")
    p.add_argument("--no-mobile", action="store_true", help="skip the mobile usability check and ORT format")
    p.add_argument("--coreml-target", default="iOS17", help="CoreML minimum deployment target")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    p.add_argument("--multilingual", type=Path, metavar="DIR",
                   help="add the multilingual query encoder distilled onto this model "
                        "(a directory written by 'edge-xmr distil-multilingual')")
    p.add_argument("--routing", choices=("auto", "always", "never"), default="auto",
                   help="with --multilingual: the bundle's default text encoder per query (auto: English-looking "
                        "queries to the English encoder, the rest to the multilingual one)")
    opt.add_json(p, "the export report", out_file=True)
    p.set_defaults(func=run)


def _split(value: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    items = tuple(x.strip() for x in value.split(",") if x.strip())
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise UserError(f"--{what} {value!r}: choose from {', '.join(allowed)}")
    return items


def _images(path: Path, n: int) -> list[Path]:
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    elif path.is_file():
        files = [Path(line.strip()) for line in path.read_text().splitlines() if line.strip()]
        files = [f if f.is_absolute() else path.parent / f for f in files]
    else:
        raise UserError(f"--calib-images {path}: not found")
    if not files:
        raise UserError(f"--calib-images {path}: no images found")
    return files[:n]


def _captions(path: Path, n: int) -> list[str]:
    if not path.is_file():
        raise UserError(f"--calib-captions {path}: not found")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".tsv":
        lines = [line.split("\t", 1)[1] for line in lines if "\t" in line]
        if lines and lines[0] == "caption":
            lines = lines[1:]
    if not lines:
        raise UserError(f"--calib-captions {path}: no captions found")
    return lines[:n]


def _quiet_third_party_logs() -> None:
    """Drop known-irrelevant warnings: coremltools' Linux/version notices, and onnxruntime's advice
    to pre-process before quantizing (it concerns static quantization, not the dynamic one used)."""
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    logging.getLogger().addFilter(
        lambda r: not str(r.msg).startswith("Please consider to run pre-processing before quantization"))


def run(args: argparse.Namespace) -> int:
    from mobile_export.api import FORMATS, PRECISIONS

    formats = _split(args.format, FORMATS, "format")
    precisions = _split(args.precision, PRECISIONS, "precision")
    from edge_xmr.model.bases import resolve

    model_dir = resolve(args.model)
    if not model_dir.is_dir():
        raise UserError(f"--model {args.model}: model directory {model_dir} not found")
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise UserError(f"--out {args.out}: exists and is not empty (add --overwrite to replace it)")
    if args.multilingual is not None and not args.multilingual.is_dir():
        raise UserError(f"--multilingual {args.multilingual}: directory not found")
    if "coreml" in formats:
        from mobile_export.coreml_export import coreml_available

        if not coreml_available():
            raise UserError("--format coreml needs coremltools: pip install 'edge-xmr[coreml]'")
    images = _images(args.calib_images, args.max_samples) if args.calib_images else None
    captions = _captions(args.calib_captions, args.max_samples) if args.calib_captions else None

    from mobile_export import ExportError, export_bundle

    _quiet_third_party_logs()
    try:
        report = export_bundle(model_dir, args.out, formats=formats, precisions=precisions, calib_images=images,
                               calib_texts=captions, fusion=args.fusion, int8_weight_only=args.int8_weight_only,
                               mobile=not args.no_mobile, coreml_target=args.coreml_target,
                               overwrite=args.overwrite, multilingual=args.multilingual, routing=args.routing)
        status = 0
    except ExportError as e:
        report, status = e.report, 1
    opt.write_json(args.json_out, report)
    if args.json:
        opt.print_json(report)
    else:
        print(format_report(report) + "\n")
    if status:
        failed = [k for k, ok in report["checks"].items() if not ok]
        print(f"EXPORT FAILED: {', '.join(failed)}; nothing was written to {args.out}",
              file=sys.stderr if args.json else sys.stdout)
    elif not args.json:
        print(f"bundle written to {args.out}")
    return status


def format_report(r: dict[str, Any]) -> str:
    """A human-readable summary of an export report."""
    out = [f"model {r['model'].get('name')} ({r['model'].get('base')})  id {r['model'].get('id', '-')[:16]}",
           "time (s): " + ", ".join(f"{k} {v}" for k, v in r["time_s"].items())]
    if r.get("sizes"):
        out.append("sizes (MB = 10^6 bytes):")
        for v, s in r["sizes"].items():
            out.append(f"  {v:12s} " + "  ".join(f"{k} {x:.2f}" for k, x in s.items()))
    out.append("fp32 vs PyTorch, max abs diff: " + ", ".join(
        f"{g} {x['max_abs_diff']:.1e}{'' if x['ok'] else ' FAIL'}" for g, x in r.get("parity_fp32", {}).items()))
    for g, f in r.get("fusion", {}).items():
        out.append(f"fusion {g}: {f['fused_ops']}: {f['ms_plain']} -> {f['ms_fused']} ms "
                   f"({f['speedup']}x), {'kept' if f['kept'] else 'not kept'}")
    if "parity_int8" in r:
        p = r["parity_int8"]
        out.append(f"int8 vs fp32 ({p['n_images']} photos, {p['n_texts']} captions): "
                   f"text cos {p['text_cosine']['mean']} (min {p['text_cosine']['min']}), "
                   f"image cos {p['image_cosine']['mean']} (min {p['image_cosine']['min']}), "
                   f"retrieval top-10 overlap {p['retrieval_top10_overlap']['mean']}/"
                   f"{p['retrieval_top10_overlap']['k']}{'' if p['ok'] else '  FAIL'}")
    for p, rt in r.get("runtime", {}).items():
        out.append(f"runtime bundle {p} vs PyTorch: same top-10 {rt['retrieval_same_top10']:.0%}, "
                   f"rerank same {rt['rerank_same_top10']:.0%}, emb diff {rt['embedding_max_abs_diff']:.1e}"
                   f"{'' if rt['ok'] else '  FAIL'}")
    def ops(names: list[str]) -> str:
        return " ".join(n.removeprefix("ai.onnx:") for n in names) or "none"

    if r.get("mobile"):
        out.append("ops that fall back to the CPU (onnxruntime mobile usability check):")
    for p, gs in r.get("mobile", {}).items():
        for g, m in gs.items():
            u = m["usability"]
            out.append(f"  {p} {g}: NNAPI: {ops(u['NNAPI']['fallback_ops'])} | "
                       f"CoreML: {ops(u['CoreML_MLProgram']['fallback_ops'])}")
    if r.get("multilingual"):
        m = r["multilingual"]
        out.append("multilingual encoder: fp32 vs PyTorch max abs diff " + f"{m['fp32']['max_abs_diff']:.1e}"
                   + (f", int8 vs fp32 cos min {m['int8']['cos_min']:.4f}" if "int8" in m else "")
                   + ", sizes " + ", ".join(f"{v} {x:.1f} MB" for v, x in m["sizes_mb"].items()))
    for v, gs in r.get("coreml", {}).items():
        out.append(f"coreml {v}: " + ", ".join(f"{g} {c['size_mb']} MB{'' if c['ok'] else ' FAIL ' + str(c['problems'])}"
                                               for g, c in gs.items()))
    return "\n".join(out)
