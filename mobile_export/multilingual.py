"""Add the multilingual query encoder to a bundle: ONNX fp32 (+ int8), parity, tokenizer, manifest.

The graph ``multilingual/<precision>/text_encoder.onnx`` takes ``input_ids`` / ``attention_mask``
(SentencePiece ids of ``multilingual/tokenizer.json``) and returns ``text_embeds`` (batch, D) in the
SAME space as the bundle's English text encoder. The bundle's ``embedding_id`` is unchanged (the
stored photo vectors do not depend on it: an index built with the English bundle opens with this one);
``model.id`` changes (the bundle answers non-English queries differently).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from edge_xmr.bundle import MANIFEST, read_manifest, sha256_path
from edge_xmr.multilingual import ROUTINGS

from .api import ExportError
from .bundle import size_mb
from .specs import OPSET, GraphSpec, TensorSpec

if TYPE_CHECKING:
    from edge_xmr.model.multilingual import MultilingualStudent

DIR = "multilingual"
COS_MIN_INT8 = 0.99  # int8 vs fp32: least cosine of any sample caption's embedding
INT8_WEIGHT_ONLY = "."  # every MatMul keeps float compute with int8 weights: dynamic (activation) int8 was
# measured at cosine min 0.987 / mean 0.994 on SAMPLE_CAPTIONS (the USE DNN is shallow and wide); weights-only
# stores the same bytes
SAMPLE_CAPTIONS = (  # parity samples in several scripts (the int8 check's texts)
    "A black dog runs through the snow .", "Zwei Kinder spielen am Strand.", "Un hombre monta en bicicleta por la montaña.",
    "Une femme lit un livre dans un café.", "Una ragazza con un cappello rosso.", "Um menino pula na piscina.",
    "Een hond rent over het gras.", "Kobieta w czerwonej sukience.", "Собака бежит по пляжу.", "Köpek parkta koşuyor.",
    "رجل يركب دراجة في الشارع", "एक लड़का पानी में कूद रहा है", "一只黑狗在雪地里奔跑。", "犬が公園を走っている。", "해변에서 뛰는 개",
)


class _Wrapper(nn.Module):
    def __init__(self, student: MultilingualStudent):
        super().__init__()
        self.student = student

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.student(input_ids, attention_mask)  # (batch, D)


def _dummy(cfg: Any, sizes: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    b, L = sizes["batch"], sizes["length"]
    ids = rng.integers(3, cfg.vocab_size, size=(b, L), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 1, 2
    mask = np.ones((b, L), np.int64)
    for i in range(1, b):
        n = max(1, L - (i * 3) % L)
        mask[i, n:], ids[i, n:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


SPEC = GraphSpec(
    name="text_encoder",
    inputs=(TensorSpec("input_ids", "int64", ("batch", "length")),
            TensorSpec("attention_mask", "int64", ("batch", "length"))),
    outputs=(TensorSpec("text_embeds", "float32", ("batch", "D")),),
    wrapper=_Wrapper,  # type: ignore[arg-type]  (a MultilingualStudent, not a JointModel)
    graph=_Wrapper,  # type: ignore[arg-type]  (the student's own ops; no mobile rewrite of it yet)
    dummy=_dummy,
    export_sizes={"batch": 2, "length": 9},
    parity_sizes=({"batch": 1, "length": 3}, {"batch": 3, "length": 7}, {"batch": 8, "length": 20}),
    mobile_sizes={"batch": 1, "length": 32},  # not exported as a mobile variant (docs/multilingual.md)
    opset=OPSET,
    atol=1e-4,
)


def export_student(student: MultilingualStudent, out: Path) -> dict[str, Any]:
    """fp32 ONNX of the student at ``out``, checked against PyTorch at ``SPEC.parity_sizes``."""
    from .onnx_export import export_onnx
    from .parity import session

    export_onnx(student, SPEC, out)  # type: ignore[arg-type]
    sess, diffs = session(out), []
    for i, sizes in enumerate(SPEC.parity_sizes):
        feeds = _dummy(student.cfg, sizes, np.random.default_rng(10 + i))
        with torch.no_grad():
            ref = student(*(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask"))).numpy()
        diffs.append(float(np.abs(sess.run(["text_embeds"], feeds)[0] - ref).max()))
    return {"max_abs_diff": max(diffs), "atol": SPEC.atol, "ok": max(diffs) <= SPEC.atol}


def int8_check(student: MultilingualStudent, fp32: Path, int8: Path) -> dict[str, Any]:
    """Cosine between the int8 and fp32 graphs' embeddings of ``SAMPLE_CAPTIONS``."""
    from .parity import session

    ids, mask = student.tokenizer.encode(list(SAMPLE_CAPTIONS), student.cfg.max_text_len)
    feeds = {"input_ids": ids, "attention_mask": mask}
    a, b = (session(p).run(["text_embeds"], feeds)[0] for p in (fp32, int8))
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"cos_min": float(cos.min()), "cos_mean": float(cos.mean()), "texts": len(cos), "ok": float(cos.min()) >= COS_MIN_INT8}


