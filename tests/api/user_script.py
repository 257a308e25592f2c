"""A README-style user script: index a folder, search it, handle errors."""

from __future__ import annotations

import sys
from datetime import datetime

from edge_xmr import EdgeXmrError, Hit, Library, LibraryError


def main(folder: str, query: str) -> int:
    try:
        with Library.open("photos.db") as lib:
            report = lib.index(folder)
            added: int = report.added
            hits: list[Hit] = lib.search(query, k=5)
            many: list[list[Hit]] = lib.search_many([query, "a cat"], k=3)
            for h in hits:
                when: datetime = h.taken
                score: float | None = h.cross_score
                print(f"{when:%Y-%m-%d} {h.bi_score:.3f} {score} {h.path}")
            print(added, len(many), lib.stats().photos, lib.remove(folder))
    except LibraryError as e:
        print(f"library: {e}", file=sys.stderr)
        return 2
    except EdgeXmrError as e:
        print(e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
