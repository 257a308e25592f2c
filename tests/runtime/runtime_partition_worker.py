"""Child process of the partition crash tests: fills an index, then rebalances it in a loop.

    python runtime_partition_worker.py DB N

Adds N clustered photos (batches of 200, lists trained and split as they grow), prints "ready",
then retrains the partitions over and over (each retrain one transaction that moves every photo),
printing "retrain <i>" before each, until killed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runtime_partition_data import CONFIG, StoreModel, clustered, records, tokens  # noqa: E402

from edge_xmr.index import PhotoStore  # noqa: E402


def main(db: str, n: int) -> None:
    x = clustered(n, seed=3)
    recs = records(n)
    with PhotoStore.open(db, StoreModel(), partitions=CONFIG) as lib:
        if lib.count() < n:
            for i in range(0, n, 200):
                lib.add_photos(recs[i:i + 200], x[i:i + 200], tokens(len(recs[i:i + 200])))
        print("ready", flush=True)
        i = 0
        while True:
            print(f"retrain {i}", flush=True)
            lib.retrain_partitions()
            i += 1


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
