"""Quantized variants added to a bundle: files, manifest, measured accuracy, loading, CLI errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def bundle(toy_teacher_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(toy_teacher_bundle, tmp_path / "bundle"))


def test_static_int8_variant(bundle, toy_data):
    from edge_xmr.bundle import Bundle, read_manifest, verify_files
    from quantize.variants import VariantError, add_variants

    before = read_manifest(bundle)
    rep = add_variants(bundle, ["int8-static"], data=toy_data, split="all")
    m = read_manifest(bundle)
    verify_files(bundle, m)  # every file re-hashed
    assert m["model"]["id"] == before["model"]["id"]
    assert set(m["sizes"]) == {"onnx/fp32", "mobile/fp32", "onnx/int8", "onnx/int8-static"}
    v = m["graphs"]["text_encoder"]["variants"]["onnx/int8-static"]
    assert v["path"] == "onnx/int8-static/text_encoder.onnx" and "static QDQ int8" in v["quantization"]
    assert v["cosine_vs_fp32"]["mean"] > 0.98
    q = m["quantize"]["onnx/int8-static"]
    assert q["recall_vs_fp32"]["metric"] == "rerank@20.t2i.R@1" and "recalls" in q["recall_vs_fp32"]
    assert rep["onnx/int8-static"]["size_mb"] == m["sizes"]["onnx/int8-static"]["total"]
    b = Bundle.load(bundle, precision="int8-static")
    assert b.embed_texts(["a red photo"]).shape == (1, 16)
    with pytest.raises(VariantError, match="already has onnx/int8-static"):
        add_variants(bundle, ["int8-static"], data=toy_data, split="all")


def test_static_int8_needs_photos(bundle):
    from quantize.variants import VariantError, add_variants

    with pytest.raises(VariantError, match="needs sample photos"):
        add_variants(bundle, ["int8-static"])


def test_float_nodes_rule():
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from quantize.static_int8 import float_nodes

    w_big = numpy_helper.from_array(np.zeros((64, 16, 3, 3), np.float32), "w_big")
    w_small = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w_small")
    w_dw = numpy_helper.from_array(np.zeros((64, 1, 3, 3), np.float32), "w_dw")
    m_w = numpy_helper.from_array(np.zeros((16, 16), np.float32), "m_w")
    nodes = [helper.make_node("Conv", ["x", "w_big"], ["y1"], name="big"),
             helper.make_node("Conv", ["x", "w_small"], ["y2"], name="small"),
             helper.make_node("Conv", ["x", "w_dw"], ["y3"], name="dw", group=64),
             helper.make_node("MatMul", ["z", "m_w"], ["y4"], name="/blocks.0/fc2/MatMul"),
             helper.make_node("MatMul", ["z", "m_w"], ["y5"], name="/blocks.0/fc1/MatMul")]
    g = helper.make_graph(nodes, "g", [], [], initializer=[w_big, w_small, w_dw, m_w])
    assert float_nodes(onnx.helper.make_model(g), r"/fc2/") == ["small", "dw", "/blocks.0/fc2/MatMul"]


def test_quantize_cli_errors(bundle, tmp_path):
    def run(*a: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edge_xmr.cli", "quantize", *a], capture_output=True,
                              text=True, cwd=REPO, timeout=120)

    p = run("--bundle", str(bundle), "--variant", "int3")
    assert p.returncode == 2 and "--variant 'int3': choose from int8-static" in p.stderr
    p = run("--bundle", str(tmp_path / "nobundle"))
    assert p.returncode == 2 and "not a bundle folder" in p.stderr
    p = run("--bundle", str(bundle), "--variant", "int8-static")
    assert p.returncode == 2 and "needs sample photos" in p.stderr
    m = json.loads((bundle / "manifest.json").read_text())
    assert "onnx/int8-static" not in m["sizes"]  # nothing half-written into the manifest


@pytest.mark.slow
@pytest.mark.coreml
def test_coreml_palettised_variant(toy_teacher, tmp_path):
    pytest.importorskip("coremltools")
    from edge_xmr.bundle import read_manifest, verify_files
    from mobile_export import export_bundle
    from quantize.variants import add_variants

    root = tmp_path / "b"
    export_bundle(toy_teacher[0], root, formats=("onnx", "coreml"), precisions=("fp32",), fusion="off",
                  mobile=False, threads=1)
    add_variants(root, ["coreml-pal6"])
    m = read_manifest(root)
    verify_files(root, m)
    assert m["sizes"]["coreml/pal6"]["total"] <= m["sizes"]["coreml/fp16"]["total"]
    assert "macOS" in m["graphs"]["cross_encoder"]["variants"]["coreml/pal6"]["accuracy"]
