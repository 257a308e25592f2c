"""Benchmark the export of the default-size (``lite``) model: both formats, both precisions.

Exports the trained default model when it exists (edge_xmr/assets/default_model), else a freshly built
``lite`` model saved as a model directory; checks int8 on real Flickr8k dev photos and captions; prints
a table and writes the numbers as JSON.

    python bench/bench_export.py --json bench/results/export_lite.json
    python bench/bench_export.py --graph-forms --json bench/results/graph_forms_lite.json

``--graph-forms`` compares, in one run, the CPU latency of each graph exported from the model's own
methods (the graphs shipped before ``mobile_export/graphs.py``) with the graph exported from its
accelerator-friendly form (shipped now), fp32 and int8 (the export's quantization), and the mobile
usability checker's verdict for both and for the fixed-shape mobile variant.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FLICKR = REPO.parent / "shared" / "data" / "flickr8k"


def flickr_dev(n: int) -> tuple[list[Path], list[str]]:
    """First ``n`` dev photos and the first caption of each (read in place, never copied)."""
    names = (FLICKR / "splits" / "dev.txt").read_text().split()[:n]
    caps: dict[str, str] = {}
    for line in (FLICKR / "captions.tsv").read_text().splitlines()[1:]:
        img, cap = line.split("\t", 1)
        caps.setdefault(img, cap)
    return [FLICKR / "images" / f for f in names], [caps[f] for f in names]


def speed_table(bundle: Path, model_dir: Path, threads: int = 1) -> dict[str, dict[str, float]]:
    """ms per call (best of runs, one thread): PyTorch eager vs the bundle's ONNX fp32 / int8."""
    import torch

    from edge_xmr.model import load
    from mobile_export.optimize import time_sessions
    from mobile_export.specs import GRAPHS

    model = load(model_dir)
    torch.set_num_threads(threads)
    out: dict[str, dict[str, float]] = {}
    cases = {"text_encoder": {"batch": 32, "length": 20}, "text_encoder@1": {"batch": 1, "length": 12},
             "image_encoder": {"batch": 16}, "cross_encoder": {"n": 100, "length": 16}}
    for case, sizes in cases.items():
        g = case.split("@")[0]
        spec = GRAPHS[g]
        feeds = spec.dummy(model.cfg, sizes, np.random.default_rng(0))
        paths = {p: bundle / "onnx" / p / f"{g}.onnx" for p in ("fp32", "int8")}
        ms = time_sessions(paths, feeds, reps=5, threads=threads, budget_s=2.0)
        module = spec.wrapper(model).eval()
        args = [torch.from_numpy(feeds[t.name]) for t in spec.inputs]
        with torch.no_grad():
            module(*args)
            ts = []
            for _ in range(5):
                t = time.perf_counter()
                module(*args)
                ts.append(time.perf_counter() - t)
        out[f"{case} {sizes}"] = {"torch_ms": round(min(ts) * 1e3, 2), "onnx_fp32_ms": ms["fp32"],
                                  "onnx_int8_ms": ms["int8"]}
    return out


FORM_CASES = {"text_encoder": {"batch": 32, "length": 20}, "text_encoder@1": {"batch": 1, "length": 12},
              "image_encoder": {"batch": 16}, "image_encoder@1": {"batch": 1},
              "cross_encoder": {"n": 100, "length": 16}}


