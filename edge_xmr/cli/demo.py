"""``edge-xmr demo`` (index sample photos, search them, show scores and stage timings) and
``edge-xmr serve`` (the search gallery in the browser)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import UserError
from . import options as opt

if TYPE_CHECKING:
    from ..demo import DemoQuery, TimedSearch
    from ..library import Library


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="index sample photos (or --photos DIR), run text and image queries, show timings")
    d.add_argument("--photos", default=None, help="photo folder (default: sample photos that come with scikit-image)")
    d.add_argument("--bundle", default=None, help="model bundle folder (default: $EDGE_XMR_BUNDLE, else the default "
                                                  "model's bundle, packaged with edge-xmr)")
    d.add_argument("--db", default=None, help="index file (default: one per photo folder in the cache)")
    d.add_argument("--query", "-q", action="append", default=None, help="text query (repeatable; default: a few)")
    d.add_argument("-k", type=opt.K, default=3, help="results shown per query (default 3)")
    d.add_argument("--rerank", type=opt.RERANK, default=20,
                   help="KNN candidates reranked by the cross-encoder (default 20)")
    d.add_argument("--threads", type=opt.THREADS, default=None, help="onnxruntime threads (default: all cores)")
    d.set_defaults(func=run_demo)

    s = sub.add_parser("serve", help="search gallery in the browser (local page, 127.0.0.1 by default)")
    s.add_argument("--db", default=None, help="index file (default: $EDGE_XMR_DB or the platform data folder)")
    s.add_argument("--port", type=opt.PORT, default=8765, help="port (default 8765; 0: any free port)")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; ::1 for IPv6); an address other "
                        "machines can reach (0.0.0.0, a LAN address) needs --allow-remote")
    s.add_argument("--allow-remote", action="store_true",
                   help="serve beyond this machine on purpose: every request then needs the access token of the "
                        "printed link (kept in a cookie after the first visit)")
    s.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests addressed to NAME (the Host header), e.g. a name from /etc/hosts "
                        "(repeatable; this machine's addresses and host name are accepted already)")
    s.add_argument("--bundle", default=None, help="model bundle folder (default: the one the index was built with, "
                                                  "else the default model's bundle)")
    s.add_argument("--photos", default=None, help="index (or update) this folder in the background while serving")
    s.add_argument("--thumbs", default=None, help="thumbnail cache folder (default: in the user cache folder)")
    s.add_argument("--threads", type=opt.THREADS, default=None, help="onnxruntime threads (default: all cores)")
    s.add_argument("--quiet", action="store_true", help="do not log requests")
    s.set_defaults(func=run_serve)


# ---- shared ---------------------------------------------------------------------------------------
def _find_bundle(bundle: str | None, db: Path | None) -> Path:
    """The bundle to use (``edge_xmr.discovery``); the default model's is exported with a progress
    bar the first time, when this install packages none."""
    from ..discovery import find_bundle

    bar = opt.Progress("bundle", "step")
    stop, started = threading.Event(), threading.Event()

    def tick() -> None:  # keep the elapsed time moving during the long export step
        while not stop.wait(0.5):
            bar.refresh()

    def progress(step: str, done: int, total: int) -> None:
        if not started.is_set():
            started.set()
            print("building the default model bundle (once; cached for later runs)", file=sys.stderr)
            threading.Thread(target=tick, daemon=True).start()
        bar.update(done, total, step=step)

    try:
        return find_bundle(bundle, db, progress=progress)
    finally:
        stop.set()
        bar.close()


def _manifest(path: Path) -> dict[str, Any]:
    import json

    f = path / "manifest.json"
    if not f.is_file():
        raise UserError(f"not a model bundle (no manifest.json): {path}")
    try:
        return dict(json.loads(f.read_text(encoding="utf-8")))
    except (ValueError, OSError) as e:
        raise UserError(f"unreadable bundle manifest {f}: {e}") from None


def _load_bundle(path: str | Path, threads: int | None) -> Any:
    from ..bundle import Bundle

    p = Path(path).expanduser()
    _manifest(p)
    try:
        return Bundle.load(p, threads=threads)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the bundle {p}: {e}") from None


def _index(lib: Library, root: Path) -> None:
    with opt.Progress("indexing", "photo") as bar:
        report = lib.index(root, progress=lambda p: bar.update(p.done, p.total, added=p.added, skipped=p.skipped))
    print(f"index: {lib.count()} photos ({report.added} added, {report.unchanged} unchanged, "
          f"{report.skipped} skipped) in {report.seconds:.1f} s", file=sys.stderr)


# ---- demo -----------------------------------------------------------------------------------------
def run_demo(args: argparse.Namespace) -> int:
    from ..demo import (FOLDER_QUERIES, SAMPLE_IMAGE_QUERY, SAMPLE_QUERIES, DemoQuery, demo_db_path,
                        sample_photos)
    from ..index.library import LibraryError
    from ..library import Library

    t_start = time.perf_counter()
    bundle_dir = _find_bundle(args.bundle, None)  # the demo's index is chosen by the model: no index yet
    model = _manifest(bundle_dir).get("model", {})
    if args.photos:
        photos = Path(args.photos).expanduser().resolve()
        if not photos.is_dir():
            raise UserError(f"not a folder: {photos}")
        queries = FOLDER_QUERIES
    else:
        photos = sample_photos()
        queries = SAMPLE_QUERIES
    if args.query:
        queries = tuple(DemoQuery(q) for q in args.query)
    key = str(model.get("embedding_id") or model.get("id", ""))  # a new reranker alone keeps the index
    db = Path(args.db).expanduser() if args.db else demo_db_path(photos, key)
    print(f"model:  {model.get('name', '?')} ({bundle_dir})\nphotos: {photos}\nindex:  {db}", file=sys.stderr)
    try:
        lib = Library.open(db, bundle_dir, threads=args.threads)  # the index remembers the bundle folder
    except LibraryError as e:
        raise UserError(f"{e} (delete {db} or pass another --db)") from None
    except ValueError as e:  # BundleError: tampered or incomplete bundle
        raise UserError(f"cannot load the bundle {bundle_dir}: {e}") from None
    with lib:
        _index(lib, photos)
        if lib.count() == 0:
            raise UserError(f"no photos could be indexed in {photos}")
        first = _text_queries(lib, queries, args.k, args.rerank)
        _image_query(lib, first if args.photos or args.query else photos / SAMPLE_IMAGE_QUERY, args.k)
    print(f"\ndone in {time.perf_counter() - t_start:.1f} s. Browse it: edge-xmr serve --db {_quote(db)}")
    return 0


def _text_queries(lib: Library, queries: tuple[DemoQuery, ...], k: int, rerank: int) -> Path | None:
    """Run and print the queries; returns the first query's best photo."""
    from ..demo import timed_search

    timed_search(lib, "warm-up", k=1, rerank=min(rerank, 1))  # first onnxruntime runs allocate
    good = checked = 0
    first: Path | None = None
    for q in queries:
        r = timed_search(lib, q.text, k=k, rerank=rerank)
        if first is None and r.hits:
            first = Path(r.hits[0].path)
        print(f"\ntext → image: “{q.text}”\n  {_times(r)}")
        for i, h in enumerate(r.hits, 1):
            cross = "  –  " if h.cross_score is None else f"{h.cross_score:6.2f}"
            print(f"  {i}. cross {cross}  bi {h.bi_score:.3f}  {os.path.basename(h.path)}")
        if q.expect and r.hits:
            checked += 1
            ok = os.path.basename(r.hits[0].path) == q.expect
            good += ok
            print(f"  {'✓' if ok else '✗'} expected {q.expect} first")
    if checked:
        print(f"\n{good} of {checked} queries put the expected photo first")
    return first


