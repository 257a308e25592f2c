"""CoreML: what Linux can check (reload, I/O vs the ONNX spec, int8 weights, sizes); predictions on macOS."""

from __future__ import annotations

import builtins
import sys

import numpy as np
import pytest

from mobile_export.specs import GRAPHS

pytestmark = pytest.mark.coreml


def test_clear_error_without_coremltools(monkeypatch):
    from mobile_export import coreml_export

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("coremltools"):
            raise ImportError("no coremltools")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match=r"pip install 'edge-xmr\[coreml\]'"):
        coreml_export.require_coreml()


@pytest.fixture(scope="module")
def image_packages(_tiny_model, tmp_path_factory):
    pytest.importorskip("coremltools", reason="coremltools not installed (pip install 'edge-xmr[coreml]')")
    from mobile_export.coreml_export import export_coreml

    return export_coreml(_tiny_model, GRAPHS["image_encoder"], tmp_path_factory.mktemp("coreml"))


def test_image_encoder_spec_matches_onnx(image_packages, _tiny_model):
    from mobile_export.coreml_export import check_coreml

    for variant, path in image_packages.items():
        r = check_coreml(path, GRAPHS["image_encoder"], _tiny_model.cfg, variant)
        assert r["ok"], r["problems"]
        assert [i["name"] for i in r["inputs"]] == ["pixel_values"] and r["inputs"][0]["dtype"] == "float32"
        assert tuple(r["inputs"][0]["ranges"][0]) == (1, 256)
        assert r["outputs"] == ["image_embeds", "image_tokens"] and r["size_mb"] > 0
    assert check_coreml(image_packages["int8"], GRAPHS["image_encoder"], _tiny_model.cfg, "int8")["dequantize_ops"] > 0


def test_check_detects_a_mismatch(image_packages, _tiny_model):
    from dataclasses import replace

    from mobile_export.coreml_export import check_coreml
    from mobile_export.specs import TensorSpec

    wrong = replace(GRAPHS["image_encoder"], outputs=(TensorSpec("embeds", "float32", ("batch", "D")),))
    r = check_coreml(image_packages["fp16"], wrong, _tiny_model.cfg, "fp16")
    assert not r["ok"] and "names" in r["problems"][0]
    r = check_coreml(image_packages["fp16"], GRAPHS["image_encoder"], _tiny_model.cfg, "int8")
    assert not r["ok"] and "no dequantize ops" in r["problems"][0]


def test_image_encoder_with_views_converts(_tiny_model, tmp_path):
    pytest.importorskip("coremltools", reason="coremltools not installed (pip install 'edge-xmr[coreml]')")
    import copy
    from dataclasses import replace

    from mobile_export.coreml_export import check_coreml, export_coreml

    m = copy.deepcopy(_tiny_model)
    m.cfg = replace(m.cfg, views=((32, False), (40, True)))  # the enlarged mirror view runs inside the graph
    for variant, path in export_coreml(m, GRAPHS["image_encoder"], tmp_path).items():
        r = check_coreml(path, GRAPHS["image_encoder"], m.cfg, variant)
        assert r["ok"], (variant, r["problems"])


@pytest.mark.parametrize("graph", ["text_encoder", "cross_encoder"])
def test_text_and_cross_encoder_convert_at_fixed_shapes(_tiny_model, tmp_path, graph):
    """Every graph converts to CoreML in the default run: text and cross at their mobile variant's fixed
    shapes (fp16; the flexible-shape conversions of the bundle are the slow test below). Checked: I/O
    names, dtypes and shapes against the spec, and the MIL op types (no CPU-only custom layers)."""
    pytest.importorskip("coremltools", reason="coremltools not installed (pip install 'edge-xmr[coreml]')")
    from mobile_export.coreml_export import check_coreml, export_coreml

    spec, cfg = GRAPHS[graph], _tiny_model.cfg
    fixed = spec.fixed_sizes(cfg)
    path = export_coreml(_tiny_model, spec, tmp_path, ("fp16",), fixed=fixed)["fp16"]
    r = check_coreml(path, spec, cfg, "fp16", fixed=fixed)
    assert r["ok"], r["problems"]
    want = {t.name: ("int32" if t.dtype == "int64" else "float32", [(d, d) for d in spec.concrete_shape(t, cfg)])
            for t in spec.inputs}
    got = {i["name"]: (i["dtype"], i["ranges"]) for i in r["inputs"]}
    fill = {k: v for k, v in fixed.items()}
    assert got == {k: (dt, [(fill.get(a, a), fill.get(b, b)) for a, b in dims]) for k, (dt, dims) in want.items()}
    assert r["outputs"] == [t.name for t in spec.outputs]
    assert {"matmul", "softmax", "layer_norm"} <= set(r["op_types"]) or {"linear", "softmax"} <= set(r["op_types"])
    assert not [op for op in r["op_types"] if op.startswith("custom")]


@pytest.mark.slow
def test_text_and_cross_encoder_specs(_tiny_model, tmp_path):
    pytest.importorskip("coremltools")
    from mobile_export.coreml_export import check_coreml, export_coreml

    for g in ("text_encoder", "cross_encoder"):
        for v, path in export_coreml(_tiny_model, GRAPHS[g], tmp_path).items():
            r = check_coreml(path, GRAPHS[g], _tiny_model.cfg, v)
            assert r["ok"], (g, v, r["problems"])
            first = r["inputs"][0]
            assert first["name"] == GRAPHS[g].inputs[0].name
            assert first["ranges"][-2 if g == "cross_encoder" else -1] == (1, _tiny_model.cfg.max_text_len)


@pytest.mark.macos
@pytest.mark.skipif(sys.platform != "darwin",
                    reason="CoreML predictions need macOS: coremltools cannot run models on Linux")
def test_coreml_predictions_match_onnx(image_packages, tiny_bundle, _tiny_model):  # pragma: no cover - macOS
    import coremltools as ct

    from mobile_export import parity

    px = GRAPHS["image_encoder"].dummy(_tiny_model.cfg, {"batch": 2}, np.random.default_rng(0))
    ref = parity.session(tiny_bundle / "onnx" / "fp32" / "image_encoder.onnx").run(None, px)
    for variant, path in image_packages.items():
        out = ct.models.MLModel(str(path)).predict(px)
        cos = parity._cos_rows(ref[0], out["image_embeds"])
        assert cos.min() > 0.99, (variant, cos)

