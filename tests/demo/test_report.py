"""bench/report.py draws every figure and writes BENCHMARKS.md from benchmark JSON files."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _report():
    spec = importlib.util.spec_from_file_location("bench_report", REPO / "bench" / "report.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _results(d: Path) -> None:
    d.mkdir()
    depth = {str(k): {"R@1": 10.0 + k / 10, "R@5": 30.0, "R@10": 40.0, "in_top_k": min(100.0, 10.0 * k)}
             for k in (1, 5, 20)}
    (d / "recall_depth.json").write_text(json.dumps({
        "date": "2026-01-01 10:00", "machine": {"cpu": "CPU", "cores": 2, "loadavg": [1.0]},
        "command": "python bench/bench_recall_depth.py", "depths": [1, 5, 20],
        "data": {"name": "Flickr8k dev", "images": 1000, "queries": 10, "citation": "x"},
        "variants": [{"name": n, "size_mb": 50.0, "bi_encoder": {"R@1": 10.0, "R@5": 30.0, "R@10": 40.0},
                      "by_depth": depth, "image_embed_ms": 5.0, "cross_ms_per_candidate": 1.0}
                     for n in ("fp32", "int8")]}))
    lat = []
    for n in (1000, 10000):
        for store in ("int8", "bit"):
            lat += [{"data": f"synthetic {n}", "n": n, "store": store, "query": q, "p50_ms": 5.0, "p90_ms": 6.0}
                    for q in ("rerank=20", "search rerank=0")]
            lat.append({"data": f"synthetic {n}", "n": n, "store": "numpy float (RAM)", "query": "rerank=20",
                        "p50_ms": 99.0, "p90_ms": 100.0})
            lat += [{"data": f"synthetic {n}", "n": n, "store": "-", "query": q, "p50_ms": 1.0, "p90_ms": 2.0}
                    for q in ("stage: text encoder", "KNN top-20 (vec0 + rescoring)",
                              "stage: cross-encoder on 20 (+ token fetch)", "numpy exact brute force top-20")]
    (d / "runtime.json").write_text(json.dumps({"latency": lat, "bundle": {"origin": "given", "model": "m"}}))
    (d / "export_lite.json").write_text(json.dumps({"model": "lite", "export_wall_s": 60, "report": {
        "sizes": {"onnx/fp32": {"text_encoder": 1.0, "total": 90.0}, "onnx/int8": {"text_encoder": 0.5, "total": 25.0}}}}))
    res = {m: {"t2i": {"R@1": 20.0, "R@5": 45.0, "R@10": 60.0}} for m in ("bi_encoder", "rerank@20")}
    (d / "quantize.json").write_text(json.dumps({
        "date": "2026-01-01T10:00:00+00:00", "command": "python bench/bench_quantize.py --student s",
        "machine": {"cpu_count": 2, "onnxruntime_threads": 1, "note": "shared CPU"},
        "data": {"split": "dev", "n_images": 1000, "queries": {"t2i": 5000}},
        "rows": [{"name": f"{m} {p}", "results": res, "size": {"total_mb": 30.0},
                  "latency_ms": {"rerank@20": 20.0, "bi_encoder": 5.0}}
                 for m in ("teacher", "student") for p in ("fp32", "int8")],
        "summary": {"criteria": {"student int8 bundle <= 1/2 teacher's int8 bundle": False}}}))
    (d / "demo.json").write_text(json.dumps({"wall_s_fresh_cache": 120.0, "queries": [
        {"query": "a cat", "top1": "cat.png", "expected": "cat.png", "correct": True, "cross": 3.0, "bi": 0.3,
         "embed_ms": 5.0, "knn_ms": 1.0, "rerank_ms": 20.0, "total_ms": 27.0}]}))


def test_report_draws_all_figures_and_the_page(tmp_path):
    pytest.importorskip("matplotlib")
    _results(tmp_path / "results")
    rep = _report()
    assert rep.main(["--results", str(tmp_path / "results"), "--shared-results", str(tmp_path / "none"),
                     "--figures", str(tmp_path / "fig"), "--doc", str(tmp_path / "B.md")]) == 0
    figs = sorted(p.name for p in (tmp_path / "fig").glob("*.png"))
    assert figs == ["latency_vs_size.png", "query_stages.png", "recall_vs_depth.png", "variants.png"]
    doc = (tmp_path / "B.md").read_text()
    rt = json.loads((tmp_path / "results" / "runtime.json").read_text())
    series = rep.latency_series(rt)
    assert series["exact numpy search + rerank top 20 (float matrix in RAM)"] == [(1000, 99.0, 100.0), (10000, 99.0, 100.0)]
    assert series["search, rerank top 20 (sqlite-vec)"][0] == (1000, 5.0, 6.0)
    assert series["search, no rerank (sqlite-vec)"][0] == (1000, 5.0, 6.0)
    assert series["exact numpy top-20 only"][0] == (1000, 1.0, 2.0)
    assert len(rep.stage_table(rt)) == 2
    assert all(r["whole search (rerank=20)"] == 5.0 for r in rep.stage_table(rt))
    for needle in ("Hodosh", "published", "arguments not recorded", "| fp32 | 20 |", "cat.png", "120 s",
                   "| student int8 | 30.00 |", "bench_quantize.py --student s", "**no**", "onnx/int8"):
        assert needle in doc, needle


def test_report_prefers_its_own_runs_and_never_writes_the_shared_results(tmp_path):
    pytest.importorskip("matplotlib")
    _results(tmp_path / "shared")
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "demo.json").write_text(json.dumps({"wall_s_fresh_cache": 77.0, "queries": [
        {"query": "a rocket launch", "top1": "rocket_launch.jpg"}]}))
    before = {p.name: p.read_bytes() for p in (tmp_path / "shared").iterdir()}
    rep = _report()
    assert rep.main(["--results", str(tmp_path / "own"), "--shared-results", str(tmp_path / "shared"),
                     "--figures", str(tmp_path / "fig"), "--doc", str(tmp_path / "B.md")]) == 0
    doc = (tmp_path / "B.md").read_text()
    assert "77 s" in doc and "120 s" not in doc and "| fp32 | 20 |" in doc
    assert before == {p.name: p.read_bytes() for p in (tmp_path / "shared").iterdir()}


def test_parse_demo_output():
    rep = _report()
    out = ("\ntext → image: “a cat”\n  embed 4.1 ms · KNN 0.8 ms · rerank 19.5 ms (14 candidates) · total 25.0 ms\n"
           "  1. cross   7.31  bi 0.412  cat.png\n  ✓ expected cat.png first\n")
    q = rep.parse_demo(out, 99.0)["queries"][0]
    assert q == {"query": "a cat", "top1": "cat.png", "cross": 7.31, "bi": 0.412, "expected": "cat.png",
                 "correct": True, "embed_ms": 4.1, "knn_ms": 0.8, "rerank_ms": 19.5, "candidates": 14, "total_ms": 25.0}
