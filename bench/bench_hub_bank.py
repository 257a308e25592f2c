"""What the hubness bank's size costs per reranked query (PyTorch, one query against 20 candidates).

    python bench/bench_hub_bank.py [--model default] [--reps 60]

Scores one encoded query against 20 random candidates with the model's caption bank cut to each
size (0 = no photo hubness term), interleaving the sizes, and prints the median time per size and
its ratio to the full bank's; writes bench/results/hub_bank.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--reps", type=int, default=60)
    ap.add_argument("--json", default="bench/results/hub_bank.json")
    args = ap.parse_args()
    from edge_xmr.model import bases

    m = bases.load(bases.resolve(args.model))
    c = m.cross
    full = c.text_bank.clone()
    sizes = sorted({len(full), *(n for n in (0, 512, 2048) if n < len(full))}, reverse=True)
    rng = np.random.default_rng(0)
    tok = rng.standard_normal((20, m.cfg.n_image_tokens, m.cfg.token_dim)).astype(np.float32)
    emb = rng.standard_normal((20, m.cfg.embed_dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    q = m.encode_query("two dogs run along the beach")
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(args.reps):
        for n in sizes:
            c.text_bank = full[:n].clone()
            t = time.perf_counter()
            m.score_encoded(q, tok, emb)
            times[n].append((time.perf_counter() - t) * 1000)
    med = {n: float(np.median(v)) for n, v in times.items()}
    print(f"{'caption bank':>12s} {'median ms':>10s} {'vs full':>8s}")
    for n in sizes:
        print(f"{n:12d} {med[n]:10.2f} {med[n] / med[sizes[0]]:8.3f}")
    out = {"model": str(args.model), "reps": args.reps, "candidates": 20, "median_ms": {str(n): round(med[n], 3) for n in sizes},
           "machine": f"{platform.machine()}, Python {platform.python_version()}",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
