"""The gallery in a hostile world: who may ask (loopback, Host allow-list, token), idle and slow
clients, too many connections, descriptor exhaustion, malformed queries, leaked paths, swapped files.

All traffic goes to 127.0.0.1 / ::1; every wait is bounded and ends by itself."""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from web_helpers import run_server, write_colour_photo

from edge_xmr.cli import main
from edge_xmr.server import Gallery, ServeError, ServerConfig, make_server, redact, split_host


def request(server: Any, path: str, host: str | None = None, headers: dict[str, str] | None = None,
            timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """A raw GET to the server's own address (the path and Host sent exactly as given)."""
    addr = str(server.server_address[0])
    conn = http.client.HTTPConnection(addr, server.port, timeout=timeout)
    conn.putrequest("GET", path, skip_host=host is not None)
    if host is not None:
        conn.putheader("Host", host)
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    conn.endheaders()
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def photo_id(gallery: Gallery, name: str) -> tuple[int, Path]:
    from edge_xmr import Library

    with Library.open(gallery.db, load_model=False, create=False) as lib:
        for pid, path in lib.store.connection.execute("SELECT id, path FROM photos"):
            if Path(path).name == name:
                return int(pid), Path(path)
    raise AssertionError(name)


def closed_by_server(sock: socket.socket, limit: float = 10.0) -> bool:
    """True when the server closes ``sock`` (EOF or reset) within ``limit`` seconds."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        ready, _, _ = select.select([sock], [], [], 0.1)
        if ready:
            try:
                if sock.recv(4096) == b"":
                    return True
            except ConnectionError:
                return True
    return False


def wait_for(cond: Any, limit: float = 10.0) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


# ---- item 11: who may ask ----------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.20", "10.0.0.1", "photos.example"])
def test_an_address_beyond_loopback_is_refused_without_allow_remote(gallery, host):
    with pytest.raises(ServeError, match="--allow-remote"):
        make_server(gallery, ServerConfig(host=host))  # refused before binding anything


def test_serve_on_a_non_loopback_address_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["serve", "--host", "0.0.0.0", "--db", str(tmp_path / "x.db"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allow-remote" in err and "Traceback" not in err


def test_other_loopback_addresses_keep_the_host_check(gallery):
    """127.0.0.2 is loopback, and DNS rebinding works against it as well: the allow-list stays on."""
    for srv in run_server(gallery, host="127.0.0.2"):
        assert request(srv, "/api/status", host="evil.example")[0] == 403
        assert request(srv, "/api/status", host=f"evil.example:{srv.port}")[0] == 403
        assert request(srv, "/api/status", host=f"127.0.0.2:{srv.port}")[0] == 200
        assert request(srv, "/api/status", host=f"localhost:{srv.port}")[0] == 200
        assert request(srv, "/api/status", host="localhost:1")[0] == 403  # another port: not us


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_ipv6_loopback_is_served_and_its_host_headers_parsed(gallery):
    for srv in run_server(gallery, host="::1"):
        assert srv.url == f"http://[::1]:{srv.port}/"
        assert request(srv, "/api/status", host=f"[::1]:{srv.port}")[0] == 200
        assert request(srv, "/api/status", host="[::1]")[0] == 200
        assert request(srv, "/api/status", host=f"[0:0:0:0:0:0:0:1]:{srv.port}")[0] == 200
        for bad in (f"evil.example:{srv.port}", "[::1", f"::1:{srv.port}", f"[::2]:{srv.port}", "[evil]:80"):
            assert request(srv, "/api/status", host=bad)[0] == 403, bad


def test_host_header_parsing():
    assert split_host("LocalHost:8765") == ("localhost", 8765)
    assert split_host("[::1]:8765") == ("[::1]", 8765)
    assert split_host("[::1]") == ("[::1]", None)
    assert split_host("127.0.0.1") == ("127.0.0.1", None)
    for bad in ("", "::1", "[::1]x", "a b", "host:port", "host:123456", "[not-ip]:1", "x:1:2", "évil.example"):
        assert split_host(bad) is None, bad


def test_allow_remote_needs_the_token_then_a_strict_cookie(gallery):
    for srv in run_server(gallery, allow_remote=True, allow_hosts=("photos.home",)):
        token, host = srv.token, f"127.0.0.1:{srv.port}"
        assert token and len(token) >= 24 and srv.url.endswith(f"?token={token}")
        for path in ("/", "/api/status", "/thumb/1", "/api/status?token=wrong", "/api/status?token="):
            status, _, body = request(srv, path, host=host)
            assert status == 403 and "access link" in json.loads(body)["error"], path
        status, headers, _ = request(srv, f"/?token={token}", host=host)
        assert status == 303 and headers["location"] == "/"  # the token leaves the address bar
        cookie = headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        jar = {"Cookie": cookie.split(";")[0]}
        assert request(srv, "/api/status", host=host, headers=jar)[0] == 200
        assert request(srv, "/", host=f"photos.home:{srv.port}", headers=jar)[0] == 200  # --allow-host
        assert request(srv, "/api/status", host=f"evil.example:{srv.port}", headers=jar)[0] == 403
        assert request(srv, "/api/status", host=host, headers={"Cookie": "edge_xmr_token_1=" + token})[0] == 403
        assert request(srv, f"/api/status?token={token}", host=host)[0] == 200  # scripts may pass it


# ---- item 12: idle, slow and too many clients; descriptors run out ------------------------------------
def test_an_idle_connection_is_closed(gallery):
    for srv in run_server(gallery, idle_timeout=0.3):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            assert closed_by_server(s)  # the old server kept it (and its thread) for ever
        assert wait_for(lambda: srv.open_connections == 0)
        assert request(srv, "/api/status")[0] == 200


def test_a_client_that_sends_its_request_slowly_is_cut_off(gallery):
    """A byte every 50 ms never trips the idle timeout; the request deadline still ends it."""
    for srv in run_server(gallery, idle_timeout=5, request_timeout=0.5):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            s.sendall(b"GET /api/status HTTP/1.0\r\n")
            cut = False
            for _ in range(200):  # at most ~10 s of dribbling
                try:
                    s.sendall(b"X")
                except OSError:
                    cut = True
                    break
                ready, _, _ = select.select([s], [], [], 0.05)
                if ready:
                    try:
                        cut = s.recv(4096) == b""
                    except ConnectionError:
                        cut = True
                    if cut:
                        break
            assert cut


def test_connections_beyond_the_bound_get_a_quick_503(gallery):
    for srv in run_server(gallery, max_connections=2, idle_timeout=30):
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(2)]
        try:
            assert wait_for(lambda: srv.open_connections == 2)
            status, headers, body = request(srv, "/api/status", timeout=10)
            assert status == 503 and "busy" in json.loads(body)["error"] and headers["retry-after"]
        finally:
            for s in idle:
                s.close()
        assert wait_for(lambda: srv.open_connections == 0)
        assert request(srv, "/api/status")[0] == 200


SERVER_SCRIPT = textwrap.dedent("""
    import resource, sys
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    from pathlib import Path
    from edge_xmr.server import Gallery, ServerConfig, make_server
    g = Gallery(db=Path(sys.argv[1]), bundle=None, thumbs=Path(sys.argv[2]))
    srv = make_server(g, ServerConfig(idle_timeout=2.0, request_timeout=3.0))
    print(srv.port, srv.max_connections, flush=True)
    srv.serve_forever(poll_interval=0.5)
""")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the server's CPU time from /proc")
def test_many_idle_sockets_under_a_low_descriptor_limit_neither_block_nor_spin(tmp_path, indexed_db):
    """60 idle sockets against a server limited to 64 descriptors: the old one ran out of
    descriptors, no client got an answer, and its accept loop spun at ~70 % CPU."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(indexed_db), str(tmp_path / "t")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    idle: list[socket.socket] = []
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "the server did not start"
        port, bound = (int(x) for x in proc.stdout.readline().split())  # type: ignore[union-attr]
        assert 1 <= bound <= 8  # (64 - reserved) / descriptors per connection
        for _ in range(60):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        srv = type("S", (), {"server_address": ("127.0.0.1", port), "port": port})()
        status, _, _ = request(srv, "/api/status", timeout=10)  # an answer, not a hang
        assert status in (200, 503)
        cpu0 = _cpu_seconds(proc.pid)
        time.sleep(1.5)  # idle: the sockets are still open, nobody sends
        assert _cpu_seconds(proc.pid) - cpu0 < 0.3  # a spinning accept loop burns most of a core
        # once the idle ones have timed out, clients are served again
        assert wait_for(lambda: request(srv, "/api/status", timeout=10)[0] == 200, limit=15)
        assert proc.poll() is None
    finally:
        for s in idle:
            s.close()
        proc.kill()
        proc.communicate(timeout=30)


# ---- item 13: malformed queries, leaked paths, swapped files ------------------------------------------
def test_too_many_query_parameters_are_400(server):
    status, _, body = request(server, "/api/search?" + "&".join(f"p{i}=1" for i in range(25)) + "&q=red")
    assert status == 400 and "at most 20" in json.loads(body)["error"]
    status, _, body = request(server, "/api/status?" + "&" * 40)
    assert status == 400


@pytest.mark.parametrize("query", ["q=%", "q=%zz&k=%%%", "q=red&&&k=3", "=&=&q=red", "q=red;k=2", "q=" + "%ff" * 50])
def test_malformed_queries_never_give_500(server, query):
    status, _, body = request(server, "/api/search?" + query)
    assert status in (200, 400) and json.loads(body)


def test_error_messages_carry_no_absolute_path(tmp_path, colour_bundle, gallery):
    g = Gallery(db=tmp_path / "secret" / "none.db", bundle=colour_bundle, thumbs=tmp_path / "t")
    for srv in run_server(g):
        for path in ("/api/status", "/api/search?q=red", "/thumb/1"):
            body = request(srv, path)[2].decode()
            assert str(tmp_path) not in body and "none.db" in body, (path, body)
    gallery.indexing.error = f"PermissionError: [Errno 13] Permission denied: '{tmp_path}/photos/x.jpg'"
    s = json.dumps(gallery.status())
    assert str(tmp_path) not in s and "x.jpg" in s


def test_an_internal_error_names_neither_the_exception_nor_a_path(server, gallery, tmp_path, monkeypatch):
    logged: list[str] = []
    server.log = logged.append

    def broken() -> dict[str, Any]:
        raise OSError(2, "No such file or directory", str(tmp_path / "private" / "thing"))

    monkeypatch.setattr(gallery, "status", broken)
    status, _, body = request(server, "/api/status")
    text = json.loads(body)["error"]
    assert status == 500 and str(tmp_path) not in text and "Error" not in text and "No such file" not in text
    assert any("FileNotFoundError" in m and "thing" in m for m in logged)  # the details go to the server's log


def test_redact_cuts_absolute_paths_to_their_last_part():
    assert redact("There is no index at /home/ann/.local/x.db yet") == "There is no index at x.db yet"
    assert redact("'/srv/p/a.jpg': cannot decode (C:\\Users\\ann\\b.png)") == "'a.jpg': cannot decode (b.png)"
    assert redact("Type a few words (HTTP/1.0, 1/2, and/or)") == "Type a few words (HTTP/1.0, 1/2, and/or)"


@pytest.fixture()
def outside_photo(tmp_path: Path) -> Path:
    """A photo outside the library, of another colour than the one it will stand in for."""
    return write_colour_photo(tmp_path / "outside" / "red.jpg", (30, 40, 220))


def test_a_photo_replaced_by_a_symlink_is_not_served(server, gallery, outside_photo):
    pid, path = photo_id(gallery, "red.jpg")
    path.unlink()
    path.symlink_to(outside_photo)
    for kind in ("thumb", "photo"):
        status, _, body = request(server, f"/{kind}/{pid}")
        assert status == 404 and "link" in json.loads(body)["error"]
    path.unlink()
    path.symlink_to("/etc/passwd")
    status, _, body = request(server, f"/thumb/{pid}")
    assert status == 404 and b"root:" not in body and b"/etc" not in body


def test_a_folder_replaced_by_a_symlink_is_not_served(server, gallery, outside_photo):
    """The photo's own name is a regular file, but reached through a linked folder: other bytes."""
    pid, path = photo_id(gallery, "red.jpg")
    os.rename(path.parent, path.parent.with_name("warm-moved"))
    path.parent.symlink_to(outside_photo.parent, target_is_directory=True)
    status, _, body = request(server, f"/thumb/{pid}")
    assert status == 404 and "changed since it was indexed" in json.loads(body)["error"]


def test_a_cached_rendering_is_not_served_for_a_replaced_file(server, gallery, outside_photo):
    pid, path = photo_id(gallery, "red.jpg")
    assert request(server, f"/thumb/{pid}")[0] == 200  # cached now
    path.unlink()
    path.symlink_to(outside_photo)
    assert request(server, f"/thumb/{pid}")[0] == 404


def test_the_same_bytes_touched_are_served_other_bytes_are_not(server, gallery):
    pid, path = photo_id(gallery, "green.jpg")
    os.utime(path, (1e9, 1e9))  # same bytes, new mtime: still the indexed photo
    assert request(server, f"/thumb/{pid}")[0] == 200
    write_colour_photo(path, (250, 0, 250))  # edited: other bytes than the index describes
    status, _, body = request(server, f"/photo/{pid}")
    assert status == 404 and "re-index" in json.loads(body)["error"]


def test_a_fifo_in_a_photos_place_is_refused_at_once(server, gallery):
    pid, path = photo_id(gallery, "black.jpg")
    path.unlink()
    os.mkfifo(path)
    status, _, _ = request(server, f"/thumb/{pid}", timeout=10)  # O_NONBLOCK: no thread waits on it
    assert status == 404


def test_a_photo_whose_name_is_not_utf8_is_served(tmp_path, colour_bundle):
    """Its index key (valid Unicode, pathkeys) differs from the OS path: the server opens the latter."""
    from edge_xmr import Library

    root = tmp_path / "raw"
    odd = Path(os.fsdecode(os.fsencode(root) + b"/caf\xe9-\xff.jpg"))
    write_colour_photo(odd, (220, 30, 30))
    db = tmp_path / "raw.db"
    with Library.open(db, colour_bundle) as lib:
        assert lib.index(root).added == 1
        (pid,) = [int(r[0]) for r in lib.store.connection.execute("SELECT id FROM photos")]
    gallery = Gallery(db=db, bundle=colour_bundle, thumbs=tmp_path / "thumbs")
    for srv in run_server(gallery):
        for kind in ("thumb", "photo"):
            status, headers, body = request(srv, f"/{kind}/{pid}")
            assert status == 200 and body[:2] == b"\xff\xd8", (kind, status, body[:200])
