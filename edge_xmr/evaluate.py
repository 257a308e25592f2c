"""Retrieval evaluation: bi-encoder, retrieve-and-rerank at several depths, cross-encoder over all.

Works with any encoder that has ``embed_texts``, ``encode_images``, ``encode_texts`` / ``encode_query``
(one text pass: the embedding and what the rerank score reuses) and ``score_encoded`` (the PyTorch
``JointModel`` and the torch-free runtime ``Bundle`` both do). Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .data import CaptionSet, DataError

KS = (1, 5, 10)


def ranks_of_targets(order: npt.NDArray[np.int64], targets: Sequence[Sequence[int]]) -> npt.NDArray[np.int64]:
    """order: (Q, C) candidate ids best-first; targets[q]: correct ids -> best rank (0-based) per query
    (C if none of the targets is in the order)."""
    out = np.full(len(order), order.shape[1], np.int64)
    for q, tg in enumerate(targets):
        hit = np.flatnonzero(np.isin(order[q], np.asarray(tg)))
        if hit.size:
            out[q] = hit[0]
    return out


def recalls(ranks: npt.NDArray[np.int64], ks: Sequence[int] = KS) -> dict[str, float]:
    """Best ranks -> {"R@k": percent}."""
    return {f"R@{k}": float(100.0 * np.mean(ranks < k)) for k in ks}


def rerank_order(bi_order: npt.NDArray[np.int64], ce_scores: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.int64]:
    """Reorder the first k columns of ``bi_order`` by ``ce_scores`` (Q, k); the rest keep bi order."""
    head = np.take_along_axis(bi_order[:, :k], np.argsort(-ce_scores, axis=1, kind="stable"), axis=1)
    return np.concatenate([head, bi_order[:, k:]], axis=1)


@dataclass(frozen=True)
class EvalSettings:
    rerank_ks: tuple[int, ...] = (10, 20, 50)  # rerank depths reported as rerank@k
    max_queries: int | None = None  # deterministic sample of queries per direction (None: all)
    ce_subset: int | None = None  # images for the cross-encoder-over-all comparison (None: all)
    latency_queries: int = 20  # single queries timed per method for the median latency
    seed: int = 0  # sampling seed
    cross_all: bool = True  # also run the cross-encoder over all candidates (expensive)
    query_images: frozenset[str] | None = None  # only these photos and their captions are queries (e.g. dev's
    #                                             reporting half); every photo and caption stays in the gallery


def _sample(n: int, m: int | None, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    if m is None or m >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=m, replace=False))


def _queries(s: EvalSettings, images: Sequence[str], cap_img: npt.NDArray[np.int64],
             rng: np.random.Generator) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The t2i queries (caption indices) and i2t queries (photo indices): those of ``s.query_images``
    (all when None), sampled down to ``s.max_queries`` each."""
    ok = np.array([s.query_images is None or n in s.query_images for n in images], bool)
    if not ok.any():
        raise DataError("none of the query photos is in the evaluated data")
    caps, imgs = np.flatnonzero(ok[cap_img]), np.flatnonzero(ok)
    return caps[_sample(len(caps), s.max_queries, rng)], imgs[_sample(len(imgs), s.max_queries, rng)]


