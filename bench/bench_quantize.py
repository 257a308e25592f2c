"""Teacher / student x fp32 / int8 on Flickr8k dev: recalls, query latency, bundle size.

    python bench/bench_quantize.py --teacher runs/default --student runs/lite_half
    python bench/bench_quantize.py --teacher default --student DIR --static     # + the static int8 variant

Exports both models to bundles (ONNX fp32 + dynamic int8; the student with its compacted vocabulary;
calibration photos / captions from the TRAIN split), evaluates every bundle with the torch-free runtime
(``edge_xmr.evaluate``, the recalls of ``edge-xmr eval``; rerank depths 10 and 20, no cross-encoder
over all), then times single text queries (embed the query, rank the precomputed photo embeddings,
rerank the top 20 with the cross-encoder) with the bundles interleaved query by query, so that a
shared CPU's load hits all of them alike. Writes bench/results/quantize.json.

Criteria (issue #5): int8 vs fp32 of the teacher: rerank@20 t2i R@1 drops <= 0.5; student vs teacher:
<= 2 points lost, <= 1/2 of the teacher's query latency, <= 1/2 of its int8 bundle size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FLICKR = REPO.parent / "shared" / "data" / "flickr8k"
WORK = Path(tempfile.gettempdir()) / "edge_xmr_bench_quantize"
OUT = REPO / "bench" / "results" / "quantize.json"
METRIC = ("rerank@20", "t2i", "R@1")


def say(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def export(model_dir: str, out: Path, student: bool, n_calib: int, reuse: bool) -> dict[str, Any]:
    """Bundle of a model directory (fp32 + dynamic int8); calibration samples from the train split."""
    from edge_xmr.data import read_captions

    if reuse and (out / "manifest.json").is_file():
        say(f"reusing {out}")
        return {"reused": True}
    train = read_captions(FLICKR, "train")
    t0 = time.perf_counter()
    if student:
        from quantize.distill import export_student

        rep = export_student(model_dir, out, calib_data=train, n_calib=n_calib, log=say)
    else:
        from edge_xmr.model.bases import resolve
        from mobile_export import export_bundle

        idx = np.random.default_rng(0).permutation(len(train.images))[:n_calib]
        rep = export_bundle(resolve(model_dir), out, precisions=("fp32", "int8"), overwrite=True,
                            calib_images=[train.image_paths()[i] for i in sorted(idx)],
                            calib_texts=[train.captions[c] for c in range(0, len(train.captions), 5)][:n_calib])
    return {"export_s": round(time.perf_counter() - t0, 1), "checks_ok": rep.get("ok"),
            "parity_int8": rep.get("parity_int8")}


def ship_mb(bundle: Path, precision: str) -> dict[str, float]:
    m = json.loads((bundle / "manifest.json").read_text())
    graphs = m["sizes"][f"onnx/{precision}"]["total"]
    tok = (bundle / m["tokenizer"]["file"]).stat().st_size / 1e6
    return {"graphs_mb": round(graphs, 3), "tokenizer_mb": round(tok, 3), "total_mb": round(graphs + tok, 3)}


def latency(rows: list[dict[str, Any]], queries: list[str], k: int = 20) -> None:
    """Median ms per text query (bi-encoder only; + rerank@k), bundles interleaved per query."""
    times: dict[str, dict[str, list[float]]] = {r["name"]: {"bi_encoder": [], f"rerank@{k}": []} for r in rows}
    for r in rows:  # warm-up
        r["bundle"].score_encoded(r["bundle"].encode_query(queries[0]), r["tokens"][:k], r["embeds"][:k])
    for qi, q in enumerate(queries):
        for r in rows[qi % len(rows):] + rows[: qi % len(rows)]:
            b, emb, tok = r["bundle"], r["embeds"], r["tokens"]
            t0 = time.perf_counter()
            query = b.encode_query(q)  # one text pass, as the search runs it: the embedding retrieves,
            s = emb @ np.asarray(query.embedding, np.float32)  # the states rerank
            top = np.argpartition(-s, k)[:k] if k < len(s) else np.arange(len(s))
            top = top[np.argsort(-s[top], kind="stable")]
            t1 = time.perf_counter()
            b.score_encoded(query, tok[top], emb[top])
            t2 = time.perf_counter()
            times[r["name"]]["bi_encoder"].append(t1 - t0)
            times[r["name"]][f"rerank@{k}"].append(t2 - t0)
    for r in rows:
        r["latency_ms"] = {m: round(1000 * float(np.median(v)), 3) for m, v in times[r["name"]].items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="default", help="teacher model directory (default: the embedded model)")
    ap.add_argument("--student", required=True, help="distilled student model directory")
    ap.add_argument("--data", default=str(FLICKR), help="caption folder (default: shared Flickr8k)")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--max-queries", type=int, default=None, help="queries per direction (default: all)")
    ap.add_argument("--latency-queries", type=int, default=100, help="single text queries timed per bundle")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads of every bundle")
    ap.add_argument("--calib", type=int, default=128, help="calibration photos / captions from the train split")
    ap.add_argument("--static", action="store_true", help="also the teacher's static QDQ int8 variant")
    ap.add_argument("--reuse", action="store_true", help="reuse bundles already exported to the work folder")
    ap.add_argument("--work", default=str(WORK), help="folder for the bundles")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from edge_xmr.bundle import Bundle
    from edge_xmr.data import read_captions
    from edge_xmr.evaluate import EvalSettings, evaluate
    from quantize.gate import _Recorder, output_agreement

    work = Path(args.work)
    bundles = {"teacher": work / "teacher_bundle", "student": work / "student_bundle"}
    exports = {"teacher": export(args.teacher, bundles["teacher"], False, args.calib, args.reuse),
               "student": export(args.student, bundles["student"], True, args.calib, args.reuse)}
    if args.static:
        from quantize.variants import add_variants

        m = json.loads((bundles["teacher"] / "manifest.json").read_text())
        if "onnx/int8-static" not in m["sizes"]:
            train = read_captions(FLICKR, "train")
            idx = np.random.default_rng(1).permutation(len(train.images))[: 2 * args.calib]
            exports["teacher_static"] = add_variants(
                bundles["teacher"], ["int8-static"], calib_images=[train.image_paths()[i] for i in sorted(idx)],
                calib_texts=[train.captions[5 * i] for i in sorted(idx)], progress=say)
    data = read_captions(args.data, args.split)
    settings = EvalSettings(rerank_ks=(10, 20), max_queries=args.max_queries, cross_all=False, latency_queries=0)
    plan = [("teacher", "fp32"), ("teacher", "int8"), ("student", "fp32"), ("student", "int8")]
    if args.static:
        plan.insert(2, ("teacher", "int8-static"))
    rows: list[dict[str, Any]] = []
    for model, prec in plan:
        name = f"{model} {prec}"
        say(f"evaluating {name}")
        b = Bundle.load(bundles[model], precision=prec, threads=args.threads)
        rec = _Recorder(b)
        t0 = time.perf_counter()
        def tell(s: str, n: str = name) -> None:
            say(f"  {n}: {s}")

        res = evaluate(rec, data, settings, progress=tell)
        assert rec.images is not None
        rows.append({"name": name, "model": model, "precision": prec, "bundle": b, "recorder": rec,
                     "embeds": rec.images[0], "tokens": rec.images[1], "results": res["results"],
                     "n_queries": res["n_queries"], "eval_s": round(time.perf_counter() - t0, 1),
                     "size": ship_mb(bundles[model], prec), "model_name": b.manifest["model"]["name"],
                     "config": b.manifest["model"]["config"]})
    rng = np.random.default_rng(7)
    queries = [data.captions[i] for i in rng.choice(len(data.captions), args.latency_queries, replace=False)]
    say(f"timing {len(queries)} single queries per bundle (interleaved, {args.threads} thread(s))")
    latency(rows, queries)

    def r1(row: dict[str, Any]) -> float:
        return float(row["results"][METRIC[0]][METRIC[1]][METRIC[2]])

    by = {r["name"]: r for r in rows}
    t32, t8, s32, s8 = by["teacher fp32"], by["teacher int8"], by["student fp32"], by["student int8"]
    summary = {
        "int8_drop_teacher": round(r1(t32) - r1(t8), 3),
        "int8_drop_student": round(r1(s32) - r1(s8), 3),
        "student_drop_fp32": round(r1(t32) - r1(s32), 3),
        "student_drop_int8": round(r1(t8) - r1(s8), 3),
        "latency_ratio_fp32": round(s32["latency_ms"]["rerank@20"] / t32["latency_ms"]["rerank@20"], 3),
        "latency_ratio_int8": round(s8["latency_ms"]["rerank@20"] / t8["latency_ms"]["rerank@20"], 3),
        "size_ratio_int8": round(s8["size"]["total_mb"] / t8["size"]["total_mb"], 3),
    }
    summary["criteria"] = {
        "int8 vs fp32 (teacher): rerank@20 t2i R@1 drop <= 0.5": summary["int8_drop_teacher"] <= 0.5,
        "student vs teacher (fp32): <= 2 points lost": summary["student_drop_fp32"] <= 2.0,
        "student vs teacher (int8): <= 2 points lost": summary["student_drop_int8"] <= 2.0,
        "student query latency <= 1/2 teacher's (int8)": summary["latency_ratio_int8"] <= 0.5,
        "student query latency <= 1/2 teacher's (fp32)": summary["latency_ratio_fp32"] <= 0.5,
        "student int8 bundle <= 1/2 teacher's int8 bundle": summary["size_ratio_int8"] <= 0.5,
    }
    agreement = {"teacher int8 vs fp32": output_agreement(t32["recorder"], t8["recorder"]),
                 "student int8 vs fp32": output_agreement(s32["recorder"], s8["recorder"]),
                 "student fp32 vs teacher fp32": output_agreement(t32["recorder"], s32["recorder"])}
    if "teacher int8-static" in by:
        ts = by["teacher int8-static"]
        summary["static_int8_drop_teacher"] = round(r1(t32) - r1(ts), 3)
        agreement["teacher int8-static vs fp32"] = output_agreement(t32["recorder"], ts["recorder"])
    out = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "onnxruntime_threads": args.threads, "note": "shared CPU (other jobs running); latency "
                    "measured interleaved so the load hits every bundle alike"},
        "data": {"root": str(args.data), "split": args.split, "n_images": len(data.images),
                 "n_captions": len(data.captions), "queries": rows[0]["n_queries"]},
        "teacher": str(args.teacher), "student": str(args.student), "exports": exports,
        "rows": [{k: v for k, v in r.items() if k not in ("bundle", "recorder", "embeds", "tokens")} for r in rows],
        "summary": summary, "agreement": agreement,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(table(out))
    return 0


def table(out: dict[str, Any]) -> str:
    """The results as a markdown table."""
    head = ("| model | precision | bi t2i R@1 | rerank@20 t2i R@1 | R@5 | R@10 | rerank@20 i2t R@1 | "
            "query ms (rerank@20) | query ms (bi) | bundle MB |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in out["rows"]:
        res = r["results"]
        lines.append(f"| {r['model']} | {r['precision']} | {res['bi_encoder']['t2i']['R@1']:.2f} | "
                     f"{res['rerank@20']['t2i']['R@1']:.2f} | {res['rerank@20']['t2i']['R@5']:.2f} | "
                     f"{res['rerank@20']['t2i']['R@10']:.2f} | {res['rerank@20']['i2t']['R@1']:.2f} | "
                     f"{r['latency_ms']['rerank@20']:.2f} | {r['latency_ms']['bi_encoder']:.2f} | "
                     f"{r['size']['total_mb']:.2f} |")
    lines.append("")
    lines += [f"- {k}: {'yes' if v else 'NO'}" for k, v in out["summary"]["criteria"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
