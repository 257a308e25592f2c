"""Text→image recall@1/5/10 on Flickr8k dev versus rerank depth k, for one or more bundle variants.

    python bench/bench_recall_depth.py                                   # the default bundle, fp32
    python bench/bench_recall_depth.py --variant student-fp32=BUNDLE:fp32 --variant student-int8=BUNDLE:int8

For each variant: embed the dev photos and a fixed sample of captions with the bundle
(onnxruntime), rank all photos by the bi-encoder, rerank the top k with the cross-encoder for
every k in ``--depths`` (k = 1 is the bi-encoder alone), and record recall@1/5/10, the share of
queries whose photo is in the top k (the ceiling of rerank@k), the bundle size and the
cross-encoder time per candidate. Writes bench/results/recall_depth.json.

Data: Flickr8k (Hodosh, Young, Hockenmaier 2013, "Framing Image Description as a Ranking Task",
JAIR 47), dev split, read in place (never copied).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
FLICKR = REPO.parent / "shared" / "data" / "flickr8k"
OUT = REPO / "bench" / "results" / "recall_depth.json"
CITATION = "Flickr8k: Hodosh, Young, Hockenmaier 2013, Framing Image Description as a Ranking Task, JAIR 47"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


def parse_variant(spec: str) -> tuple[str, Path, str]:
    """NAME=DIR[:precision] -> (name, bundle dir, precision)."""
    name, _, rest = spec.partition("=")
    if not rest:
        raise SystemExit(f"--variant: expected NAME=BUNDLE_DIR[:fp32|int8], got {spec!r}")
    path, sep, prec = rest.rpartition(":")
    if not sep or not prec or "/" in prec or "\\" in prec:
        path, prec = rest, "fp32"
    return name, Path(path), prec


def default_variants() -> list[tuple[str, Path, str]]:
    from edge_xmr.demo import default_bundle

    return [("default fp32", default_bundle(), "fp32")]


def bundle_size_mb(bundle: Any) -> float:
    """Size of the files one precision's ONNX graphs need (MB = 1e6 bytes), from the manifest."""
    sizes = bundle.manifest.get("sizes", {}).get(f"onnx/{bundle.precision}", {})
    if "total" in sizes:
        return float(sizes["total"])
    files = {v["path"] for g in bundle.manifest["graphs"].values() for k, v in g["variants"].items()
             if k == f"onnx/{bundle.precision}"}
    return round(sum((bundle.root / f).stat().st_size for f in files) / 1e6, 3)


def run_variant(name: str, path: Path, precision: str, data: Any, queries: np.ndarray, depths: list[int],
                threads: int | None) -> dict[str, Any]:
    from edge_xmr.bundle import Bundle
    from edge_xmr.evaluate import ranks_of_targets, recalls, rerank_order

    b = Bundle.load(path, precision=precision, threads=threads)
    t0 = time.perf_counter()
    iemb, itok = b.encode_images(data.image_paths())
    t_img = time.perf_counter() - t0
    texts = [data.captions[int(c)] for c in queries]
    enc = b.encode_texts(texts)  # one text pass per query: its embedding retrieves, its states rerank
    temb = np.stack([np.asarray(e.embedding, np.float32) for e in enc])
    order = np.argsort(-(temb @ iemb.T), axis=1, kind="stable")  # (Q, I)
    targets = [[int(data.caption_image[int(c)])] for c in queries]
    kmax = max(depths)
    ce = np.empty((len(texts), kmax), np.float32)
    t0 = time.perf_counter()
    for qi in range(len(texts)):
        cand = order[qi, :kmax]
        ce[qi] = b.score_encoded(enc[qi], itok[cand], iemb[cand])
        if qi % 100 == 99:
            print(f"  {name}: reranked {qi + 1}/{len(texts)} queries", file=sys.stderr, flush=True)
    t_ce = time.perf_counter() - t0
    bi_ranks = ranks_of_targets(order, targets)
    by_depth = {}
    for k in depths:
        r = recalls(ranks_of_targets(rerank_order(order, ce[:, :k], k), targets))
        by_depth[str(k)] = {**r, "in_top_k": float(100.0 * np.mean(bi_ranks < k))}
    return {"name": name, "bundle": str(path), "precision": precision, "model": b.manifest["model"]["name"],
            "model_id": b.model_id[:16], "size_mb": bundle_size_mb(b), "bi_encoder": recalls(bi_ranks),
            "by_depth": by_depth, "image_embed_ms": round(1000 * t_img / len(iemb), 2),
            "cross_ms_per_candidate": round(1000 * t_ce / (len(texts) * kmax), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", default=None, help="NAME=BUNDLE_DIR[:PRECISION] (repeatable; precision default fp32)")
    ap.add_argument("--data", type=Path, default=FLICKR, help="caption folder (default: Flickr8k)")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--queries", type=int, default=1000, help="captions sampled as queries (seed 0)")
    ap.add_argument("--depths", default="1,2,3,5,10,20,30,50", help="rerank depths k")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)

    from edge_xmr.data import read_captions

    data = read_captions(a.data, a.split)
    depths = sorted({int(k) for k in a.depths.split(",")})
    rng = np.random.default_rng(0)
    queries = np.sort(rng.choice(len(data.captions), size=min(a.queries, len(data.captions)), replace=False))
    variants = [parse_variant(v) for v in a.variant] if a.variant else default_variants()
    started = time.strftime("%Y-%m-%d %H:%M")
    res: dict[str, Any] = {
        "what": "text->image recall (percent) vs rerank depth k", "date": started, "machine": machine(),
        "command": "python bench/bench_recall_depth.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": {"name": f"Flickr8k {a.split}", "images": len(data.images), "queries": len(queries),
                 "citation": CITATION}, "depths": depths, "variants": []}
    for name, path, prec in variants:
        print(f"{name}: {path} ({prec})", file=sys.stderr, flush=True)
        v = run_variant(name, path, prec, data, queries, depths, a.threads)
        res["variants"].append(v)
        print(f"  bi R@1 {v['bi_encoder']['R@1']:.1f}  " + "  ".join(
            f"k={k}: {v['by_depth'][str(k)]['R@1']:.1f}" for k in depths), flush=True)
    res["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
