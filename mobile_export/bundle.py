"""Bundle writing: shared weight storage, int8 storage scales, file hashes, sizes and the manifest."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge_xmr.bundle import FORMAT_VERSION, MANIFEST, sha256_path
from edge_xmr.index.schema import SCHEMA_VERSION as INDEX_SCHEMA_VERSION

from .specs import GRAPHS

SHARED_WEIGHTS = "shared_weights.bin"
_ALIGN = 64


def share_weights(graph_files: list[Path], out_name: str = SHARED_WEIGHTS, min_bytes: int = 1024) -> dict[str, Any]:
    """Store each weight that appears more than once (in one graph or across graphs) ONCE, in
    ``out_name`` next to the graphs, as ONNX external data; the graphs reference it by offset.

    The text encoder and the cross-encoder run the same text blocks, so this halves their storage.
    Identity is by content (dtype, shape, bytes), so it also catches identical int8 weights.
    Returns ``{"file", "tensors", "mb", "saved_mb"}``.
    """
    models = [onnx.load(str(p)) for p in graph_files]
    folder = graph_files[0].parent
    seen: dict[bytes, list[onnx.TensorProto]] = {}
    order: list[bytes] = []
    for m in models:
        for t in m.graph.initializer:
            if not t.HasField("raw_data") or len(t.raw_data) < min_bytes:
                continue
            key = hashlib.sha256(bytes([t.data_type]) + str(list(t.dims)).encode() + t.raw_data).digest()
            if key not in seen:
                seen[key] = []
                order.append(key)
            seen[key].append(t)
    shared = [k for k in order if len(seen[k]) > 1]
    if not shared:
        return {"file": None, "tensors": 0, "mb": 0.0, "saved_mb": 0.0}
    offset, saved = 0, 0
    with open(folder / out_name, "wb") as fh:
        for k in shared:
            tensors = seen[k]
            data = tensors[0].raw_data
            pad = (-offset) % _ALIGN
            fh.write(b"\0" * pad)
            offset += pad
            fh.write(data)
            for t in tensors:
                t.ClearField("raw_data")
                t.data_location = onnx.TensorProto.EXTERNAL
                del t.external_data[:]
                for key, value in (("location", out_name), ("offset", str(offset)), ("length", str(len(data)))):
                    entry = t.external_data.add()
                    entry.key, entry.value = key, value
            saved += len(data) * (len(tensors) - 1)
            offset += len(data)
    for m, p in zip(models, graph_files):
        onnx.save(m, str(p))
    return {"file": out_name, "tensors": len(shared), "mb": round(offset / 1e6, 3), "saved_mb": round(saved / 1e6, 3)}


def storage_scales(embeds: np.ndarray, tokens: np.ndarray, percentile: float = 99.9) -> dict[str, Any]:
    """int8 storage scales for the index: scale = 127 / (``percentile`` of |x|), so q = round(x * scale)
    uses the int8 range (sqlite-vec's 'unit' scaling would waste it on unit vectors)."""
    def scale(x: np.ndarray) -> float:
        hi = float(np.percentile(np.abs(x), percentile)) if x.size else 1.0
        return round(127.0 / max(hi, 1e-6), 4)

    return {"embedding_int8_scale": scale(embeds), "token_int8_scale": scale(tokens),
            "percentile": percentile, "formula": "q = clip(round(x * scale), -127, 127); x ~ q / scale"}


def file_hashes(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file in the bundle (an .mlpackage counts as one entry)."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if rel.as_posix() == MANIFEST or any(part.endswith(".mlpackage") for part in rel.parts[:-1]):
            continue
        if p.is_dir() and p.suffix == ".mlpackage":
            out[rel.as_posix()] = sha256_path(p)
        elif p.is_file():
            out[rel.as_posix()] = sha256_path(p)
    return out


def size_mb(path: Path) -> float:
    n = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    return round(n / 1e6, 3)


def variant_sizes(root: Path, variants: dict[str, dict[str, str]]) -> dict[str, dict[str, float]]:
    """{variant: {graph: MB, shared_weights: MB (if any), total: MB}}; MB = 10^6 bytes."""
    out: dict[str, dict[str, float]] = {}
    for v, paths in variants.items():
        sizes = {g: size_mb(root / p) for g, p in paths.items()}
        shared = (root / paths[next(iter(paths))]).parent / SHARED_WEIGHTS
        if v.startswith("onnx/") and shared.is_file():
            sizes["shared_weights"] = size_mb(shared)
        sizes["total"] = round(sum(sizes.values()), 3)
        out[v] = sizes
    return out


def model_id(root: Path, score: dict[str, Any]) -> str:
    """sha256 over the fp32 ONNX files (graphs + shared weights), tokenizer.json and the score's data file,
    in path order, and the score's weights (``score``: a ScoreConfig dict)."""
    h = hashlib.sha256()
    files = sorted(p for p in (root / "onnx" / "fp32").rglob("*") if p.is_file()) + [root / "tokenizer.json"]
    for f in files + [root / SCORE_DATA]:
        h.update(f"{f.relative_to(root).as_posix()}\0{sha256_path(f)}\n".encode())
    h.update(json.dumps(score, sort_keys=True).encode())
    return h.hexdigest()


SCORE_DATA = "score.npz"  # the arrays the runtime computes the score's non-graph terms from
SCORE_ARRAYS = {  # name -> what it is (docs/bundle.md)
    "li_weight": "(Dt, W) float32: late interaction's projection of the text's final states",
    "li_bias": "(Dt,) float32: its bias",
    "text_bank": "(Kt, D) float32: training-caption embeddings, the bank of the photo's hubness (may be empty)",
    "image_bank": "(Ki, D) float32: training-photo embeddings, the bank of the text's hubness (may be empty)",
}


def write_score_data(root: Path, model: Any) -> Path:
    """``score.npz`` (``SCORE_ARRAYS``), written byte-for-byte reproducibly (fixed zip timestamps), so
    re-exporting a model gives the same model id."""
    import io
    import zipfile

    c = model.cross
    arrays = {"li_weight": c.li_text.weight, "li_bias": c.li_text.bias, "text_bank": c.text_bank,
              "image_bank": c.image_bank}
    out = root / SCORE_DATA
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, t in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(t.detach().float().numpy()), allow_pickle=False)
            z.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())
    return out


