"""The command line's contract (issue 18, items 6-10, 14, 15): every bad input is one line on
stderr and exit status 2 with nothing changed; a closed pipe ends quietly; ``--queries`` streams;
``--json`` means one thing; progress writes no carriage returns into logs.

Process-level behaviour (exit status, what reaches stderr, pipes) runs the command in a child
process (``runtime_cli_fake.py``: the real ``main`` with the numpy fake bundle); the rest runs
``main`` in this process.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import select
import subprocess
import sys
from pathlib import Path

import apsw
import pytest
from runtime_fakes import FakeBundle

import edge_xmr
from edge_xmr.cli import EPILOG, build_parser, main
from edge_xmr.cli import options as opt
from edge_xmr.index import IndexFileError
from edge_xmr import Library

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "runtime_cli_fake.py"
REPO = HERE.parent.parent
NOT_SQLITE = b"my notes, not a database\n" * 40


@pytest.fixture()
def env(tmp_path, photo_tree, fake_cli):
    """An indexed library (9 photos) and the environment a child process needs to find it."""
    db = tmp_path / "lib.db"
    assert main(["index", str(photo_tree), "--db", str(db), "--quiet"]) == 0
    return {"db": str(db), "root": photo_tree, "tmp": tmp_path}


def cli(*args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """``edge-xmr ARGS`` in a child process (environment inherited: the ``env`` fixture's)."""
    return subprocess.run([sys.executable, str(RUNNER), *args], input=stdin, capture_output=True, timeout=timeout)


def assert_one_line_error(p: subprocess.CompletedProcess[bytes], *needles: str) -> str:
    err = p.stderr.decode()
    assert p.returncode == 2, (p.returncode, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("edge-xmr"), err
    for n in needles:
        assert n in err, err
    return err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- item 6: --db that is no index ------------------------------------------------------------------
def _bad_db(kind: str, tmp: Path) -> Path:
    if kind == "text file":
        (tmp / "notes.txt").write_bytes(NOT_SQLITE)
        return tmp / "notes.txt"
    if kind == "folder":
        (tmp / "a_folder").mkdir()
        return tmp / "a_folder"
    if kind == "other program's SQLite":
        c = apsw.Connection(str(tmp / "other.sqlite"))
        c.execute("CREATE TABLE contacts(name TEXT); INSERT INTO contacts VALUES ('Ann')")
        c.close()
        return tmp / "other.sqlite"
    assert kind == "unwritable place"
    return Path("/proc/edge-xmr-test.db")  # /proc refuses new files, even to root


BAD_DBS = ["text file", "folder", "other program's SQLite", "unwritable place"]
DB_COMMANDS = {  # every command that opens an index, with its other arguments
    "index": lambda e: ["index", str(e["root"])],
    "search": lambda e: ["search", "a dog"],
    "similar": lambda e: ["similar", str(e["root"] / "a" / "img0.jpg")],
    "stats": lambda e: ["stats"],
    "remove": lambda e: ["remove", str(e["root"] / "a")],
}
NEEDLE = {"text file": "not an SQLite file", "folder": "a folder", "other program's SQLite": "another program",
          "unwritable place": "edge-xmr-test.db"}


@pytest.mark.parametrize("kind", BAD_DBS)
@pytest.mark.parametrize("command", sorted(DB_COMMANDS))
def test_db_that_is_no_index_is_one_line_and_left_unchanged(env, capsys, command, kind):
    db = _bad_db(kind, env["tmp"])
    before = digest(db) if db.is_file() else None
    capsys.readouterr()
    assert main([*DB_COMMANDS[command](env), "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"edge-xmr {command}: error:" in err, err
    if command == "index" or db.exists():  # the other commands refuse a missing file with "no index at"
        assert NEEDLE[kind] in err, err
    if before is not None:
        assert digest(db) == before  # byte-identical: the user's file is never touched
        assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists() and not Path(f"{db}-journal").exists()
    assert not Path("/proc/edge-xmr-test.db").exists()


@pytest.mark.parametrize("kind", ["text file", "unwritable place"])
def test_db_that_is_no_index_in_a_child_process(env, kind):
    db = _bad_db(kind, env["tmp"])
    before = digest(db) if db.is_file() else None
    assert_one_line_error(cli("index", str(env["root"]), "--db", str(db)), NEEDLE[kind])
    if before is not None:
        assert digest(db) == before


def test_library_open_refuses_without_writing(tmp_path):
    for kind in ("text file", "other program's SQLite", "folder"):
        db = _bad_db(kind, tmp_path)
        before = digest(db) if db.is_file() else None
        with pytest.raises(IndexFileError) as e:
            Library.open(db, FakeBundle())
        assert str(db) in str(e.value) and str(db) not in e.value.reason  # .reason: no path (web pages)
        assert isinstance(e.value, edge_xmr.EdgeXmrError)
        if before is not None:
            assert digest(db) == before


def test_a_damaged_index_is_one_line(env):
    db = Path(env["db"])
    data = bytearray(db.read_bytes())
    data[8192:] = b"\xff" * (len(data) - 8192)  # every page after the first (the schema) destroyed
    db.write_bytes(bytes(data))
    for args in (["search", "a dog"], ["stats"]):
        assert_one_line_error(cli(*args, "--db", str(db)), "SQLite")


def test_serve_with_a_db_that_is_no_index(env):
    db = _bad_db("text file", env["tmp"])
    assert_one_line_error(cli("serve", "--db", str(db), "--port", "0"), "not an SQLite file")
    assert digest(db) == hashlib.sha256(NOT_SQLITE).hexdigest()


# ---- items 7, 8: bounded numeric options ---------------------------------------------------------
def test_serve_port_out_of_range(env):
    for port in ("99999", "-1"):
        assert_one_line_error(cli("serve", "--port", port), "--port", "0 to 65535")


OUT_OF_RANGE = [
    ["search", "x", "--k", "0"], ["search", "x", "--k", "5000"], ["search", "x", "--rerank", "-1"],
    ["search", "x", "--rerank", "4097"], ["search", "x", "--threads", "20000"], ["search", "x", "--k", "ten"],
    ["similar", "p.jpg", "--k", "4097"], ["similar", "p.jpg", "--threads", "-1"],
    ["index", "d", "--threads", "20000"], ["index", "d", "--workers", "20000"], ["index", "d", "--workers", "0"],
    ["index", "d", "--batch-size", "0"], ["index", "d", "--batch-size", "100000"],
    ["demo", "-k", "0"], ["demo", "--rerank", "5000"], ["demo", "--threads", "20000"],
    ["serve", "--threads", "20000"], ["serve", "--port", "99999"],
    ["eval", "--model", "m", "--data", "d", "--threads", "20000"],
    ["eval", "--model", "m", "--data", "d", "--max-queries", "0"],
    ["check", "--reference", "r", "--candidate", "c", "--data", "d", "--threads", "20000"],
    ["quantize", "--bundle", "b", "--max-samples", "0"],
    ["export", "--model", "m", "--out", "o", "--max-samples", "-5"],
]


@pytest.mark.parametrize("args", OUT_OF_RANGE, ids=" ".join)
def test_numeric_options_are_bounded(args, capsys):
    with pytest.raises(SystemExit) as e:  # parsing only: an unbounded value must never run the command
        build_parser().parse_args(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    option = args[-2]  # the option under test comes last
    assert f"argument {option}" in err and ("must be" in err or "whole number" in err), err


def test_thread_bound_is_four_per_core_and_the_library_enforces_it(monkeypatch):
    from edge_xmr import providers

    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert providers.max_threads() == 12 and opt.THREADS("12") == 12
    with pytest.raises(argparse.ArgumentTypeError, match="from 0 to 12"):
        opt.THREADS("13")
    with pytest.raises(providers.ProviderError):  # API callers and $EDGE_XMR_THREADS too
        providers.thread_count(13)
    monkeypatch.setenv(providers.THREADS_ENV, "20000")
    with pytest.raises(providers.ProviderError):
        providers.thread_count(None)


def test_usage_error_in_a_child_is_one_line(env):
    assert_one_line_error(cli("search", "x", "--threads", "20000"), "--threads")
    assert_one_line_error(cli("search", "x", "--no-such-option"), "unrecognized arguments")


# ---- item 9: empty queries -----------------------------------------------------------------------
@pytest.mark.parametrize("query", ["", "   ", "\t\n"])
def test_empty_query_is_refused(env, capsys, query):
    capsys.readouterr()
    assert main(["search", query, "--db", env["db"]]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "query is empty" in err and len(err.strip().splitlines()) == 1


# ---- item 10: a reader that closes the pipe ------------------------------------------------------
@pytest.mark.parametrize("args", [["search", "a dog", "--k", "9"], ["stats", "--json"]], ids=" ".join)
def test_closed_stdout_ends_quietly(env, args):
    argv = [sys.executable, str(RUNNER), *args, "--db", env["db"]]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # the reader is gone before the first write (`| head -0`): every write fails
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141, err  # 128 + SIGPIPE, as a tool killed by SIGPIPE would report
    assert err == "", err


def test_head_1_gets_its_line_and_the_command_ends_quietly(env):
    qf = env["tmp"] / "q.txt"
    qf.write_text("a dog\n" * 2000)  # far more than a pipe buffer holds
    p = subprocess.Popen([sys.executable, str(RUNNER), "search", "--queries", str(qf), "--db", env["db"]],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    first = json.loads(p.stdout.readline())
    p.stdout.close()
    err = p.stderr.read().decode()
    assert first["line"] == 1 and first["query"] == "a dog" and first["hits"]
    assert p.wait(timeout=60) == 141 and err == "", err


# ---- item 14: --queries streams, one answer per input line ---------------------------------------
def _read_answer(p: subprocess.Popen[bytes]) -> dict[str, object]:
    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], 60)  # a guard against a hang, not a timing check
    assert ready, "no answer while stdin is still open: the queries are not streamed"
    return json.loads(p.stdout.readline())  # type: ignore[no-any-return]


def test_queries_from_stdin_are_answered_one_by_one(env):
    p = subprocess.Popen([sys.executable, str(RUNNER), "search", "--queries", "-", "--db", env["db"], "--k", "2"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdin is not None and p.stderr is not None
    answers = []
    for line in (b"a dog\n", b"\n", b"   \n", b"sunset \xff\n", b"two cats\r\n"):
        p.stdin.write(line)
        p.stdin.flush()
        answers.append(_read_answer(p))  # answered before the next line is written
    p.stdin.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 2  # some lines were refused: said in their answers and in the status
    assert [a["line"] for a in answers] == [1, 2, 3, 4, 5]
    assert [a["query"] for a in answers] == ["a dog", "", "   ", "sunset \ufffd", "two cats"]
    assert [("hits" in a, "error" in a) for a in answers] == [(True, False), (False, True), (False, True),
                                                             (False, True), (True, False)]
    assert all(len(a["hits"]) == 2 for a in answers if "hits" in a)  # type: ignore[arg-type]
    assert "empty" in str(answers[1]["error"]) and "UTF-8" in str(answers[3]["error"])
    assert err.strip() == '3 of 5 queries refused (their answers carry "error")', err


def test_queries_answers_match_lines(env, capsys, tmp_path):
    qf = tmp_path / "q.txt"
    qf.write_text("a dog\n\nsunset over water\n")
    capsys.readouterr()
    assert main(["search", "--queries", str(qf), "--db", env["db"], "--k", "1"]) == 2
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(a["line"], a["query"], "error" in a) for a in answers] == [
        (1, "a dog", False), (2, "", True), (3, "sunset over water", False)]
    assert main(["search", "a dog", "--db", env["db"], "--k", "1", "--json"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert single == {"query": "a dog", "hits": answers[0]["hits"]}  # the same answer shape


# ---- item 15: progress, --version, --json --------------------------------------------------------
def test_progress_off_a_terminal_has_no_carriage_returns(env, capsys, photo_tree, tmp_path):
    capsys.readouterr()
    assert main(["index", str(photo_tree), "--db", str(tmp_path / "new.db")]) == 0
    err = capsys.readouterr().err  # pytest's capture is no terminal, like a log file
    assert "\r" not in err and "\x1b" not in err
    assert re.search(r"^indexing: 9/9 photos \(100%\), added 9, skipped 0$", err, re.M), err


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_lines_every_tenth_and_a_bar_only_on_a_terminal(monkeypatch):
    log = io.StringIO()
    with opt.Progress("work", "item", stream=log) as bar:
        for i in range(1, 101):
            bar.update(i, 100, ok=i)
    lines = log.getvalue().splitlines()
    assert len(lines) == 11 and lines[-1] == "work: 100/100 items (100%), ok 100" and "\r" not in log.getvalue()
    monkeypatch.setenv("TERM", "xterm")
    tty = _Tty()
    with opt.Progress("work", "item", stream=tty) as bar:
        bar.update(5, 10)
    assert "\r" in tty.getvalue()  # tqdm's redrawn bar
    monkeypatch.setenv("TERM", "dumb")
    dumb = _Tty()
    with opt.Progress("work", "item", stream=dumb) as bar:
        bar.update(5, 10)
    assert dumb.getvalue() == "work: 5/10 items (50%)\n"
    quiet = io.StringIO()
    with opt.Progress("work", quiet=True, stream=quiet) as bar:
        bar.update(5, 10)
    assert quiet.getvalue() == ""


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"edge-xmr {edge_xmr.__version__}"


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_json_means_the_same_everywhere():
    with_json = {}
    for name, sp in _subparsers().items():
        for a in sp._actions:
            if "--json" in a.option_strings:
                assert a.nargs == 0, f"{name} --json takes a value"  # a flag: JSON on stdout
                with_json[name] = True
            if a.dest in ("json_out", "json") and a.nargs != 0:
                assert a.option_strings == ["--json-out"], (name, a.option_strings)
    assert {"index", "search", "similar", "stats", "remove", "eval", "check", "export", "quantize",
            "calibrate"} <= set(with_json)


def test_index_and_remove_print_a_json_summary(env, capsys, photo_tree, tmp_path):
    db = str(tmp_path / "j.db")
    capsys.readouterr()
    assert main(["index", str(photo_tree), "--db", db, "--quiet", "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    first = json.loads(out[0])
    assert len(out) == 1 and first["db"] == db and first["path"] == str(photo_tree.resolve())
    assert {k: first[k] for k in ("scanned", "added", "updated", "unchanged", "removed", "skipped")} == {
        "scanned": 9, "added": 9, "updated": 0, "unchanged": 0, "removed": 0, "skipped": 0}
    assert main(["index", str(photo_tree), "--db", db, "--quiet", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["added"] == 0 and again["unchanged"] == 9
    assert main(["remove", str(photo_tree / "a"), "--db", db, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"db": db, "path": str(photo_tree / "a"), "removed": 6}
    assert main(["stats", "--db", db, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["photos"] == 3


def test_json_output_is_ascii_and_round_trips(env, capsys):
    capsys.readouterr()
    assert main(["search", "chien près de l'eau", "--db", env["db"], "--json", "--k", "1"]) == 0
    out = capsys.readouterr().out
    assert out.isascii() and json.loads(out)["query"] == "chien près de l'eau"


ENV_CONSTANTS = ("edge_xmr.paths:DB_ENV", "edge_xmr.paths:BUNDLE_ENV", "edge_xmr.demo:CACHE_ENV",
                 "edge_xmr.providers:PROVIDERS_ENV", "edge_xmr.providers:THREADS_ENV", "edge_xmr.providers:SPIN_ENV")


def test_conventions_and_every_environment_variable_are_documented():
    import importlib

    doc = (REPO / "docs" / "runtime.md").read_text()
    section = doc.split("## Command-line conventions", 1)[1].split("\n## ", 1)[0]
    names = [getattr(importlib.import_module(m), c) for m, c in (s.split(":") for s in ENV_CONSTANTS)]
    for name in names + ["XDG_DATA_HOME", "XDG_CACHE_HOME", "LOCALAPPDATA"]:
        assert name in EPILOG and name in section, name
    for code in ("141", "130", "--json-out"):
        assert code in EPILOG and code in section, code
    found = set(re.findall(r"EDGE_XMR_[A-Z]+", "\n".join(p.read_text() for p in (REPO / "edge_xmr").rglob("*.py"))))
    assert found <= set(names) | {"EDGE_XMR_CACHE"}, found - set(names)  # a new variable must be documented
