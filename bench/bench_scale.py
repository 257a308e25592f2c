"""Scale benchmark: search latency, recall and bytes per photo from 10k to 1M photos (issue 16).

    python bench/bench_scale.py --sizes 10000 100000 300000 1000000     # builds missing DBs first
    python bench/bench_scale.py --sizes 10000 --queries 30               # a smoke run
    nice python bench/bench_scale.py --build-only --sizes 1000000        # build ahead (minutes per 100k)

Per library size, in one process and interleaved query by query (the machine is shared):

- ``search rerank=20``: ``Library.search(text, k=10, rerank=20)`` (the real API: one text pass,
  the in-RAM first pass of ``edge_xmr.index.firstpass``, first stage with the prior, cross-encoder
  over 20, photo rows);
- ``numpy exact + rerank=20``: the same search (``edge_xmr.search.search``) with its candidate
  stage replaced by an exact numpy search over the float32 embeddings held in RAM (what rclip does);
- ``vec0 brute force + rerank=20``: the same search with the candidate stage of schema 3: one
  brute-force sqlite-vec KNN over the index's own vec0 table (int8 L2, 2x over-fetch), rescored
  with the stored residuals;
- ``KNN top-20`` of each of the three alone (the candidate stage, no text encoder, no rerank);
- recall@10 of each candidate stage against exact float search over the original float vectors,
  unfiltered and with a date + folder filter; DB bytes per photo; the time to open the index and
  load the first pass (a fresh store's first search) next to loading the float32 matrix from an
  .npy file; the first pass's RAM; peak RSS of a fresh process that opens the library and runs
  the searches (one per variant; the numpy one loads the float matrix).

Photos: synthetic embeddings drawn to match the default bundle's Flickr8k photo embeddings
(train + dev, 7000 photos, encoded once and cached): the real mean vector and covariance, a mixture
of Gaussians (one cluster per 100 photos), unit norm, whose within-cluster share of the variance
is the one (of 0.4-0.7) whose IVF recall-vs-lists-probed curve on 7000 synthetic photos is
closest to the real photos' curve (matching the mean nearest-neighbour cosine instead picks 0.7,
which an IVF finds much harder than the real photos: both statistics are in the JSON).
Real embeddings are checked too (``real``, 7000 photos: below ``exact_max``, so exact codes;
their recall with the PCA codes forced, ``exact_max=1000``, is reported beside). Queries: Flickr8k dev captions encoded by the bundle. Image tokens for the
rerank: random (from a pool of 1024 token sets; the timing does not depend on their values). Each
size's DB is built once (through ``PhotoStore.add_photos``, batches of 1000) into a temp folder
and reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_runtime import peak_rss_mb  # noqa: E402  (one VmHWM reader for every benchmark's child)

FLICKR = REPO.parent / "shared" / "data" / "flickr8k"
WORK = Path(os.environ.get("EDGE_XMR_SCALE_WORK", Path(tempfile.gettempdir()) / "edge_xmr_scale"))
OUT = REPO / "bench" / "results" / "scale.json"
FIG = REPO / "bench" / "figures" / "scale_latency.png"
FOLDER = "/home/someone/Pictures/2016"  # the folder filter of the filtered recall (one year of 10)
AFTER = 1_467_331_200  # ... and the date filter: taken from 1 July 2016 (about 5% of the photos pass both)
GEN_VERSION = 4  # bump when the synthetic generator or the DB layout changes (DB file names carry it)


# ---- data ------------------------------------------------------------------------------------------
def bundle() -> Any:
    from edge_xmr.bundle import Bundle
    from edge_xmr.paths import default_bundle_dir

    d = default_bundle_dir()
    if d is None:
        raise SystemExit("no default bundle")
    return Bundle.load(d)


def flickr_names() -> list[str]:
    s = FLICKR / "splits"
    return sorted(set((s / "train.txt").read_text().split()) | set((s / "dev.txt").read_text().split()))


def real_embeddings(b: Any) -> np.ndarray:
    """The bundle's embeddings of the Flickr8k train + dev photos (cached per model)."""
    names = flickr_names()
    cache = WORK / f"flickr_{b.model_id[:16]}_{len(names)}.npy"
    if cache.exists():
        return np.load(cache)
    from edge_xmr.preprocess import load_image

    size = int(b.manifest["preprocessing"]["size"])
    out = [np.asarray(b.encode_images([load_image(FLICKR / "images" / n, size) for n in names[i:i + 32]])[0],
                      np.float32) for i in range(0, len(names), 32)]
    WORK.mkdir(parents=True, exist_ok=True)
    np.save(cache, np.concatenate(out))
    return np.load(cache)