def score_section(cfg: Any) -> dict[str, Any]:
    """The manifest's ``score``: the weights (ScoreConfig), the data file and how the terms are computed."""
    return {
        "config": cfg.score.to_dict(),
        "data": SCORE_DATA,
        "arrays": dict(SCORE_ARRAYS),
        "formula": "score = cosine*cos(t, e) + late_interaction*LI - photo_hubness*hub_e - text_hubness*hub_t "
                   "+ joint*J; higher = better, comparable across candidates of one query",
        "terms": {
            "cos": "text_embeds . image_embeds",
            "LI": "mean over the text's tokens i of max over image tokens j of cos(unit(li_weight @ h_i + li_bias), "
                  "image_tokens_j); h = text_states[-1] (the final states)",
            "hub_e": "max(logsumexp(hubness_temperature * image_embeds @ text_bank.T), photo_hubness_floor); "
                     "0 for an empty bank",
            "hub_t": "max(logsumexp(hubness_temperature * text_embeds @ image_bank.T), text_hubness_floor); "
                     "0 for an empty bank",
            "J": "the cross_encoder graph's output 'joint' (the joint-attention pass); run only when joint != 0",
        },
    }


EMBEDDING_GRAPHS = ("text_encoder", "image_encoder")  # what the vectors stored in an index depend on


