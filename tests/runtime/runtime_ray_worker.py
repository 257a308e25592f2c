"""Index a folder on a local Ray instance in its own process (the kill -9 test of test_runtime_ray).

usage: python runtime_ray_worker.py DB ROOT BUNDLE [--batch N] [--pause S]

Prints ``open`` once the library is open, ``done N`` after each committed batch (then sleeps
``--pause`` seconds: a slow writer, so that a kill lands mid-way), ``report ADDED UNCHANGED`` at the end.
"""

from __future__ import annotations

import argparse
import time

import ray

from edge_xmr import Library
from edge_xmr.indexer import IndexOptions
from edge_xmr.ray_index import RayOptions


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("root")
    ap.add_argument("bundle")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--pause", type=float, default=0.0)
    a = ap.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    def progress(p: object) -> None:
        print(f"done {getattr(p, 'done')}", flush=True)
        time.sleep(a.pause)

    with Library.open(a.db, a.bundle) as lib:
        print("open", flush=True)
        r = lib.index(a.root, progress=progress, options=IndexOptions(batch_size=a.batch), ray=RayOptions(chunk=16))
    print(f"report {r.added} {r.unchanged}", flush=True)


if __name__ == "__main__":
    main()
