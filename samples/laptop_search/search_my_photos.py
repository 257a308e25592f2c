"""Index a photo folder, search it from the command line, then browse it in the gallery.

    python samples/laptop_search/search_my_photos.py ~/Pictures "a dog on the beach" "birthday cake"
    python samples/laptop_search/search_my_photos.py ~/Pictures --gallery

Uses the public API only: ``Library.open`` / ``.index`` / ``.search`` / ``.similar`` and the
gallery server. The default model's bundle ships with edge_xmr (no torch needed); the first run
indexes the folder, later runs only pick up new or changed photos.
"""

from __future__ import annotations

import argparse
import sys
import webbrowser
from pathlib import Path

from edge_xmr.demo import cache_dir, default_bundle, demo_db_path
from edge_xmr import Library
from edge_xmr.server import Gallery, make_server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("queries", nargs="*", default=["a dog on the beach"])
    ap.add_argument("--gallery", action="store_true", help="open the search gallery in the browser afterwards")
    ap.add_argument("-k", type=int, default=5)
    a = ap.parse_args()

    bundle = default_bundle()  # the default model's bundle, packaged with edge_xmr
    db = demo_db_path(a.folder, model_id=_model_id(bundle))
    with Library.open(db, bundle) as lib:
        report = lib.index(a.folder, progress=lambda p: print(f"\rindexing {p.done}/{p.total}", end="", file=sys.stderr))
        print(f"\n{lib.count()} photos in {db} ({report.added} new)", file=sys.stderr)
        for q in a.queries:
            print(f"\n{q}")
            for h in lib.search(q, k=a.k, rerank=20):
                print(f"  cross {h.cross_score:6.2f}  bi {h.bi_score:.3f}  {h.taken:%Y-%m-%d}  {h.path}")
        if lib.count():
            first = lib.search(a.queries[0], k=1)[0]
            print(f"\nmore like {Path(first.path).name}:")
            for h in lib.similar(first.photo_id, k=a.k):
                print(f"  bi {h.bi_score:.3f}  {h.path}")

    if a.gallery:
        from edge_xmr.bundle import Bundle

        server = make_server(Gallery(db=db, bundle=Bundle.load(bundle), thumbs=cache_dir() / "thumbs"))
        print(f"\ngallery at {server.url} (Ctrl-C to stop)")
        webbrowser.open(server.url)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


def _model_id(bundle: Path) -> str:
    import json

    model = json.loads((bundle / "manifest.json").read_text())["model"]
    return str(model.get("embedding_id") or model["id"])  # a new reranker alone keeps the index


if __name__ == "__main__":
    sys.exit(main())