def embedding_id(root: Path, preprocessing: dict[str, Any], max_text_len: int) -> str:
    """sha256 of what an index's stored vectors depend on: the fp32 text and image encoders (operators,
    I/O and every weight), tokenizer.json, the preprocessing and the text length.

    Two bundles that differ only in the cross-encoder (a recalibrated or retrained reranker) share
    it, so an index built with one stays valid for the other. Node and weight names are left out
    (the exporter may number them differently); weights are hashed by content, in graph order.
    """
    h = hashlib.sha256()
    for g in EMBEDDING_GRAPHS:
        m = onnx.load(str(root / "onnx" / "fp32" / f"{g}.onnx"))  # with its external weights
        h.update(f"graph {g}\n".encode())
        for v in (*m.graph.input, *m.graph.output):
            h.update(f"io {v.name} {v.type.SerializeToString().hex()}\n".encode())
        for t in m.graph.initializer:
            h.update(f"w {t.data_type} {list(t.dims)} ".encode() + numpy_helper.to_array(t).tobytes())
        for n in m.graph.node:
            h.update(f"op {n.domain}:{n.op_type} {len(n.input)} {len(n.output)}\n".encode())
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    h.update(numpy_helper.to_array(a.t).tobytes())
                elif a.type not in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                    h.update(f"{a.name}={helper.get_attribute_value(a)!r}\n".encode())
    h.update(sha256_path(root / "tokenizer.json").encode())
    h.update(json.dumps({"preprocessing": preprocessing, "max_text_len": max_text_len}, sort_keys=True).encode())
    return h.hexdigest()


def write_tokenizer(path: Path, tokenizer: Any, max_text_len: int) -> Path:
    """``tokenizer.json`` with its ``truncation`` set to the bundle's rule, so a port that encodes with the
    Hugging Face ``tokenizers`` library as the file says gets the ids of the runtime (which truncates
    itself, ``edge_xmr.tokenizer``); the conformance kit checks the two agree."""
    tokenizer.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    data["truncation"] = {"direction": "Right", "max_length": int(max_text_len), "strategy": "LongestFirst",
                          "stride": 0}
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def write_manifest(root: Path, cfg: Any, tokenizer_pad_id: int, variants: dict[str, dict[str, Any]],
                   storage: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hash every file and write ``manifest.json``; returns the manifest.

    ``variants``: {variant ("onnx/fp32", "onnx/int8", "ort/fp32", "coreml/fp16", ...):
    {graph: {"path": relative path, **accuracy/other facts}}}.
    """
    sizes = variant_sizes(root, {v: {g: info["path"] for g, info in gs.items()} for v, gs in variants.items()})
    graphs: dict[str, Any] = {}
    for name, spec in GRAPHS.items():
        io = spec.io(cfg)
        graphs[name] = {
            **io,
            "opset": spec.opset,
            "dim_ranges": {k: list(v) for k, v in spec.dim_ranges(cfg).items()
                           if any(k in t["shape"] for t in io["inputs"])},
            "variants": {v: {"format": v.split("/")[0], **gs[name], "size_mb": sizes[v][name]}
                         for v, gs in variants.items() if name in gs},
        }
    from edge_xmr.preprocess import CONTRACT

    img = cfg.image
    preprocessing = {"size": img.size, "resize": "squash", "interpolation": "bicubic",
                     "mean": list(img.mean), "std": list(img.std), "channel_order": "RGB",
                     "value_range": [0, 1], "layout": "NCHW", "exif_orientation": True,
                     "formula": "x = (rgb / 255 - mean) / std after resizing the whole image to size x size",
                     "steps": CONTRACT, "conformance": "conformance/ (cases.json, expected.npz, check.py)"}
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": cfg.name, "base": cfg.base, "config": cfg.to_dict(), "id": model_id(root, cfg.score.to_dict()),
                  "embedding_id": embedding_id(root, preprocessing, cfg.max_text_len)},
        "files": file_hashes(root),
        "graphs": graphs,
        "max_text_len": cfg.max_text_len,
        "tokenizer": {"file": "tokenizer.json", "pad_id": int(tokenizer_pad_id),
                      "truncation": "keep the first max_text_len - 1 tokens and the final special token (for "
                                    "tokenizer.json's template, what its own 'truncation' entry does: "
                                    "max_length = max_text_len, right side, specials kept)"},
        "preprocessing": preprocessing,
        "embedding": {"dim": cfg.embed_dim, "metric": "cosine", "normalized": True},
        "image_tokens": {"count": cfg.n_image_tokens, "dim": cfg.token_dim},
        "score": score_section(cfg),
        "storage": storage,
        "index_schema_version": INDEX_SCHEMA_VERSION,
        "sizes": sizes,
    }
    if extra:
        manifest.update(extra)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
