"""``edge-xmr demo`` and ``edge-xmr serve`` end to end with a real exported (tiny) bundle.

The bundle is provisioned the way a fresh machine gets the default one: ``demo.default_bundle``
exports a model directory into the cache (here the tiny random model instead of the default).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_xmr import demo
from edge_xmr.cli import main


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for i in range(5):
        (root / f"album{i % 2}").mkdir(parents=True, exist_ok=True)
        a = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(a).resize((64, 48), Image.BILINEAR).save(root / f"album{i % 2}" / f"p{i}.jpg")
    return root


def test_demo_on_a_folder_prints_ranked_results_scores_and_stage_timings(provisioned, photos, tmp_path, capsys):
    rc = main(["demo", "--bundle", str(provisioned), "--photos", str(photos), "--db", str(tmp_path / "d.db"),
               "-k", "2", "-q", "a dog on the beach", "-q", "ünïcödé 🐕"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count("text → image") == 2 and "image → image" in out
    assert "embed" in out and "KNN" in out and "rerank" in out and "cross" in out and "bi " in out
    assert "edge-xmr serve --db" in out
    # the index remembers the bundle, so serve needs no --bundle
    from edge_xmr import Library

    with Library.open(tmp_path / "d.db", load_model=False, create=False) as lib:
        assert lib.count() == 5 and Path(lib.info.bundle_path) == provisioned.resolve()


def test_demo_on_the_sample_photos_checks_the_expected_photo(provisioned, tmp_path, capsys, monkeypatch):
    pytest.importorskip("skimage")
    monkeypatch.setenv("EDGE_XMR_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--bundle", str(provisioned), "-k", "1"]) == 0
    out = capsys.readouterr().out
    assert "“a cat”" in out and "expected cat.png first" in out and "photos like cat.png" in out
    assert "queries put the expected photo first" in out


def test_demo_errors_are_one_line(provisioned, tmp_path, capsys):
    assert main(["demo", "--bundle", str(tmp_path), "--photos", str(tmp_path)]) == 2
    assert "not a model bundle" in capsys.readouterr().err
    assert main(["demo", "--bundle", str(provisioned), "--photos", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["demo", "--bundle", str(provisioned), "--photos", str(empty), "--db", str(tmp_path / "e.db")]) == 2
    assert "no photos" in capsys.readouterr().err


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_serve_indexes_in_the_background_and_answers_searches(provisioned, photos, tmp_path):
    db = tmp_path / "s.db"
    env = {**os.environ, "EDGE_XMR_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "edge_xmr.cli", "serve", "--db", str(db), "--port", "0", "--quiet",
           "--bundle", str(provisioned), "--photos", str(photos)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = ""
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("open "):
                url = line.split()[1]
                break
        assert url.startswith("http://127.0.0.1:")
        deadline = time.time() + 120
        while True:
            status, s = _get(url + "api/status")
            if s.get("photos") == 5 and not s["indexing"]["running"]:
                break
            assert time.time() < deadline, s
            time.sleep(0.3)
        status, r = _get(url + "api/search?q=a%20dog&k=3")
        assert status == 200 and len(r["results"]) == 3 and r["results"][0]["cross"] is not None
        status, r = _get(url + f"api/similar?id={r['results'][0]['id']}&k=2")
        assert status == 200 and len(r["results"]) == 2
    finally:
        proc.terminate()
        proc.wait(30)


def test_serve_refuses_a_port_in_use_and_warns_about_a_missing_index(provisioned, tmp_path, capsys):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        rc = main(["serve", "--db", str(tmp_path / "none.db"), "--bundle", str(provisioned),
                   "--port", str(s.getsockname()[1])])
    finally:
        s.close()
    err = capsys.readouterr().err
    assert rc == 2 and "cannot listen" in err and "no index" in err


def test_serve_refuses_a_file_that_is_not_an_index(provisioned, tmp_path, capsys):
    bad = tmp_path / "notes.db"
    bad.write_bytes(b"not sqlite" * 50)
    for extra in ([], ["--bundle", str(provisioned)]):
        assert main(["serve", "--db", str(bad), "--port", "0", *extra]) == 2
        assert "cannot open the index" in capsys.readouterr().err
