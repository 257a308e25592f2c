"""Export of the tiny model: every parity check, the bundle layout, the manifest, failures."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from edge_xmr.bundle import Bundle, validate_manifest
from mobile_export import ExportError, export_bundle, parity
from mobile_export.specs import GRAPHS


def test_every_check_passed(export_report):
    assert export_report["ok"]
    checks = export_report["checks"]
    for g in GRAPHS:
        assert checks[f"fp32_parity:{g}"] and checks[f"ort_format:int8:{g}"]
    assert checks["int8_cosine"] and checks["runtime:fp32"] and checks["shared_weights:int8"]
    assert checks["int8_no_saturation"]


def test_fp32_parity_vs_torch_at_several_sizes(tiny_bundle, _tiny_model):
    for name, spec in GRAPHS.items():
        r = parity.torch_vs_onnx(_tiny_model, spec, tiny_bundle / "onnx" / "fp32" / f"{name}.onnx")
        assert r["ok"] and r["max_abs_diff"] <= 1e-4, (name, r)
        assert len(r["runs"]) == len(spec.parity_sizes) >= 2


def test_int8_vs_fp32(tiny_bundle, _tiny_model):
    from edge_xmr.preprocess import to_pixels
    from mobile_export.api import SAMPLE_TEXTS, synthetic_images

    ids, mask = _tiny_model.tokenizer.encode(list(SAMPLE_TEXTS), _tiny_model.cfg.max_text_len)
    px = to_pixels(synthetic_images(24, 32, seed=5), _tiny_model.cfg.image)
    graphs = {p: {g: tiny_bundle / "onnx" / p / f"{g}.onnx" for g in GRAPHS} for p in ("fp32", "int8")}
    r = parity.int8_vs_fp32(graphs["fp32"], graphs["int8"], ids, mask, px)
    assert r["ok"] and r["text_cosine"]["mean"] >= 0.99 and r["image_cosine"]["mean"] >= 0.99
    assert 0 <= r["retrieval_top10_overlap"]["mean"] <= 10 and r["retrieval_top10_overlap"]["k"] == 10


def test_runtime_reproduces_torch_rankings(tiny_bundle, _tiny_model):
    from mobile_export.api import SAMPLE_TEXTS, synthetic_images

    r = parity.runtime_vs_torch(_tiny_model, Bundle.load(tiny_bundle), synthetic_images(20, 32, seed=3),
                                list(SAMPLE_TEXTS), exact=True)
    assert r["ok"] and r["retrieval_same_top10"] == 1.0 and r["rerank_same_top10"] == 1.0


def test_bundle_layout_and_manifest(tiny_bundle, export_report):
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    assert validate_manifest(m) == []
    assert set(m["graphs"]) == set(GRAPHS)
    for g in GRAPHS:
        for v in ("onnx/fp32", "onnx/int8", "ort/fp32", "ort/int8"):
            assert (tiny_bundle / m["graphs"][g]["variants"][v]["path"]).is_file()
    assert "onnx/fp32/shared_weights.bin" in m["files"] and "tokenizer.json" in m["files"]
    assert m["graphs"]["cross_encoder"]["dim_ranges"]["n"][0] == 1
    assert m["sizes"]["onnx/int8"]["total"] > 0 and m["storage"]["token_int8_scale"] > 0
    assert m["model"]["id"] == export_report["model"]["id"]
    assert m["preprocessing"]["size"] == 32 and m["preprocessing"]["channel_order"] == "RGB"


def test_mobile_report(export_report):
    for p in ("fp32", "int8"):
        for g in GRAPHS:
            u = export_report["mobile"][p][g]["usability"]
            for ep in ("NNAPI", "CoreML_MLProgram", "CoreML_NeuralNetwork"):
                assert u[ep]["as_exported"]["suitability"] in ("YES", "MAYBE", "NO")
                assert isinstance(u[ep]["fallback_ops"], list)


def test_shared_weights_store_text_blocks_once(export_report):
    for p in ("fp32", "int8"):
        assert export_report["shared_weights"][p]["tensors"] > 0


def test_failed_check_publishes_nothing(_tiny_model, tmp_path, monkeypatch):
    monkeypatch.setitem(GRAPHS, "image_encoder", replace(GRAPHS["image_encoder"], atol=0.0))
    with pytest.raises(ExportError) as e:
        export_bundle(_tiny_model, tmp_path / "b", fusion="off", mobile=False, threads=1)
    assert "fp32_parity:image_encoder" in str(e.value)
    assert e.value.report["parity_fp32"]["image_encoder"]["ok"] is False
    assert not (tmp_path / "b").exists() and not list(tmp_path.iterdir())


def test_refuses_to_overwrite(tiny_bundle, _tiny_model):
    with pytest.raises(FileExistsError):
        export_bundle(_tiny_model, tiny_bundle)


def test_bad_options(_tiny_model, tmp_path):
    with pytest.raises(ValueError):
        export_bundle(_tiny_model, tmp_path / "b", formats=("tflite",))
    with pytest.raises(ValueError):
        export_bundle(_tiny_model, tmp_path / "b", precisions=("fp16",))


def test_ranking_helpers():
    ref = np.array([0.9, 0.5, 0.50001, 0.1])
    assert parity.same_ranking(ref, np.array([0.9, 0.50002, 0.5, 0.1]), k=4, tol=1e-4)  # near-tie swap
    assert not parity.same_ranking(ref, np.array([0.1, 0.5, 0.6, 0.9]), k=4, tol=1e-4)
    assert parity.topk_overlap(ref[None], ref[None][:, ::-1], k=2) == [0]


def test_fusion_on_ships_fused_graphs(_tiny_model, tmp_path):
    r = export_bundle(_tiny_model, tmp_path / "b", fusion="on", mobile=False, threads=1)
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    for g in ("text_encoder", "cross_encoder"):
        assert r["fusion"][g]["kept"] and r["checks"][f"fp32_parity_fused:{g}"]
        assert r["fusion"][g]["fused_ops"].get("SkipLayerNormalization", 0) > 0 and r["fusion"][g]["speedup"] > 0
        assert m["graphs"][g]["variants"]["onnx/fp32"]["fused"] is True
    assert m["graphs"]["image_encoder"]["variants"]["onnx/fp32"]["fused"] is False
    assert r["runtime"]["fp32"]["ok"]


def test_embedding_id_changes_with_the_encoders_not_with_the_reranker(_tiny_model, tiny_bundle, tmp_path):
    import copy

    import torch

    base = json.loads((tiny_bundle / "manifest.json").read_text())["model"]
    assert len(base["embedding_id"]) == 64 and base["embedding_id"] != base["id"]
    export_bundle(_tiny_model, tmp_path / "same", precisions=("fp32",), fusion="off", mobile=False, threads=1)
    assert json.loads((tmp_path / "same" / "manifest.json").read_text())["model"]["id"] == base["id"]  # reproducible
    sc = _tiny_model.cfg.score
    for name, change in (("weights", lambda m: setattr(m, "cfg", replace(m.cfg, score=replace(
                              sc, photo_hubness=sc.photo_hubness * 0.5, photo_hubness_floor=sc.photo_hubness_floor + 0.1,
                              late_interaction=1.0)))),
                         ("banks", lambda m: m.cross.text_bank.mul_(0.5))):  # what a recalibration changes
        recal = copy.deepcopy(_tiny_model)
        recal.tokenizer = _tiny_model.tokenizer
        with torch.no_grad():
            change(recal)
        export_bundle(recal, tmp_path / name, precisions=("fp32",), fusion="off", mobile=False, threads=1)
        m = json.loads((tmp_path / name / "manifest.json").read_text())["model"]
        assert m["id"] != base["id"] and m["embedding_id"] == base["embedding_id"], name
    other = copy.deepcopy(_tiny_model)
    other.tokenizer = _tiny_model.tokenizer
    with torch.no_grad():  # another image head: the stored vectors would differ
        next(other.image_head.parameters()).add_(0.01)
    export_bundle(other, tmp_path / "other", precisions=("fp32",), fusion="off", mobile=False, threads=1)
    m = json.loads((tmp_path / "other" / "manifest.json").read_text())["model"]
    assert m["embedding_id"] != base["embedding_id"]


def test_image_encoder_with_views_exports_with_parity(_tiny_model, tmp_path):
    import copy

    from mobile_export.onnx_export import export_onnx

    m = copy.deepcopy(_tiny_model)
    m.tokenizer = _tiny_model.tokenizer
    m.cfg = replace(m.cfg, views=((32, False), (40, True)))  # the enlarged mirror view runs inside the graph
    spec = GRAPHS["image_encoder"]
    path = export_onnx(m, spec, tmp_path / "image_encoder.onnx")
    r = parity.torch_vs_onnx(m, spec, path)
    assert r["ok"] and r["max_abs_diff"] <= 1e-4, r
    plain = parity.torch_vs_onnx(_tiny_model, spec, path)  # the graph without the views differs
    assert not plain["ok"]
