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
the index, from the path stored in the index, and only when it is still the indexed photo: not a
symlink, a regular file, the recorded bytes (``read_indexed``). Everything else is refused with a
JSON ``{"error": message}`` (400 bad input, 403 refused, 404 unknown, 503 no index yet or busy);
error messages never carry absolute paths or exception text (``redact``; the details go to the
server log). The server binds 127.0.0.1 by default; another address needs ``allow_remote``, and
then every request needs the access token (``?token=`` once, then an HttpOnly cookie). The Host
header is checked against an allow-list in every mode (DNS rebinding). Connections time out when
idle or slow and are bounded in number (``ServerConfig``). The page renders every string as text
(no HTML injection), under a strict CSP.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import io
import ipaddress
import json
import os
import re
import secrets
import socket
import stat
import sys
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .errors import EdgeXmrError
from .index.pathkeys import fs_path

if TYPE_CHECKING:
    from .index.library import EncoderBundle
    from .library import Library
    from .indexer import Progress
    from .search import Hit

WEB_DIR = Path(__file__).resolve().parent / "web"
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
MAX_QUERY_CHARS = 300  # longer queries are refused (the text encoder sees ~32 tokens anyway)
MAX_K = 100  # results per page at most
DEFAULT_K = 24  # results per page
DEFAULT_RERANK = 20  # candidates the cross-encoder reranks
SIZES = {"thumb": 320, "photo": 1600}  # longest side of cached JPEG renderings
MAX_PARAMS = 20  # query parameters per request at most
_ID = re.compile(r"[1-9][0-9]{0,17}")  # photo / folder ids as they may appear in a URL
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class ServeError(EdgeXmrError, ValueError):
    """A server setting that cannot be honoured (e.g. a non-loopback address without allow_remote)."""


@dataclass(frozen=True)
class ServerConfig:
    """Where the gallery listens, who may ask, and every limit of a connection."""

    host: str = "127.0.0.1"  # address to bind; a loopback address unless allow_remote
    port: int = 0  # 0: any free port
    allow_remote: bool = False  # serve beyond loopback: every request then needs the access token
    allow_hosts: tuple[str, ...] = ()  # more names accepted in the Host header (e.g. from /etc/hosts)
    idle_timeout: float = 20.0  # seconds a connection may wait for the client's next bytes (or to take ours)
    request_timeout: float = 30.0  # seconds a client may take to send its whole request (slow clients)
    max_connections: int = 32  # connections served at once (fewer if descriptors are short); more: 503
    busy_read_wait: float = 0.02  # seconds a refused connection's request is awaited before the 503


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


def parse_params(query: str) -> dict[str, str]:
    """A URL's query -> {name: last value} (raises HttpError 400: too many parameters)."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=MAX_PARAMS)
    except ValueError:  # the only error parse_qsl raises when not strict: too many fields
        raise HttpError(400, f"Too many query parameters (at most {MAX_PARAMS}).") from None
    return dict(pairs)


# an absolute path (POSIX, Windows drive or UNC) inside a message, up to the next space or quote
_ABS_PATH = re.compile(r"(?:(?<![\w.~-])/|\b[A-Za-z]:[\\/]|\\\\)[^\s'\"<>|]*")


def redact(message: str) -> str:
    """A message fit for a browser: every absolute path cut to its last part (``/a/b/x.jpg`` -> ``x.jpg``)."""
    return _ABS_PATH.sub(lambda m: re.split(r"[\\/]", m.group().rstrip("\\/"))[-1] or "/", message)


@dataclass(frozen=True)
class IndexedFile:
    """What the index recorded of a photo's file: where, and which bytes."""

    path: str
    size: int
    mtime_ns: int
    digest: bytes  # sha256 of the bytes


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


