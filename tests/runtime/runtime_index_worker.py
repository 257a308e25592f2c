"""Run an indexing job in a separate process (for kill -9 and concurrency tests).

usage: python runtime_index_worker.py DB ROOT DELAY_PER_BATCH BATCH_SIZE
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runtime_fakes import FakeBundle  # noqa: E402

from edge_xmr.index import Library  # noqa: E402
from edge_xmr.indexer import IndexOptions  # noqa: E402


def main() -> None:
    db, root, delay, batch = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    with Library.open(db, FakeBundle(delay=delay)) as lib:
        r = lib.index(root, progress=lambda p: print(f"done {p.done}", flush=True),
                      options=IndexOptions(batch_size=batch, workers=1))
    print(f"report {r.added} {r.skipped}", flush=True)


if __name__ == "__main__":
    main()
