"""Retrieve fast, rerank smart: KNN over the index, then the cross-encoder over the top candidates.

The functions take the store (``edge_xmr.index.PhotoStore``) and the loaded model; users call them
through ``edge_xmr.Library``.

Example::

    >>> hits = lib.search("two dogs in the snow", k=5, rerank=20)   # doctest: +SKIP
    >>> hits[0]                                                       # doctest: +SKIP
    Hit(path='/home/me/Pictures/IMG_2211.jpg', bi_score=0.41, cross_score=9.7, photo_id=812, ...)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import EdgeXmrError
from .index.filters import DateLike, Filters, make_filters
from .index.library import ASSET_PREFIX, Candidates, EncoderBundle, LibraryError, PhotoStore, require_model
from .index.stores import dequantize, normalize, quantize
from .score import NORMALIZATIONS, Normalization, first_stage_key

FloatArray = npt.NDArray[np.float32]

PRIOR_OVERFETCH = 2  # first-stage candidates fetched per kept one when the prior reorders them
#                      (bench/first_stage_prior.py: as good as ranking every photo by the prior)
MAX_QUERY_CHARS = 2000  # longer queries are cut before tokenising (the model sees at most ~32 tokens)


@dataclass(frozen=True)
class Hit:
    path: str  # the photo file
    bi_score: float  # bi-encoder cosine between query and stored photo embedding
    cross_score: float | None  # cross-encoder score (None: not reranked)
    photo_id: int  # id in the index
    taken: datetime  # capture time (EXIF, else file mtime): naive, on the camera's wall clock
    width: int  # oriented width in pixels
    height: int  # oriented height in pixels

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``taken`` as ISO text, e.g. ``"2023-07-14T18:30:05"``)."""
        return {**asdict(self), "taken": self.taken.isoformat(timespec="seconds")}

    @property
    def asset_id(self) -> str | None:
        """The app's asset id of a photo fed by ``Library.sync_assets`` (None: a file)."""
        return self.path[len(ASSET_PREFIX):] if self.path.startswith(ASSET_PREFIX) else None


@dataclass(frozen=True)
class TextHit:
    text: str  # one of the given texts
    bi_score: float  # bi-encoder cosine with the photo
    cross_score: float  # cross-encoder score with the photo (the ranking key)
    index: int  # position in the given list

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class QueryError(EdgeXmrError, ValueError):
    """A query that cannot be answered: empty or only white space (any result would be arbitrary)."""


def clean_query(text: str) -> str:
    """A search query: empty (or white-space only) queries are refused, huge ones are cut."""
    text = clean_text(text)
    if not text.strip():
        raise QueryError("the query is empty: type a few words to search for")
    return text


def clean_text(text: str) -> str:
    """A text of any size (a query, or a candidate text of ``rank_texts``): non-strings are refused,
    huge ones are cut."""
    if not isinstance(text, str):
        raise TypeError(f"query must be a string, got {type(text).__name__}")
    return text[:MAX_QUERY_CHARS]


def search(lib: PhotoStore, model: EncoderBundle | None, text: str, k: int = 10, rerank: int = 20, after: DateLike = None,
           before: DateLike = None, folder: str | os.PathLike[str] | None = None) -> list[Hit]:
    """Text -> photos: KNN top ``max(k, rerank)``, the first ``rerank`` reranked by the
    cross-encoder (best first), then the rest by bi-encoder score; the best ``k`` returned."""
    _check_k(k)
    if rerank < 0:
        raise ValueError(f"rerank must be >= 0, got {rerank}")
    bundle = require_model(model)
    text = clean_query(text)
    filters = make_filters(after, before, folder)
    if lib.is_empty():
        return []
    query = bundle.encode_query(text)  # one text pass: its embedding retrieves, its states rerank
    with lib.snapshot():  # a writer replacing photos meanwhile (re-indexing) cannot pull rows from under us
        cands = first_stage(lib, bundle, np.asarray(query.embedding, np.float32), max(k, rerank), filters, rerank)
        cross = _cross_scores(lib, bundle, query, cands, rerank)
        order = list(np.argsort(-cross, kind="stable")) + list(range(len(cross), len(cands.ids)))
        return _hits(lib, cands, cross, order[:k])


