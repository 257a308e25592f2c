"""The rerank stage's latency for 20 candidates, with and without the joint pass, in one run.

    python bench/bench_rerank_latency.py --bundle ~/.cache/edge-xmr/bench/lite_bundle_v3 \
        [--data ../shared/data/flickr8k] [--reps 200] [--threads 2] [--json bench/results/rerank_latency.json]

The bundle is exported from the embedded default first when the folder is absent (fp32 + int8). One
query's rerank = ``Bundle.score_encoded(query, tokens, embeds)`` for 20 candidates (the query already
through the text encoder, the candidates' stored data in hand: what ``search`` does after the KNN).
Two scores of the same bundle, interleaved query by query:

- **before**: the previous default's score, joint pass included (its weights, γ ≈ 0.1: the cosine,
  late interaction, hubness in numpy and the joint-attention pass, the cross_encoder graph);
- **after**: the bundle's own score (γ = 0: the cross_encoder graph is not run).

Also the joint graph alone and, for scale, the text encoder (one query). Prints a table of median /
p90 ms per precision and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

# the embedded default's score before this change (its weights, chosen on all of dev, joint pass 0.1)
PREVIOUS_DEFAULT = {"cosine": 17.899372100830078, "late_interaction": 8.9609375, "joint": 0.0999755859375,
                    "photo_hubness": 0.75, "text_hubness": 0.60009765625, "hubness_temperature": 21.890625,
                    "photo_hubness_floor": 11.796875, "text_hubness_floor": 9.3671875}


def export_default(out: Path, data: Path | None) -> None:
    from edge_xmr.data import read_captions
    from mobile_export import export_bundle

    images = texts = None
    if data is not None and (data / "splits" / "dev.txt").is_file():
        dev = read_captions(data, "dev")
        images, texts = dev.image_paths()[:64], list(dev.captions[::50])
    export_bundle("default", out, precisions=("fp32", "int8"), calib_images=images, calib_texts=texts,
                  mobile=False, threads=2)


def _ms(f, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        out.append(1000 * (time.perf_counter() - t))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", default="../shared/data/flickr8k")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--json", default="bench/results/rerank_latency.json")
    args = ap.parse_args()
    from edge_xmr.bundle import Bundle
    from edge_xmr.data import read_captions
    from edge_xmr.score import ScoreConfig

    root, data = Path(args.bundle).expanduser(), Path(args.data)
    if not (root / "manifest.json").is_file():
        print(f"exporting the default model to {root}", flush=True)
        export_default(root, data)
    dev = read_captions(data, "dev")
    rng = np.random.default_rng(0)
    photos = [dev.image_paths()[i] for i in np.sort(rng.choice(len(dev.images), 20, replace=False))]
    texts = [dev.captions[i] for i in np.sort(rng.choice(len(dev.captions), 20, replace=False))]
    rows, load = {}, os.getloadavg()[0]
    for p in args.precisions.split(","):
        b = Bundle.load(root, precision=p, threads=args.threads)
        after = b.score_config
        before = ScoreConfig.from_dict(PREVIOUS_DEFAULT)
        emb, tok = b.encode_images(photos)
        emb8, tok8 = b.quantize(emb, "embedding"), b.quantize(tok, "token")  # as stored in the index
        queries = b.encode_texts(texts)
        b.score_config = before
        b.score_encoded(queries[0], tok8, emb8)  # warm-up: sessions created, first runs
        times: dict[str, list[float]] = {"before (joint pass, previous weights)": [],
                                         "after (the bundle's score)": [], "joint graph alone": [],
                                         "text encoder, one query": []}
        for r in range(args.reps):
            q = queries[r % len(queries)]
            b.score_config = before
            times["before (joint pass, previous weights)"] += _ms(lambda: b.score_encoded(q, tok8, emb8), 1)
            b.score_config = after
            times["after (the bundle's score)"] += _ms(lambda: b.score_encoded(q, tok8, emb8), 1)
            times["joint graph alone"] += _ms(lambda: b._joint(q, b._float(tok8, "token"), b._float(emb8, "embedding")), 1)
            times["text encoder, one query"] += _ms(lambda: b.encode_query(texts[r % len(texts)]), 1)
        rows[p] = {k: {"p50_ms": round(float(np.median(v)), 3), "p90_ms": round(float(np.percentile(v, 90)), 3)}
                   for k, v in times.items()}
        rows[p]["after_runs_joint_graph"] = after.uses_joint
        rows[p]["score_after"] = after.to_dict()
    out = {"command": f"python bench/bench_rerank_latency.py --bundle {args.bundle} --reps {args.reps} "
                      f"--threads {args.threads}",
           "candidates": 20, "reps": args.reps, "threads": args.threads, "rows": rows,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores visible, Python {platform.python_version()}, "
                      f"load average {load:.2f} at start, {os.getloadavg()[0]:.2f} at end",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"rerank of 20 candidates, {args.reps} queries each, {args.threads} threads ({out['machine']})")
    print(f"{'precision':9s} {'stage':42s} {'p50 ms':>8s} {'p90 ms':>8s}")
    for p, r in rows.items():
        for k, v in r.items():
            if isinstance(v, dict) and "p50_ms" in v:
                print(f"{p:9s} {k:42s} {v['p50_ms']:8.2f} {v['p90_ms']:8.2f}")


if __name__ == "__main__":
    main()
