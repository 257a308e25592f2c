"""Numpy simulation of two candidate stages on bench_scale's data (no index): an IVF (spherical
k-means lists) and a PCA first pass with exact rescoring. recall@10 against exact float search.

    python bench/scale_first_pass_sim.py      # about 2 min on 2 cores; writes bench/results/scale_first_pass_sim.json

Data: the default bundle's embeddings of the 7000 Flickr8k train + dev photos, and 100k synthetic
photos from ``bench_scale.Generator`` (its calibrated within-cluster share); queries: 100 Flickr8k
dev captions. What it shows: how many IVF lists text queries need, and what a compact in-RAM
first pass would give (the option docs/runtime.md names as the next step).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scale as bs  # noqa: E402

OUT = bs.REPO / "bench" / "results" / "scale_first_pass_sim.json"


def truth(s: np.ndarray) -> list[set[int]]:
    return [set(np.argpartition(-s[:, j], 10)[:10].tolist()) for j in range(s.shape[1])]


def pca_recall(x: np.ndarray, qv: np.ndarray, dims: int, r: int) -> float:
    mu = x[:5000].mean(0)
    _, v = np.linalg.eigh(np.cov((x[:5000] - mu).T))
    basis = v[:, ::-1][:, :dims]
    p, q, s = (x - mu) @ basis, qv @ basis, x @ qv.T
    hits = []
    for j, t in enumerate(truth(s)):
        cand = np.argpartition(-(p @ q[j]), r)[:r]
        hits.append(len(t & set(cand[np.argsort(-s[cand, j])[:10]].tolist())) / 10)
    return round(float(np.mean(hits)), 4)


def ivf_recall(x: np.ndarray, qv: np.ndarray, list_size: int, fracs: tuple[float, ...]) -> dict[str, float]:
    nl = len(x) // list_size
    rng = np.random.default_rng(0)
    c = bs.kmeans(x[rng.choice(len(x), min(len(x), 32 * nl), replace=False)], nl, 10, rng)
    a = np.concatenate([np.argmax(x[i:i + 20000] @ c.T, axis=1) for i in range(0, len(x), 20000)])
    s, out = x @ qv.T, {}
    tr = truth(s)
    for f in fracs:
        hits = []
        for j, t in enumerate(tr):
            idx = np.where(np.isin(a, np.argsort(-(c @ qv[j]))[:max(1, round(f * nl))]))[0]
            hits.append(len(t & set(idx[np.argsort(-s[idx, j])[:10]].tolist())) / 10)
        out[f"{f:.0%} of {nl} lists"] = round(float(np.mean(hits)), 4)
    return out


def main() -> None:
    t0 = time.time()
    b = bs.bundle()
    real = bs.unit(bs.real_embeddings(b))
    qv = np.asarray(b.embed_texts(bs.dev_captions(100)), np.float32)
    gen = bs.Generator(real, qv)
    data = {"flickr8k real (7000)": real, "synthetic (100000)": gen.draw(100_000, 5)}
    res: dict[str, object] = {"command": "python bench/scale_first_pass_sim.py", "queries": len(qv),
                              "synthetic": gen.describe(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for name, x in data.items():
        res[name] = {
            "ivf, lists of 256": ivf_recall(x, qv, 256, (0.05, 0.1, 0.2, 0.35)),
            "ivf, lists of 64": ivf_recall(x, qv, 64, (0.05, 0.1, 0.2)),
            "pca first pass + exact rescoring": {f"{d} dims, top {r}": pca_recall(x, qv, d, r)
                                                 for d in (32, 64) for r in (100, 200, 400)}}
        print(name, json.dumps(res[name]), flush=True)
    res["seconds"] = round(time.time() - t0)
    OUT.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