def first_stage(lib: PhotoStore, bundle: EncoderBundle, query: FloatArray, n: int, filters: Filters,
                rerank: int = 0) -> Candidates:
    """The ``n`` candidates of a search whose first ``rerank`` are then reranked: the KNN's best by cosine,
    or, when the score has a first-stage prior (``ScoreConfig.first_stage_prior``) and some of the
    ``n`` are returned unreranked (``rerank < n``), the cosine's best ``PRIOR_OVERFETCH · n``
    reordered by ``score.first_stage_key`` (cosine minus the per-photo hubness prior) and cut to ``n``.

    A search that reranks all its candidates skips the prior: the rerank score holds the same prior
    itself, so before the cut it would only choose which photos enter, and that measured no gain
    (``bench/results/first_stage_prior.json``: rerank@20 R@1/5/10 equal with and without) for twice
    the KNN's candidates."""
    cfg = bundle.score_config
    if not cfg.first_stage_prior or rerank >= n:
        return lib.candidates(query, n, filters)
    c = lib.candidates(query, PRIOR_OVERFETCH * n, filters)
    key = first_stage_key(c.scores, bundle.photo_prior(c.embeds), cfg)
    order = np.argsort(-key, kind="stable")[:n]
    return Candidates(c.ids[order], c.embeds[order], c.scores[order])


def _cross_scores(lib: PhotoStore, bundle: EncoderBundle, query: Any, cands: Candidates, rerank: int) -> FloatArray:
    n = min(rerank, len(cands.ids))
    if n == 0:
        return np.zeros((0,), np.float32)
    tokens = lib.tokens(cands.ids[:n].tolist())
    scores = bundle.score_encoded(query, tokens, cands.embeds[:n])
    return np.asarray(scores, np.float32).reshape(n)


def _hits(lib: PhotoStore, cands: Candidates, cross: FloatArray, order: Sequence[int]) -> list[Hit]:
    ids = [int(cands.ids[i]) for i in order]
    info = lib.photo_info(ids)
    hits = []
    for i, pid in zip(order, ids):
        p = info.get(pid)
        if p is None:  # removed by a concurrent writer between the two reads
            continue
        hits.append(Hit(path=p.path, bi_score=float(cands.scores[i]),
                        cross_score=float(cross[i]) if i < len(cross) else None,
                        photo_id=pid, taken=datetime.fromisoformat(p.taken), width=p.width, height=p.height))
    return hits


def similar(lib: PhotoStore, model: EncoderBundle | None, photo: str | os.PathLike[str] | int, k: int = 10, after: DateLike = None,
            before: DateLike = None, folder: str | os.PathLike[str] | None = None) -> list[Hit]:
    """Image -> image: the ``k`` photos closest to ``photo`` by bi-encoder cosine (itself excluded)."""
    _check_k(k)
    filters = make_filters(after, before, folder)
    with lib.snapshot():
        pid, emb, _ = photo_vectors(lib, model, photo)
        cands = lib.candidates(emb, k + 1, filters)
        keep = [i for i, c in enumerate(cands.ids) if int(c) != pid][:k]
        return _hits(lib, cands, np.zeros((0,), np.float32), keep)


def rank_texts(lib: PhotoStore, model: EncoderBundle | None, photo: str | os.PathLike[str] | int,
               texts: Sequence[str]) -> list[TextHit]:
    """Image -> text: ``texts`` ranked by the cross-encoder against the photo's stored data."""
    bundle = require_model(model)
    clean = [clean_text(t) for t in texts]
    if not clean:
        return []
    _, emb, tok = photo_vectors(lib, bundle, photo)
    queries = [bundle.encode_query(t) for t in clean]
    bi = np.array([float(np.asarray(q.embedding, np.float32) @ emb) for q in queries], np.float32)
    cross = [float(np.asarray(bundle.score_encoded(q, tok[None], emb[None])).reshape(-1)[0]) for q in queries]
    order = np.argsort(-np.asarray(cross), kind="stable")
    return [TextHit(text=texts[i], bi_score=float(bi[i]), cross_score=cross[i], index=int(i)) for i in order]


