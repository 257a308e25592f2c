"""The search gallery: a local web page over one index file (stdlib ``http.server``, no framework).

Routes (GET only):

- ``/``, ``/static/app.js``, ``/static/style.css``: the page (files from ``edge_xmr/web``)
- ``/api/status``: photos indexed, whether indexing is running (and how far), the model
- ``/api/search?q=TEXT&k=&rerank=&after=YYYY-MM-DD&until=YYYY-MM-DD&folder=ID``: ranked results
  with bi-encoder and cross-encoder scores, and the time of each stage
- ``/api/similar?id=PHOTO&k=&after=&until=&folder=``: "more like this"
- ``/api/folders``: folders holding photos (id, name, count) for the folder filter
- ``/thumb/ID``, ``/photo/ID``: a 320 px thumbnail / a 1600 px view of an indexed photo (JPEG,
  made once and cached)

Security: URLs carry photo and folder ids, never paths. A file is read only when its id is in
the index, and then from the path stored in the index. Everything else is refused with a JSON
``{"error": message}`` (400 bad input, 404 unknown, 503 no index yet). The server binds
127.0.0.1 by default and refuses requests whose Host header names another machine (DNS
rebinding). The page renders every string as text (no HTML injection), under a strict CSP.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    from .index.library import EncoderBundle, Library
    from .indexer import Progress
    from .search import Hit

WEB_DIR = Path(__file__).resolve().parent / "web"
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
MAX_QUERY_CHARS = 300  # longer queries are refused (the text encoder sees ~32 tokens anyway)
MAX_K = 100  # results per page at most
DEFAULT_K = 24  # results per page
DEFAULT_RERANK = 20  # candidates the cross-encoder reranks
SIZES = {"thumb": 320, "photo": 1600}  # longest side of cached JPEG renderings
_ID = re.compile(r"[1-9][0-9]{0,17}")  # photo / folder ids as they may appear in a URL
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class HttpError(Exception):
    """A request that cannot be answered: HTTP status and a message for the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ---- input checks (pure functions) -----------------------------------------------------------------
def clean_query(raw: str) -> str:
    """User text -> query: NFC, control/format characters dropped, spaces collapsed (raises HttpError)."""
    text = unicodedata.normalize("NFC", raw)
    text = "".join(" " if ch.isspace() else ch for ch in text if unicodedata.category(ch)[0] != "C" or ch.isspace())
    text = " ".join(text.split())
    if not text:
        raise HttpError(400, "Type a few words to search for (the query is empty).")
    if len(text) > MAX_QUERY_CHARS:
        raise HttpError(400, f"The query is too long ({len(text)} characters; at most {MAX_QUERY_CHARS}).")
    return text


def parse_id(raw: str, what: str = "photo id") -> int:
    if not _ID.fullmatch(raw or ""):
        raise HttpError(400, f"Not a valid {what}: it must be a positive whole number.")
    return int(raw)


def parse_int(raw: str | None, name: str, default: int, lo: int, hi: int) -> int:
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"[0-9]{1,6}", raw) or not lo <= int(raw) <= hi:
        raise HttpError(400, f"'{name}' must be a whole number from {lo} to {hi}.")
    return int(raw)


def parse_day(raw: str | None, name: str) -> date | None:
    if raw is None or raw == "":
        return None
    try:
        if not _DAY.fullmatch(raw):
            raise ValueError
        return date.fromisoformat(raw)
    except ValueError:
        raise HttpError(400, f"'{name}' must be a date like 2024-05-31.") from None


def thumb_key(path: str, size: int, mtime_ns: int, px: int) -> str:
    """Cache key of a rendering: changes when the file changes."""
    return hashlib.sha256(f"{path}\0{size}\0{mtime_ns}\0{px}".encode()).hexdigest()[:32]


def render_jpeg(src: str, px: int) -> bytes:
    """A photo -> JPEG bytes, oriented, longest side at most ``px``."""
    import io

    from PIL import Image

    from .preprocess import load_image

    im = load_image(src, px)
    im.thumbnail((px, px), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85, optimize=True)
    return buf.getvalue()


# ---- state ----------------------------------------------------------------------------------------
@dataclass
class IndexingState:
    running: bool = False  # a background indexing run is going on
    done: int = 0  # files processed in this run
    total: int = 0  # files that need work in this run
    added: int = 0  # photos added so far
    error: str | None = None  # why the last run failed
    finished_at: float | None = None  # time the last run ended

    def to_dict(self) -> dict[str, Any]:
        return {"running": self.running, "done": self.done, "total": self.total, "added": self.added,
                "error": self.error}


