"""Parity checks run at the end of every export (each returns a report dict with ``ok``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .specs import GraphSpec

if TYPE_CHECKING:
    from edge_xmr.bundle import Bundle
    from edge_xmr.model import JointModel

INT8_MIN_COSINE = 0.99  # mean cosine int8 vs fp32 on embeddings
TOP_K = 10


# CPU features that decide which onnxruntime int8 kernels run (x86: VNNI or not; ARM: dot products)
ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddot", "i8mm")


def cpu_isa() -> dict[str, Any]:
    """The machine and the int8-relevant CPU features of this machine (Linux /proc/cpuinfo; elsewhere
    the machine name only), recorded next to every int8 figure the export measures."""
    import platform

    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        pass
    return {"machine": platform.machine(), "features": [x for x in ISA_FLAGS if x in flags]}


def session(path: str | Path, threads: int | None = None) -> Any:
    """A CPU onnxruntime session (``threads`` intra-op threads; None: onnxruntime's default)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def torch_vs_onnx(model: JointModel, spec: GraphSpec, path: str | Path, seed: int = 1,
                  threads: int | None = None) -> dict[str, Any]:
    """Max abs diff of every output, ONNX vs PyTorch, at each of ``spec.parity_sizes``."""
    import torch

    sess = session(path, threads)
    module = spec.wrapper(model).eval()
    rng = np.random.default_rng(seed)
    worst, runs = 0.0, []
    for sizes in spec.parity_sizes:
        feeds = spec.dummy(model.cfg, sizes, rng)
        with torch.no_grad():
            ref = module(*[torch.from_numpy(feeds[t.name]) for t in spec.inputs])
        refs = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
        got = sess.run([t.name for t in spec.outputs], feeds)
        diff = 0.0
        for r, g, t in zip(refs, got, spec.outputs):
            if r.shape != g.shape:
                raise AssertionError(f"{spec.name}: output {t.name} has shape {g.shape}, PyTorch {r.shape}")
            diff = max(diff, float(np.abs(r - g).max()) if r.size else 0.0)
        runs.append({**sizes, "max_abs_diff": diff})
        worst = max(worst, diff)
    return {"max_abs_diff": worst, "atol": spec.atol, "ok": worst <= spec.atol, "runs": runs}


def pad_to(spec: GraphSpec, feeds: dict[str, np.ndarray], fixed: dict[str, int]) -> dict[str, np.ndarray]:
    """Inputs padded with zeros along their dynamic dims to the mobile variant's sizes ``fixed`` (padded
    tokens have mask 0, padded candidates and batch rows are ignored)."""
    out = {}
    for t in spec.inputs:
        x = feeds[t.name]
        pad = [(0, fixed[d] - x.shape[i]) if d in fixed else (0, 0) for i, d in enumerate(t.shape)]
        out[t.name] = np.pad(x, pad)
    return out


def cut_to(spec: GraphSpec, outputs: Sequence[np.ndarray], sizes: dict[str, int]) -> list[np.ndarray]:
    """A mobile variant's outputs cut back to the unpadded ``sizes`` along their dynamic dims."""
    return [x[tuple(slice(0, sizes[d]) if d in sizes else slice(None) for d in t.shape)]
            for x, t in zip(outputs, spec.outputs)]


def fixed_vs_torch(model: JointModel, spec: GraphSpec, path: str | Path, fixed: dict[str, int], seed: int = 3,
                   threads: int | None = None) -> dict[str, Any]:
    """The mobile variant at ``path`` (shapes ``fixed``) vs the model's own method: inputs at each of
    ``spec.parity_sizes`` that fits (and at ``fixed`` itself), padded to ``fixed``, outputs cut back;
    max abs diff of every output within ``spec.atol``."""
    import torch

    sess = session(path, threads)
    module = spec.wrapper(model).eval()
    rng = np.random.default_rng(seed)
    runs, worst = [], 0.0
    for sizes in [s for s in spec.parity_sizes if all(s[d] <= fixed[d] for d in s)] + [fixed]:
        feeds = spec.dummy(model.cfg, sizes, rng)
        with torch.no_grad():
            ref = module(*[torch.from_numpy(feeds[t.name]) for t in spec.inputs])
        refs = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
        got = cut_to(spec, sess.run([t.name for t in spec.outputs], pad_to(spec, feeds, fixed)), sizes)
        diff = max(float(np.abs(r - g).max()) if r.size else 0.0 for r, g in zip(refs, got))
        runs.append({**sizes, "max_abs_diff": diff})
        worst = max(worst, diff)
    return {"max_abs_diff": worst, "atol": spec.atol, "ok": worst <= spec.atol, "runs": runs}


