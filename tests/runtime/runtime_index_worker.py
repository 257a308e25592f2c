"""Library jobs in a separate process (kill -9, concurrency and real-permission tests).

usage: python runtime_index_worker.py index DB ROOT [--delay S] [--batch N] [--follow]
       python runtime_index_worker.py remove DB PATH [--slow S]
       python runtime_index_worker.py open DB [--at TIME]
       python runtime_index_worker.py search DB --until N

``index`` prints ``open`` once the library is open, ``done N`` after each batch, then ``report ADDED SKIPPED`` and ``json REPORT``.
``remove`` prints ``ready`` before removing (``--slow``: S seconds between photos, inside the one
transaction, so that a kill lands mid-way) and ``removed N``. ``search`` searches until the index
holds N photos and prints ``searches K``; it fails if a search raised, returned a photo twice, or
the photo count went down.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runtime_fakes import FakeBundle  # noqa: E402

from edge_xmr import Library  # noqa: E402
from edge_xmr.indexer import IndexOptions  # noqa: E402


def _index(a: argparse.Namespace) -> None:
    with Library.open(a.db, FakeBundle(delay=a.delay)) as lib:
        print("open", flush=True)
        r = lib.index(a.root, progress=lambda p: print(f"done {p.done}", flush=True),
                      options=IndexOptions(batch_size=a.batch, workers=1, follow_symlinks=a.follow))
    print(f"report {r.added} {r.skipped}", flush=True)
    print("json " + json.dumps(dataclasses.asdict(r)), flush=True)


def _remove(a: argparse.Namespace) -> None:
    with Library.open(a.db, FakeBundle()) as lib:
        if a.slow:
            one_at_a_time = lib.store.delete_photos

            def slow_delete(ids: Sequence[int]) -> None:
                for pid in ids:
                    one_at_a_time([pid])
                    time.sleep(a.slow)

            lib.store.delete_photos = slow_delete  # type: ignore[method-assign]
        print("ready", flush=True)
        n = lib.remove(a.path)
    print(f"removed {n}", flush=True)


def _open(a: argparse.Namespace) -> None:
    time.sleep(max(0.0, a.at - time.time()))  # all openers start together
    with Library.open(a.db, FakeBundle()) as lib:
        print(f"opened {lib.info.schema_version}", flush=True)


def _search(a: argparse.Namespace) -> None:
    searches, last = 0, 0
    with Library.open(a.db, FakeBundle()) as lib:
        while True:
            n = lib.count()
            assert n >= last, f"photo count went down: {last} -> {n}"
            hits = lib.search("a photo", k=50, rerank=5)
            paths = [h.path for h in hits]
            assert len(paths) == len(set(paths)), f"a photo shown twice: {paths}"
            searches, last = searches + 1, n
            if n >= a.until:
                break
    print(f"searches {searches}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("index")
    i.add_argument("db")
    i.add_argument("root")
    i.add_argument("--delay", type=float, default=0.0)
    i.add_argument("--batch", type=int, default=8)
    i.add_argument("--follow", action="store_true")
    r = sub.add_parser("remove")
    r.add_argument("db")
    r.add_argument("path")
    r.add_argument("--slow", type=float, default=0.0)
    o = sub.add_parser("open")
    o.add_argument("db")
    o.add_argument("--at", type=float, default=0.0, help="wall-clock time to open at")
    s = sub.add_parser("search")
    s.add_argument("db")
    s.add_argument("--until", type=int, required=True)
    a = p.parse_args()
    {"index": _index, "remove": _remove, "open": _open, "search": _search}[a.cmd](a)


if __name__ == "__main__":
    main()
