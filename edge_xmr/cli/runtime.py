"""``edge-xmr index | search | similar | stats | remove``: the on-device photo library.

The model bundle used to index a library is remembered in it, so later commands need no
``--bundle``; the default bundle is the embedded default model's (``$EDGE_XMR_BUNDLE`` overrides).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from . import UserError

if TYPE_CHECKING:
    from ..index.library import EncoderBundle, Library
    from ..indexer import Progress
    from ..search import Hit


def register(sub: Any) -> None:
    p = sub.add_parser("index", help="index a folder of photos (incremental)", description=_index.__doc__)
    p.add_argument("path", type=Path, help="folder (or photo) to index")
    _db_args(p, model=True)
    p.add_argument("--store", choices=["int8", "float32", "bit"], default="int8",
                   help="vector storage of a NEW index (default int8; see docs/runtime.md)")
    p.add_argument("--batch-size", type=_positive, default=32, help="photos per batch and commit (default 32)")
    p.add_argument("--workers", type=_positive, default=None, help="decoding threads (default: CPU cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_index)

    p = sub.add_parser("search", help="search photos by text", description=_search.__doc__)
    p.add_argument("text", nargs="?", help="the query (or use --queries)")
    _db_args(p, model=True)
    p.add_argument("--k", type=_positive, default=10, help="results to return (default 10)")
    p.add_argument("--rerank", type=_non_negative, default=20,
                   help="candidates reranked by the cross-encoder (default 20; 0: bi-encoder only)")
    _filter_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON array of results per query")
    p.add_argument("--queries", type=Path, help="file with one query per line ('-': stdin); prints JSON lines")
    p.set_defaults(func=_search)

    p = sub.add_parser("similar", help="photos similar to a photo", description=_similar.__doc__)
    p.add_argument("photo", type=Path, help="a photo file (indexed or not)")
    _db_args(p, model=True)
    p.add_argument("--k", type=_positive, default=10, help="results to return (default 10)")
    _filter_args(p)
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(func=_similar)

    p = sub.add_parser("stats", help="what is in a photo index", description=_stats.__doc__)
    _db_args(p, model=False)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_stats)

    p = sub.add_parser("remove", help="forget a photo or a folder (files are not touched)", description=_remove.__doc__)
    p.add_argument("path", type=Path, help="photo or folder to forget")
    _db_args(p, model=False)
    p.set_defaults(func=_remove)


def _db_args(p: argparse.ArgumentParser, model: bool) -> None:
    p.add_argument("--db", type=Path, default=None, help="index file (default: the platform's data folder)")
    if model:
        p.add_argument("--bundle", type=Path, default=None,
                       help="model bundle folder (default: the one the index was built with, else the default model)")
        p.add_argument("--provider", default=None,
                       help="onnxruntime execution provider(s), e.g. cpu, cuda, coreml (default: best available)")
        p.add_argument("--threads", type=_non_negative, default=None, help="intra-op threads (default: all cores)")
        p.add_argument("--precision", choices=["fp32", "int8"], default="fp32",
                       help="graph precision: int8 halves text/cross-encoder latency on CPU (default fp32)")


def _filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--after", type=_date, default=None, help="only photos taken on/after DATE (YYYY-MM-DD)")
    p.add_argument("--before", type=_date, default=None, help="only photos taken before DATE (YYYY-MM-DD)")
    p.add_argument("--folder", type=Path, default=None, help="only photos in this folder or below")


def _positive(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _non_negative(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _date(s: str) -> str:
    from ..index.filters import to_wall_seconds

    try:
        to_wall_seconds(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return s


# ---- opening the library -------------------------------------------------------------------------
def load_bundle(path: Path, provider: str | None, threads: int | None, precision: str = "fp32") -> EncoderBundle:
    """Load a bundle folder (torch-free); errors become one-line user errors."""
    if not (path / "manifest.json").is_file():
        raise UserError(f"not a model bundle (no manifest.json): {path}")
    from ..bundle import Bundle
    from ..providers import ProviderError

    try:
        return Bundle.load(path, precision=precision, providers=provider,  # type: ignore[arg-type]
                           threads=threads)
    except ProviderError as e:
        raise UserError(str(e)) from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the bundle at {path}: {e}") from None


def _bundle_path(args: argparse.Namespace) -> Path:
    from ..index.db import connect
    from ..index.schema import has_schema, read_meta
    from ..paths import default_bundle_dir

    if args.bundle is not None:
        return Path(args.bundle).expanduser()
    db = _db_path(args)
    if db.exists():
        conn = connect(db, readonly=True)
        try:
            hint = read_meta(conn).get("bundle_path", "") if has_schema(conn) else ""
        finally:
            conn.close()
        if hint and (Path(hint) / "manifest.json").is_file():
            return Path(hint)
    found = default_bundle_dir()
    if found is not None:
        return found
    return _default_model_bundle()


def _default_model_bundle() -> Path:
    """The embedded default model's bundle (exported into the user cache on first use)."""
    try:
        from ..demo import DemoError, default_bundle
    except ImportError:
        raise UserError("no model bundle: pass --bundle DIR (or set $EDGE_XMR_BUNDLE)") from None
    try:
        return default_bundle()
    except DemoError as e:
        raise UserError(f"no model bundle: pass --bundle DIR ({e})") from None