def onnx_vs_onnx(spec: GraphSpec, cfg: Any, a: str | Path, b: str | Path, seed: int = 2,
                 threads: int | None = None, fixed: dict[str, int] | None = None) -> dict[str, float]:
    """Two versions of one graph on the spec's parity sizes (two fixed-shape versions: at their sizes
    ``fixed``): ``max_abs_diff`` and ``min_cosine`` (per row of 2-D+ outputs; 1-D outputs, the
    cross-encoder scores, pooled over all sizes)."""
    sa, sb = session(a, threads), session(b, threads)
    rng = np.random.default_rng(seed)
    worst, cos = 0.0, 1.0
    flat: list[tuple[np.ndarray, np.ndarray]] = []
    for sizes in (fixed,) if fixed else spec.parity_sizes:
        feeds = spec.dummy(cfg, sizes, rng)
        for x, y in zip(sa.run(None, feeds), sb.run(None, feeds)):
            worst = max(worst, float(np.abs(x - y).max()) if x.size else 0.0)
            if x.ndim == 1:
                flat.append((x, y))
            elif x.size:
                cos = min(cos, float(_cos_rows(x, y).min()))
    if flat:
        x, y = np.concatenate([f[0] for f in flat]), np.concatenate([f[1] for f in flat])
        cos = min(cos, float(_cos_rows(x[None], y[None]).min()))
    return {"max_abs_diff": worst, "min_cosine": round(cos, 6)}


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def _cos_stats(c: np.ndarray) -> dict[str, float]:
    return {"mean": round(float(c.mean()), 5), "min": round(float(c.min()), 5),
            "p1": round(float(np.percentile(c, 1)), 5)}


def topk_overlap(ref: np.ndarray, got: np.ndarray, k: int = TOP_K) -> list[int]:
    """Per row, how many of ``ref``'s top-k items are in ``got``'s top-k."""
    k = min(k, ref.shape[1])
    a, b = np.argsort(-ref, axis=1)[:, :k], np.argsort(-got, axis=1)[:, :k]
    return [len(set(x) & set(y)) for x, y in zip(a.tolist(), b.tolist())]


def same_ranking(ref: np.ndarray, got: np.ndarray, k: int, tol: float) -> bool:
    """Top-k orders agree, allowing swaps of items whose reference scores are within ``tol``."""
    k = min(k, len(ref))
    a, b = np.argsort(-ref, kind="stable")[:k], np.argsort(-got, kind="stable")[:k]
    return all(x == y or abs(ref[x] - ref[y]) <= tol for x, y in zip(a, b))


