"""Benchmark the export of the default-size (``lite``) model: both formats, both precisions.

Exports the trained default model when it exists (edge_xmr/assets/default_model), else a freshly built
``lite`` model saved as a model directory; checks int8 on real Flickr8k dev photos and captions; prints
a table and writes the numbers as JSON.

    python bench/bench_export.py --json bench/results/export_lite.json
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200, help="Flickr8k dev photos used by the checks")
    ap.add_argument("--formats", default="onnx,coreml")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "export_lite.json")
    ap.add_argument("--keep", type=Path, default=None, help="keep the bundle in this folder")
    ap.add_argument("--no-speed", action="store_true", help="skip the PyTorch vs ONNX speed table")
    args = ap.parse_args(argv)

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
