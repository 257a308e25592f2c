"""The int8 text encoder on two CPUs: this machine and an emulated AVX2 CPU without VNNI.

    python bench/bench_int8_isa.py [--model default] [--data ../shared/data/flickr8k] [--captions 48]

Exports the model's text encoder to ONNX fp32, quantizes it the export's way with full-range (8-bit)
and reduced-range ([-64, 64]) int8 weights and with int8 weights in float compute (weight-only), then
runs every graph here and under ``qemu-x86_64 -cpu Haswell`` (onnxruntime then runs its int16-pair
u8s8 kernels) on the same dev captions. Prints per variant the cosine to fp32 on each CPU of the text
embedding (the bi-encoder's query) and of the token states (what the default reranker's late
interaction scores; the joint pass is off by default, so the cross-encoder graph is not measured) and,
here only, the median latency of one query's text encoding; writes bench/results/int8_isa.json.
Needs qemu-user (apt-get install qemu-user). The image encoder is weight-only int8 (float compute):
it cannot saturate.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = {"full_range": {"reduce_range": False}, "reduced_range": {"reduce_range": True},
            "weight_only": {"weight_only": "."}}


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def _latency_ms(path: Path, feeds: dict[str, np.ndarray], reps: int) -> float:
    from mobile_export import parity

    s = parity.session(path, threads=1)
    for _ in range(5):
        s.run(None, feeds)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        s.run(None, feeds)
        ts.append(time.perf_counter() - t)
    return round(1000 * float(np.median(ts)), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default="../shared/data/flickr8k")
    ap.add_argument("--captions", type=int, default=48, help="dev captions (the first N; emulation is slow)")
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--json", default="bench/results/int8_isa.json")
    args = ap.parse_args()
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        sys.exit("bench_int8_isa: qemu-x86_64 not found (apt-get install qemu-user)")
    from edge_xmr.data import read_captions
    from edge_xmr.model import bases
    from mobile_export import graph_runner, parity
    from mobile_export.onnx_export import export_onnx
    from mobile_export.quantize_int8 import quantize_int8
    from mobile_export.specs import GRAPHS

    model = bases.load(bases.resolve(args.model))
    cfg = model.cfg
    texts = list(read_captions(args.data, "dev").captions[:args.captions])
    ids, mask = model.tokenizer.encode(texts, cfg.max_text_len)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        graphs: dict[str, Path] = {}
        for g in ("text_encoder",):
            graphs[f"fp32:{g}"] = export_onnx(model, GRAPHS[g], tmp / f"fp32_{g}.onnx")
            for v, kw in VARIANTS.items():
                graphs[f"{v}:{g}"] = tmp / f"{v}_{g}.onnx"
                quantize_int8(graphs[f"fp32:{g}"], graphs[f"{v}:{g}"], **kw)
        inputs = {"text_encoder": {"input_ids": ids, "attention_mask": mask}}
        runs: dict[str, dict[str, np.ndarray]] = {}
        for cpu, prefix in (("here", []), ("avx2_emulated", [qemu, "-cpu", "Haswell"])):
            runs[cpu] = {}
            for g, feeds in inputs.items():
                np.savez(tmp / "in.npz", **feeds)
                out = tmp / f"{cpu}_{g}.npz"
                subprocess.run([*prefix, sys.executable, graph_runner.__file__, str(tmp / "in.npz"), str(out),
                                *[f"{k}={v}" for k, v in graphs.items() if k.endswith(g)]],
                               check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
                runs[cpu].update(np.load(out))
        one = {"input_ids": ids[:1], "attention_mask": mask[:1]}
        rows = []
        for v in ("fp32", *VARIANTS):
            row: dict = {"variant": v, "latency_ms_here": _latency_ms(graphs[f"{v}:text_encoder"], one, args.reps)}
            for cpu, r in runs.items():
                c = _cos(r["fp32:text_encoder/text_embeds"], r[f"{v}:text_encoder/text_embeds"])
                row[f"text_cos_mean_{cpu}"] = round(float(c.mean()), 5)
                row[f"text_cos_min_{cpu}"] = round(float(c.min()), 5)
                m = mask.astype(bool)  # the real tokens of each caption; states are (J layers, batch, length, W)
                cs = _cos(r["fp32:text_encoder/text_states"][:, m], r[f"{v}:text_encoder/text_states"][:, m])  # (J, tokens)
                row[f"states_cos_mean_{cpu}"] = round(float(cs.mean()), 5)
                row[f"states_cos_min_{cpu}"] = round(float(cs.min()), 5)
            t_here = runs["here"][f"{v}:text_encoder/text_embeds"]
            t_emul = runs["avx2_emulated"][f"{v}:text_encoder/text_embeds"]
            row["same_on_both_cpus_max_abs_diff"] = float(np.abs(t_here - t_emul).max())
            rows.append(row)
    print(f"{len(texts)} dev captions; here: {parity.cpu_isa()}; emulated: qemu -cpu Haswell (AVX2, no VNNI)")
    print(f"{'variant':14} {'cos here':>9} {'cos avx2':>9} {'|here-avx2|':>12} {'states avx2':>11} {'ms/query':>9}")
    for r in rows:
        print(f"{r['variant']:14} {r['text_cos_mean_here']:9.5f} {r['text_cos_mean_avx2_emulated']:9.5f} "
              f"{r['same_on_both_cpus_max_abs_diff']:12.2e} {r['states_cos_mean_avx2_emulated']:11.5f} "
              f"{r['latency_ms_here']:9.3f}")
    result = {"command": "python bench/bench_int8_isa.py " + " ".join(sys.argv[1:]), "model": args.model,
              "captions": len(texts), "cpu_here": parity.cpu_isa(), "cpu_emulated": "qemu-x86_64 -cpu Haswell",
              "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