def encode_all(text_sess: Any, image_sess: Any, ids: np.ndarray, mask: np.ndarray,
               pixels: np.ndarray, batch: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.concatenate([text_sess.run(["text_embeds"], {"input_ids": ids[i:i + batch],
                                                         "attention_mask": mask[i:i + batch]})[0]
                        for i in range(0, len(ids), batch)])
    e, k = zip(*[image_sess.run(None, {"pixel_values": pixels[i:i + batch]}) for i in range(0, len(pixels), batch)])
    return t, np.concatenate(e), np.concatenate(k)


def joint_terms(text_sess: Any, sess: Any, ids: np.ndarray, mask: np.ndarray, q: int, tokens: np.ndarray,
                embeds: np.ndarray) -> np.ndarray:
    """Caption ``q`` through the text encoder, then its states against every candidate: the joint pass's
    term (the cross_encoder graph)."""
    n = max(1, int(mask[q].sum()))
    m = mask[q:q + 1, :n]
    emb, states = text_sess.run(["text_embeds", "text_states"], {"input_ids": ids[q:q + 1, :n], "attention_mask": m})
    return sess.run(None, {"text_states": states, "attention_mask": m, "text_embeds": emb,
                           "image_tokens": tokens, "image_embeds": embeds})[0]


def int8_vs_fp32(fp32: dict[str, Path], int8: dict[str, Path], ids: np.ndarray, mask: np.ndarray,
                 pixels: np.ndarray, n_rerank: int = 8, fp32_outputs: tuple[np.ndarray, ...] | None = None,
                 threads: int | None = None) -> dict[str, Any]:
    """int8 graphs vs fp32 graphs on sample captions (ids/mask) and photos (pixels).

    Embedding cosines (gate: mean >= 0.99 for text and image embeddings), top-10 overlap of a
    text->image retrieval over the photos, and differences / top-10 overlap of the joint pass's term
    (the cross_encoder graph) over all photos for the first ``n_rerank`` captions.
    """
    s32 = {g: session(p, threads) for g, p in fp32.items()}
    s8 = {g: session(p, threads) for g, p in int8.items()}
    t32, e32, k32 = fp32_outputs or encode_all(s32["text_encoder"], s32["image_encoder"], ids, mask, pixels)
    t8, e8, k8 = encode_all(s8["text_encoder"], s8["image_encoder"], ids, mask, pixels)
    text_cos, img_cos, tok_cos = _cos_rows(t32, t8), _cos_rows(e32, e8), _cos_rows(k32, k8)
    overlap = topk_overlap(t32 @ e32.T, t8 @ e8.T)
    diffs, rer = [], []
    for q in range(min(n_rerank, len(ids))):
        a = joint_terms(s32["text_encoder"], s32["cross_encoder"], ids, mask, q, k32, e32)
        b = joint_terms(s8["text_encoder"], s8["cross_encoder"], ids, mask, q, k8, e8)
        diffs.append(float(np.abs(a - b).max()))
        rer.append(topk_overlap(a[None], b[None])[0])
    ok = text_cos.mean() >= INT8_MIN_COSINE and img_cos.mean() >= INT8_MIN_COSINE
    return {
        "ok": bool(ok), "min_cosine": INT8_MIN_COSINE, "n_texts": len(ids), "n_images": len(pixels),
        "cpu": cpu_isa(),
        "text_cosine": _cos_stats(text_cos), "image_cosine": _cos_stats(img_cos),
        "token_cosine": _cos_stats(tok_cos),
        "retrieval_top10_overlap": {"mean": round(float(np.mean(overlap)), 3), "min": int(min(overlap)),
                                    "k": min(TOP_K, len(pixels))},
        "joint_top10_overlap": {"mean": round(float(np.mean(rer)), 3), "min": int(min(rer))} if rer else None,
        "joint_max_abs_diff": round(max(diffs), 5) if diffs else None,
    }


def torch_reference(model: JointModel, images: Sequence[Any], texts: Sequence[str],
                    n_rerank: int = 8) -> dict[str, Any]:
    """What the PyTorch model says about the samples (reused across the bundle's precisions)."""
    te, (ie, it) = model.embed_texts(list(texts)), model.encode_images(list(images))
    scores = [model.score_encoded(texts[q], it, ie) for q in range(min(n_rerank, len(texts)))]
    return {"text": te, "image": ie, "tokens": it, "scores": scores}


def runtime_vs_torch(model: JointModel, bundle: Bundle, images: Sequence[Any], texts: Sequence[str],
                     exact: bool, n_rerank: int = 8, tol: float = 1e-4,
                     reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """The torch-free runtime (``edge_xmr.bundle.Bundle``) vs the PyTorch model on captions and photos.

    exact (fp32): embeddings within ``tol``, and the text->image top-10 rankings and the cross-encoder
    rerank rankings are the same (items whose reference scores differ by <= tol may swap).
    Otherwise (int8) only the overlaps are reported.
    """
    ref_ = reference or torch_reference(model, images, texts, n_rerank)
    te, ie, it = ref_["text"], ref_["image"], ref_["tokens"]
    be, (bie, bit) = bundle.embed_texts(texts), bundle.encode_images(images)
    ref, got = te @ ie.T, be @ bie.T
    same = [same_ranking(r, g, TOP_K, tol) for r, g in zip(ref, got)]
    rer_same, rer_diff, rer_ov = [], [], []
    for q, a in enumerate(ref_["scores"][:n_rerank]):
        b = bundle.score_candidates(texts[q], bit, bie)
        rer_diff.append(float(np.abs(a - b).max()))
        rer_same.append(same_ranking(a, b, TOP_K, tol))
        rer_ov.append(topk_overlap(a[None], b[None])[0])
    emb_diff = max(float(np.abs(te - be).max()), float(np.abs(ie - bie).max()), float(np.abs(it - bit).max()))
    report = {
        "n_texts": len(texts), "n_images": len(images), "embedding_max_abs_diff": emb_diff,
        "retrieval_same_top10": round(float(np.mean(same)), 4),
        "retrieval_top10_overlap": round(float(np.mean(topk_overlap(ref, got))), 3),
        "rerank_same_top10": round(float(np.mean(rer_same)), 4) if rer_same else None,
        "rerank_top10_overlap": round(float(np.mean(rer_ov)), 3) if rer_ov else None,
        "rerank_score_max_abs_diff": max(rer_diff) if rer_diff else None,
    }
    report["ok"] = bool(not exact or (emb_diff <= tol and all(same) and all(rer_same)
                                      and max(rer_diff, default=0.0) <= tol))
    return report