def _score_many(enc: Any, texts: Sequence[str], tok: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """Scores (Q, K) of texts[q] against candidates tok[q] (K, T, Dt), emb[q] (K, D)."""
    queries = enc.encode_texts(list(texts))
    return np.stack([np.asarray(enc.score_encoded(q, tok[i], emb[i]), np.float32) for i, q in enumerate(queries)])


def _score_texts_for_image(enc: Any, texts: Sequence[str], tok1: np.ndarray, emb1: np.ndarray) -> np.ndarray:
    """Scores (C,) of C texts against one image (tok1 (T, Dt), emb1 (D,))."""
    queries = enc.encode_texts(list(texts))
    return np.array([float(np.asarray(enc.score_encoded(q, tok1[None], emb1[None]))[0]) for q in queries], np.float32)


def evaluate(enc: Any, data: CaptionSet, settings: EvalSettings = EvalSettings(),
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Recall@1/5/10 (percent) for t2i and i2t, per method, plus median per-query latency (ms)."""
    say = progress or (lambda s: None)
    rng = np.random.default_rng(settings.seed)
    n_img = len(data.images)
    img_ids = np.arange(n_img)
    subset = None
    if settings.ce_subset is not None and settings.ce_subset < n_img:
        img_ids = np.sort(rng.choice(n_img, size=settings.ce_subset, replace=False))
        subset = {"images": int(len(img_ids)), "seed": settings.seed,
                  "first_images": [data.images[i] for i in img_ids[:5]]}
    keep = set(img_ids.tolist())
    cap_ids = np.array([c for c, i in enumerate(data.caption_image) if i in keep], np.int64)
    local = {int(g): j for j, g in enumerate(img_ids)}  # global image id -> local column
    captions = [data.captions[c] for c in cap_ids]
    cap_img = np.array([local[data.caption_image[c]] for c in cap_ids], np.int64)
    paths = [data.image_paths()[i] for i in img_ids]

    say(f"embedding {len(paths)} images")
    t0 = time.perf_counter()
    iemb, itok = enc.encode_images(paths)
    t_img = (time.perf_counter() - t0) / max(1, len(paths))
    say(f"embedding {len(captions)} captions")
    temb = enc.embed_texts(captions)
    sims = temb @ iemb.T  # (C, I)

    qt, qi = _queries(settings, [data.images[i] for i in img_ids], cap_img, rng)
    img_caps: list[list[int]] = [[] for _ in img_ids]
    for c, i in enumerate(cap_img):
        img_caps[i].append(c)

    t2i_bi = np.argsort(-sims[qt], axis=1, kind="stable")  # (Qt, I)
    i2t_bi = np.argsort(-sims[:, qi].T, axis=1, kind="stable")  # (Qi, C)
    t_targets = [[int(cap_img[q])] for q in qt]
    i_targets = [img_caps[q] for q in qi]
    results: dict[str, Any] = {"bi_encoder": {"t2i": recalls(ranks_of_targets(t2i_bi, t_targets)),
                                              "i2t": recalls(ranks_of_targets(i2t_bi, i_targets))}}

    kmax = min(max(settings.rerank_ks), len(img_ids))
    say(f"cross-encoder over top-{kmax} for {len(qt)} text queries")
    ce_t = np.empty((len(qt), kmax), np.float32)
    for s in range(0, len(qt), 64):
        cand = t2i_bi[s:s + 64, :kmax]
        ce_t[s:s + 64] = _score_many(enc, [captions[q] for q in qt[s:s + 64]], itok[cand], iemb[cand])
    kmax_c = min(max(settings.rerank_ks), len(captions))
    say(f"cross-encoder over top-{kmax_c} for {len(qi)} image queries")
    ce_i = np.stack([_score_texts_for_image(enc, [captions[c] for c in i2t_bi[r, :kmax_c]], itok[q], iemb[q])
                     for r, q in enumerate(qi)])
    # ce_i[r, j]: score of image qi[r] with caption i2t_bi[r, j]; the images' part of the embedding
    for k in settings.rerank_ks:
        kt, ki = min(k, kmax), min(k, kmax_c)
        results[f"rerank@{k}"] = {
            "t2i": recalls(ranks_of_targets(rerank_order(t2i_bi, ce_t[:, :kt], kt), t_targets)),
            "i2t": recalls(ranks_of_targets(rerank_order(i2t_bi, ce_i[:, :ki], ki), i_targets)),
        }

    if not settings.cross_all:
        latency = _latency(enc, captions, qt, iemb, itok, settings)
        return {"results": results, "latency_ms": latency, "n_images": int(len(img_ids)),
                "n_captions": int(len(captions)), "n_queries": {"t2i": int(len(qt)), "i2t": int(len(qi))},
                "subset": subset, "image_embed_ms": 1000 * t_img}
    say(f"cross-encoder over all {len(img_ids)} images / {len(captions)} captions")
    ce_all_t = np.empty((len(qt), len(img_ids)), np.float32)
    for s in range(0, len(qt), 16):
        n = len(qt[s:s + 16])
        ce_all_t[s:s + n] = _score_many(enc, [captions[q] for q in qt[s:s + 16]],
                                        np.broadcast_to(itok, (n, *itok.shape)),
                                        np.broadcast_to(iemb, (n, *iemb.shape)))
    ce_all_i = np.stack([_score_texts_for_image(enc, captions, itok[q], iemb[q]) for q in qi])
    results["cross_encoder"] = {
        "t2i": recalls(ranks_of_targets(np.argsort(-ce_all_t, axis=1, kind="stable"), t_targets)),
        "i2t": recalls(ranks_of_targets(np.argsort(-ce_all_i, axis=1, kind="stable"), i_targets)),
    }

    latency = _latency(enc, captions, qt, iemb, itok, settings)
    return {"results": results, "latency_ms": latency, "n_images": int(len(img_ids)),
            "n_captions": int(len(captions)), "n_queries": {"t2i": int(len(qt)), "i2t": int(len(qi))},
            "subset": subset, "image_embed_ms": 1000 * t_img}


def _latency(enc: Any, captions: list[str], qt: np.ndarray, iemb: np.ndarray, itok: np.ndarray,
             s: EvalSettings) -> dict[str, float]:
    """Median per-query time (ms) of each method for single text queries (image embeddings precomputed).

    A reranked query pays ONE text pass (``encode_query``): its embedding retrieves, and the score
    reuses its states."""
    times: dict[str, list[float]] = {"bi_encoder": []}
    if s.cross_all:
        times["cross_encoder"] = []
    times.update({f"rerank@{k}": [] for k in s.rerank_ks})
    for q in qt[: s.latency_queries]:
        text = captions[q]
        t0 = time.perf_counter()
        query = enc.encode_query(text)
        order = np.argsort(-(iemb @ np.asarray(query.embedding, np.float32)), kind="stable")
        t_bi = time.perf_counter() - t0
        times["bi_encoder"].append(t_bi)
        for k in s.rerank_ks:
            t0 = time.perf_counter()
            c = order[:k]
            enc.score_encoded(query, itok[c], iemb[c])
            times[f"rerank@{k}"].append(t_bi + time.perf_counter() - t0)
        if s.cross_all:  # the cross-encoder alone: its own text pass, then every photo
            t0 = time.perf_counter()
            query = enc.encode_query(text)
            for j in range(0, len(iemb), 256):
                enc.score_encoded(query, itok[j:j + 256], iemb[j:j + 256])
            times["cross_encoder"].append(time.perf_counter() - t0)
    return {m: float(1000 * np.median(v)) if v else float("nan") for m, v in times.items()}


def evaluate_languages(enc: Any, data: CaptionSet, table: dict[str, list[tuple[str, str]]], rerank_k: int = 20,
                       latency_queries: int = 20, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Text -> image per language: the same photos' captions in each language of ``table``
    (``data.read_query_table``) as queries against every photo of ``data``. Per language: R@1/5/10 of the
    bi-encoder and after reranking its top ``rerank_k`` (percent), the share of queries the encoder's
    router sent to the multilingual encoder, and the median latency of one reranked query (ms: text
    encoding, the gallery's cosines, the top-k's score). Every language is run in this one call."""
    say = progress or (lambda s: None)
    index = {n: i for i, n in enumerate(data.images)}
    for lang, rows in table.items():
        absent = [img for img, _ in rows if img not in index]
        if absent:
            raise DataError(f"query table ({lang}): {len(absent)} photos are not in the evaluated data, e.g. {absent[0]}")
    say(f"embedding {len(data.images)} images")
    iemb, itok = enc.encode_images(data.image_paths())
    k = min(rerank_k, len(data.images))
    out: dict[str, Any] = {}
    for lang, rows in table.items():
        say(f"{lang}: {len(rows)} queries")
        texts = [t for _, t in rows]
        targets = [[index[img]] for img, _ in rows]
        queries = enc.encode_texts(texts)
        qemb = np.stack([np.asarray(q.embedding, np.float32) for q in queries])
        bi = np.argsort(-(qemb @ iemb.T), axis=1, kind="stable")
        ce = np.stack([np.asarray(enc.score_encoded(q, itok[bi[j, :k]], iemb[bi[j, :k]]), np.float32)
                       for j, q in enumerate(queries)])
        out[lang] = {"queries": len(rows), "bi_encoder": recalls(ranks_of_targets(bi, targets)),
                     f"rerank@{k}": recalls(ranks_of_targets(rerank_order(bi, ce, k), targets)),
                     "multilingual_share": float(np.mean([bool(getattr(q, "multilingual", False)) for q in queries])),
                     "latency_ms": _query_latency(enc, texts[:latency_queries], iemb, itok, k)}
    return {"languages": out, "n_images": len(data.images), "rerank_k": k}


def _query_latency(enc: Any, texts: Sequence[str], iemb: np.ndarray, itok: np.ndarray, k: int) -> float:
    """Median ms of one reranked query: encode, cosine with every photo, score the top k."""
    times = []
    for text in texts:
        t0 = time.perf_counter()
        q = enc.encode_query(text)
        top = np.argsort(-(iemb @ np.asarray(q.embedding, np.float32)), kind="stable")[:k]
        enc.score_encoded(q, itok[top], iemb[top])
        times.append(time.perf_counter() - t0)
    return float(1000 * np.median(times)) if times else float("nan")