def graph_forms(model_dir: Path, threads: int = 1) -> dict[str, object]:
    """Old (model methods) vs new (graphs.py forms) exported graphs: ms per call (best of interleaved
    runs, ``threads`` intra-op threads), node counts and the mobile checker's verdicts.

    Speed: median ms of each and the median of the paired ratio old / new (> 1: the new graph is faster)
    over 21 back-to-back pairs, so load from other processes on a shared CPU shifts both sides alike."""
    import collections
    from dataclasses import replace

    import onnx
    import torch

    from edge_xmr.model import load
    from mobile_export import parity
    from mobile_export.mobile import export_mobile, summary, usability
    from mobile_export.onnx_export import export_onnx
    from mobile_export.optimize import fusion_speedup
    from mobile_export.quantize_int8 import quantize_int8
    from mobile_export.specs import GRAPHS

    model = load(model_dir).eval()
    torch.set_num_threads(threads)
    out: dict[str, object] = {"threads": threads, "cpu": parity.cpu_isa(), "graphs": {}, "speed_ms": {}}
    with tempfile.TemporaryDirectory() as tmp:
        files: dict[str, dict[str, Path]] = {}
        for g, spec in GRAPHS.items():
            files[g] = {}
            for form, s in (("old", replace(spec, graph=spec.wrapper)), ("new", spec)):
                fp32 = export_onnx(model, s, Path(tmp) / form / f"{g}.onnx")
                int8 = Path(tmp) / form / f"{g}.int8.onnx"
                quantize_int8(fp32, int8, weight_only=spec.int8_weight_only)
                files[g][f"{form}_fp32"], files[g][f"{form}_int8"] = fp32, int8
            mobile = Path(tmp) / "mobile" / f"{g}.onnx"
            fixed = export_mobile(model, spec, mobile)
            out["graphs"][g] = {
                "ops": {form: dict(collections.Counter(n.op_type for n in onnx.load(str(files[g][f"{form}_fp32"])).graph.node))
                        for form in ("old", "new")},
                "parity_vs_torch": {form: parity.torch_vs_onnx(model, spec, files[g][f"{form}_fp32"])["max_abs_diff"]
                                    for form in ("old", "new")},
                "checker": {"old (dynamic shapes)": summary(usability(files[g]["old_fp32"])),
                            "new (dynamic shapes)": summary(usability(files[g]["new_fp32"])),
                            f"mobile variant {fixed['sizes']}": summary(usability(mobile))},
                "mobile_parity_vs_torch": parity.fixed_vs_torch(model, spec, mobile, fixed["sizes"])["max_abs_diff"],
            }
        for case, sizes in FORM_CASES.items():
            g = case.split("@")[0]
            feeds = GRAPHS[g].dummy(model.cfg, sizes, np.random.default_rng(0))
            row = {}
            for p in ("fp32", "int8"):  # old / new timed back to back, order alternating (optimize.fusion_speedup)
                r = fusion_speedup(files[g][f"old_{p}"], files[g][f"new_{p}"], feeds, rounds=21, threads=threads)
                row.update({f"old_{p}_ms": r["ms_plain"], f"new_{p}_ms": r["ms_fused"], f"old/new {p}": r["speedup"]})
            out["speed_ms"][f"{case} {sizes}"] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200, help="Flickr8k dev photos used by the checks")
    ap.add_argument("--formats", default="onnx,coreml")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "export_lite.json")
    ap.add_argument("--keep", type=Path, default=None, help="keep the bundle in this folder")
    ap.add_argument("--no-speed", action="store_true", help="skip the PyTorch vs ONNX speed table")
    ap.add_argument("--graph-forms", action="store_true", help="only the old vs new graph forms comparison")
    args = ap.parse_args(argv)
    if args.graph_forms:
        from edge_xmr.model.bases import default_model_dir

        result = graph_forms(default_model_dir())
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
        for k, v in result["speed_ms"].items():
            print(f"{k:45s} " + "  ".join(f"{a} {b}" for a, b in v.items()))
        print(f"\nwrote {args.json}")
        return 0

    from edge_xmr.config import preset
    from edge_xmr.model import build, save
    from edge_xmr.model.bases import default_model_dir
    from mobile_export import ExportError, export_bundle

    images, texts = flickr_dev(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        if (default_model_dir() / "config.json").is_file():
            model_dir, source = default_model_dir(), "default (trained)"
        else:
            model_dir, source = save(build(preset("lite")), Path(tmp) / "lite_model"), "lite (untrained heads)"
        out = args.keep or Path(tmp) / "bundle"
        t = time.perf_counter()
        try:
            report = export_bundle(model_dir, out, formats=tuple(args.formats.split(",")),
                                   precisions=tuple(args.precisions.split(",")), calib_images=images,
                                   calib_texts=texts, overwrite=True)
        except ExportError as e:
            report = e.report
            print(f"EXPORT FAILED: {e}", file=sys.stderr)
        wall = time.perf_counter() - t
        result = {"model": source, "export_wall_s": round(wall, 1), "report": report}
        if report.get("ok") and not args.no_speed:
            result["speed_ms"] = speed_table(out, model_dir)
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"\nwrote {args.json}")
    return 0 if report.get("ok") else 1


def print_table(result: dict) -> None:
    r = result["report"]
    print(f"model: {result['model']}   export wall time: {result['export_wall_s']} s   ok: {r.get('ok')}")
    print("stages (s): " + ", ".join(f"{k} {v}" for k, v in r["time_s"].items()))
    print("\nsizes (MB = 1e6 bytes)")
    for v, s in r.get("sizes", {}).items():
        print(f"  {v:12s} " + "  ".join(f"{k} {x:.2f}" for k, x in s.items()))
    print("\nfp32 parity vs PyTorch (max abs diff): " + ", ".join(
        f"{g} {x['max_abs_diff']:.2e}" for g, x in r["parity_fp32"].items()))
    if "parity_int8" in r:
        p = r["parity_int8"]
        print(f"int8 vs fp32 on {p['n_images']} photos / {p['n_texts']} captions: "
              f"text cos mean {p['text_cosine']['mean']} min {p['text_cosine']['min']}, "
              f"image cos mean {p['image_cosine']['mean']} min {p['image_cosine']['min']}, "
              f"retrieval top-10 overlap {p['retrieval_top10_overlap']['mean']}/10, "
              f"joint-pass term top-10 overlap {p['joint_top10_overlap']['mean']}/10")
    for g, f in r.get("fusion", {}).items():
        print(f"fusion {g}: {f['fused_ops']} plain {f['ms_plain']} ms fused {f['ms_fused']} ms "
              f"speed-up {f['speedup']}x kept {f['kept']}")
    for p, rt in r.get("runtime", {}).items():
        print(f"runtime {p}: same top-10 {rt['retrieval_same_top10']}, overlap {rt['retrieval_top10_overlap']}, "
              f"rerank same {rt['rerank_same_top10']}, emb diff {rt['embedding_max_abs_diff']:.2e}")
    for p, gs in r.get("mobile", {}).items():
        for g, m in gs.items():
            u = m["usability"]
            print(f"mobile {p} {g}: NNAPI fallback {u['NNAPI']['fallback_ops']}; "
                  f"CoreML(MLProgram) fallback {u['CoreML_MLProgram']['fallback_ops']}")
    for v, gs in r.get("coreml", {}).items():
        print(f"coreml {v}: " + ", ".join(f"{g} {c['size_mb']} MB ok={c['ok']} deq={c['dequantize_ops']}"
                                          for g, c in gs.items()))
    if "speed_ms" in result:
        print("\nspeed (ms, 1 thread, best of runs)")
        for k, v in result["speed_ms"].items():
            print(f"  {k:45s} " + "  ".join(f"{a} {b}" for a, b in v.items()))


if __name__ == "__main__":
    sys.exit(main())
