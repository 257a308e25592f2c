"""``edge-xmr index | search | similar | stats | remove``: the on-device photo library.

The model bundle used to index a library is remembered in it, so later commands need no
``--bundle``; the default bundle is the embedded default model's (``$EDGE_XMR_BUNDLE`` overrides).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import EXIT_USAGE, UserError
from . import options as opt

if TYPE_CHECKING:
    from ..index.library import EncoderBundle
    from ..library import Library
    from ..search import Hit


def register(sub: Any) -> None:
    p = sub.add_parser("index", help="index a folder of photos (incremental)", description=_index.__doc__)
    p.add_argument("path", type=Path, help="folder (or photo) to index")
    _db_args(p, model=True)
    p.add_argument("--store", choices=["int8", "float32", "bit"], default="int8",
                   help="vector storage of a NEW index (default int8; see docs/runtime.md)")
    p.add_argument("--batch-size", type=opt.BATCH, default=32,
                   help=f"photos per batch and commit (default 32, at most {opt.MAX_BATCH})")
    p.add_argument("--workers", type=opt.WORKERS, default=None,
                   help="decoding threads (default: CPU cores; at most 4 per core)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="decode and encode on a Ray cluster (the [ray] extra): ADDRESS of its head (e.g. auto, "
                        "HOST:6379), or none for $RAY_ADDRESS, else a local Ray instance; the index is written here")
    p.add_argument("--quiet", action="store_true", help="no progress")
    opt.add_json(p, "a summary (counts of added, updated, ... photos)")
    p.set_defaults(func=_index)

    p = sub.add_parser("search", help="search photos by text", description=_search.__doc__)
    p.add_argument("text", nargs="?", help="the query (or use --queries)")
    _db_args(p, model=True)
    _result_args(p)
    p.add_argument("--rerank", type=opt.RERANK, default=20,
                   help="candidates reranked by the cross-encoder (default 20; 0: bi-encoder only)")
    _filter_args(p)
    opt.add_json(p, 'the answer {"query": ..., "hits": [...]}')
    p.add_argument("--queries", type=Path,
                   help="file with one query per line ('-': stdin), answered as it is read: one JSON "
                        'object per line, {"line": N, "query": ..., "hits": [...]} or {..., "error": ...}')
    p.set_defaults(func=_search)

    p = sub.add_parser("similar", help="photos similar to a photo", description=_similar.__doc__)
    p.add_argument("photo", type=Path, help="a photo file (indexed or not)")
    _db_args(p, model=True)
    _result_args(p)
    _filter_args(p)
    opt.add_json(p, 'the answer {"photo": ..., "hits": [...]}')
    p.set_defaults(func=_similar)

    p = sub.add_parser("stats", help="what is in a photo index", description=_stats.__doc__)
    _db_args(p, model=False)
    opt.add_json(p, "the statistics")
    p.set_defaults(func=_stats)

    p = sub.add_parser("remove", help="forget a photo or a folder (files are not touched)", description=_remove.__doc__)
    p.add_argument("path", type=Path, help="photo or folder to forget")
    _db_args(p, model=False)
    opt.add_json(p, "a summary (how many photos were forgotten)")
    p.set_defaults(func=_remove)


def _db_args(p: argparse.ArgumentParser, model: bool) -> None:
    p.add_argument("--db", type=Path, default=None, help="index file (default: $EDGE_XMR_DB, else the platform's data folder)")
    if model:
        p.add_argument("--bundle", type=Path, default=None,
                       help="model bundle folder (default: the one the index was built with, else the default model)")
        p.add_argument("--provider", default=None,
                       help="onnxruntime execution provider(s), e.g. cpu, cuda, coreml (default: best available)")
        p.add_argument("--threads", type=opt.THREADS, default=None,
                       help="intra-op threads (default: all cores; at most 4 per core)")
        p.add_argument("--precision", choices=["fp32", "int8"], default=None,
                       help="graph precision: int8 halves text/cross-encoder latency on CPU (default fp32 if the bundle has it, "
                            "else int8: the packaged default bundle is int8)")
        p.add_argument("--routing", choices=["auto", "always", "never"], default=None,
                       help="a bundle with a multilingual query encoder: auto sends English-looking queries to the "
                            "English encoder and the rest to the multilingual one; always / never force one "
                            "(default: the bundle's choice)")


def _result_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=opt.K, default=10, help="results to return (default 10, at most 4096)")


def _filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--after", type=_date, default=None, help="only photos taken on/after DATE (YYYY-MM-DD)")
    p.add_argument("--before", type=_date, default=None, help="only photos taken before DATE (YYYY-MM-DD)")
    p.add_argument("--folder", type=Path, default=None, help="only photos in this folder or below")


def _date(s: str) -> str:
    from ..index.filters import to_wall_seconds

    try:
        to_wall_seconds(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return s


# ---- opening the library -------------------------------------------------------------------------
def load_bundle(path: Path, provider: str | None, threads: int | None, precision: str | None = None,
                routing: str | None = None) -> EncoderBundle:
    """Load a bundle folder (torch-free); errors become one-line user errors."""
    if not (path / "manifest.json").is_file():
        raise UserError(f"not a model bundle (no manifest.json): {path}")
    from ..bundle import Bundle
    from ..providers import ProviderError

    try:
        return Bundle.load(path, precision=precision, providers=provider,  # type: ignore[arg-type]
                           threads=threads, routing=routing)  # type: ignore[arg-type]
    except ProviderError:
        raise
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the bundle at {path}: {e}") from None


def _bundle_path(args: argparse.Namespace) -> Path:
    """--bundle, else the index's recorded bundle, else $EDGE_XMR_BUNDLE, else the default model's."""
    from ..discovery import find_bundle

    return find_bundle(args.bundle, _db_path(args))


def _db_path(args: argparse.Namespace) -> Path:
    from ..paths import default_db_path

    return Path(args.db).expanduser() if args.db is not None else default_db_path()


@contextmanager
def _open(args: argparse.Namespace, model: bool, create: bool = False, store: str = "int8") -> Iterator[Library]:
    from ..library import Library

    db = _db_path(args)
    if not create and not db.exists():
        raise UserError(f"no index at {db} (run 'edge-xmr index PATH' first, or pass --db)")
    bundle = (load_bundle(_bundle_path(args), args.provider, args.threads, args.precision, args.routing)
              if model else None)
    with Library.open(db, bundle, load_model=model, store=store, create=create) as lib:
        yield lib


def _provider_note(bundle: Any) -> str:
    """Which execution provider really runs the model (onnxruntime only warns on fallbacks)."""
    from ..providers import active_provider

    session = getattr(bundle, "session", None)
    if not callable(session):
        return "unknown"
    try:
        return active_provider(session("image_encoder"))
    except Exception:  # a bundle without that graph: nothing to report
        return "unknown"


# ---- commands ------------------------------------------------------------------------------------
def _index(args: argparse.Namespace) -> int:
    """Index a folder tree: new and changed photos are embedded, unchanged ones skipped, moved ones
    recognised by content, deleted ones removed. Safe to interrupt and rerun."""
    from ..indexer import IndexOptions, default_workers

    if not args.path.exists():
        raise UserError(f"no such file or folder: {args.path}")
    opts = IndexOptions(batch_size=args.batch_size, workers=args.workers or default_workers())
    ray = None
    if args.ray is not None:
        from ..ray_index import RayOptions, require_ray

        require_ray()  # before the index is opened or created
        ray = RayOptions(address=args.ray or None)
    with _open(args, model=True, create=True, store=args.store) as lib:
        print(f"indexing {args.path.resolve()} into {lib.path} (model {lib.info.model_name}, store {lib.info.store},"
              f" provider {_provider_note(lib.bundle)})", file=sys.stderr)
        with opt.Progress("indexing", "photo", quiet=args.quiet) as bar:
            r = lib.index(args.path, options=opts, ray=ray,
                          progress=lambda p: bar.update(p.done, p.total, added=p.added, skipped=p.skipped))
    if args.json:
        opt.print_json({"db": str(lib.path), "path": str(args.path.resolve()), **asdict(r)})
        return 0
    rate = (r.added + r.updated) / r.seconds if r.seconds else 0.0
    print(f"scanned {r.scanned}: {r.added} added, {r.updated} updated, {r.moved} moved, {r.copied} copied, "
          f"{r.unchanged} unchanged, {r.removed} removed, {r.skipped} skipped ({r.seconds:.1f} s, "
          f"{rate:.1f} photos/s)")
    if r.merged:
        print(f"{r.merged} photos indexed twice under two paths were merged into one", file=sys.stderr)
    if r.unreadable:
        print(f"warning: {r.unreadable} folders or files could not be read; {r.kept} indexed photos below them "
              f"were kept as they were (not removed)", file=sys.stderr)
        for path, why in r.errors[:5]:
            print(f"  {path}: {why}", file=sys.stderr)
    return 0


def _search(args: argparse.Namespace) -> int:
    """Search photos by text: the bi-encoder retrieves the top --rerank candidates, the
    cross-encoder reranks them, the best --k are printed. With --queries, each line of the file
    (or of stdin) is answered as soon as it is read, in order: one JSON object per input line."""
    from ..search import clean_query

    if (args.text is None) == (args.queries is None):
        raise UserError("give either a query TEXT or --queries FILE")
    if args.queries is not None:
        with _query_lines(args.queries) as lines, _open(args, model=True) as lib:
            return _answer_lines(lib, args, lines)
    clean_query(args.text)  # an empty query is refused before the model loads
    with _open(args, model=True) as lib:
        hits = _query(lib, args, args.text)
    if args.json:
        opt.print_json({"query": args.text, "hits": [h.to_dict() for h in hits]})
    else:
        _print_hits(hits)
    return 0


def _query(lib: Library, args: argparse.Namespace, text: str) -> list[Hit]:
    return lib.search(text, k=args.k, rerank=args.rerank, after=args.after, before=args.before, folder=args.folder)


@contextmanager
def _query_lines(path: Path) -> Iterator[Iterator[bytes]]:
    """The lines of the queries file, or of stdin for '-', each as soon as it arrives."""
    if str(path) == "-":
        yield iter(sys.stdin.buffer.readline, b"")
        return
    with open(path, "rb") as f:
        yield iter(f.readline, b"")


def _answer_lines(lib: Library, args: argparse.Namespace, lines: Iterator[bytes]) -> int:
    """One JSON object per input line, written (and flushed) before the next line is read. A line
    that cannot be a query (blank, not UTF-8) gets an object with "error" instead of "hits", so
    answers and lines always match 1:1; the exit status is then 2."""
    n = refused = 0
    for n, raw in enumerate(lines, 1):
        answer = _answer(lib, args, n, raw)
        refused += "error" in answer
        opt.print_json(answer)
    if refused:
        print(f"{refused} of {n} queries refused (their answers carry \"error\")", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _answer(lib: Library, args: argparse.Namespace, n: int, raw: bytes) -> dict[str, Any]:
    from ..search import QueryError

    line = raw.removesuffix(b"\n").removesuffix(b"\r")
    if n == 1:
        line = line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return {"line": n, "query": line.decode("utf-8", "replace"), "error": "the line is not UTF-8 text"}
    try:
        hits = _query(lib, args, text)
    except QueryError as e:
        return {"line": n, "query": text, "error": str(e)}
    return {"line": n, "query": text, "hits": [h.to_dict() for h in hits]}


def _print_hits(hits: list[Hit]) -> None:
    if not hits:
        print("no matching photos", file=sys.stderr)
        return
    for i, h in enumerate(hits, 1):
        cross = f"{h.cross_score:8.3f}" if h.cross_score is not None else "       -"
        sys.stdout.write(f"{i:3d}  cross {cross}  bi {h.bi_score:6.3f}  {h.taken:%Y-%m-%d}  {h.path}\n")


def _similar(args: argparse.Namespace) -> int:
    """Photos most similar to PHOTO (by bi-encoder embedding); PHOTO itself is left out."""
    with _open(args, model=True) as lib:
        if not args.photo.is_file() and lib.photo_id(args.photo) is None:
            raise UserError(f"no such photo: {args.photo}")
        hits = lib.similar(args.photo, k=args.k, after=args.after, before=args.before, folder=args.folder)
    if args.json:
        opt.print_json({"photo": str(args.photo), "hits": [h.to_dict() for h in hits]})
    else:
        _print_hits(hits)
    return 0


def _stats(args: argparse.Namespace) -> int:
    """Counts, skipped files with reasons, model, store type and size on disk of an index."""
    with _open(args, model=False) as lib:
        s = lib.stats()
    if args.json:
        opt.print_json(s.to_dict())
        return 0
    print(f"index      {s.db_path}  (schema {s.schema_version})")
    print(f"model      {s.model_name}  id {s.model_id[:16]}  dim {s.dim}")
    print(f"store      {s.store}")
    print(f"photos     {s.photos} in {s.folders} folders" +
          (f", taken {s.first_taken[:10]} .. {s.last_taken[:10]}" if s.first_taken and s.last_taken else ""))
    print(f"on disk    {s.db_bytes / 1e6:.2f} MB ({s.bytes_per_photo:.0f} bytes/photo)")
    print(f"skipped    {s.skipped}")
    for path, reason in s.skipped_files[:20]:
        print(f"  {path}: {reason}")
    if s.skipped > 20:
        print(f"  ... and {s.skipped - 20} more (--json lists up to 100)")
    return 0


def _remove(args: argparse.Namespace) -> int:
    """Forget a photo, or every photo under a folder (the files themselves are not touched)."""
    with _open(args, model=False) as lib:
        n = lib.remove(args.path)
        db = lib.path
    if args.json:
        opt.print_json({"db": str(db), "path": os.path.abspath(args.path), "removed": n})
    else:
        print(f"removed {n} photo{'s' if n != 1 else ''} from the index")
    return 0