def dev_captions(n: int) -> list[str]:
    dev = set((FLICKR / "splits" / "dev.txt").read_text().split())
    caps = [line.split("\t", 1)[1] for line in (FLICKR / "captions.tsv").read_text().splitlines()[1:]
            if line.split("\t", 1)[0] in dev]
    return caps[: n * 5: 5]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def nn_cos(x: np.ndarray) -> float:
    """Mean cosine of each row to its nearest other row."""
    s = x @ x.T
    np.fill_diagonal(s, -2)
    return float(s.max(1).mean())


class Generator:
    """Synthetic photo embeddings shaped like real ones (see the module doc)."""

    GRID = (0.4, 0.5, 0.6, 0.7)  # within-cluster shares of the variance tried by the calibration

    def __init__(self, real: np.ndarray, qv: np.ndarray):
        r = unit(real.astype(np.float64)).astype(np.float64)
        self.mean = r.mean(0)
        w, v = np.linalg.eigh(np.cov((r - self.mean).T))
        self.root = (v * np.sqrt(np.maximum(w, 0))).astype(np.float32)  # cov = root @ root.T
        self.real_nn = nn_cos(unit(real))
        self.real_pair = float((unit(real[:2000]) @ unit(real[2000:4000]).T).mean())
        self.real_ivf = ivf_curve(unit(real), qv)
        self.curves = {g: ivf_curve(self.draw(len(real), 7, within=g), qv) for g in self.GRID}
        self.nn = {g: round(nn_cos(self.draw(len(real), 7, within=g)), 4) for g in self.GRID}
        self.within = min(self.GRID, key=lambda g: sum(abs(a - b) for a, b in zip(self.curves[g], self.real_ivf)))

    def draw(self, n: int, seed: int, within: float | None = None) -> np.ndarray:
        g = self.within if within is None else within
        rng = np.random.default_rng(seed)
        k = max(1, n // 100)
        d = len(self.mean)
        centres = self.mean + np.sqrt(1 - g * g) * rng.standard_normal((k, d), dtype=np.float32) @ self.root.T
        out = np.empty((n, d), np.float32)
        for i in range(0, n, 65536):
            m = min(65536, n - i)
            z = rng.standard_normal((m, d), dtype=np.float32) @ self.root.T
            out[i:i + m] = unit(centres[rng.integers(0, k, m)] + g * z)
        return out

    def describe(self) -> dict[str, Any]:
        return {"clusters": "one per 100 photos", "within_cluster_std_share": self.within,
                "calibration": "the share whose IVF recall curve (k-means lists of 64 photos, 5/10/20% of the "
                               "lists probed, recall@10 of the dev-caption queries) on 7000 synthetic photos is "
                               "closest to that of the 7000 real ones",
                "real_ivf_recall_at_5_10_20pct": self.real_ivf,
                "synthetic_ivf_recall_at_5_10_20pct_by_share": {str(g): c for g, c in self.curves.items()},
                "real_mean_nn_cosine_7000": round(self.real_nn, 4),
                "synthetic_mean_nn_cosine_7000_by_share": {str(g): v for g, v in self.nn.items()},
                "real_mean_pair_cosine": round(self.real_pair, 4)}


def ivf_curve(x: np.ndarray, qv: np.ndarray, list_size: int = 64) -> list[float]:
    """recall@10 of an IVF (spherical k-means, lists of ``list_size``) probing 5/10/20% of its lists."""
    nl = len(x) // list_size
    c = kmeans(x, nl, 12, np.random.default_rng(0))
    a, s, out = np.argmax(x @ c.T, axis=1), x @ qv.T, []
    for f in (0.05, 0.1, 0.2):
        hits = []
        for j, q in enumerate(qv):
            truth = set(np.argsort(-s[:, j])[:10].tolist())
            idx = np.where(np.isin(a, np.argsort(-(c @ q))[:max(1, round(f * nl))]))[0]
            hits.append(len(truth & set(idx[np.argsort(-s[idx, j])[:10]].tolist())) / 10)
        out.append(round(float(np.mean(hits)), 3))
    return out


def kmeans(x: np.ndarray, k: int, iters: int, rng: np.random.Generator) -> np.ndarray:
    """Spherical k-means (cosine) of unit rows: k unit centroids seeded by a random sample of rows."""
    x = np.asarray(x, np.float32)
    k = max(1, min(k, len(x)))
    c = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(iters):
        a = np.argmax(x @ c.T, axis=1)
        order = np.argsort(a, kind="stable")
        present, starts = np.unique(a[order], return_index=True)
        sums = c.copy()  # a centroid that lost every member keeps its place
        sums[present] = np.add.reduceat(x[order], starts, axis=0)
        c = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return c.astype(np.float32)


def records(n: int) -> list[Any]:
    """Photo rows: realistic path lengths, 200 folders over 10 years, capture dates in the folder's year."""
    from edge_xmr.index import PhotoRecord

    rng = np.random.default_rng(n)
    folders = [f"/home/someone/Pictures/{2014 + i // 20}/{2014 + i // 20}-{1 + i % 12:02d} trip {i}" for i in range(200)]
    fid = rng.integers(0, len(folders), n)
    start = 1_388_534_400  # 2014-01-01
    taken = start + (fid // 20) * 31_536_000 + rng.integers(0, 31_536_000, n)
    return [PhotoRecord(f"{folders[f]}/IMG_{i:08d}.jpg", rng.bytes(32), 3_500_000, int(t) * 10**9, int(t), 4032, 3024)
            for i, (f, t) in enumerate(zip(fid, taken))]


def token_pool(b: Any) -> np.ndarray:
    t, dt = int(b.manifest["image_tokens"]["count"]), int(b.manifest["image_tokens"]["dim"])
    return np.random.default_rng(1).standard_normal((1024, t, dt), dtype=np.float32) * 0.5


# ---- the indexes -----------------------------------------------------------------------------------
def db_path(label: str, emb: np.ndarray) -> Path:
    h = hashlib.sha256(emb[:64].tobytes()).hexdigest()[:10]
    return WORK / f"scale_v{GEN_VERSION}_{label}_{len(emb)}_{h}.db"


def build(db: Path, b: Any, emb: np.ndarray) -> dict[str, Any]:
    """The index through the library's own write path (batches of 1000 photos), once per size."""
    from edge_xmr.index import PhotoStore
    from edge_xmr.index.db import file_bytes

    meta = Path(f"{db}.json")
    if db.exists() and meta.exists():
        return dict(json.loads(meta.read_text()))
    for f in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        f.unlink(missing_ok=True)
    recs, pool = records(len(emb)), token_pool(b)
    t0 = time.perf_counter()
    with PhotoStore.open(db, b) as lib:
        for i in range(0, len(emb), 1000):
            lib.add_photos(recs[i:i + 1000], emb[i:i + 1000], pool[np.arange(i, min(i + 1000, len(emb))) % 1024])
        lib.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    info = {"build_s": round(time.perf_counter() - t0, 1), "db_bytes": file_bytes(db)}
    meta.write_text(json.dumps(info))
    return info


class Vec0BruteForce:
    """The candidate stage of schema 3: brute-force vec0 KNN over the index's own table (int8 L2 over
    2 x n candidates, filters inside the KNN), rescored exactly with the stored residuals."""

    OVERSAMPLE = 2  # what schema 3 fetched per wanted result (int8 store)

    def __init__(self, lib: Any):
        self.lib = lib

    def candidates(self, q: np.ndarray, n: int, filters: Any = None) -> Any:
        from edge_xmr.index import Candidates

        st, lib = self.lib.store, self.lib
        where, params = ["embedding MATCH " + st.param_sql, "k = ?"], [st.encode(q)[0], self.OVERSAMPLE * n]
        if filters is not None and filters.after is not None:
            where.append("taken >= ?")
            params.append(filters.after)
        if filters is not None and filters.folder is not None:
            where.append(f"folder IN ({','.join(str(f) for f in lib.folder_ids(filters.folder))})")
        rows = lib.connection.execute(f"SELECT rowid, embedding FROM vectors WHERE {' AND '.join(where)}",
                                      params).fetchall()
        ids = [int(r[0]) for r in rows]
        refine = lib._blobs("SELECT id, embedding FROM rerank WHERE id IN ({})", ids)
        e = st.decode_many([bytes(v) for _, v in rows], [refine[i] for i in ids])
        s = e @ q
        o = np.argsort(-s, kind="stable")[:n]
        return Candidates(np.asarray(ids, np.int64)[o], e[o], s[o].astype(np.float32))


class NumpyExact:
    """Exact search over the float32 embeddings in RAM (row i = photo id i + 1)."""

    def __init__(self, emb: np.ndarray, taken: np.ndarray | None = None, folder_ok: Any = None):
        self.emb, self.taken, self.folder_ok = emb, taken, folder_ok

    def candidates(self, q: np.ndarray, n: int, filters: Any = None) -> Any:
        from edge_xmr.index import Candidates

        s = self.emb @ q
        if filters is not None and not filters.empty:
            s = np.where(self.mask(filters), s, -np.inf)
        top = np.argpartition(-s, n)[:n]
        top = top[np.argsort(-s[top], kind="stable")]
        return Candidates((top + 1).astype(np.int64), self.emb[top], s[top].astype(np.float32))

    def mask(self, filters: Any) -> np.ndarray:
        return (self.taken >= filters.after) & self.folder_ok


class Swap:
    """The store with another candidate stage (everything else of the search unchanged)."""

    def __init__(self, lib: Any, stage: Any):
        self._lib, self._stage = lib, stage

    def candidates(self, q: np.ndarray, n: int, filters: Any = None) -> Any:
        return self._stage.candidates(q, n, filters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)


# ---- measurements ----------------------------------------------------------------------------------
def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 2)


STAGES = ("first pass", "numpy exact float32", "vec0 brute force (schema 3)")


def measure(label: str, emb: np.ndarray, b: Any, queries: list[str], qv: np.ndarray, rss: bool) -> dict[str, Any]:
    from dataclasses import replace

    from edge_xmr import Library
    from edge_xmr.index import PhotoStore, make_filters
    from edge_xmr.index.db import file_bytes
    from edge_xmr.index.firstpass import DEFAULT_FIRST_PASS
    from edge_xmr.search import search

    db = db_path(label, emb)
    info = build(db, b, emb)
    n = len(emb)
    recs = records(n)
    taken = np.array([r.taken for r in recs])
    in_folder = np.array([r.path.startswith(FOLDER + "/") for r in recs])
    npy = Path(f"{db}.f32.npy")
    if not npy.exists():
        np.save(npy, emb)
    t0 = time.perf_counter()
    with PhotoStore.open(db, b) as st:  # a fresh store: open + the first search loads every code
        st.candidates(qv[0], 20)
        open_load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    np.load(npy)
    npy_load_s = time.perf_counter() - t0
    with Library.open(db, b) as lib:
        store = lib.store
        numpy_stage = NumpyExact(emb, taken, in_folder)
        stages = dict(zip(STAGES, (store, numpy_stage, Vec0BruteForce(store))))
        searches = {"search rerank=20": lambda t: lib.search(t, k=10, rerank=20),
                    "numpy exact + rerank=20": lambda t: search(Swap(store, numpy_stage), b, t, 10, 20),
                    "vec0 brute force + rerank=20": lambda t: search(Swap(store, stages[STAGES[2]]), b, t, 10, 20)}
        knn = {f"KNN top-20: {name}": (lambda s: lambda q: s.candidates(q, 20))(s) for name, s in stages.items()}
        fns: dict[str, Any] = {**{k: (lambda f: lambda t, q: f(t))(f) for k, f in searches.items()},
                               **{k: (lambda f: lambda t, q: f(q))(f) for k, f in knn.items()}}
        for t, q in zip(queries[:3], qv):
            for f in fns.values():
                f(t, q)
        times: dict[str, list[float]] = {k: [] for k in fns}
        cpu: dict[str, list[float]] = {k: [] for k in fns}
        names = list(fns)
        for i, (t, q) in enumerate(zip(queries, qv)):
            for name in names[i % len(names):] + names[:i % len(names)]:
                c0, t0 = time.process_time(), time.perf_counter()
                fns[name](t, q)
                times[name].append((time.perf_counter() - t0) * 1000)
                cpu[name].append((time.process_time() - c0) * 1000)
        filt = make_filters(after=AFTER, folder=FOLDER)
        recall: dict[str, Any] = {}
        forced = None
        if label == "real":  # the PCA codes on real embeddings (a store past its exact_max)
            forced = PhotoStore.open(db, b, first_pass=replace(DEFAULT_FIRST_PASS, exact_max=1000))
            stages["first pass, PCA codes forced"] = forced
        for fname, f in (("unfiltered", None), ("date+folder filter", filt)):
            truth = [set(numpy_stage.candidates(q, 10, f).ids.tolist()) for q in qv]
            for name, s in stages.items():
                got = [set(s.candidates(q, 10, f).ids.tolist()) for q in qv]
                recall[f"{name}, {fname}"] = round(float(np.mean([len(a & g) / 10 for a, g in zip(truth, got)])), 4)
        if forced is not None:
            forced.close()
        fp = store.first_pass
        row = {"data": label, "n": n, "build_s": info.get("build_s"),
               "first_pass": {"codes": "exact (stored vectors)" if fp.exact else f"PCA {fp.codes.shape[1]} dims",
                              "rescored": 0 if fp.exact else fp.cfg.rescore, "ram_mb": round(fp.nbytes() / 2**20, 1)},
               "open_and_load_s": round(open_load_s, 2), "float32_npy_load_s": round(npy_load_s, 2),
               # wall p50/p90; cpu_p50: CPU time of this process (all its threads), less sensitive to other jobs
               "latency_ms": {k: {"p50": pct(v, 50), "p90": pct(v, 90), "cpu_p50": pct(cpu[k], 50)}
                              for k, v in times.items()},
               # per query, this search's time minus the numpy search's (run back to back): load drift cancels
               "paired_minus_numpy_ms": {k: {"p50": pct(list(np.subtract(times[k], times["numpy exact + rerank=20"])), 50),
                                             "share_of_queries_faster": round(float(np.mean(
                                                 np.array(times[k]) < np.array(times["numpy exact + rerank=20"]))), 3)}
                                         for k in ("search rerank=20", "vec0 brute force + rerank=20")},
               "recall@10": recall, "db_bytes_per_photo": round(file_bytes(db) / n),
               "float32_matrix_bytes_per_photo": emb.shape[1] * 4, "queries": len(qv),
               "filtered_fraction": round(float(((taken >= AFTER) & in_folder).mean()), 4)}
    if not fp.exact:
        row["first_pass_sweep"] = first_pass_sweep(db, b, emb, qv)
    if rss:
        row["peak_rss_mb"] = {v: child_rss(db, v) for v in ("first pass", "numpy", "vec0")}
    return row


def first_pass_sweep(db: Path, b: Any, emb: np.ndarray, qv: np.ndarray) -> list[dict[str, Any]]:
    """recall@10 (unfiltered) and KNN top-20 time of the PCA first pass per (dims, rescore) (not
    interleaved with the other variants: for the shape of the trade-off, not for comparisons)."""
    from dataclasses import replace

    from edge_xmr.index import PhotoStore
    from edge_xmr.index.firstpass import DEFAULT_FIRST_PASS

    exact = NumpyExact(emb)
    truth = [set(exact.candidates(q, 10).ids.tolist()) for q in qv]
    out = []
    for dims in (48, 64, 96):
        with PhotoStore.open(db, b, first_pass=replace(DEFAULT_FIRST_PASS, dims=dims)) as st:
            st.candidates(qv[0], 20)
            cfg = st.first_pass.cfg
            for rescore in (50, 100, 200):
                st.first_pass.cfg = replace(cfg, rescore=rescore)  # the codes stay loaded
                ms, hits = [], []
                for q, t in zip(qv, truth):
                    t0 = time.perf_counter()
                    st.candidates(q, 20)
                    ms.append((time.perf_counter() - t0) * 1000)
                    hits.append(len(t & set(st.candidates(q, 10).ids.tolist())) / 10)
                out.append({"dims": dims, "rescore": rescore, "recall@10": round(float(np.mean(hits)), 4),
                            "knn_top20_p50_ms": pct(ms, 50)})
            st.first_pass.cfg = cfg
    return out


def child_rss(db: Path, variant: str) -> float:
    """Peak RSS (MB) of a fresh process: bundle + open the library + 20 searches of one variant
    (numpy: the float32 matrix loaded from an .npy file first)."""
    out = subprocess.run([sys.executable, __file__, "--child", variant, str(db), f"{db}.f32.npy"],
                         capture_output=True, text=True, check=True, cwd=REPO)
    return float(out.stdout.strip().splitlines()[-1])


def child(variant: str, db: str, npy: str) -> None:
    from edge_xmr import Library
    from edge_xmr.search import search

    b = bundle()
    with Library.open(db, b) as lib:
        if variant == "first pass":
            run = lambda t: lib.search(t, k=10, rerank=20)  # noqa: E731
        elif variant == "numpy":
            st = NumpyExact(np.load(npy))
            run = lambda t: search(Swap(lib.store, st), b, t, 10, 20)  # noqa: E731
        else:
            ov = Vec0BruteForce(lib.store)
            run = lambda t: search(Swap(lib.store, ov), b, t, 10, 20)  # noqa: E731
        for t in dev_captions(20):
            run(t)
    print(peak_rss_mb())


def plot(rows: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: no figure"
    syn = sorted((r for r in rows if r["data"] == "synthetic"), key=lambda r: r["n"])
    if not syn:
        return "no synthetic rows"
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    styles = {"search rerank=20": ("C0", "-"), "numpy exact + rerank=20": ("C1", "-"),
              "vec0 brute force + rerank=20": ("C3", "-"), "KNN top-20: first pass": ("C0", "--"),
              "KNN top-20: numpy exact float32": ("C1", "--"), "KNN top-20: vec0 brute force (schema 3)": ("C3", "--")}
    ns = [r["n"] for r in syn]
    for name, (c, ls) in styles.items():
        label = "first pass: search rerank=20" if name == "search rerank=20" else name
        ax.plot(ns, [r["latency_ms"][name]["p50"] for r in syn], color=c, ls=ls, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("photos in the library (synthetic embeddings)")
    ax.set_ylabel("p50 latency, ms")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Search latency vs library size (solid: whole search, dashed: candidate stage)", fontsize=9)
    fig.text(0.01, 0.005, f"python bench/bench_scale.py · {machine['date']} · {machine['cpu']}, "
             f"{machine['cpus']} cores (shared)", fontsize=6)
    FIG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIG, dpi=110, bbox_inches="tight")
    return str(FIG.relative_to(REPO))


def table(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        print(f"\n{r['data']} n={r['n']} {r['first_pass']} bytes/photo={r['db_bytes_per_photo']}"
              f" open+load {r['open_and_load_s']} s (npy {r['float32_npy_load_s']} s) rss={r.get('peak_rss_mb')}")
        for k, v in r["latency_ms"].items():
            print(f"  {k:45s} p50 {v['p50']:8.2f}  p90 {v['p90']:8.2f}  cpu p50 {v['cpu_p50']:8.2f}")
        for k, v in r.get("paired_minus_numpy_ms", {}).items():
            print(f"  {k:45s} minus numpy search, paired p50 {v['p50']:+.2f} ms, faster in {v['share_of_queries_faster']:.0%}")
        for k, v in r["recall@10"].items():
            print(f"  recall@10 {k:50s} {v}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--no-real", action="store_true", help="skip the real Flickr8k embeddings")
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--build-only", action="store_true", help="only build the missing DBs (run it under nice)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    WORK.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "cpu": cpu_name(), "platform": platform.platform(),
               "shared": "variants are interleaved query by query, so any load from other jobs hits them alike "
                         "(the load averages say how busy the machine was)",
               "loadavg_at_start": list(os.getloadavg()), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    b = bundle()
    real = real_embeddings(b)
    queries = dev_captions(a.queries)
    qv = np.asarray(b.embed_texts(queries), np.float32)
    gen = Generator(real, np.asarray(b.embed_texts(dev_captions(100)), np.float32))
    if a.build_only:
        for n in a.sizes:
            emb = gen.draw(n, seed=n)
            t0 = time.perf_counter()
            print(n, build(db_path("synthetic", emb), b, emb), f"{time.perf_counter() - t0:.0f} s", flush=True)
        return
    rows = []
    if not a.no_real:
        rows.append(measure("real", unit(real), b, queries, qv, rss=False))
        table(rows[-1:])
    for n in a.sizes:
        rows.append(measure("synthetic", gen.draw(n, seed=n), b, queries, qv, rss=not a.no_rss))
        table(rows[-1:])
    from dataclasses import asdict

    from edge_xmr.index.firstpass import DEFAULT_FIRST_PASS

    machine["loadavg_at_end"] = list(os.getloadavg())
    res = {"command": "python bench/bench_scale.py " + " ".join(sys.argv[1:]), "machine": machine,
           "bundle": {"model_id": b.model_id[:16], "precision": b.precision, "dim": int(real.shape[1])},
           "first_pass_config": asdict(DEFAULT_FIRST_PASS), "synthetic": gen.describe(),
           "filters": {"after": AFTER, "folder": FOLDER}, "rows": rows}
    res["figure"] = plot(rows, machine)
    for r in rows:
        r["first_pass_config"], r["command"], r["machine"] = res["first_pass_config"], res["command"], machine
    prev = json.loads(OUT.read_text()) if OUT.exists() else {}
    keep = [{"first_pass_config": prev.get("first_pass_config"), "command": prev.get("command"),
             "machine": prev.get("machine"), **r}
            for r in prev.get("rows", []) if (r["data"], r["n"]) not in {(x["data"], x["n"]) for x in rows}
            and "first_pass_config" in prev]  # rows of the candidate stage measured here, not of its predecessors
    if keep:  # sizes measured by earlier runs (each row names its config and command)
        res["rows"] = sorted(keep + rows, key=lambda r: (r["data"] != "real", r["n"]))
        res["earlier_commands"] = sorted(set(prev.get("earlier_commands", []) + [prev["command"]]))
        res["figure"] = plot(res["rows"], machine)
    OUT.write_text(json.dumps(res, indent=1) + "\n")
    print(f"\nwrote {OUT}")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
