"""Runtime benchmark: query latency, recall of the vector stores, bytes per photo, indexing
throughput on 12-MP JPEGs, and peak RSS while indexing. Prints tables, writes JSON.

    python bench/bench_runtime.py --bundle DIR            # full run (about 10-15 min on 2 cores)
    python bench/bench_runtime.py --bundle DIR --quick    # small sizes, a smoke test

Without --bundle it uses the embedded default model's bundle, else exports an UNTRAINED ``lite``
model (same architecture, so the same compute cost; needs the [train,export] extras).

Data: Flickr8k photos (read in place, never copied) for the real-image sizes and the 12-MP
JPEGs (upscaled into a temp folder with sensor-like noise); synthetic unit vectors for the large
sizes. Queries: Flickr8k dev captions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FLICKR = REPO.parent / "shared" / "data" / "flickr8k"
WORK = Path(tempfile.gettempdir()) / "edge_xmr_bench"
OUT = REPO / "bench" / "results" / "runtime.json"


# ---- model -----------------------------------------------------------------------------------------
def resolve_bundle(arg: str | None) -> tuple[Path, str]:
    """(bundle folder, note on where it came from)."""
    from edge_xmr.paths import default_bundle_dir

    if arg:
        return Path(arg), "given"
    found = default_bundle_dir()
    if found is not None:
        return found, "embedded default model"
    out = WORK / "untrained_lite_bundle"
    if not (out / "manifest.json").is_file():
        export_untrained(out)
    return out, "UNTRAINED lite model (same compute cost as the trained one)"


def export_untrained(out: Path) -> None:
    """The bundle the numbers in docs/runtime.md were measured with: untrained lite model, fp32 +
    int8 graphs, storage scales calibrated on 64 Flickr8k photos."""
    code = ("import sys; from pathlib import Path; from edge_xmr.config import preset; "
            "from edge_xmr.model import build, save; import mobile_export; "
            "m = build(preset('lite')).eval(); d = save(m, sys.argv[1]); "
            "imgs = sorted(Path(sys.argv[3]).glob('*.jpg'))[:64]; "
            "mobile_export.export_bundle(d, sys.argv[2], precisions=('fp32', 'int8'), calib_images=imgs, "
            "mobile=False, threads=1, overwrite=True)")
    subprocess.run([sys.executable, "-c", code, str(WORK / "untrained_lite_model"), str(out), str(FLICKR / "images")],
                   check=True, cwd=REPO)


def load(bundle_dir: Path, threads: int | None) -> Any:
    from edge_xmr.bundle import Bundle

    return Bundle.load(bundle_dir, threads=threads)


def load_precision(bundle_dir: Path, threads: int | None, precision: str) -> Any:
    """The bundle's graphs in another precision, or None if it has none."""
    from edge_xmr.bundle import Bundle, BundleError

    try:
        return Bundle.load(bundle_dir, precision=precision, threads=threads)
    except BundleError:
        return None


# ---- data ------------------------------------------------------------------------------------------
def dev_captions(n: int) -> list[str]:
    dev = set((FLICKR / "splits" / "dev.txt").read_text().split())
    out: list[str] = []
    for line in (FLICKR / "captions.tsv").read_text().splitlines()[1:]:
        img, cap = line.split("\t", 1)
        if img in dev:
            out.append(cap)
    return out[: n * 5: 5]


def flickr_images() -> list[Path]:
    return sorted((FLICKR / "images").glob("*.jpg"))