@dataclass(frozen=True)
class LabelHit:
    photo_id: int  # id in the index
    path: str  # the photo file
    label: str  # the best of the given labels for this photo
    index: int  # its position in the given list
    score: float  # its cosine with the photo, normalised over the library (``classify``)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def classify(lib: PhotoStore, model: EncoderBundle | None, labels: Sequence[str], photos: Sequence[str | os.PathLike[str] | int] | None = None,
             normalize: Normalization = "center") -> list[LabelHit]:
    """Zero-shot labelling: for each photo (every indexed photo, or ``photos``: indexed paths or ids),
    the label whose text scores highest with it, each label's cosines first normalised over the whole
    library (``score.LibraryMoments.normalized``: ``center`` subtracts the label's mean cosine over
    the library's photos, so that a label close to every photo does not win for most; ``zscore``
    also divides by its std; ``none`` compares raw cosines). In photo id order."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    texts = [clean_query(t) for t in labels]
    if not texts:
        raise ValueError("classify needs at least one label")
    q = np.asarray(require_model(model).embed_texts(texts), np.float32)
    out: list[LabelHit] = []
    with lib.snapshot():
        stats = lib.moments()
        ids = lib.all_ids() if photos is None else [_known_id(lib, p) for p in photos]
        for i in range(0, len(ids), 4096):
            chunk = ids[i:i + 4096]
            s = stats.normalized(q, lib.embeddings(chunk), normalize)  # (L, n)
            best = s.argmax(0)
            info = lib.photo_info(chunk)
            out += [LabelHit(pid, info[pid].path, texts[b], int(b), float(s[b, j]))
                    for j, (pid, b) in enumerate(zip(chunk, best))]
    return out


def _known_id(lib: PhotoStore, photo: str | os.PathLike[str] | int) -> int:
    pid = photo if isinstance(photo, int) else lib.photo_id(photo)
    if pid is None or not lib.photo_info([pid]):
        raise LibraryError(f"not an indexed photo: {photo}")
    return int(pid)


def photo_vectors(lib: PhotoStore, model: EncoderBundle | None, photo: str | os.PathLike[str] | int) -> tuple[int, FloatArray, FloatArray]:
    """(photo id or -1, unit embedding (D,), tokens (T, Dt)): stored data for an indexed photo,
    else the image file is encoded with the bundle (as stored: int8 round trip)."""
    with lib.snapshot():
        pid = photo if isinstance(photo, int) else lib.photo_id(photo)
        if pid is not None and lib.photo_info([pid]):
            emb, tok = lib.stored([pid])
            return pid, emb[0], tok[0]
    if isinstance(photo, int):
        raise LibraryError(f"no photo with id {photo} in the index")
    from .preprocess import ImageError, load_image

    bundle = require_model(model)
    try:
        image = load_image(photo, int(bundle.manifest["preprocessing"]["size"]))
    except (ImageError, OSError) as e:
        raise LibraryError(str(e)) from None
    emb, tok = bundle.encode_images([image])
    e = np.asarray(emb, np.float32)[0]
    if lib.info.embedding_scale or lib.store.kind == "float32":
        e = lib.store.decode(*lib.store.encode(e))  # the same round trip as stored photos
    return -1, normalize(e), _round_trip_tokens(lib, np.asarray(tok, np.float32)[0])


def _round_trip_tokens(lib: PhotoStore, tok: FloatArray) -> FloatArray:
    scale = lib.info.token_scale
    return dequantize(quantize(tok, scale), scale) if scale else tok


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
