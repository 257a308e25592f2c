"""Indexing memory: peak RSS and photos/s while indexing 12-MP JPEGs with the default model, the old
settings against the new ones, at a few library sizes, in child processes (issue 16, item 3).

    python bench/bench_index_memory.py                      # sizes 16 32 64, 2 rounds (~5 min on 2 cores)
    python bench/bench_index_memory.py --sizes 8 16 --rounds 1 --no-sweep   # a smoke test

Photos: synthetic, made by this script in a temp folder (reused by later runs): each is a random
32 x 24 colour field (its own seed) upscaled bicubic to 4032 x 3024, plus uniform grain of +-8 per
channel (so the JPEG is not trivially compressible: ~2.4 MB each at quality 90), with an EXIF
capture date. Nothing is read from the data sets. A library of N photos is a folder of hard links
to the first N of them.

Settings compared (``edge_xmr.indexer.IndexOptions``; the same indexer code, only the knobs differ):
- old: what the indexer did before the knobs existed: up to 32 photos per image-encoder call (the
  bundle encodes in chunks of 16) and 2 x batch_size + workers = 66 files read ahead;
- new: the defaults (``encoder_batch`` 4, ``max_in_flight`` 16).
Both commit 32 photos per transaction with one decoding thread per core. Each (size, setting) runs in
a fresh child process (peak RSS = the child's VmHWM, model load included), the settings alternating
in order round by round, so that the load of this shared machine hits both alike; the table gives
the median over rounds. ``--sweep`` adds one round of ``encoder_batch`` 1..16 at the middle size.
Writes bench/results/index_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_runtime import peak_rss_mb  # noqa: E402  (one VmHWM reader for every benchmark's child)

WORK = Path(tempfile.gettempdir()) / "edge_xmr_bench_index_memory"
OUT = REPO / "bench" / "results" / "index_memory.json"
BUDGET_MB = 500  # issue 16: peak RSS while indexing 12-MP photos with the default model
OLD = {"batch_size": 32, "encoder_batch": 16, "max_in_flight": 66}  # before the knobs (see docstring)
NEW: dict[str, int] = {}  # IndexOptions' defaults


# ---- photos ----------------------------------------------------------------------------------------
def make_photos(n: int) -> Path:
    """``n`` synthetic 12-MP JPEGs (see the module docstring), made once and reused."""
    from PIL import Image

    folder = WORK / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        out = folder / f"IMG_{i:04d}.jpg"
        if out.exists():
            continue
        rng = np.random.default_rng(i)
        field = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).resize((4032, 3024), Image.BICUBIC)
        a = np.asarray(field, np.int16) + rng.integers(-8, 9, (3024, 4032, 3), dtype=np.int16)
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9003] = f"2023:{1 + i % 12:02d}:{1 + i % 28:02d} 12:00:00"
        tmp = out.with_suffix(".part")
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(tmp, "JPEG", quality=90, exif=exif.tobytes())
        tmp.rename(out)  # a killed run leaves no half-written photo
    return folder


def library(photos: Path, n: int) -> Path:
    """A folder holding the first ``n`` photos (hard links, else copies)."""
    folder = WORK / f"library_{n}"
    if folder.exists() and len(list(folder.glob("*.jpg"))) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for src in sorted(photos.glob("IMG_*.jpg"))[:n]:
        try:
            os.link(src, folder / src.name)
        except OSError:
            shutil.copy2(src, folder / src.name)
    return folder


# ---- one indexing run (child process) --------------------------------------------------------------
def child(folder: str, db: str, knobs: dict[str, int]) -> None:
    """Index ``folder`` into a fresh ``db`` with the default model; print one JSON line."""
    from edge_xmr import Library
    from edge_xmr.bundle import Bundle
    from edge_xmr.indexer import IndexOptions, default_workers
    from edge_xmr.paths import default_bundle_dir

    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    bundle_dir = default_bundle_dir()
    if bundle_dir is None:
        raise SystemExit("no default bundle (edge_xmr/assets/default_bundle)")
    bundle = Bundle.load(bundle_dir)
    bundle.encode_images([np.zeros((8, 8, 3), np.uint8)])  # the image session exists before timing
    rss_loaded = peak_rss_mb()
    opts = IndexOptions(workers=default_workers(), **knobs)
    u0 = resource.getrusage(resource.RUSAGE_SELF)
    with Library.open(db, bundle) as lib:
        r = lib.index(folder, options=opts)
        n = lib.count()
    u1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (u1.ru_utime - u0.ru_utime) + (u1.ru_stime - u0.ru_stime)
    print(json.dumps({"photos": n, "added": r.added, "skipped": r.skipped, "seconds": r.seconds,
                      "photos_per_s": round(n / r.seconds, 2), "cpu_ms_per_photo": round(1000 * cpu / max(n, 1), 1),
                      "peak_rss_mb": round(peak_rss_mb(), 1), "rss_after_model_load_mb": round(rss_loaded, 1),
                      "options": {k: getattr(opts, k) for k in ("batch_size", "workers", "encoder_batch",
                                                                "max_in_flight")},
                      "model": bundle.manifest["model"]["name"], "loadavg": round(os.getloadavg()[0], 2)}))


def run_child(folder: Path, knobs: dict[str, int]) -> dict[str, Any]:
    args = [sys.executable, __file__, "--child", str(folder), str(WORK / "child.db"), json.dumps(knobs)]
    p = subprocess.run(args, capture_output=True, text=True, check=False, cwd=REPO)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# ---- main ------------------------------------------------------------------------------------------
def table(rows: list[dict[str, Any]], title: str) -> None:
    cols = list(rows[0])
    w = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print(f"\n## {title}\n")
    print("| " + " | ".join(c.ljust(w[c]) for c in cols) + " |")
    print("|" + "|".join("-" * (w[c] + 2) for c in cols) + "|")
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")).ljust(w[c]) for c in cols) + " |")


def summary(runs: list[dict[str, Any]], setting: str, n: int) -> dict[str, Any]:
    mine = [r for r in runs if r["setting"] == setting and r["library"] == n]
    return {"setting": setting, "library": n, "rounds": len(mine),
            "peak_rss_mb": round(float(np.median([r["peak_rss_mb"] for r in mine])), 1),
            "peak_rss_mb_max": max(r["peak_rss_mb"] for r in mine),
            "photos_per_s": round(float(np.median([r["photos_per_s"] for r in mine])), 2),
            "rss_after_model_load_mb": round(float(np.median([r["rss_after_model_load_mb"] for r in mine])), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64], help="library sizes (photos)")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each (size, setting), interleaved")
    ap.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True,
                    help="also encoder_batch 1, 2, 4, 8, 16 at the middle size (one round)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.child:
        child(a.child[0], a.child[1], json.loads(a.child[2]))
        return
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load0 = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    photos = make_photos(max(a.sizes))
    print(f"{max(a.sizes)} photos ready in {time.perf_counter() - t0:.0f} s ({photos})", flush=True)
    for p in sorted(photos.glob("IMG_*.jpg"))[:max(a.sizes)]:
        p.read_bytes()  # page cache warm for the first run as for the others
    settings = {"old": OLD, "new": NEW}
    runs: list[dict[str, Any]] = []
    for rnd in range(a.rounds):
        for n in a.sizes:
            folder = library(photos, n)
            order = list(settings) if (rnd + a.sizes.index(n)) % 2 == 0 else list(settings)[::-1]
            for name in order:
                r = run_child(folder, settings[name])
                runs.append({"round": rnd, "setting": name, "library": n, **r})
                print(f"round {rnd} {name:3s} {n:4d} photos: peak {r['peak_rss_mb']:.0f} MB, "
                      f"{r['photos_per_s']:.1f} photos/s (load {r['loadavg']})", flush=True)
    rows = [summary(runs, s, n) for n in a.sizes for s in settings]
    sweep = []
    if a.sweep:
        mid = a.sizes[len(a.sizes) // 2]
        for eb in (1, 2, 4, 8, 16):
            r = run_child(library(photos, mid), {"encoder_batch": eb})
            sweep.append({"encoder_batch": eb, "library": mid, "peak_rss_mb": r["peak_rss_mb"],
                          "photos_per_s": r["photos_per_s"], "loadavg": r["loadavg"]})
            print(f"sweep encoder_batch {eb:2d}: peak {r['peak_rss_mb']:.0f} MB, {r['photos_per_s']:.1f} photos/s",
                  flush=True)
    new = [r for r in rows if r["setting"] == "new"]
    old = [r for r in rows if r["setting"] == "old"]
    peaks = [r["peak_rss_mb"] for r in new]
    res = {
        "what": "peak RSS and photos/s indexing synthetic 12-MP JPEGs with the default model, old vs new "
                "IndexOptions, child processes, settings interleaved",
        "command": "python bench/bench_index_memory.py " + " ".join(sys.argv[1:]),
        "date": started,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_at_start": load0, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
                    "note": "shared machine: other jobs ran meanwhile; compare old vs new within this run"},
        "photos": "synthetic 4032x3024 JPEG q90 (~2.4 MB): random 32x24 colour field upscaled bicubic + "
                  "uniform grain +-8, EXIF DateTimeOriginal",
        "settings": {"old": OLD, "new": "IndexOptions defaults", "both": "batch_size 32, workers = CPU cores"},
        "summary": rows,
        "criteria": {
            f"new peak RSS <= {BUDGET_MB} MB at every size": max(peaks) <= BUDGET_MB,
            "new peak RSS flat in library size (max - min <= 10% of min)": max(peaks) - min(peaks) <= 0.1 * min(peaks),
            "new photos/s >= 0.95 x old (same run)": all(nw["photos_per_s"] >= 0.95 * od["photos_per_s"]
                                                         for nw, od in zip(new, old)),
        },
        "encoder_batch_sweep": sweep,
        "runs": runs,
    }
    table(rows, "Indexing 12-MP JPEGs (median over rounds)")
    if sweep:
        table(sweep, "encoder_batch sweep (one round)")
    print("\n" + json.dumps(res["criteria"], indent=1))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