def _times(r: TimedSearch) -> str:
    t = r.times
    return (f"embed {t.embed_ms:.1f} ms · KNN {t.knn_ms:.1f} ms · rerank {t.rerank_ms:.1f} ms "
            f"({t.candidates} candidates) · total {t.total_ms:.1f} ms")


def _image_query(lib: Library, photo: Path | None, k: int) -> None:
    if photo is None or lib.photo_id(photo) is None:
        row = lib.store.connection.execute("SELECT path FROM photos ORDER BY id LIMIT 1").fetchone()
        if row is None:
            return
        photo = Path(str(row[0]))
    t0 = time.perf_counter()
    hits = lib.similar(str(photo), k=k)
    ms = 1000 * (time.perf_counter() - t0)
    print(f"\nimage → image: photos like {photo.name}  ({ms:.1f} ms)")
    for i, h in enumerate(hits, 1):
        print(f"  {i}. bi {h.bi_score:.3f}  {os.path.basename(h.path)}")


def _quote(p: Path) -> str:
    s = str(p)
    return f"'{s}'" if any(c in s for c in " '\"$`\\") else s


# ---- serve ----------------------------------------------------------------------------------------
def run_serve(args: argparse.Namespace) -> int:
    from ..demo import cache_dir
    from ..index.library import LibraryError
    from ..library import Library
    from ..paths import default_db_path
    from ..server import Gallery, ServeError, ServerConfig, check_config, make_server

    config = ServerConfig(host=args.host, port=args.port, allow_remote=args.allow_remote,
                          allow_hosts=tuple(args.allow_host))
    try:  # before any loading: a refused address is one line at once
        check_config(config)
    except ServeError as e:
        raise UserError(str(e)) from None
    db = Path(args.db).expanduser().resolve() if args.db else default_db_path()
    photos = Path(args.photos).expanduser().resolve() if args.photos else None
    if photos is not None and not photos.is_dir():
        raise UserError(f"not a folder: {photos}")
    if not db.exists() and photos is None:
        print(f"warning: no index at {db}; the page will say so (index a folder with --photos DIR)",
              file=sys.stderr)
    bundle = _serve_bundle(args, db, need=photos is not None)
    if db.exists():
        try:  # refuse a model mismatch or a file that is no index now, not on every request
            Library.open(db, bundle, load_model=bundle is not None, create=False).close()
        except LibraryError as e:
            raise UserError(str(e)) from None
        except Exception as e:
            raise UserError(f"cannot open the index {db}: {e}") from None
    thumbs = Path(args.thumbs).expanduser() if args.thumbs else cache_dir() / "thumbs"
    gallery = Gallery(db=db, bundle=bundle, thumbs=thumbs)
    try:
        server = make_server(gallery, config, log=None if args.quiet else lambda m: print(m, file=sys.stderr))
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    if args.allow_remote:
        print(f"serving beyond this machine on {args.host}: only the link below (with its token) opens the "
              f"gallery; it answers requests addressed to {', '.join(sorted(server.hosts.names))}"
              f"{' or an IP address' if server.hosts.any_address else ''} (more with --allow-host)",
              file=sys.stderr)
    gallery.warm_up()
    if photos is not None:
        gallery.start_indexing(photos, lambda: Library.open(db, bundle))
        print(f"indexing {photos} in the background", file=sys.stderr)
    print(f"gallery of {db}\nopen {server.url}  (Ctrl-C to stop)", flush=True)
    if server.hosts.any_address:
        print(f"from another device: {server.url_for(socket.gethostname())}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def _serve_bundle(args: argparse.Namespace, db: Path, need: bool) -> Any:
    """--bundle, else the bundle the index names (if still there), else $EDGE_XMR_BUNDLE, else the
    default bundle (``edge_xmr.discovery``); without one, browsing works but search is off."""
    if args.bundle:
        return _load_bundle(args.bundle, args.threads)
    from ..discovery import NoBundleError

    try:
        return _load_bundle(_find_bundle(None, db), args.threads)
    except (NoBundleError, UserError) as e:  # no bundle, or an unusable one
        if need:
            raise
        print(f"warning: {e}; browsing only, search is off", file=sys.stderr)
        return None
    except Exception as e:  # the index names its bundle: not an index, newer schema, corrupt file
        raise UserError(f"cannot open the index {db}: {e}") from None