def open_indexed(rec: IndexedFile, pid: int) -> tuple[io.BufferedReader, os.stat_result]:
    """Open an indexed photo's file if it still is a regular file of the recorded size, and no symlink.

    ``O_NOFOLLOW`` refuses a symlink atomically (the ``lstat`` covers systems without it),
    ``O_NONBLOCK`` keeps a FIFO put in the photo's place from blocking. Raises HttpError 404."""
    try:
        if stat.S_ISLNK(os.lstat(rec.path).st_mode):
            raise OSError(errno.ELOOP, "symlink")
        fd = os.open(rec.path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise HttpError(404, f"Photo {pid} is indexed but its file is gone; re-index the folder.") from None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK):  # what O_NOFOLLOW answers for a symlink
            raise HttpError(404, f"Photo {pid} is not shown: its file was replaced by a link.") from None
        raise HttpError(404, f"Photo {pid} cannot be read ({e.strerror or 'error'}).") from None
    f = os.fdopen(fd, "rb")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != rec.size:
        f.close()
        raise _changed(pid)
    return f, st


def read_indexed(f: io.BufferedReader, rec: IndexedFile, pid: int) -> bytes:
    """The bytes of an opened photo file, only if they are the bytes that were indexed."""
    data = f.read(rec.size + 1)
    if hashlib.sha256(data).digest() != rec.digest:
        raise _changed(pid)
    return data


def _changed(pid: int) -> HttpError:
    return HttpError(404, f"Photo {pid} is not shown: its file changed since it was indexed; re-index the folder.")


def thumb_key(digest: bytes, px: int) -> str:
    """Cache key of a rendering: the photo's content and the size."""
    return hashlib.sha256(digest + f"\0{px}".encode()).hexdigest()[:32]