def _db_path(args: argparse.Namespace) -> Path:
    from ..paths import default_db_path

    return Path(args.db).expanduser() if args.db is not None else default_db_path()


@contextmanager
def _open(args: argparse.Namespace, model: bool, create: bool = False, store: str = "int8") -> Iterator[Library]:
    from ..index.library import Library, LibraryError
    from ..index.schema import SchemaError

    db = _db_path(args)
    if not create and not db.exists():
        raise UserError(f"no index at {db} (run 'edge-xmr index PATH' first, or pass --db)")
    bundle = load_bundle(_bundle_path(args), args.provider, args.threads, args.precision) if model else None
    try:
        lib = Library.open(db, bundle, store=store, create=create)  # type: ignore[arg-type]
    except (LibraryError, SchemaError) as e:
        raise UserError(str(e)) from None
    try:
        yield lib
    except LibraryError as e:
        raise UserError(str(e)) from None
    finally:
        lib.close()


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
    with _open(args, model=True, create=True, store=args.store) as lib:
        print(f"indexing {args.path.resolve()} into {lib.path} (model {lib.info.model_name}, store {lib.info.store},"
              f" provider {_provider_note(lib.bundle)})", file=sys.stderr)
        with _ProgressBar(disabled=args.quiet) as bar:
            r = lib.index(args.path, progress=bar.update, options=opts)
    rate = (r.added + r.updated) / r.seconds if r.seconds else 0.0
    print(f"scanned {r.scanned}: {r.added} added, {r.updated} updated, {r.moved} moved, {r.copied} copied, "
          f"{r.unchanged} unchanged, {r.removed} removed, {r.skipped} skipped ({r.seconds:.1f} s, "
          f"{rate:.1f} photos/s)")
    return 0


class _ProgressBar:
    """A tqdm bar (photos/s and ETA) fed by indexer Progress events."""

    def __init__(self, disabled: bool):
        self.disabled = disabled
        self.bar: Any = None

    def __enter__(self) -> _ProgressBar:
        return self

    def update(self, p: Progress) -> None:
        if self.disabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=p.total, unit="photo", dynamic_ncols=True, file=sys.stderr)
        self.bar.update(p.done - self.bar.n)
        self.bar.set_postfix(added=p.added, skipped=p.skipped, refresh=False)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _search(args: argparse.Namespace) -> int:
    """Search photos by text: the bi-encoder retrieves the top --rerank candidates, the
    cross-encoder reranks them, the best --k are printed."""
    if (args.text is None) == (args.queries is None):
        raise UserError("give either a query TEXT or --queries FILE")
    queries = _read_queries(args.queries) if args.queries is not None else [args.text]
    as_json = args.json or args.queries is not None
    with _open(args, model=True) as lib:
        for q in queries:
            try:
                hits = lib.search(q, k=args.k, rerank=args.rerank, after=args.after, before=args.before,
                                  folder=args.folder)
            except ValueError as e:
                raise UserError(str(e)) from None
            _print_hits(hits, as_json, sys.stdout)
    return 0


def _read_queries(path: Path) -> list[str]:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read queries: {e}") from None
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


def _print_hits(hits: list[Hit], as_json: bool, out: TextIO) -> None:
    if as_json:
        out.write(json.dumps([h.to_dict() for h in hits], ensure_ascii=False) + "\n")
        out.flush()
        return
    if not hits:
        print("no matching photos", file=sys.stderr)
        return
    for i, h in enumerate(hits, 1):
        cross = f"{h.cross_score:8.3f}" if h.cross_score is not None else "       -"
        out.write(f"{i:3d}  cross {cross}  bi {h.bi_score:6.3f}  {h.taken[:10]}  {h.path}\n")


def _similar(args: argparse.Namespace) -> int:
    """Photos most similar to PHOTO (by bi-encoder embedding); PHOTO itself is left out."""
    with _open(args, model=True) as lib:
        if not args.photo.is_file() and lib.photo_id(args.photo) is None:
            raise UserError(f"no such photo: {args.photo}")
        hits = lib.similar(args.photo, k=args.k, after=args.after, before=args.before, folder=args.folder)
        _print_hits(hits, args.json, sys.stdout)
    return 0


def _stats(args: argparse.Namespace) -> int:
    """Counts, skipped files with reasons, model, store type and size on disk of an index."""
    with _open(args, model=False) as lib:
        s = lib.stats()
    if args.json:
        print(json.dumps(s.to_dict(), indent=2, ensure_ascii=False))
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
    print(f"removed {n} photo{'s' if n != 1 else ''} from the index")
    return 0
