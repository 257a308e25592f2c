"""The gallery over HTTP: search, "more like this", filters, thumbnails, and hostile requests."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from web_helpers import run_server

from edge_xmr.server import Gallery, HttpError, clean_query, parse_id


def get(server: Any, path: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """A raw GET (the path is sent exactly as given, no normalisation of ``../``)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    conn.putrequest("GET", path, skip_host=host is not None)
    if host is not None:
        conn.putheader("Host", host)
    conn.endheaders()
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def get_json(server: Any, path: str) -> tuple[int, dict[str, Any]]:
    status, headers, body = get(server, path)
    assert headers["content-type"].startswith("application/json"), (path, headers)
    return status, json.loads(body)


def search(server: Any, **params: str) -> tuple[int, dict[str, Any]]:
    return get_json(server, "/api/search?" + urlencode(params))


# ---- the page and the API -------------------------------------------------------------------------------
def test_page_and_static_files_are_served_with_a_strict_csp(server):
    status, headers, body = get(server, "/")
    assert status == 200 and b'id="q"' in body
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    for name in ("app.js", "style.css"):
        assert get(server, f"/static/{name}")[0] == 200


def test_status_reports_the_index(server):
    status, s = get_json(server, "/api/status")
    assert status == 200 and s["ready"] and s["photos"] == 6 and s["model"] == "colour-fake"
    assert s["indexing"]["running"] is False and s["search"] is True


def test_search_returns_ranked_results_with_both_scores_and_timings(server):
    status, r = search(server, q="a red photo", k="3")
    assert status == 200, r
    assert [x["rank"] for x in r["results"]] == [1, 2, 3]
    top = r["results"][0]
    assert top["name"] == "red.jpg" and top["folder"] == "warm"
    assert isinstance(top["cross"], float) and isinstance(top["bi"], float)
    assert set(r["timings"]) >= {"embed_ms", "knn_ms", "rerank_ms", "total_ms"}
    assert "path" not in top and "/" not in top["name"]  # no file-system paths leave the server


def test_search_without_rerank_has_no_cross_scores(server):
    _, r = search(server, q="blue", k="2", rerank="0")
    assert r["results"][0]["name"] == "blue.jpg" and r["results"][0]["cross"] is None


def test_more_like_this_excludes_the_photo_itself(server):
    _, r = search(server, q="yellow", k="1")
    pid = r["results"][0]["id"]
    status, s = get_json(server, f"/api/similar?id={pid}&k=3")
    assert status == 200 and s["source"]["name"] == "yellow.jpg"
    assert pid not in [x["id"] for x in s["results"]] and len(s["results"]) == 3


def test_folder_filter_uses_folder_ids(server):
    _, f = get_json(server, "/api/folders")
    by_name = {x["name"]: x for x in f["folders"]}
    assert set(by_name) == {"cool", "warm"} and by_name["warm"]["photos"] == 2
    _, r = search(server, q="blue", folder=str(by_name["warm"]["id"]))
    assert {x["name"] for x in r["results"]} == {"red.jpg", "yellow.jpg"}


def test_date_filters_and_empty_results_say_so(server):
    _, r = search(server, q="red", until="1990-01-01")
    assert r["results"] == [] and "No photos match" in r["note"]
    _, r = search(server, q="red", after="1990-01-01")
    assert len(r["results"]) == 6


def test_thumbnails_are_jpeg_and_made_once(server, gallery):
    _, r = search(server, q="green", k="1")
    pid = r["results"][0]["id"]
    status, headers, body = get(server, f"/thumb/{pid}")
    assert status == 200 and headers["content-type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    cached = list(Path(gallery.thumbs).rglob("*.jpg"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    assert get(server, f"/thumb/{pid}")[2] == body and cached[0].stat().st_mtime_ns == mtime
    assert get(server, f"/photo/{pid}")[0] == 200


# ---- hostile and broken input ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", [
    "/thumb/../../../../etc/passwd", "/thumb/..%2F..%2Fetc%2Fpasswd", "/thumb/%2Fetc%2Fpasswd",
    "/photo//etc/passwd", "/thumb/0", "/thumb/-1", "/thumb/1.5", "/thumb/1e3", "/thumb/%31%00",
    "/thumb/" + "9" * 40, "/photo/C:%5CWindows%5Cwin.ini",
])
def test_image_urls_accept_only_ids(server, path):
    status, headers, body = get(server, path)
    assert status in (400, 404), (path, status)
    assert headers["content-type"].startswith("application/json") and json.loads(body)["error"]


@pytest.mark.parametrize("path", [
    "/static/../server.py", "/static/..%2Fserver.py", "/static/%2Fetc%2Fpasswd", "/../../etc/passwd",
    "/etc/passwd", "/static/", "/web/app.js", "/api/nothing",
])
def test_unknown_paths_are_404_not_files(server, path):
    status, _, body = get(server, path)
    assert status == 404 and b"root:" not in body and b"import" not in body


def test_ids_not_in_the_index_are_404_with_a_message(server):
    for path in ("/thumb/999999", "/photo/424242", "/api/similar?id=999999"):
        status, _, body = get(server, path)
        assert status == 404 and "No photo with id" in json.loads(body)["error"]
    status, r = search(server, q="red", folder="31337")
    assert status == 404 and "folder" in r["error"]


