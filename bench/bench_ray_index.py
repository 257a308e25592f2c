"""Bulk indexing on Ray against the local path on this machine: photos/s on the same 12-MP JPEGs in
the same run, and what Ray costs to start (issue 16, item 4).

    python bench/bench_ray_index.py                    # 128 photos, 2 rounds (~8 min on 2 shared cores)
    python bench/bench_ray_index.py --photos 16 --rounds 1   # a smoke test

Photos: the synthetic 12-MP JPEGs of bench/bench_index_memory.py (made there, reused). Each run is a
fresh child process indexing all of them into a fresh index with the default model:
- local: ``Library.index`` with the default ``IndexOptions`` (decoding threads = CPU cores; the
  encoder with onnxruntime's default intra-op threads);
- local_t1: the same with a single-threaded encoder (``EDGE_XMR_THREADS=1``), as each Ray encoder
  actor runs it (``RayOptions.encoder_threads`` 1): it tells the pipeline's share of a difference
  from the threading's;
- ray: ``ray.init(num_cpus=CPU cores)`` (a new local Ray instance), then ``Library.index(ray=RayOptions())``
  (default actor split: half the CPUs encode, the rest decode).
Start-up: ``ray_init_s`` is ``ray.init`` alone; ``first_commit_s`` is from the start of
``Library.index`` to the first committed batch (the scan, datasets and actors starting, the bundle
loading in the encoder actors, the first batch through the pipeline); ``photos_per_s`` is photos
over ``IndexReport.seconds`` (scan to last commit, ``ray.init`` excluded; the headline ratio),
``wall_s_with_start`` the whole child from before ``ray.init`` to the end. ``steady_photos_per_s``
(between the first and the last commit) is NOT comparable across the paths: Ray Data hands results
back in blocks, so the Ray path commits in bursts after a late first commit. The two paths alternate in order round by round (this
machine is shared); medians over rounds. Writes bench/results/ray_index.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_index_memory import WORK, library, make_photos, peak_rss_mb  # noqa: E402

OUT = REPO / "bench" / "results" / "ray_index.json"
MODES = ("local", "local_t1", "ray")


def child(mode: str, folder: str, db: str) -> None:
    """Index ``folder`` into a fresh ``db`` (``mode``: local or ray); print one JSON line."""
    from edge_xmr import Library
    from edge_xmr.indexer import IndexOptions, default_workers
    from edge_xmr.paths import default_bundle_dir

    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    t_start = time.perf_counter()
    init_s = None
    ray_opts = None
    if mode == "local_t1":
        os.environ["EDGE_XMR_THREADS"] = "1"
    if mode == "ray":
        import ray

        from edge_xmr.ray_index import RayOptions

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        init_s = time.perf_counter() - t_start
        ray_opts = RayOptions()
    commits: list[tuple[float, int]] = []
    with Library.open(db, default_bundle_dir()) as lib:
        t0 = time.perf_counter()
        r = lib.index(folder, options=IndexOptions(workers=default_workers()), ray=ray_opts,
                      progress=lambda p: commits.append((time.perf_counter() - t0, p.done)))
        n = lib.count()
    (t1, d1), (t2, d2) = commits[0], commits[-1]
    print(json.dumps({"mode": mode, "photos": n, "skipped": r.skipped, "seconds": r.seconds,
                      "photos_per_s": round(n / r.seconds, 2), "ray_init_s": round(init_s, 2) if init_s else None,
                      "first_commit_s": round(t1, 2),
                      "steady_photos_per_s": round((d2 - d1) / (t2 - t1), 2) if t2 > t1 else None,
                      "wall_s_with_start": round(time.perf_counter() - t_start, 2),
                      "driver_peak_rss_mb": round(peak_rss_mb()), "loadavg": round(os.getloadavg()[0], 2)}))


def run_child(mode: str, folder: Path) -> dict[str, Any]:
    args = [sys.executable, __file__, "--child", mode, str(folder), str(WORK / f"ray_bench_{mode}.db")]
    p = subprocess.run(args, capture_output=True, text=True, check=False, cwd=REPO, start_new_session=True)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def med(runs: list[dict[str, Any]], key: str) -> float | None:
    xs = [r[key] for r in runs if r.get(key) is not None]
    return round(float(np.median(xs)), 2) if xs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.child:
        child(*a.child)
        return
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load0 = [round(x, 2) for x in os.getloadavg()]
    import ray

    folder = library(make_photos(a.photos), a.photos)
    for p in folder.glob("*.jpg"):
        p.read_bytes()  # page cache warm for both paths
    runs: list[dict[str, Any]] = []
    for rnd in range(a.rounds):
        for mode in (MODES if rnd % 2 == 0 else MODES[::-1]):
            r = run_child(mode, folder)
            runs.append({"round": rnd, **r})
            print(f"round {rnd} {mode:8s}: {r['photos_per_s']:.2f} photos/s, first commit {r['first_commit_s']} s, "
                  f"ray.init {r['ray_init_s']} s (load {r['loadavg']})", flush=True)
    rows = []
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        rows.append({"mode": mode, "rounds": len(mine), "photos": mine[0]["photos"],
                     **{k: med(mine, k) for k in ("photos_per_s", "steady_photos_per_s", "first_commit_s",
                                                  "ray_init_s", "wall_s_with_start", "driver_peak_rss_mb")}})
    local, local_t1, on_ray = rows
    res = {
        "what": "indexing the same 12-MP JPEGs with the default model: local path vs Ray Data pipeline on a local "
                "Ray instance of this machine, fresh child processes, paths alternating",
        "command": "python bench/bench_ray_index.py " + " ".join(sys.argv[1:]),
        "date": started, "ray": ray.__version__,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_at_start": load0, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
                    "note": "shared machine: other jobs ran meanwhile; compare local vs ray within this run"},
        "photos": "synthetic 4032x3024 JPEG q90 (bench/bench_index_memory.py)",
        "summary": rows,
        "ray_over_local_photos_per_s": round(on_ray["photos_per_s"] / local["photos_per_s"], 3),
        "ray_over_local_wall_with_start": round(local["wall_s_with_start"] / on_ray["wall_s_with_start"], 3),
        "note": "steady_photos_per_s is not comparable across paths (Ray Data returns results in blocks: "
                "bursts of commits after a late first one); compare photos_per_s and wall_s_with_start",
        "local_t1_over_local_photos_per_s": round(local_t1["photos_per_s"] / local["photos_per_s"], 3),
        "runs": runs,
    }
    cols = list(rows[0])
    print("\n| " + " | ".join(cols) + " |\n|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print(f"\nray / local photos/s: {res['ray_over_local_photos_per_s']}; with start-up (wall): "
          f"{res['ray_over_local_wall_with_start']}; local_t1 / local: {res['local_t1_over_local_photos_per_s']}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