def add_multilingual(bundle_dir: str | Path, student: MultilingualStudent, precisions: tuple[str, ...] = ("fp32",),
                     routing: str = "auto") -> dict[str, Any]:
    """Write the student into the bundle at ``bundle_dir`` and its ``multilingual`` manifest section.

    Raises:
        ExportError: a parity check failed (the bundle is left as it was).
    """
    from .quantize_int8 import quantize_int8

    if routing not in ROUTINGS:
        raise ValueError(f"routing {routing!r}: expected one of {', '.join(ROUTINGS)}")
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    if student.cfg.embed_dim != manifest["embedding"]["dim"]:
        raise ExportError(f"the student embeds into {student.cfg.embed_dim} dims, the bundle's space has "
                          f"{manifest['embedding']['dim']}", {})
    stage = root / f".{DIR}.partial"
    shutil.rmtree(stage, ignore_errors=True)
    report: dict[str, Any] = {"checks": {}}
    try:
        fp32 = stage / "fp32" / "text_encoder.onnx"
        report["fp32"] = export_student(student.eval(), fp32)
        report["checks"]["multilingual_fp32_parity"] = report["fp32"]["ok"]
        paths = {"onnx/fp32": fp32}
        if "int8" in precisions:
            int8 = stage / "int8" / "text_encoder.onnx"
            q = quantize_int8(fp32, int8, reduce_range=True, weight_only=INT8_WEIGHT_ONLY)
            report["int8"] = {**int8_check(student, fp32, int8), "int16_saturation_risk": q["int16_saturation_risk"],
                              "int8_gather": q["int8_gather"]}
            report["checks"]["multilingual_int8_parity"] = report["int8"]["ok"]
            report["checks"]["multilingual_int8_no_saturation"] = not q["int16_saturation_risk"]
            paths["onnx/int8"] = int8
        student.tokenizer.save(stage / "tokenizer.json")
        failed = [k for k, ok in report["checks"].items() if not ok]
        if failed:
            raise ExportError(f"multilingual export checks failed: {', '.join(failed)} (bundle unchanged)", report)
        shutil.rmtree(root / DIR, ignore_errors=True)
        stage.rename(root / DIR)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    rel = {v: f"{DIR}/{p.relative_to(stage).as_posix()}" for v, p in paths.items()}
    files = {**{k: v for k, v in manifest["files"].items() if not k.startswith(DIR + "/")},
             **{f"{DIR}/{p.relative_to(root / DIR).as_posix()}": sha256_path(p)
                for p in sorted((root / DIR).rglob("*")) if p.is_file()}}
    c = student.cfg
    section = {
        "graph": {"inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "length"]},
                             {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "length"]}],
                  "outputs": [{"name": "text_embeds", "dtype": "float32", "shape": ["batch", c.embed_dim]}],
                  "opset": SPEC.opset, "dim_ranges": {"batch": [1, 256], "length": [1, c.max_text_len]},
                  "variants": {v: {"format": "onnx", "path": p, "size_mb": size_mb(root / p)} for v, p in rel.items()}},
        "tokenizer": {"file": f"{DIR}/tokenizer.json", "pad_id": int(student.tokenizer.pad_id), "kind": "unigram"},
        "max_text_len": c.max_text_len,
        "routing": routing,
        "base": c.base, "teacher": c.teacher, "vocab_size": c.vocab_size, "pruned": bool(c.keep),
        "rerank_terms": ["cosine", "photo_hubness", "text_hubness"],
        "note": "maps a text in any language into the English text encoder's embedding space; gives no token "
                "states, so a query it encodes is reranked without late interaction and the joint pass",
    }
    old_id = manifest["model"]["id"]
    manifest["model"]["english_id"] = manifest["model"].get("english_id", old_id)
    h = hashlib.sha256(manifest["model"]["english_id"].encode())
    for f in sorted(k for k in files if k.startswith(DIR + "/")):
        h.update(f"{f}\0{files[f]}\n".encode())
    h.update(json.dumps({k: section[k] for k in ("routing", "max_text_len")}, sort_keys=True).encode())
    manifest["model"]["id"] = h.hexdigest()
    manifest["files"] = files
    manifest["multilingual"] = section
    manifest["sizes"]["multilingual"] = {v: section["graph"]["variants"][v]["size_mb"] for v in rel}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    report["sizes_mb"] = manifest["sizes"]["multilingual"]
    report["model_id"] = manifest["model"]["id"]
    return report