@pytest.mark.parametrize("params,needle", [
    ({"q": ""}, "empty"), ({"q": "   \t "}, "empty"), ({"q": "\u200b\u0000\u202e"}, "empty"),
    ({"q": "x" * 5000}, "too long"), ({"q": "red", "k": "0"}, "'k'"), ({"q": "red", "k": "abc"}, "'k'"),
    ({"q": "red", "rerank": "-3"}, "'rerank'"), ({"q": "red", "after": "yesterday"}, "date"),
    ({"q": "red", "after": "2024-02-31"}, "date"), ({"q": "red", "after": "2024-05-01", "until": "2024-04-01"}, "before"),
    ({"q": "red", "folder": "../etc"}, "folder id"),
])
def test_bad_search_input_is_400_with_a_clear_message(server, params, needle):
    status, r = search(server, **params)
    assert status == 400 and needle in r["error"], r


@pytest.mark.parametrize("q", ["🐈 red", "ｒｅｄ", "Ωμέγα", "rouge\u0301", "red\ud800", "<script>alert(1)</script>",
                               "'; DROP TABLE photos; --", "%00%2e%2e"])
def test_odd_unicode_and_injection_attempts_are_plain_queries(server, q):
    status, r = get_json(server, "/api/search?q=" + quote(q, safe="", errors="surrogatepass"))
    assert status == 200, r
    assert len(r["results"]) == 6  # the photos table is still there


def test_invalid_utf8_in_the_url_is_replaced_not_fatal(server):
    status, r = get_json(server, "/api/search?q=%ff%fe%c3")
    assert status == 200 and "\ufffd" in r["query"]


def test_requests_for_another_host_are_refused(server):
    assert get(server, "/", host="evil.example:80")[0] == 403  # DNS rebinding
    assert get(server, "/", host=f"localhost:{server.server_address[1]}")[0] == 200


def test_other_methods_are_refused(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    conn.request("POST", "/api/search", body=b"q=red")
    assert conn.getresponse().status == 405


def test_missing_index_is_a_clear_503(tmp_path, colour_bundle):
    g = Gallery(db=tmp_path / "none.db", bundle=colour_bundle, thumbs=tmp_path / "t")
    for srv in run_server(g):
        status, s = get_json(srv, "/api/status")
        assert status == 200 and not s["ready"] and "no index" in s["message"]
        status, r = search(srv, q="red")
        assert status == 503 and "no index" in r["error"]
        assert get(srv, "/thumb/1")[0] == 503


def test_deleted_photo_file_is_404_not_500(server, gallery):
    _, r = search(server, q="white", k="1")
    pid = r["results"][0]["id"]
    from edge_xmr import Library

    with Library.open(gallery.db, load_model=False, create=False) as lib:
        Path(lib.store.photo_info([pid])[pid].path).unlink()
    status, _, body = get(server, f"/thumb/{pid}")
    assert status == 404 and b"gone" in body


def test_background_indexing_is_reported_then_searchable(tmp_path, colour_bundle, colour_photos):
    from edge_xmr import Library

    db = tmp_path / "bg.db"
    g = Gallery(db=db, bundle=colour_bundle, thumbs=tmp_path / "t")
    t = g.start_indexing(colour_photos, lambda: Library.open(db, colour_bundle))
    t.join(60)
    assert not g.indexing.running and g.indexing.error is None and g.indexing.added == 6
    assert g.status()["photos"] == 6


def test_status_during_background_indexing_never_sees_a_half_created_index(tmp_path, colour_bundle, colour_photos):
    """The index file has its schema when ``start_indexing`` returns, so a status request that a page
    sends right away opens a (still empty) index instead of racing the indexer that creates it."""
    import time

    from edge_xmr import Library

    db = tmp_path / "race.db"
    g = Gallery(db=db, bundle=colour_bundle, thumbs=tmp_path / "t")

    def slow_open() -> Library:  # the indexer's connection takes a moment (a loaded machine)
        time.sleep(0.5)
        return Library.open(db, colour_bundle)

    t = g.start_indexing(colour_photos, slow_open)
    with Library.open(db, load_model=False, create=False) as lib:  # no "not an index yet": the schema is there
        assert lib.count() <= 6
    s = g.status()
    assert s.get("model") == "colour-fake", s  # read from the (empty) index, not the "no index yet" path
    t.join(60)
    assert g.indexing.error is None and g.status()["photos"] == 6


# ---- pure helpers -------------------------------------------------------------------------------------
def test_clean_query_and_parse_id():
    assert clean_query("  a\tcat\n on\u200b a mat ") == "a cat on a mat"
    assert clean_query("ｃａｔ") == "ｃａｔ"  # NFC keeps full-width letters (the tokenizer normalises)
    for bad in ("", "01", "-1", "1/2", "../1", "1" * 19):
        with pytest.raises(HttpError):
            parse_id(bad)
    assert parse_id("42") == 42


def test_a_file_that_is_not_an_index_is_a_clear_503(tmp_path, colour_bundle):
    bad = tmp_path / "notes.db"
    bad.write_bytes(b"this is not a database" * 100)
    for srv in run_server(Gallery(db=bad, bundle=colour_bundle, thumbs=tmp_path / "t")):
        status, r = search(srv, q="red")
        assert status == 503 and "Cannot open the index" in r["error"]
        assert get(srv, "/thumb/1")[0] == 503


def test_warm_up_runs_the_graphs_once(gallery):
    calls = []
    b = gallery.bundle
    orig = b.score_candidates
    b.score_candidates = lambda *a: calls.append(a) or orig(*a)
    gallery.warm_up().join(30)
    assert len(calls) == 1 and calls[0][1].shape[0] == 1