@dataclass
class Gallery:
    """What the HTTP handler calls: one index file, an optional bundle, a thumbnail cache."""

    db: Path  # the index file
    bundle: EncoderBundle | None  # the model (None: browsing only; search needs it)
    thumbs: Path  # cache folder for thumbnails and views
    indexing: IndexingState = field(default_factory=IndexingState)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ---- the index ----
    @contextmanager
    def library(self, need_model: bool = False) -> Iterator[Library]:
        """Open the index for one request (each request thread gets its own connection)."""
        from .index.library import Library, LibraryError

        if not self.db.is_file():
            raise HttpError(503, self.missing_message())
        if need_model and self.bundle is None:
            raise HttpError(503, "No model bundle is loaded, so search is off: restart with --bundle DIR.")
        try:
            lib = Library.open(self.db, self.bundle if need_model else None, create=False)
        except LibraryError as e:
            raise HttpError(503, str(e)) from None
        except Exception as e:  # not an index file, a newer schema, a locked or corrupt file
            raise HttpError(503, f"Cannot open the index {self.db.name}: {e}") from None
        try:
            yield lib
        finally:
            lib.close()

    def missing_message(self) -> str:
        if self.indexing.running:
            return "The index is being created; photos appear in a moment."
        return (f"There is no index at {self.db} yet. Build one with 'edge-xmr serve --photos DIR' "
                "(or 'edge-xmr demo'), then reload.")

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"indexing": self.indexing.to_dict(), "search": self.bundle is not None}
        if not self.db.is_file():
            return {**out, "ready": False, "photos": 0, "message": self.missing_message()}
        with self.library() as lib:
            n = lib.count()
            model = lib.info.model_name
        msg = ""
        if self.indexing.running:
            msg = f"Indexing: {self.indexing.done} of {self.indexing.total} photos done; results may be incomplete."
        elif self.indexing.error:
            msg = f"Indexing stopped: {self.indexing.error}"
        elif n == 0:
            msg = "The index holds no photos yet."
        return {**out, "ready": n > 0, "photos": n, "model": model, "message": msg}

    # ---- search ----
    def search(self, params: dict[str, str]) -> dict[str, Any]:
        from .demo import timed_search

        text = clean_query(params.get("q", ""))
        k = parse_int(params.get("k"), "k", DEFAULT_K, 1, MAX_K)
        rerank = parse_int(params.get("rerank"), "rerank", DEFAULT_RERANK, 0, MAX_K)
        with self.library(need_model=True) as lib:
            after, before, folder = self._filters(lib, params)
            r = timed_search(lib, text, k=k, rerank=rerank, after=after, before=before, folder=folder)
            results = self._results(lib, r.hits)
        timings = {k: round(v, 2) if isinstance(v, float) else v for k, v in r.times.to_dict().items()}
        return {"query": text, "results": results, "timings": timings, **self._note(results)}

    def similar(self, params: dict[str, str]) -> dict[str, Any]:
        from .index.library import LibraryError

        pid = parse_id(params.get("id", ""))
        k = parse_int(params.get("k"), "k", DEFAULT_K, 1, MAX_K)
        with self.library(need_model=True) as lib:
            source = self._photo(lib, pid)
            after, before, folder = self._filters(lib, params)
            t0 = time.perf_counter()
            try:
                hits = lib.similar(pid, k=k, after=after, before=before, folder=folder)
            except LibraryError as e:
                raise HttpError(404, str(e)) from None
            ms = 1000 * (time.perf_counter() - t0)
            results = self._results(lib, hits)
        return {"source": {"id": pid, "name": os.path.basename(source)}, "results": results,
                "timings": {"total_ms": round(ms, 2)}, **self._note(results)}

    def folders(self) -> dict[str, Any]:
        with self.library() as lib:
            rows = [(int(i), str(p), int(n)) for i, p, n in lib.connection.execute(
                "SELECT f.id, f.path, count(p.id) FROM folders f JOIN photos p ON p.folder_id = f.id"
                " GROUP BY f.id ORDER BY f.path")]
        base = _common_folder([p for _, p, _ in rows])
        return {"folders": [{"id": i, "name": _folder_label(p, base), "photos": n} for i, p, n in rows]}

    def _filters(self, lib: Library, params: dict[str, str]) -> tuple[str | None, str | None, str | None]:
        after = parse_day(params.get("after"), "after")
        until = parse_day(params.get("until"), "until")
        if after and until and until < after:
            raise HttpError(400, "'until' is before 'after': no photo can match.")
        folder = None
        if params.get("folder"):
            fid = parse_id(params["folder"], "folder id")
            row = lib.connection.execute("SELECT path FROM folders WHERE id = ?", (fid,)).fetchone()
            if row is None:
                raise HttpError(404, f"No folder with id {fid} in the index.")
            folder = str(row[0])
        return (after.isoformat() if after else None,
                (until + timedelta(days=1)).isoformat() if until else None, folder)

    def _results(self, lib: Library, hits: list[Hit]) -> list[dict[str, Any]]:
        rows = {int(i): str(p) for i, p in lib.connection.execute(
            f"SELECT p.id, f.path FROM photos p JOIN folders f ON f.id = p.folder_id"
            f" WHERE p.id IN ({','.join(str(int(h.photo_id)) for h in hits) or 'NULL'})")}
        return [{"rank": r + 1, "id": h.photo_id, "name": os.path.basename(h.path),
                 "folder": os.path.basename(rows.get(h.photo_id, "").rstrip("/")) or "/",
                 "taken": h.taken, "bi": round(h.bi_score, 4),
                 "cross": None if h.cross_score is None else round(h.cross_score, 4),
                 "width": h.width, "height": h.height} for r, h in enumerate(hits)]

    def _note(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        note = ""
        if not results:
            note = "No photos match. Try other words, or clear the date and folder filters."
        if self.indexing.running:
            note = (note + " " if note else "") + "The index is still being built; results may be incomplete."
        return {"note": note}

    @staticmethod
    def _photo(lib: Library, pid: int) -> str:
        info = lib.photo_info([pid]).get(pid)
        if info is None:
            raise HttpError(404, f"No photo with id {pid} in the index.")
        return info.path

    # ---- images ----
    def image(self, pid: int, kind: str) -> bytes:
        """The cached JPEG rendering of an indexed photo (made on first request)."""
        from .preprocess import ImageError

        with self.library() as lib:
            path = self._photo(lib, pid)
        px = SIZES[kind]
        try:
            st = os.stat(path)
        except OSError:
            raise HttpError(404, f"Photo {pid} is indexed but its file is gone; re-index the folder.") from None
        key = thumb_key(path, st.st_size, st.st_mtime_ns, px)
        cached = self.thumbs / key[:2] / f"{key}.jpg"
        if cached.is_file():
            return cached.read_bytes()
        try:
            data = render_jpeg(path, px)
        except (ImageError, OSError) as e:
            raise HttpError(404, f"Photo {pid} cannot be shown: {e}") from None
        _write_atomic(cached, data)
        return data

    def warm_up(self) -> threading.Thread:
        """Run each graph once in a daemon thread: onnxruntime's first run allocates (hundreds of ms)."""

        def work() -> None:
            b = self.bundle
            if b is None:
                return
            try:
                m = b.manifest
                t, dt, d = int(m["image_tokens"]["count"]), int(m["image_tokens"]["dim"]), int(m["embedding"]["dim"])
                import numpy as np

                b.embed_texts(["warm up"])
                b.score_candidates("warm up", np.zeros((1, t, dt), np.float32), np.full((1, d), d ** -0.5, np.float32))
            except Exception:  # noqa: S110 (only an optimisation: the first search will say what is wrong)
                pass

        th = threading.Thread(target=work, name="edge-xmr-warm-up", daemon=True)
        th.start()
        return th

    # ---- background indexing ----
    def start_indexing(self, root: Path, open_library: Callable[[], Library]) -> threading.Thread:
        """Index ``root`` in a daemon thread; progress goes to ``indexing``.

        The library is opened here, before the thread starts: a new index file gets its schema before
        any request can open it (a status request that opened the half-created file raced the indexer,
        and the page then reported 'not an index yet' for good)."""
        self.indexing = IndexingState(running=True)
        try:
            lib: Library | None = open_library()
        except Exception as e:  # reported on the page, the server keeps serving
            self.indexing.error = f"{type(e).__name__}: {e}"
            lib = None

        def work() -> None:
            try:
                if lib is not None:
                    with lib:
                        lib.index(root, progress=self._on_progress)
            except Exception as e:  # reported on the page, the server keeps serving
                self.indexing.error = f"{type(e).__name__}: {e}"
            finally:
                self.indexing.running = False
                self.indexing.finished_at = time.time()

        t = threading.Thread(target=work, name="edge-xmr-indexer", daemon=True)
        t.start()
        return t

    def _on_progress(self, p: Progress) -> None:
        s = self.indexing
        s.done, s.total, s.added = p.done, p.total, p.added


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _common_folder(keys: list[str]) -> str:
    if len(keys) < 2:
        return keys[0].rstrip("/").rsplit("/", 1)[0] + "/" if keys else ""
    prefix = os.path.commonprefix(keys)
    return prefix[: prefix.rfind("/") + 1]


def _folder_label(key: str, base: str) -> str:
    rel = key[len(base):].rstrip("/") if key.startswith(base) else key.rstrip("/")
    return rel or os.path.basename(key.rstrip("/")) or key


# ---- HTTP -----------------------------------------------------------------------------------------
class GalleryHandler(BaseHTTPRequestHandler):
    """GET-only request handler; ``server.gallery`` is the Gallery."""

    server: GalleryServer
    server_version = "edge-xmr"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        try:
            self._check_host()
            self._route()
        except HttpError as e:
            self._json({"error": e.message}, e.status)
        except Exception as e:  # a bug or a broken file: say so, keep serving
            self._json({"error": f"Internal error: {type(e).__name__}: {e}"}, 500)

    def do_POST(self) -> None:  # noqa: N802
        self._json({"error": "Only GET requests are served."}, 405)

    do_PUT = do_DELETE = do_PATCH = do_POST

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        if self.server.log is not None:
            self.server.log(format % args)

    def _check_host(self) -> None:
        allowed = self.server.allowed_hosts
        host = (self.headers.get("Host") or "").strip().lower()
        if allowed and host not in allowed:
            raise HttpError(403, "This gallery only answers requests addressed to this machine.")

    def _route(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True, max_num_fields=20).items()}
        g = self.server.gallery
        if path in ("/", "/index.html"):
            return self._file("index.html", "text/html; charset=utf-8")
        if path.startswith("/static/"):
            name = unquote(path[len("/static/"):])
            if name not in STATIC_FILES:
                raise HttpError(404, "No such file.")
            return self._file(name, STATIC_FILES[name])
        api: dict[str, Callable[[], dict[str, Any]]] = {
            "/api/status": g.status, "/api/folders": g.folders,
            "/api/search": lambda: g.search(params), "/api/similar": lambda: g.similar(params)}
        if path in api:
            return self._json(api[path]())
        for kind in SIZES:
            prefix = f"/{kind}/"
            if path.startswith(prefix):
                pid = parse_id(unquote(path[len(prefix):]))
                return self._send(g.image(pid, kind), "image/jpeg", cache="private, max-age=86400")
        if path == "/favicon.ico":
            return self._send(b"", "image/x-icon", status=204)
        raise HttpError(404, "Not found.")

    def _file(self, name: str, ctype: str) -> None:
        self._send((WEB_DIR / name).read_bytes(), ctype, cache="no-cache")

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8",
                   status=status)

    def _send(self, body: bytes, ctype: str, status: int = 200, cache: str = "no-store") -> None:
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        if self.command != "HEAD" and status != 204:
            self.wfile.write(body)


class GalleryServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, gallery: Gallery, host: str = "127.0.0.1", port: int = 0,
                 log: Callable[[str], None] | None = None):
        super().__init__((host, port), GalleryHandler)
        self.gallery = gallery
        self.log = log
        self.allowed_hosts = allowed_hosts(host, self.server_address[1])

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), int(self.server_address[1])
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/"


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """Host headers accepted when bound to a loopback address (empty: any, when bound elsewhere)."""
    if host not in LOOPBACK:
        return frozenset()
    names = ("127.0.0.1", "localhost", "[::1]")
    return frozenset({f"{n}:{port}" for n in names} | set(names))


def make_server(gallery: Gallery, host: str = "127.0.0.1", port: int = 0,
                log: Callable[[str], None] | None = None) -> GalleryServer:
    """A ready-to-run server (``serve_forever()``); port 0 picks a free port (see ``.url``)."""
    return GalleryServer(gallery, host, port, log)
