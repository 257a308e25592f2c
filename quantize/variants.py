"""Add quantized variants to an exported bundle, each with its measured accuracy in the manifest.

Variants (manifest key, then what is written):

- ``int8-static`` -> ``onnx/int8-static``: static QDQ int8 (:mod:`quantize.static_int8`), calibrated on
  sample photos and captions; loaded by ``Bundle.load(path, precision="int8-static")``.
- ``coreml-int8`` -> ``coreml/int8``: linear int8 weights (per channel) of the ``coreml/fp16`` packages.
- ``coreml-pal6`` / ``coreml-pal4`` -> ``coreml/pal6`` / ``coreml/pal4``: k-means palettised weights,
  6 / 4 bits (one k-means worker: coremltools 9.0 hangs with more).

Dynamic per-channel int8 (``onnx/int8``, the default) is written by the export itself.

Accuracy facts stored per graph: cosine of the variant's outputs against the bundle's fp32 graphs on
held-out samples (ONNX variants), and when a labelled caption folder is given, the recall table of the
variant against fp32 (``quantize.gate``) under the manifest's top-level ``quantize`` entry. CoreML
packages cannot run on Linux: their entries say so and give the weight compression instead.

The manifest is rewritten with ``mobile_export.bundle.write_manifest`` (every file re-hashed; the model
id, over the fp32 files, does not change).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_xmr.errors import EdgeXmrError

VARIANTS: dict[str, str] = {  # CLI name -> manifest variant
    "int8-static": "onnx/int8-static",
    "coreml-int8": "coreml/int8",
    "coreml-pal6": "coreml/pal6",
    "coreml-pal4": "coreml/pal4",
}
GRAPHS = ("text_encoder", "image_encoder", "cross_encoder")
_STANDARD_KEYS = {"format_version", "created", "model", "files", "graphs", "max_text_len", "tokenizer",
                  "preprocessing", "embedding", "image_tokens", "score", "storage", "index_schema_version", "sizes"}


class VariantError(EdgeXmrError, ValueError):
    """A variant that cannot be made (missing inputs, variant already there, no source packages)."""


def _samples(data: Path | None, split: str | None, images: Sequence[Any] | None, texts: Sequence[str] | None,
             n: int) -> tuple[list[Any], list[str]]:
    if (images is None or texts is None) and data is not None:
        from edge_xmr.data import read_captions

        cs = read_captions(data, split)
        idx = np.random.default_rng(0).permutation(len(cs.images))[: 2 * n]
        images = images if images is not None else [cs.image_paths()[i] for i in sorted(idx)]
        texts = texts if texts is not None else [cs.captions[cs.image_captions()[i][0]] for i in sorted(idx)]
    if images is None:
        raise VariantError("int8-static needs sample photos: pass calib_images (--calib-images) or data (--data)")
    if texts is None:
        from mobile_export.api import SAMPLE_TEXTS

        texts = list(SAMPLE_TEXTS)
    return list(images), list(texts)


def _static(root: Path, images: list[Any], texts: list[str], say: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """onnx/int8-static graphs + their parity with fp32 on the held-out half of the samples."""
    from edge_xmr.bundle import Bundle
    from edge_xmr.preprocess import to_pixels
    from mobile_export import parity
    from mobile_export.bundle import share_weights

    from .static_int8 import calibration_feeds, quantize_static_qdq

    b = Bundle.load(root, precision="fp32")
    half_i, half_t = max(1, len(images) // 2), max(1, len(texts) // 2)
    cal_img, test_img = images[:half_i], images[half_i:] or images[:half_i]
    cal_txt, test_txt = texts[:half_t], texts[half_t:] or texts[:half_t]
    ids, mask = b.tokenizer.encode(cal_txt, b.max_text_len)
    pixels = to_pixels(cal_img, b.manifest["preprocessing"])
    embeds, tokens = b.encode_images(cal_img)
    out = root / "onnx" / "int8-static"
    shutil.rmtree(out, ignore_errors=True)  # a variant being replaced
    out.mkdir(parents=True)
    info: dict[str, Any] = {}
    for g in GRAPHS:
        say(f"int8-static: calibrating and quantizing {g}")
        feeds = calibration_feeds(g, ids, mask, pixels, embeds, tokens, encode_text=lambda i, m: tuple(
            b.session("text_encoder").run(["text_embeds", "text_states"], {"input_ids": i, "attention_mask": m})))
        info[g] = quantize_static_qdq(root / "onnx" / "fp32" / f"{g}.onnx", out / f"{g}.onnx", feeds)
    share_weights([out / f"{g}.onnx" for g in GRAPHS])
    say("int8-static: comparing with fp32 on held-out samples")
    t_ids, t_mask = b.tokenizer.encode(test_txt, b.max_text_len)
    t_px = to_pixels(test_img, b.manifest["preprocessing"])
    fp32 = {g: root / "onnx" / "fp32" / f"{g}.onnx" for g in GRAPHS}
    rep = parity.int8_vs_fp32(fp32, {g: out / f"{g}.onnx" for g in GRAPHS}, t_ids, t_mask, t_px)
    desc = (f"static QDQ int8 (onnxruntime): {', '.join(info['text_encoder']['op_types'])} only, per-channel int8 "
            f"weights, uint8 activations calibrated ({info['text_encoder']['calibration']}) on {len(cal_img)} photos / "
            f"{len(cal_txt)} captions; depthwise / small convs and feed-forward outputs (fc2) in float compute "
            f"with int8 weights; token / position tables as int8 rows")
    graphs = {g: {"path": f"onnx/int8-static/{g}.onnx", "quantization": desc, "static_int8": info[g]} for g in GRAPHS}
    graphs["text_encoder"]["cosine_vs_fp32"] = rep["text_cosine"]
    graphs["image_encoder"]["cosine_vs_fp32"] = rep["image_cosine"]
    graphs["image_encoder"]["token_cosine_vs_fp32"] = rep["token_cosine"]
    graphs["cross_encoder"]["joint_max_abs_diff"] = rep["joint_max_abs_diff"]
    facts = {"parity_vs_fp32": {k: rep[k] for k in ("n_texts", "n_images", "text_cosine", "image_cosine",
                                                   "token_cosine", "retrieval_top10_overlap", "joint_top10_overlap",
                                                   "joint_max_abs_diff")}}
    return graphs, facts


def _coreml(root: Path, variant: str, say: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """CoreML weight compression of the coreml/fp16 packages (coremltools.optimize.coreml)."""
    from mobile_export.coreml_export import require_coreml

    ct = require_coreml()
    from coremltools.optimize import coreml as cto

    src = root / "coreml" / "fp16"
    if not all((src / f"{g}.mlpackage").is_dir() for g in GRAPHS):
        raise VariantError(f"{variant} needs the coreml/fp16 packages: export with --format onnx,coreml")
    kind = variant.split("/")[1]
    if kind == "int8":
        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel"))
        desc = "CoreML linear int8 weights (symmetric, per output channel), fp16 compute"
    else:
        bits = int(kind[3:])
        config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(
            mode="kmeans", nbits=bits, granularity="per_tensor", num_kmeans_workers=1))
        desc = f"CoreML {bits}-bit k-means palettised weights (per tensor), fp16 compute"
    graphs: dict[str, Any] = {}
    for g in GRAPHS:
        say(f"{variant}: compressing {g}")
        model = ct.models.MLModel(str(src / f"{g}.mlpackage"), skip_model_load=True)
        if kind == "int8":
            small = cto.linear_quantize_weights(model, config=config)
        else:
            small = cto.palettize_weights(model, config=config)
        dst = root / "coreml" / kind / f"{g}.mlpackage"
        if dst.exists():
            shutil.rmtree(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        small.save(str(dst))
        graphs[g] = {"path": f"coreml/{kind}/{g}.mlpackage", "quantization": desc,
                     "accuracy": "not measured: CoreML predictions need macOS (run the gate on a Mac)"}
    return graphs, {"note": "CoreML packages run only on Apple platforms; sizes measured, accuracy not"}


def add_variants(bundle: str | Path, variants: Sequence[str], calib_images: Sequence[Any] | None = None,
                 calib_texts: Sequence[str] | None = None, data: str | Path | None = None, split: str | None = None,
                 max_queries: int | None = None, max_samples: int = 128, overwrite: bool = False,
                 progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Add ``variants`` (names of :data:`VARIANTS`) to the bundle folder ``bundle`` in place.

    Args:
        bundle: an exported bundle folder.
        variants: e.g. ``["int8-static", "coreml-pal6"]``.
        calib_images / calib_texts: sample photos and captions (half calibrates, half measures).
        data: a labelled caption folder: photos / captions when none are given, and the recall of each
            ONNX variant against fp32 (``quantize.gate.check``), stored in the manifest.
        split / max_queries: of that recall measurement.
        max_samples: sample photos / captions taken from ``data``.
        overwrite: replace a variant already in the bundle.
        progress: called with one-line progress messages.

    Returns:
        {variant: facts written to the manifest's ``quantize`` entry}.
    """
    from edge_xmr.bundle import read_manifest, verify_files
    from edge_xmr.config import ModelConfig
    from mobile_export.bundle import write_manifest

    say = progress or (lambda s: None)
    root = Path(bundle)
    manifest = read_manifest(root)
    verify_files(root, manifest)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise VariantError(f"unknown variants {unknown}: choose from {', '.join(VARIANTS)}")
    present = set(manifest["graphs"]["text_encoder"]["variants"])
    clash = [v for v in variants if VARIANTS[v] in present]
    if clash and not overwrite:
        raise VariantError(f"{root}: already has {', '.join(VARIANTS[v] for v in clash)} (pass overwrite)")
    all_variants = {v: {g: {k: x for k, x in spec["variants"][v].items() if k not in ("format", "size_mb")}
                        for g, spec in manifest["graphs"].items() if v in spec["variants"]}
                    for v in present}
    facts_all: dict[str, Any] = dict(manifest.get("quantize", {}))
    report: dict[str, dict[str, Any]] = {}
    for v in variants:
        key = VARIANTS[v]
        if key == "onnx/int8-static":
            images, texts = _samples(Path(data) if data else None, split, calib_images, calib_texts, max_samples)
            graphs, facts = _static(root, images, texts, say)
        else:
            graphs, facts = _coreml(root, key, say)
        all_variants[key] = graphs
        report[key] = facts
    cfg = ModelConfig.from_dict(manifest["model"]["config"])
    extra = {k: x for k, x in manifest.items() if k not in _STANDARD_KEYS}
    extra["quantize"] = {**facts_all, **report}
    new = write_manifest(root, cfg, int(manifest["tokenizer"]["pad_id"]), all_variants, manifest["storage"], extra)
    if new["model"]["id"] != manifest["model"]["id"]:
        raise VariantError("the fp32 graphs changed while adding variants (model id differs)")
    if data is not None:
        from .gate import check

        for key in report:
            if not key.startswith("onnx/"):
                continue
            say(f"{key}: recall against fp32 on {data}")
            rep = check(root, root, data, split=split, max_queries=max_queries,
                        candidate_precision=key.split("/", 1)[1])
            report[key]["recall_vs_fp32"] = {"data": str(data), "split": split, "metric": rep.metric,
                                             "fp32": rep.reference_value, "variant": rep.candidate_value,
                                             "drop": rep.drop, "queries": rep.data["n_queries"],
                                             "recalls": rep.recalls}
        extra["quantize"] = {**facts_all, **report}
        write_manifest(root, cfg, int(manifest["tokenizer"]["pad_id"]), all_variants, manifest["storage"], extra)
    for key, facts in report.items():
        facts["size_mb"] = new["sizes"][key]["total"]
    return report
