"""edge-xmr index / search / similar / stats / remove (in-process, fake bundle)."""

from __future__ import annotations

import json

import pytest
from runtime_fakes import FakeBundle

from edge_xmr.cli import main
from edge_xmr.cli import runtime as cli_runtime


@pytest.fixture()
def env(tmp_path, photo_tree, fake_cli):
    return {"db": str(tmp_path / "lib.db"), "root": photo_tree}


def test_index_search_json(env, capsys):
    assert main(["index", str(env["root"]), "--db", env["db"], "--quiet"]) == 0
    assert "9 added" in capsys.readouterr().out
    assert main(["search", "a dog", "--db", env["db"], "--json", "--k", "3", "--rerank", "5"]) == 0
    answer = json.loads(capsys.readouterr().out)
    rows = answer["hits"]
    assert answer["query"] == "a dog" and len(rows) == 3 and {"path", "bi_score", "cross_score"} <= set(rows[0])
    assert all(r["cross_score"] is not None for r in rows)
    assert main(["search", "a dog", "--db", env["db"], "--rerank", "0", "--folder", str(env["root"] / "b")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 3 and all("/b/" in line for line in out)


def test_queries_file_prints_one_json_line_per_query(env, capsys, tmp_path):
    main(["index", str(env["root"]), "--db", env["db"], "--quiet"])
    capsys.readouterr()
    qf = tmp_path / "q.txt"
    qf.write_text("a dog\nsunset over water\r\n" + "x" * 10000 + "\n")
    assert main(["search", "--queries", str(qf), "--db", env["db"], "--k", "2", "--after", "2020-01-01"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.strip().split("\n")]
    assert [a["line"] for a in answers] == [1, 2, 3]
    assert [a["query"] for a in answers] == ["a dog", "sunset over water", "x" * 10000]
    assert all(len(a["hits"]) == 2 for a in answers)


def test_default_db_location(env, capsys, tmp_path):
    assert main(["index", str(env["root"]), "--quiet"]) == 0
    assert (tmp_path / "default.db").exists()
    assert main(["stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n")[1])["photos"] == 9


def test_similar_stats_remove(env, capsys):
    main(["index", str(env["root"]), "--db", env["db"], "--quiet"])
    capsys.readouterr()
    assert main(["similar", str(env["root"] / "a" / "img0.jpg"), "--db", env["db"], "--k", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 2
    assert main(["stats", "--db", env["db"]]) == 0
    out = capsys.readouterr().out
    assert "photos     9 in 3 folders" in out and "edge-xmr-fake" in out and "int8" in out and "bytes/photo" in out
    assert main(["remove", str(env["root"] / "a"), "--db", env["db"]]) == 0
    assert "removed 6 photos" in capsys.readouterr().out


def test_user_errors_are_one_line(env, capsys, tmp_path):
    assert main(["search", "x", "--db", str(tmp_path / "nope.db")]) == 2
    err = capsys.readouterr().err
    assert "error: no index at" in err and "Traceback" not in err
    main(["index", str(env["root"]), "--db", env["db"], "--quiet"])
    capsys.readouterr()
    assert main(["similar", str(tmp_path / "nope.jpg"), "--db", env["db"]]) == 2
    assert "no such photo" in capsys.readouterr().err
    assert main(["search", "--db", env["db"]]) == 2
    assert main(["index", str(tmp_path / "missing"), "--db", env["db"]]) == 2
    with pytest.raises(SystemExit):
        main(["search", "x", "--db", env["db"], "--after", "not-a-date"])


def test_model_mismatch_is_a_user_error(env, capsys, monkeypatch):
    main(["index", str(env["root"]), "--db", env["db"], "--quiet"])
    monkeypatch.setattr(cli_runtime, "load_bundle", lambda *a: FakeBundle(model_id="other", name="other-model"))
    assert main(["search", "x", "--db", env["db"]]) == 2
    assert "other-model" in capsys.readouterr().err


def test_real_loader_refuses_a_folder_without_manifest(tmp_path):
    from edge_xmr.cli import UserError

    with pytest.raises(UserError, match="no manifest.json"):
        cli_runtime.load_bundle(tmp_path, None, None)


def test_no_bundle_anywhere_is_a_user_error(tmp_path, monkeypatch, capsys, photo_tree):
    from edge_xmr import demo

    def no_model(**kw: object) -> None:
        raise demo.DemoError("no default model at /x")

    monkeypatch.delenv("EDGE_XMR_BUNDLE", raising=False)
    monkeypatch.setattr("edge_xmr.discovery.packaged_bundle_dir", lambda: None)
    monkeypatch.setattr(demo, "default_bundle", no_model)
    assert main(["index", str(photo_tree), "--db", str(tmp_path / "x.db")]) == 2
    assert "no model bundle: pass --bundle DIR" in capsys.readouterr().err
