"""The accuracy gate end to end (exit codes 0 / 1 / 2), its report, and that it runs without torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quantize.gate import GateError, check, parse_metric, render_markdown, topk_agreement

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    """The CI sample set, generated as CI's gate.sh does (samples/ci/make_data.py; not committed)."""
    pytest.importorskip("skimage")
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_data", REPO / "samples" / "ci" / "make_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path_factory.mktemp("ci") / "data"
    mod.main(out)
    return out


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_xmr.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)


def test_parse_metric():
    assert parse_metric("rerank@20.t2i.R@1") == ("rerank@20", "t2i", "R@1")
    assert parse_metric("bi_encoder.i2t.R@10") == ("bi_encoder", "i2t", "R@10")
    assert parse_metric("cross_encoder.t2i.R@5") == ("cross_encoder", "t2i", "R@5")
    for bad in ("rerank.t2i.R@1", "rerank@20.t2x.R@1", "bi_encoder.t2i.R@3", "R@1", ""):
        with pytest.raises(GateError, match="unknown metric"):
            parse_metric(bad)


def test_topk_agreement_oracle():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 30))
    assert topk_agreement(a, a).tolist() == [1.0] * 7
    assert topk_agreement(a, -a, k=10).max() == 0.0  # reversed order: disjoint top-10 of 30
    b = a.copy()
    b[:, np.argsort(-a[0])[0]] = -99  # drop row 0's best item everywhere
    assert topk_agreement(a, b, k=5)[0] == pytest.approx(0.8)


def test_int8_vs_fp32_passes(toy_teacher_bundle, toy_data):
    rep = check(toy_teacher_bundle, toy_teacher_bundle, toy_data, split="all", candidate_precision="int8")
    assert rep.reference_value > 50  # the trained toy teacher is far above chance (1/6)
    assert rep.passed, f"int8 dropped {rep.drop} points"
    assert rep.agreement["text_cosine"]["mean"] > 0.99
    assert rep.agreement["image_cosine"]["mean"] > 0.99
    assert set(rep.recalls) == {"bi_encoder", "rerank@10", "rerank@20", "rerank@50"}
    assert rep.reference["precision"] == "fp32" and rep.candidate["precision"] == "int8"
    md = render_markdown(rep)
    assert "✅ passed" in md and "| rerank@20 | t2i |" in md


def test_broken_candidate_fails_with_exit_1(toy_teacher_bundle, broken_bundle, toy_data, tmp_path):
    js, md = tmp_path / "r" / "gate.json", tmp_path / "r" / "gate.md"
    p = cli("check", "--reference", str(toy_teacher_bundle), "--candidate", str(broken_bundle),
            "--data", str(toy_data), "--split", "all", "--json-out", str(js), "--markdown", str(md), "--quiet")
    assert p.returncode == 1, p.stderr
    assert p.stdout.startswith("FAIL: rerank@20.t2i.R@1")
    import json

    rep = json.loads(js.read_text())
    assert rep["passed"] is False and rep["drop"] > 0.5
    assert rep["recalls"]["bi_encoder"]["t2i"]["R@1"]["candidate"] < rep["recalls"]["bi_encoder"]["t2i"]["R@1"]["reference"]
    assert "❌ failed" in md.read_text()


def test_gate_threshold_and_metric_choice(toy_teacher_bundle, broken_bundle, toy_data):
    # a drop threshold of 100 points lets anything through
    p = cli("check", "--reference", str(toy_teacher_bundle), "--candidate", str(broken_bundle), "--data",
            str(toy_data), "--max-drop", "100", "--metric", "bi_encoder.t2i.R@5", "--quiet")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("PASS: bi_encoder.t2i.R@5")


@pytest.mark.parametrize("args, message", [
    (["--reference", "/nonexistent/ref"], "--reference /nonexistent/ref: folder not found"),
    (["--data", "/nonexistent/data"], "--data /nonexistent/data: folder not found"),
    (["--metric", "rerank@20.t2i.R@2"], "unknown metric"),
    (["--split", "nosuch"], "unknown split 'nosuch'"),
    (["--max-drop", "-1"], "max_drop must be >= 0"),
    (["--candidate-precision", "int4"], "no 'int4' ONNX graphs"),
])
def test_usage_errors_exit_2_with_one_line(toy_teacher_bundle, toy_data, args, message):
    base = {"--reference": str(toy_teacher_bundle), "--candidate": str(toy_teacher_bundle), "--data": str(toy_data)}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    p = cli("check", *[x for kv in base.items() for x in kv], "--quiet")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-xmr check: error:") and message in lines[0], p.stderr


def test_not_a_bundle_exits_2(toy_data, tmp_path):
    p = cli("check", "--reference", str(tmp_path), "--candidate", str(tmp_path), "--data", str(toy_data))
    assert p.returncode == 2 and "manifest.json: missing" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_gate_runs_without_torch(toy_teacher_bundle, tmp_path, samples):
    """The gate in a process where importing torch or transformers fails (CI of an app needs no torch)."""
    fake = tmp_path / "fake"
    for mod in ("torch", "transformers"):
        (fake / mod).mkdir(parents=True)
        (fake / mod / "__init__.py").write_text(f"raise ImportError('{mod} is blocked in this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(REPO)])}
    p = cli("check", "--reference", str(toy_teacher_bundle), "--candidate", str(toy_teacher_bundle),
            "--candidate-precision", "int8", "--data", str(samples), "--split", "photos", "--quiet", env=env)
    assert p.returncode in (0, 1), p.stderr[-2000:]
    assert "rerank@20.t2i.R@1" in p.stdout
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "blocked" in blocked.stderr


def test_ci_sample_set_is_complete(samples):
    from edge_xmr.data import read_captions

    data = read_captions(samples, "all")
    assert len(data.images) == 24 and len(data.captions) == 48
    assert (samples / "CREDITS.md").read_text().count("|") > 24 * 3
    assert not any("flickr" in n.lower() or n[:1].isdigit() for n in data.images)