def render_jpeg(data: bytes, px: int, name: str = "image") -> bytes:
    """A photo's bytes -> JPEG bytes, oriented, longest side at most ``px``."""
    from PIL import Image

    from .preprocess import decode_image

    im = decode_image(data, px, name)
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
                "error": None if self.error is None else redact(self.error)}


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
        from .index.library import LibraryError
        from .library import Library

        if not self.db.is_file():
            raise HttpError(503, self.missing_message())
        if need_model and self.bundle is None:
            raise HttpError(503, "No model bundle is loaded, so search is off: restart with --bundle DIR.")
        try:
            lib = Library.open(self.db, self.bundle, load_model=need_model, create=False)
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
        return (f"There is no index {self.db.name} yet. Build one with 'edge-xmr serve --photos DIR' "
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
            msg = f"Indexing stopped: {redact(self.indexing.error)}"
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
            rows = [(int(i), str(p), int(n)) for i, p, n in lib.store.connection.execute(
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
            row = lib.store.connection.execute("SELECT path FROM folders WHERE id = ?", (fid,)).fetchone()
            if row is None:
                raise HttpError(404, f"No folder with id {fid} in the index.")
            folder = str(row[0])
        return (after.isoformat() if after else None,
                (until + timedelta(days=1)).isoformat() if until else None, folder)

    def _results(self, lib: Library, hits: list[Hit]) -> list[dict[str, Any]]:
        rows = {int(i): str(p) for i, p in lib.store.connection.execute(
            f"SELECT p.id, f.path FROM photos p JOIN folders f ON f.id = p.folder_id"
            f" WHERE p.id IN ({','.join(str(int(h.photo_id)) for h in hits) or 'NULL'})")}
        return [{"rank": r + 1, "id": h.photo_id, "name": os.path.basename(h.path),
                 "folder": os.path.basename(rows.get(h.photo_id, "").rstrip("/")) or "/",
                 "taken": h.taken.isoformat(timespec="seconds"), "bi": round(h.bi_score, 4),
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
        info = lib.store.photo_info([pid]).get(pid)
        if info is None:
            raise HttpError(404, f"No photo with id {pid} in the index.")
        return info.path

    # ---- images ----
    def image(self, pid: int, kind: str) -> bytes:
        """The cached JPEG rendering of an indexed photo (made on first request).

        Served only while the file at the photo's path is the indexed photo (``open_indexed``): a
        rendering is made from bytes whose sha256 is the recorded one, and a cached rendering is
        reused while the file keeps the recorded size and mtime (else the bytes are checked again)."""
        from .preprocess import ImageError

        rec = self._indexed_file(pid)
        px = SIZES[kind]
        key = thumb_key(rec.digest, px)
        cached = self.thumbs / key[:2] / f"{key}.jpg"
        f, st = open_indexed(rec, pid)
        with f:
            if st.st_mtime_ns == rec.mtime_ns and cached.is_file():
                return cached.read_bytes()
            data = read_indexed(f, rec, pid)
        try:
            jpeg = render_jpeg(data, px, os.path.basename(rec.path))
        except (ImageError, OSError) as e:
            raise HttpError(404, f"Photo {pid} cannot be shown: {e}") from None
        _write_atomic(cached, jpeg)
        return jpeg

    def _indexed_file(self, pid: int) -> IndexedFile:
        with self.library() as lib:
            row = lib.store.connection.execute("SELECT path, size, mtime_ns, hash FROM photos WHERE id = ?",
                                         (pid,)).fetchone()
        if row is None:
            raise HttpError(404, f"No photo with id {pid} in the index.")
        # the index key of a name that is not valid UTF-8 differs from the OS path: open the latter
        return IndexedFile(fs_path(str(row[0])), int(row[1]), int(row[2]), bytes(row[3]))

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


# ---- who may ask: addresses, Host headers, the access token ------------------------------------------
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
_HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?)*\.?")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def is_wildcard(host: str) -> bool:
    """An address that binds every interface: ``""``, ``0.0.0.0``, ``::``."""
    ip = _ip(host)
    return host == "" or (ip is not None and ip.is_unspecified)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1, ::ffff:127.x)."""
    ip = _ip(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return host.lower() == "localhost" if ip is None else ip.is_loopback


def host_name(text: str) -> str:
    """A name or address as it appears in a Host header: lower case, IPv6 canonical in brackets."""
    ip = _ip(text)
    if isinstance(ip, ipaddress.IPv6Address):
        return f"[{ip}]"
    return str(ip) if ip is not None else text.strip().lower()


def split_host(header: str) -> tuple[str, int | None] | None:
    """A Host header -> (name, port or None), the name as ``host_name`` writes it; None: malformed."""
    v = header.strip()
    if v.startswith("["):  # an IPv6 literal: [::1] or [::1]:8765
        end = v.find("]")
        name, rest = v[: end + 1], v[end + 1:]
        if end < 0 or not isinstance(_ip(name), ipaddress.IPv6Address) or (rest and rest[0] != ":"):
            return None
        port = rest[1:]
    elif v.count(":") <= 1:
        name, _, port = v.partition(":")
        if not _HOSTNAME.fullmatch(name.lower()):
            return None
    else:  # an IPv6 address without brackets is no valid Host header
        return None
    if port and not (port.isdigit() and len(port) <= 5):
        return None
    return host_name(name), int(port) if port else None


def check_config(config: ServerConfig) -> None:
    """Refuse a setting that would expose the gallery by accident (raises ServeError)."""
    if not config.allow_remote and not is_loopback(config.host):
        raise ServeError(f"refusing to serve on {config.host}: that address is reachable from other machines; "
                         "add --allow-remote to do so on purpose (requests then need the printed access link)")
    for name in config.allow_hosts:
        if _ip(name) is None and not _HOSTNAME.fullmatch(name.lower()):
            raise ServeError(f"not a host name or address: {name!r}")


@dataclass(frozen=True)
class HostCheck:
    """Which Host headers a server answers (DNS rebinding: a foreign name must never reach the API)."""

    names: frozenset[str]
    port: int
    any_address: bool  # also any IP literal: bound to all interfaces with allow_remote

    def allows(self, header: str | None) -> bool:
        parsed = split_host(header or "")
        if parsed is None:
            return False
        name, port = parsed
        if port is not None and port != self.port:
            return False
        # An IP literal cannot be rebound to another machine: the browser's origin then is that address.
        return name in self.names or (self.any_address and _ip(name) is not None)


def host_check(config: ServerConfig, bound: str, port: int) -> HostCheck:
    """The loopback names and the bound address; with allow_remote also this machine's host names;
    always the configured extra names."""
    wildcard = is_wildcard(bound)
    names = set(LOOPBACK_NAMES) | {host_name(n) for n in config.allow_hosts}
    if not wildcard:
        names.add(host_name(bound))
    if config.allow_remote:
        me = socket.gethostname().lower()
        names |= {me, f"{me.split('.')[0]}.local"} if me else set()
    return HostCheck(frozenset(names), port, any_address=config.allow_remote and wildcard)


# ---- HTTP -----------------------------------------------------------------------------------------
class _DeadlineReader(io.RawIOBase):
    """A connection's input: each read waits at most ``idle`` seconds, and until ``deadline``
    (monotonic) at the latest, so that a client sending one byte at a time cannot hold a thread."""

    def __init__(self, sock: socket.socket, idle: float, deadline: float | None):
        super().__init__()
        self.sock, self.idle, self.deadline = sock, idle, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        wait = self.idle
        if self.deadline is not None:
            wait = min(wait, self.deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError("the request took too long to arrive")
        self.sock.settimeout(wait)
        return self.sock.recv_into(buf)


class GalleryHandler(BaseHTTPRequestHandler):
    """GET-only request handler; ``server.gallery`` is the Gallery."""

    server: GalleryServer
    server_version = "edge-xmr"
    sys_version = ""
    _reader: _DeadlineReader
    _cookie: str | None = None  # a Set-Cookie value for the response (the token was just given)

    @property  # type: ignore[override]
    def timeout(self) -> float:  # StreamRequestHandler.setup applies it to the connection
        return self.server.config.idle_timeout

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # replaced: reads with a deadline for the request line and headers
        cfg = self.server.config
        self._reader = _DeadlineReader(self.connection, cfg.idle_timeout, time.monotonic() + cfg.request_timeout)
        self.rfile = io.BufferedReader(self._reader)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self._reader.deadline = None  # the request has arrived: from now on only the idle timeout
        self.connection.settimeout(self.server.config.idle_timeout)
        return ok

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        try:
            if not self.server.hosts.allows(self.headers.get("Host")):
                raise HttpError(403, "This gallery only answers requests addressed to this machine.")
            url = urlsplit(self.path)
            params = parse_params(url.query)
            if self._check_token(url.path, params):
                self._route(url.path, params)
        except HttpError as e:
            self._error(e.status, e.message)
        except Exception as e:  # a bug or a broken file: the log says what, the page only that it happened
            self.log_error("internal error answering %s: %s: %s", self.command, type(e).__name__, e)
            self._error(500, "Internal error; the server's log says more.")

    def do_POST(self) -> None:  # noqa: N802
        self._error(405, "Only GET requests are served.")

    do_PUT = do_DELETE = do_PATCH = do_POST

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        if self.server.log is not None:
            msg = format % args
            self.server.log(msg.replace(self.server.token, "<token>") if self.server.token else msg)

    def _check_token(self, path: str, params: dict[str, str]) -> bool:
        """True: go on. With a token (allow_remote) a request needs it, as ``?token=`` or the cookie
        that a request with ``?token=`` gets; the page with ``?token=`` is redirected to drop it."""
        token = self.server.token
        if token is None:
            return True
        given = params.get("token")
        if given is not None and hmac.compare_digest(given.encode(), token.encode()):
            self._cookie = f"{self.server.cookie_name}={token}; Path=/; HttpOnly; SameSite=Strict"
            if path in ("/", "/index.html"):
                self._send(b"", "text/plain", status=303, headers={"Location": "/"})
                return False
            return True
        if hmac.compare_digest(self._token_cookie().encode(), token.encode()):
            return True
        raise HttpError(403, "This gallery needs its access link: open the URL with ?token= that "
                             "'edge-xmr serve' printed.")

    def _token_cookie(self) -> str:
        try:
            jar = SimpleCookie(self.headers.get("Cookie") or "")
        except CookieError:
            return ""
        morsel = jar.get(self.server.cookie_name)
        return morsel.value if morsel is not None else ""

    def _route(self, path: str, params: dict[str, str]) -> None:
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

    def _error(self, status: int, message: str) -> None:
        """Every error answer goes here: JSON, with no absolute path in it."""
        self._json({"error": redact(message)}, status)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8",
                   status=status)

    def _send(self, body: bytes, ctype: str, status: int = 200, cache: str = "no-store",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", CSP)
        if self._cookie is not None:
            self.send_header("Set-Cookie", self._cookie)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and status != 204:
            self.wfile.write(body)


# descriptors a connection may hold at once (its socket, the index file with its -wal and -shm, a
# photo) and those the process needs besides (stdio, the listening socket, the indexer, imports)
FDS_PER_CONNECTION = 5
FDS_RESERVED = 24
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
         b"Retry-After: 2\r\nConnection: close\r\nContent-Length: 62\r\n\r\n"
         b'{"error": "The gallery is busy; try again in a few seconds."}\n')


def connection_bound(wanted: int) -> int:
    """``wanted``, or fewer so that the connections' descriptors fit under RLIMIT_NOFILE."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # no resource module (Windows)
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, (soft - FDS_RESERVED) // FDS_PER_CONNECTION))


class GalleryServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them; the accept loop never spins."""

    daemon_threads = True
    block_on_close = False  # closing does not wait for idle clients to time out
    request_queue_size = 64

    def __init__(self, gallery: Gallery, config: ServerConfig = ServerConfig(),
                 log: Callable[[str], None] | None = None):
        check_config(config)
        host = config.host.strip("[]")
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, config.port), GalleryHandler)
        self.gallery, self.config, self.log = gallery, config, log
        self.port = int(self.server_address[1])
        self.hosts = host_check(config, host, self.port)
        self.token = secrets.token_urlsafe(24) if config.allow_remote else None
        self.cookie_name = f"edge_xmr_token_{self.port}"  # one per port: two galleries on a machine
        self.max_connections = connection_bound(config.max_connections)
        self.open_connections = 0
        self._slots = threading.Lock()
        self._backoff = 0.0

    @property
    def url(self) -> str:
        """The address to open on this machine (with the access token when there is one)."""
        host = str(self.server_address[0])
        if is_wildcard(host):
            host = "::1" if ":" in host else "127.0.0.1"
        return self.url_for(host)

    def url_for(self, host: str) -> str:
        """The address to open through ``host`` (a name or address of this machine)."""
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that ended with an error (a client gone mid-answer): one log line, no traceback."""
        if self.log is not None:
            self.log(f"connection from {client_address[0]} ended: {sys.exc_info()[1]!r}")

    # ---- accepting ----
    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            conn = super().get_request()
        except OSError as e:
            if e.errno in _OUT_OF_DESCRIPTORS:  # the listening socket stays readable: wait, do not spin
                self._backoff = min(1.0, max(0.01, 2 * self._backoff))
                time.sleep(self._backoff)
            raise  # socketserver drops this accept and polls again
        self._backoff = 0.0
        return conn

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._take_slot():
            self._refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self._free_slot()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._free_slot()

    def _take_slot(self) -> bool:
        with self._slots:
            if self.open_connections >= self.max_connections:
                return False
            self.open_connections += 1
            return True

    def _free_slot(self) -> None:
        with self._slots:
            self.open_connections -= 1

    def _refuse_busy(self, request: socket.socket) -> None:
        """A quick 503 and close. The request is read first (if it comes at once): closing a socket
        with unread input resets the connection, and the client might lose the answer."""
        try:
            request.settimeout(self.config.busy_read_wait)
            try:
                request.recv(65536)
            except OSError:
                pass
            request.settimeout(self.config.busy_read_wait)
            request.sendall(_BUSY)
        except OSError:
            pass
        finally:
            self.shutdown_request(request)


def make_server(gallery: Gallery, config: ServerConfig = ServerConfig(),
                log: Callable[[str], None] | None = None) -> GalleryServer:
    """A ready-to-run server (``serve_forever()``); port 0 picks a free port (see ``.url``).
    Raises ServeError for a setting it refuses, OSError when it cannot listen."""
    return GalleryServer(gallery, config, log)