def real_vectors(bundle: Any, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Bundle embeddings and tokens of the Flickr photos (cached in the temp folder per model)."""
    cache = WORK / f"flickr_{bundle.model_id[:16]}_{len(paths)}.npz"
    if cache.exists():
        z = np.load(cache)
        return z["emb"], z["tok"]
    from edge_xmr.preprocess import load_image

    size = int(bundle.manifest["preprocessing"]["size"])
    embs, toks = [], []
    for i in range(0, len(paths), 64):
        e, t = bundle.encode_images([load_image(p, size) for p in paths[i:i + 64]])
        embs.append(e)
        toks.append(t)
    emb, tok = np.concatenate(embs), np.concatenate(toks)
    WORK.mkdir(parents=True, exist_ok=True)
    np.savez(cache, emb=emb, tok=tok)
    return emb, tok


def synthetic(n: int, dim: int, t: int, dt: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    tok = rng.standard_normal((n, t, dt), dtype=np.float32)
    return emb, tok


def records(n: int, seed: int) -> list[Any]:
    """Photo rows with realistic path lengths, 200 folders, capture dates over 10 years."""
    from edge_xmr.index import PhotoRecord

    rng = np.random.default_rng(seed)
    folders = [f"/home/someone/Pictures/{2014 + i // 20}/{2014 + i // 20}-{1 + i % 12:02d} trip {i}" for i in range(200)]
    fid = rng.integers(0, len(folders), n)
    taken = rng.integers(1_400_000_000, 1_720_000_000, n)
    return [PhotoRecord(f"{folders[f]}/IMG_{i:08d}.jpg", rng.bytes(32), 3_500_000, int(t) * 10**9, int(t), 4032, 3024)
            for i, (f, t) in enumerate(zip(fid, taken))]


def build_db(path: Path, bundle: Any, store: str, emb: np.ndarray, tok: np.ndarray) -> float:
    """A fresh index holding the vectors; returns insert rate (photos/s)."""
    from edge_xmr.index import PhotoStore

    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    recs = records(len(emb), seed=len(emb))
    t0 = time.perf_counter()
    with PhotoStore.open(path, bundle, store=store) as lib:
        for i in range(0, len(emb), 1000):
            lib.add_photos(recs[i:i + 1000], emb[i:i + 1000], tok[i:i + 1000])
        lib.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return len(emb) / (time.perf_counter() - t0)


# ---- measurements ----------------------------------------------------------------------------------
def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 2)


def exact_top(emb: np.ndarray, q: np.ndarray, k: int = 20) -> np.ndarray:
    """Ids of the ``k`` best rows of ``emb`` by dot product with ``q``, best first (numpy brute force)."""
    s = emb @ q
    top = np.argpartition(-s, k)[:k] if k < len(s) else np.arange(len(s))
    return top[np.argsort(-s[top], kind="stable")]


def numpy_search(bundle: Any, emb: np.ndarray, tok: np.ndarray, text: str, k: int = 20) -> np.ndarray:
    """The search pipeline over in-memory float arrays, as ``edge_xmr.search`` runs it: ONE text pass
    (``encode_query``: its embedding retrieves, its states rerank), exact top ``k``, rerank scores."""
    query = bundle.encode_query(text)
    top = exact_top(emb, np.asarray(query.embedding, np.float32), k)
    return np.asarray(bundle.score_encoded(query, tok[top], emb[top]))


def search_prior_before_full_rerank(lib: Any, bundle: Any, text: str, k: int = 10, rerank: int = 20) -> list[Any]:
    """``Library.search`` as it ran before a full rerank skipped the first-stage prior (the before of
    docs/model.md's before/after): the KNN fetches ``PRIOR_OVERFETCH`` times the candidates, the prior
    reorders them and cuts, then the same rerank and the same hits."""
    from edge_xmr.index.filters import make_filters
    from edge_xmr.search import _cross_scores, _hits, first_stage

    query = bundle.encode_query(text)
    with lib.store.snapshot():
        cands = first_stage(lib.store, bundle, np.asarray(query.embedding, np.float32), max(k, rerank),
                            make_filters(None, None, None), rerank=0)  # rerank=0: the prior always
        cross = _cross_scores(lib.store, bundle, query, cands, rerank)
        order = list(np.argsort(-cross, kind="stable")) + list(range(len(cross), len(cands.ids)))
        return _hits(lib.store, cands, cross, order[:k])


def rerank_stage(bundle: Any, query: Any, store: Any, cands: Any) -> np.ndarray:
    """The rerank stage alone: fetch the candidates' tokens, score them against an already encoded
    query (no text pass: the search's text pass is the "text encoder" stage)."""
    return np.asarray(bundle.score_encoded(query, store.tokens(cands.ids.tolist()), cands.embeds))


def latency(db: Path, bundle: Any, emb: np.ndarray, tok: np.ndarray, queries: list[str], label: str,
            int8_bundle: Any = None) -> list[dict[str, Any]]:
    """Search latency per variant, and per stage, vs an exact numpy brute force over in-memory
    float arrays. Variants are interleaved query by query so that load changes on this shared
    machine hit every variant alike."""
    from edge_xmr import Library

    folder = "/home/someone/Pictures/2016"
    with Library.open(db, bundle) as lib:  # type: ignore[arg-type]
        int8_lib = Library.open(db, int8_bundle) if int8_bundle is not None else None  # type: ignore[arg-type]

        def cross(text: str, q: np.ndarray) -> None:  # the query encoded (untimed), as search has it
            c = lib.store.candidates(q, 20)
            query = bundle.encode_query(text)
            t0 = time.perf_counter()
            rerank_stage(bundle, query, lib.store, c)
            stage["cross-encoder on 20 (+ token fetch)"].append((time.perf_counter() - t0) * 1000)

        variants: dict[str, Callable[[str, np.ndarray], Any]] = {
            "search rerank=20": lambda t, q: lib.search(t, k=10, rerank=20),
            "search rerank=20, prior before the cut (before)": lambda t, q: search_prior_before_full_rerank(
                lib, bundle, t),
            "search rerank=0": lambda t, q: lib.search(t, k=10, rerank=0),
            "search rerank=20 +folder+date": lambda t, q: lib.search(t, k=10, rerank=20, folder=folder,
                                                                     after="2015-01-01"),
            "numpy exact float + rerank=20": lambda t, q: numpy_search(bundle, emb, tok, t),
            "stage: text encoder": lambda t, q: bundle.encode_query(t),
            "stage: KNN top-20 (vec0 + rescoring)": lambda t, q: lib.store.candidates(q, 20),
            "stage: numpy exact brute force top-20": lambda t, q: exact_top(emb, q),
        }
        if int8_lib is not None:
            variants["search rerank=20, int8 text+cross graphs"] = lambda t, q: int8_lib.search(t, k=10, rerank=20)
        stage: dict[str, list[float]] = {"cross-encoder on 20 (+ token fetch)": []}
        times: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        qv = bundle.embed_texts(queries)
        for t, q in zip(queries[:3], qv):  # warm-up (page cache, onnxruntime arenas)
            for fn in variants.values():
                fn(t, q)
        for i, (t, q) in enumerate(zip(queries, qv)):
            names = list(variants)
            for name in names[i % len(names):] + names[:i % len(names)]:
                c0, t0 = time.process_time(), time.perf_counter()
                variants[name](t, q)
                times[name].append((time.perf_counter() - t0) * 1000)
                cpu[name].append((time.process_time() - c0) * 1000)
            cross(t, q)
        if int8_lib is not None:
            int8_lib.close()
    rows = []
    for name, ms in {**times, **{f"stage: {k}": v for k, v in stage.items()}}.items():
        rows.append({"data": label, "n": len(emb), "store": lib.info.store if name.startswith("search") else "-",
                     "query": name, "p50_ms": pct(ms, 50), "p90_ms": pct(ms, 90),
                     "cpu_p50_ms": pct(cpu[name], 50) if name in cpu else ""})
    return rows


def recall(db: Path, bundle: Any, emb: np.ndarray, qv: np.ndarray, label: str, store: str) -> dict[str, Any]:
    """recall@10 of the store's search (KNN + rescoring) against exact float search."""
    from edge_xmr import Library

    hits = []
    with Library.open(db, bundle) as lib:  # type: ignore[arg-type]
        for q in qv:
            exact = set((np.argsort(-(emb @ q))[:10] + 1).tolist())
            got = set(lib.store.candidates(q, 10).ids.tolist())
            hits.append(len(exact & got) / 10)
    return {"data": label, "n": len(emb), "store": store, "recall@10": round(float(np.mean(hits)), 4),
            "queries": len(qv)}


def recall_ablations(emb: np.ndarray, qv: np.ndarray, manifest_scale: float, label: str) -> list[dict[str, Any]]:
    """Why the int8 store is built as it is: exact (numpy) search over int8 codes alone at the
    index's scale, and over codes + residual at the manifest's scale (no headroom: ~0.2% clip)."""
    from edge_xmr.index.stores import EMBEDDING_HEADROOM, Store, dequantize, normalize, quantize

    exact = [set(np.argsort(-(emb @ q))[:10].tolist()) for q in qv]
    s_index = manifest_scale * EMBEDDING_HEADROOM
    st = Store("int8", emb.shape[1], manifest_scale)
    variants = {"int8 codes only, no residual (ablation)": normalize(dequantize(quantize(emb, s_index), s_index)),
                "int8 + residual at the manifest scale, no headroom (ablation)":
                    np.stack([st.decode(*st.encode(x)) for x in emb])}
    rows = []
    for name, deq in variants.items():
        hits = [len(e & set(np.argsort(-(deq @ q))[:10].tolist())) / 10 for e, q in zip(exact, qv)]
        rows.append({"data": label, "n": len(emb), "store": name, "recall@10": round(float(np.mean(hits)), 4),
                     "queries": len(qv)})
    return rows


def bytes_per_photo(db: Path, n: int, store: str, label: str) -> dict[str, Any]:
    from edge_xmr.index.db import file_bytes

    size = file_bytes(db)
    return {"data": label, "n": n, "store": store, "db_mb": round(size / 1e6, 2), "bytes_per_photo": round(size / n)}


def token_fidelity(bundle: Any, emb: np.ndarray, tok: np.ndarray, queries: list[str]) -> dict[str, Any]:
    """Cross-encoder scores on the stored data (int8 tokens, int8 + residual embeddings) vs float;
    and the token part alone with the manifest's global scale vs per-token scales."""
    from edge_xmr.index.stores import EMBEDDING_HEADROOM, Store, dequantize, quantize

    s_emb = float(bundle.manifest.get("storage", {}).get("embedding_int8_scale") or 0) * EMBEDDING_HEADROOM
    s_tok = float(bundle.manifest.get("storage", {}).get("token_int8_scale") or 0)
    if not (s_emb and s_tok):
        return {"note": "bundle manifest has no storage scales"}
    store = Store("int8", emb.shape[1], s_emb)
    diffs: dict[str, list[float]] = {"stored": [], "tokens_global": [], "tokens_per_token": []}
    same_order: dict[str, list[bool]] = {k: [] for k in diffs}
    rng = np.random.default_rng(0)
    for text in queries[:20]:
        q = bundle.encode_query(text)
        idx = rng.choice(len(emb), 20, replace=False)
        e, t = emb[idx], tok[idx]
        e_st = np.stack([store.decode(*store.encode(x)) for x in e])
        t_g = dequantize(quantize(t, s_tok), s_tok)
        per = 127.0 / np.maximum(np.abs(t).max(axis=2, keepdims=True), 1e-6)
        t_p = (np.clip(np.rint(t * per), -127, 127) / per).astype(np.float32)
        ref = bundle.score_encoded(q, t, e)
        spread = float(np.std(ref)) or 1.0
        for name, (tt, ee) in {"stored": (t_g, e_st), "tokens_global": (t_g, e),
                               "tokens_per_token": (t_p, e)}.items():
            got = bundle.score_encoded(q, tt, ee)
            diffs[name].append(float(np.max(np.abs(got - ref))) / spread)
            same_order[name].append(bool(np.array_equal(np.argsort(-got)[:10], np.argsort(-ref)[:10])))
    return {name: {"max_abs_diff_over_score_std": round(float(np.max(d)), 4),
                   "same_top10_order": round(float(np.mean(same_order[name])), 3)} for name, d in diffs.items()}


# ---- indexing: 12-MP throughput and RSS (child processes) ------------------------------------------
def make_12mp(n: int) -> Path:
    from PIL import Image

    folder = WORK / "jpeg12mp"
    folder.mkdir(parents=True, exist_ok=True)
    have = sorted(folder.glob("*.jpg"))
    if len(have) >= n:
        return folder
    rng = np.random.default_rng(0)
    for i, src in enumerate(flickr_images()[len(have):n]):
        im = Image.open(src).convert("RGB").resize((4032, 3024), Image.BICUBIC)
        a = np.asarray(im, np.int16) + rng.normal(0, 6, (3024, 4032, 3)).astype(np.int16)  # sensor-like grain
        out = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9003] = f"2023:{1 + i % 12:02d}:{1 + i % 28:02d} 12:00:00"
        out.save(folder / f"IMG_{len(have) + i:04d}.jpg", quality=90, exif=exif.tobytes())
    return folder


def make_small_photos(n: int) -> Path:
    """n tiny synthetic JPEGs in folders of 1000 (for the RSS runs)."""
    from PIL import Image

    folder = WORK / f"small_{n}"
    marker = folder / ".complete"
    if marker.exists():
        return folder
    rng = np.random.default_rng(1)
    for i in range(n):
        d = folder / f"f{i // 1000:03d}"
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize((64, 48)).save(d / f"p{i:06d}.jpg")
    marker.write_text("ok")
    return folder


class StubEncoder:
    """The real bundle (loaded: its memory counts) with a random-vector image encoder, so that RSS
    runs over 100k photos take minutes instead of hours on 2 cores."""

    def __init__(self, bundle: Any):
        self._b = bundle
        self.manifest = bundle.manifest
        self.model_id = bundle.model_id
        self.path = getattr(bundle, "path", "")
        self._rng = np.random.default_rng(0)
        self._shape = (int(bundle.manifest["image_tokens"]["count"]), int(bundle.manifest["image_tokens"]["dim"]))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._b.embed_texts(texts)  # type: ignore[no-any-return]

    def encode_images(self, images: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        e = self._rng.standard_normal((len(images), int(self.manifest["embedding"]["dim"])), dtype=np.float32)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        return e, self._rng.standard_normal((len(images), *self._shape), dtype=np.float32)

    def score_candidates(self, text: str, tokens: np.ndarray, embeds: np.ndarray) -> np.ndarray:
        return self._b.score_candidates(text, tokens, embeds)  # type: ignore[no-any-return]


def child_index(bundle_dir: str, folder: str, db: str, stub: bool, threads: int | None) -> None:
    """Index ``folder`` into a fresh ``db``; print a JSON line with the rate and peak RSS."""
    from edge_xmr import Library
    from edge_xmr.indexer import IndexOptions, default_workers

    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    bundle = load(Path(bundle_dir), threads)
    enc = StubEncoder(bundle) if stub else bundle
    bundle.embed_texts(["warm up"])
    if not stub:
        bundle.encode_images([np.zeros((8, 8, 3), np.uint8)])  # create the session before timing
    rss_loaded = peak_rss_mb()
    u0 = resource.getrusage(resource.RUSAGE_SELF)
    with Library.open(db, enc) as lib:  # type: ignore[arg-type]
        r = lib.index(folder, options=IndexOptions(workers=default_workers()))
        n = lib.count()
    u1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (u1.ru_utime - u0.ru_utime) + (u1.ru_stime - u0.ru_stime)
    rss = peak_rss_mb()
    print(json.dumps({"photos": n, "seconds": r.seconds, "photos_per_s": round(n / r.seconds, 2),
                      "cpu_ms_per_photo": round(1000 * cpu / max(n, 1), 1),
                      "cpu_bound_photos_per_s_2_cores": round(2 * n / cpu, 1) if cpu else None,
                      "peak_rss_mb": round(rss), "rss_after_model_load_mb": round(rss_loaded),
                      "skipped": r.skipped, "encoder": "stub (random vectors)" if stub else "real bundle",
                      "loadavg": round(os.getloadavg()[0], 2)}))


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: ru_maxrss survives exec on Linux and would
    report the parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def run_child(bundle_dir: Path, folder: Path, stub: bool, threads: int | None) -> dict[str, Any]:
    db = WORK / "child_index.db"
    args = [sys.executable, __file__, "--child", str(bundle_dir), str(folder), str(db), "1" if stub else "0",
            str(threads or 0)]
    p = subprocess.run(args, capture_output=True, text=True, check=False, cwd=REPO)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# ---- main ------------------------------------------------------------------------------------------
def table(rows: list[dict[str, Any]], title: str) -> None:
    if not rows:
        return
    cols = list(rows[0])
    w = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print(f"\n## {title}\n")
    print("| " + " | ".join(c.ljust(w[c]) for c in cols) + " |")
    print("|" + "|".join("-" * (w[c] + 2) for c in cols) + "|")
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")).ljust(w[c]) for c in cols) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--sizes", type=int, nargs="*", default=None, help="synthetic library sizes")
    ap.add_argument("--jpegs", type=int, default=100, help="12-MP JPEGs for the throughput run")
    ap.add_argument("--rss-sizes", type=int, nargs="*", default=None)
    ap.add_argument("--skip", nargs="*", default=[], choices=["latency", "recall", "throughput", "rss", "real"])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child_index(a.child[0], a.child[1], a.child[2], a.child[3] == "1", int(a.child[4]) or None)
        return
    WORK.mkdir(parents=True, exist_ok=True)
    sizes = a.sizes or ([2000, 10_000] if a.quick else [10_000, 100_000])
    rss_sizes = a.rss_sizes or ([1000, 5000] if a.quick else [10_000, 100_000])
    bundle_dir, origin = resolve_bundle(a.bundle)
    bundle = load(bundle_dir, a.threads)
    int8_bundle = load_precision(bundle_dir, a.threads, "int8")
    m = bundle.manifest
    dim, T, Dt = int(m["embedding"]["dim"]), int(m["image_tokens"]["count"]), int(m["image_tokens"]["dim"])
    res: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "bundle": {"path": str(bundle_dir), "origin": origin, "model": m["model"]["name"],
                   "model_id": bundle.model_id[:16], "dim": dim, "tokens": [T, Dt]},
        "latency": [], "recall": [], "bytes": [], "insert_rate": [], "throughput": {}, "rss": [],
    }
    queries = dev_captions(a.queries)
    qv = bundle.embed_texts(queries)
    print(f"bundle: {bundle_dir} ({origin}); {len(queries)} queries; load average {os.getloadavg()[0]:.2f}")

    n_real = 1000 if a.quick else len(flickr_images())
    emb_r, tok_r = real_vectors(bundle, flickr_images()[:n_real])
    res["token_fidelity"] = token_fidelity(bundle, emb_r, tok_r, queries)
    datasets = [] if "real" in a.skip else [(f"flickr8k real ({n_real})", emb_r, tok_r)]
    datasets += [(f"synthetic {n}", *synthetic(n, dim, T, Dt, seed=n)) for n in sizes]
    for label, emb, tok in datasets:
        for store in ("int8", "float32", "bit"):
            db = WORK / f"bench_{store}.db"
            rate = build_db(db, bundle, store, emb, tok)
            res["insert_rate"].append({"data": label, "store": store, "photos_per_s": round(rate)})
            res["bytes"].append(bytes_per_photo(db, len(emb), store, label))
            if "recall" not in a.skip:
                res["recall"].append(recall(db, bundle, emb, qv, label, store))
                if store == "int8" and m.get("storage", {}).get("embedding_int8_scale"):
                    res["recall"] += recall_ablations(emb, qv, float(m["storage"]["embedding_int8_scale"]), label)
            if "latency" not in a.skip and store in ("int8", "bit"):
                res["latency"] += latency(db, bundle, emb, tok, queries, label,
                                          int8_bundle if store == "int8" else None)
            print(f"  {label} {store}: done", flush=True)
    if "throughput" not in a.skip:
        folder = make_12mp(a.jpegs)
        res["throughput"] = {"photos": "12-MP JPEGs (4032x3024, ~q90, EXIF)", **run_child(bundle_dir, folder, False,
                                                                                         a.threads)}
    if "rss" not in a.skip:
        for n in rss_sizes:
            res["rss"].append({"library": n, **run_child(bundle_dir, make_small_photos(n), True, a.threads)})
    res["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]

    table(res["latency"], "Query latency (ms, k=10)")
    table(res["recall"], "recall@10 vs exact float search")
    table(res["bytes"], "Size on disk")
    table(res["insert_rate"], "DB insert rate (vectors precomputed)")
    table([res["throughput"]] if res["throughput"] else [], "Indexing 12-MP JPEGs (real encoder)")
    table(res["rss"], "Peak RSS while indexing")
    print("\ntoken fidelity:", res["token_fidelity"])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
