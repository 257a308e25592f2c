"""Load a model bundle (one folder, see docs/bundle.md) and run it: numpy + onnxruntime only, no torch.

>>> b = Bundle.load("my_bundle", precision="int8")          # doctest: +SKIP
>>> b.embed_texts(["a dog on the beach"]).shape             # doctest: +SKIP
(1, 256)

Loading checks the manifest's schema and the sha256 of every file it lists, and refuses a tampered
or incomplete bundle with a :class:`BundleError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from . import score as sc
from .multilingual import NO_STATE_TERMS, ROUTINGS, MultilingualEncoder, Router, Routing, english_words
from .preprocess import to_pixels
from .providers import create_session
from .score import ScoreConfig, ScoreConfigError, combine
from .tokenizer import Tokenizer
from .errors import EdgeXmrError

FloatArray = npt.NDArray[np.float32]

FORMAT_VERSION = 3  # manifest format this runtime reads (2: the cross-encoder starts from the text states;
#                    3: the score's weights and data in the manifest and score.npz, the graph gives the joint term)
MANIFEST = "manifest.json"
GRAPH_NAMES = ("text_encoder", "image_encoder", "cross_encoder")
PRECISIONS = ("fp32", "int8")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class BundleError(EdgeXmrError, ValueError):
    """A bundle that is missing, incomplete, tampered with or of an unknown format."""


@dataclass(frozen=True)
class EncodedText:
    """One text after the text encoder: what retrieval and reranking both need (one text pass).

    A text the multilingual encoder encoded has no states (None): it is reranked with the terms that
    need none (``edge_xmr.multilingual.NO_STATE_TERMS``)."""

    embedding: FloatArray  # (D,) bi-encoder embedding, L2-normalised
    states: FloatArray | None  # (J, 1, L, W) text states the cross-encoder graph starts from
    mask: npt.NDArray[np.int64] | None  # (1, L) attention mask of the text

    @property
    def multilingual(self) -> bool:
        """Whether the multilingual encoder encoded it (no token states)."""
        return self.states is None


def sha256_path(path: str | Path) -> str:
    """sha256 of a file; of a directory (an ``.mlpackage``): over its sorted relative paths and
    the sha256 of each file."""
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path).as_posix()}\0{sha256_path(f)}\n".encode())
        return h.hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def validate_manifest(m: Any) -> list[str]:
    """Problems with a manifest's schema (empty list: valid)."""
    if not isinstance(m, dict):
        return ["manifest is not a JSON object"]
    p: list[str] = []

    def need(obj: Any, key: str, typ: type | tuple[type, ...], where: str) -> Any:
        if not isinstance(obj, dict) or key not in obj:
            p.append(f"{where}.{key}: missing")
            return None
        if not isinstance(obj[key], typ) or (typ is int and isinstance(obj[key], bool)):
            p.append(f"{where}.{key}: expected {getattr(typ, '__name__', typ)}, got {type(obj[key]).__name__}")
            return None
        return obj[key]

    fv = need(m, "format_version", int, "manifest")
    if fv is not None and fv != FORMAT_VERSION:
        hint = " (an older export: re-export it with 'edge-xmr export')" if fv < FORMAT_VERSION else ""
        p.append(f"manifest.format_version: {fv} is not supported (this runtime reads {FORMAT_VERSION}){hint}")
    need(m, "created", str, "manifest")
    model = need(m, "model", dict, "manifest")
    if model is not None:
        for k in ("name", "base"):
            need(model, k, str, "model")
        need(model, "config", dict, "model")
        mid = need(model, "id", str, "model")
        if mid is not None and not _HEX64.match(mid):
            p.append("model.id: not a sha256 hex digest")
    files = need(m, "files", dict, "manifest")
    if files is not None:
        for f, h in files.items():
            if not isinstance(h, str) or not _HEX64.match(h):
                p.append(f"files[{f!r}]: not a sha256 hex digest")
            if Path(f).is_absolute() or ".." in Path(f).parts:
                p.append(f"files[{f!r}]: must be a relative path inside the bundle")
    graphs = need(m, "graphs", dict, "manifest")
    if graphs is not None:
        for g in GRAPH_NAMES:
            spec = need(graphs, g, dict, "graphs")
            if spec is None:
                continue
            for io in ("inputs", "outputs"):
                for i, t in enumerate(need(spec, io, list, f"graphs.{g}") or []):
                    for k, typ in (("name", str), ("dtype", str), ("shape", list)):
                        need(t, k, typ, f"graphs.{g}.{io}[{i}]")
            need(spec, "opset", int, f"graphs.{g}")
            need(spec, "dim_ranges", dict, f"graphs.{g}")
            variants = need(spec, "variants", dict, f"graphs.{g}") or {}
            if not any(v in variants for v in ("onnx/fp32", "onnx/int8")):  # int8 only: a packaged bundle
                p.append(f"graphs.{g}.variants: no 'onnx/fp32' (or 'onnx/int8')")
            for v, info in variants.items():
                need(info, "format", str, f"graphs.{g}.variants[{v}]")
                path = need(info, "path", str, f"graphs.{g}.variants[{v}]")
                if path is not None and files is not None and path not in files:
                    p.append(f"graphs.{g}.variants[{v}].path {path!r} is not listed in files")
                need(info, "size_mb", (int, float), f"graphs.{g}.variants[{v}]")
    need(m, "max_text_len", int, "manifest")
    tok = need(m, "tokenizer", dict, "manifest")
    if tok is not None:
        tf = need(tok, "file", str, "tokenizer")
        need(tok, "pad_id", int, "tokenizer")
        if tf is not None and files is not None and tf not in files:
            p.append(f"tokenizer.file {tf!r} is not listed in files")
    pre = need(m, "preprocessing", dict, "manifest")
    if pre is not None:
        need(pre, "size", int, "preprocessing")
        for k in ("resize", "channel_order", "layout", "interpolation"):
            need(pre, k, str, "preprocessing")
        for k in ("mean", "std", "value_range"):
            v = need(pre, k, list, "preprocessing")
            if v is not None and not all(isinstance(x, (int, float)) for x in v):
                p.append(f"preprocessing.{k}: expected numbers")
    emb = need(m, "embedding", dict, "manifest")
    if emb is not None:
        need(emb, "dim", int, "embedding")
        need(emb, "metric", str, "embedding")
        need(emb, "normalized", bool, "embedding")
    it = need(m, "image_tokens", dict, "manifest")
    if it is not None:
        need(it, "count", int, "image_tokens")
        need(it, "dim", int, "image_tokens")
    score = need(m, "score", dict, "manifest")
    if score is not None:
        need(score, "config", dict, "score")
        data = need(score, "data", str, "score")
        if data is not None and files is not None and data not in files:
            p.append(f"score.data {data!r} is not listed in files")
    st = need(m, "storage", dict, "manifest")
    if st is not None:
        for k in ("embedding_int8_scale", "token_int8_scale"):
            v = need(st, k, (int, float), "storage")
            if v is not None and not v > 0:
                p.append(f"storage.{k}: must be > 0")
    need(m, "index_schema_version", int, "manifest")
    need(m, "sizes", dict, "manifest")
    return p


def read_manifest(root: str | Path) -> dict[str, Any]:
    """Parse and schema-check ``root/manifest.json`` (no hashing)."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"{root}: bundle folder not found")
    mf = root / MANIFEST
    if not mf.is_file():
        raise BundleError(f"{mf}: missing (not a bundle written by 'edge-xmr export')")
    try:
        m = json.loads(mf.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{mf}: unreadable ({e})") from None
    problems = validate_manifest(m)
    if problems:
        raise BundleError(f"{mf}: invalid manifest: " + "; ".join(problems[:5]))
    return m


def verify_files(root: str | Path, manifest: dict[str, Any]) -> None:
    """Check that every file the manifest lists exists and has its sha256."""
    root = Path(root)
    for rel, want in sorted(manifest["files"].items()):
        f = root / rel
        if not f.exists():
            raise BundleError(f"{f}: missing from the bundle (incomplete copy?)")
        if sha256_path(f) != want:
            raise BundleError(f"{f}: sha256 does not match the manifest (file changed or corrupted)")


SCORE_ARRAYS = ("li_weight", "li_bias", "text_bank", "image_bank")  # what score.npz holds (docs/bundle.md)


class Bundle:
    """A loaded bundle: the three ONNX graphs of one precision, the tokenizer, the score's weights and
    data, and the manifest. The rerank score (``edge_xmr/score.py``) is computed in numpy from the text
    encoder's states and the stored photo data; the cross_encoder graph (the joint-attention pass) runs
    only when the score weights it (``score_config.joint != 0``)."""

    def __init__(self, root: Path, manifest: dict[str, Any], precision: str,
                 providers: list[str] | None = None, threads: int | None = None, routing: Routing | None = None):
        self.root = root
        self.manifest = manifest
        self.precision = precision
        self.variant = f"onnx/{precision}"
        self._providers = providers
        self._threads = threads
        self._sessions: dict[str, Any] = {}
        tok = manifest["tokenizer"]
        self.tokenizer = Tokenizer.from_file(root / tok["file"])
        self.tokenizer.pad_id = int(tok["pad_id"])
        self.max_text_len = int(manifest["max_text_len"])
        self.dim = int(manifest["embedding"]["dim"])
        self.n_tokens = int(manifest["image_tokens"]["count"])
        self.token_dim = int(manifest["image_tokens"]["dim"])
        self.max_candidates = int(manifest["graphs"]["cross_encoder"]["dim_ranges"]["n"][1])
        try:
            self.score_config = ScoreConfig.from_dict(manifest["score"]["config"])
        except ScoreConfigError as e:
            raise BundleError(f"{root / MANIFEST}: {e}") from None
        self._score_data = _read_score_data(root / manifest["score"]["data"])
        self.multilingual = self._multilingual_encoder()
        self.router = self._router(routing)

    @classmethod
    def load(cls, path: str | Path, precision: str | None = None, providers: list[str] | None = None,
             threads: int | None = None, verify: bool = True, routing: Routing | None = None) -> Bundle:
        """Open a bundle folder; ``verify`` checks the sha256 of every listed file first.
        ``precision``: "fp32" or "int8"; None: fp32 if the bundle has it, else int8 (the packaged
        default bundle ships int8 only). ``routing``: which text encoder a query goes to when the
        bundle has a multilingual one (``edge_xmr.multilingual``; None: the manifest's choice)."""
        root = Path(path)
        manifest = read_manifest(root)
        available = sorted({v.split("/", 1)[1] for v in manifest["graphs"]["text_encoder"]["variants"]
                            if v.startswith("onnx/")})
        if precision is None:
            precision = "fp32" if "fp32" in available or not available else available[0]
        if precision not in available:
            raise BundleError(f"{root}: no {precision!r} ONNX graphs in this bundle (has {available})")
        for g in GRAPH_NAMES:
            if f"onnx/{precision}" not in manifest["graphs"][g]["variants"]:
                raise BundleError(f"{root}: graph {g} has no onnx/{precision} variant")
        if verify:
            verify_files(root, manifest)
        return cls(root, manifest, precision, providers, threads, routing)

    def _multilingual_encoder(self) -> MultilingualEncoder | None:
        section = self.manifest.get("multilingual")
        if section is None:
            return None
        problems = validate_multilingual(section, self.manifest.get("files", {}))
        if problems:
            raise BundleError(f"{self.root / MANIFEST}: invalid multilingual section: " + "; ".join(problems[:5]))
        if self.variant not in section["graph"]["variants"]:
            raise BundleError(f"{self.root}: the multilingual encoder has no {self.variant} variant")
        return MultilingualEncoder(self.root, section, self.variant,
                                   lambda p: create_session(p, self._providers, self._threads))

    def _router(self, routing: Routing | None) -> Router:
        mode = routing or (self.manifest["multilingual"]["routing"] if self.multilingual else "never")
        if mode not in ROUTINGS:
            raise BundleError(f"routing {mode!r}: expected one of {', '.join(ROUTINGS)}")
        if mode != "never" and self.multilingual is None:
            raise BundleError(f"{self.root}: routing {mode!r} needs a multilingual encoder, this bundle has none "
                              "(export it with 'edge-xmr export --multilingual')")
        return Router(mode, english_words(self.tokenizer.vocab()) if mode == "auto" else frozenset())

    @property
    def model_id(self) -> str:
        return str(self.manifest["model"]["id"])

    @property
    def storage(self) -> dict[str, Any]:
        """int8 storage scales for the index: q = clip(round(x * scale), -127, 127)."""
        return dict(self.manifest["storage"])

    def session(self, graph: str) -> Any:
        """The onnxruntime session of ``graph`` (created on first use)."""
        if graph not in self._sessions:
            rel = self.manifest["graphs"][graph]["variants"][self.variant]["path"]
            self._sessions[graph] = create_session(self.root / rel, self._providers, self._threads)
        return self._sessions[graph]

    # ---- texts ---------------------------------------------------------------------------------
    def _routes(self, texts: Sequence[str]) -> npt.NDArray[np.bool_]:
        """(M,) whether each text goes to the multilingual encoder (``self.router``)."""
        return np.array([self.router.multilingual(t) for t in texts], bool)

    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> FloatArray:
        """Texts -> (M, D) float32, L2-normalised (each from the encoder the router picks)."""
        out = np.zeros((len(texts), self.dim), np.float32)
        multi = self._routes(texts)
        eng = [t for t, m in zip(texts, multi) if not m]
        sess = self.session("text_encoder") if eng else None
        parts = []
        for i in range(0, len(eng), batch_size):
            ids, mask = self.tokenizer.encode(eng[i:i + batch_size], self.max_text_len)
            parts.append(sess.run(["text_embeds"], {"input_ids": ids, "attention_mask": mask})[0])
        if parts:
            out[~multi] = np.concatenate(parts)
        if multi.any():
            out[multi] = self._multilingual_embed([t for t, m in zip(texts, multi) if m], batch_size)
        return out

    def _multilingual_embed(self, texts: Sequence[str], batch_size: int) -> FloatArray:
        assert self.multilingual is not None  # the router sends none there otherwise
        return self.multilingual.embed(texts, batch_size)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> list[EncodedText]:
        """Texts -> one :class:`EncodedText` each: the embedding to retrieve with and the states to
        rerank with, from a single run of the text encoder the router picks (the multilingual one
        gives no states)."""
        multi = self._routes(texts)
        eng = self._encode_english([t for t, m in zip(texts, multi) if not m], batch_size)
        ml = ([EncodedText(embedding=e, states=None, mask=None)
               for e in self._multilingual_embed([t for t, m in zip(texts, multi) if m], batch_size)]
              if multi.any() else [])
        e_it, m_it = iter(eng), iter(ml)
        return [next(m_it) if m else next(e_it) for m in multi]

    def _encode_english(self, texts: Sequence[str], batch_size: int) -> list[EncodedText]:
        out: list[EncodedText] = []
        sess = self.session("text_encoder") if len(texts) else None
        for i in range(0, len(texts), batch_size):
            ids, mask = self.tokenizer.encode(list(texts[i:i + batch_size]), self.max_text_len)
            emb, states = sess.run(["text_embeds", "text_states"], {"input_ids": ids, "attention_mask": mask})
            for j in range(len(ids)):
                n = max(1, int(mask[j].sum()))
                out.append(EncodedText(embedding=np.asarray(emb[j], np.float32),
                                       states=np.ascontiguousarray(states[:, j:j + 1, :n], np.float32),
                                       mask=np.ascontiguousarray(mask[j:j + 1, :n])))
        return out

    def encode_query(self, text: str) -> EncodedText:
        """One text -> :class:`EncodedText` (see ``encode_texts``)."""
        return self.encode_texts([text])[0]

    # ---- images --------------------------------------------------------------------------------
    def encode_images(self, images: Sequence[Any], batch_size: int = 16) -> tuple[FloatArray, FloatArray]:
        """Images (paths, PIL images or HxWx3 uint8 arrays) -> (embeddings (N, D), tokens (N, T, Dt))."""
        embs, toks = [], []
        pre = self.manifest["preprocessing"]
        for i in range(0, len(images), batch_size):
            px = to_pixels(images[i:i + batch_size], pre)
            e, t = self.session("image_encoder").run(["image_embeds", "image_tokens"], {"pixel_values": px})
            embs.append(e)
            toks.append(t)
        if not embs:
            return (np.zeros((0, self.dim), np.float32),
                    np.zeros((0, self.n_tokens, self.token_dim), np.float32))
        return np.concatenate(embs).astype(np.float32), np.concatenate(toks).astype(np.float32)

    def embed_images(self, images: Sequence[Any], batch_size: int = 16) -> FloatArray:
        """Images -> (N, D) float32, L2-normalised."""
        return self.encode_images(images, batch_size)[0]

    # ---- reranking -----------------------------------------------------------------------------
    def score_candidates(self, text: str, tokens: npt.NDArray[Any], embeds: npt.NDArray[Any]) -> FloatArray:
        """Rerank scores (N,) of one text against N photos' stored data (higher = better).

        tokens (N, T, Dt) and embeds (N, D) are float32, or int8 as stored in the index (they are
        then dequantized with the manifest's storage scales). N = 0 returns an empty array.
        A search that has already encoded its query passes it to ``score_encoded`` instead.
        """
        self._check_candidates(tokens, embeds)
        if len(tokens) == 0:
            return np.zeros((0,), np.float32)
        return self.score_encoded(self.encode_query(text), tokens, embeds)

    def score_encoded(self, query: EncodedText, tokens: npt.NDArray[Any], embeds: npt.NDArray[Any]) -> FloatArray:
        """``score_candidates`` for a text already through the text encoder (no second text pass):
        ``score_config`` applied to ``score_terms``."""
        self._check_candidates(tokens, embeds)
        if len(tokens) == 0:
            return np.zeros((0,), np.float32)
        cfg = self.query_score_config(query)
        return np.asarray(combine(self.score_terms(query, tokens, embeds, cfg.needed()), cfg), np.float32)

    def query_score_config(self, query: EncodedText) -> ScoreConfig:
        """The score a query is reranked with: ``score_config``; for a multilingual query (no token
        states) the same without late interaction and the joint pass."""
        if not query.multilingual:
            return self.score_config
        return replace(self.score_config, late_interaction=0.0, joint=0.0)

    def score_terms(self, query: EncodedText, tokens: npt.NDArray[Any], embeds: npt.NDArray[Any],
                    terms: Sequence[str] = sc.TERMS) -> dict[str, FloatArray]:
        """The score's named terms (unweighted, each (N,)) of one encoded text against N candidates (tokens
        (N, T, Dt) and embeds (N, D), float32 or int8 as stored). Only ``terms`` are computed: the joint
        pass (the cross_encoder graph) only when asked for."""
        self._check_candidates(tokens, embeds)
        unknown = set(terms) - set(sc.TERMS)
        if unknown:
            raise KeyError(f"unknown score terms {sorted(unknown)}")
        stateful = sorted(set(terms) - set(NO_STATE_TERMS))
        if query.multilingual and stateful:
            raise ValueError(f"score terms {stateful} need the English encoder's token states; a multilingual "
                             f"query has none (terms it can have: {', '.join(NO_STATE_TERMS)})")
        tokens, embeds = self._float(tokens, "token"), self._float(embeds, "embedding")
        cfg, data, n = self.score_config, self._score_data, len(tokens)
        t_emb = np.asarray(query.embedding, np.float32)
        out: dict[str, FloatArray] = {}
        if "cosine" in terms:
            out["cosine"] = (embeds @ t_emb).astype(np.float32)
        if "late_interaction" in terms:
            h = query.states[-1, 0][np.asarray(query.mask[0]) > 0]  # (L, W) final states of the real tokens
            t_tok = sc.unit(h @ data["li_weight"].T + data["li_bias"])
            out["late_interaction"] = sc.late_interaction(t_tok, tokens) if n else np.zeros(0, np.float32)
        if "photo_hubness" in terms:
            out["photo_hubness"] = self.photo_prior(embeds)
        if "text_hubness" in terms:
            t = sc.hubness(t_emb[None], data["image_bank"], cfg.hubness_temperature, cfg.text_hubness_floor)
            out["text_hubness"] = np.full(n, t[0], np.float32)
        if "joint" in terms:
            out["joint"] = self._joint(query, tokens, embeds)
        return out

    def photo_prior(self, embeds: npt.NDArray[Any]) -> FloatArray:
        """The per-photo hubness prior hub(e) (N,) of stored embeddings (N, D): the score's
        ``photo_hubness`` term, which the first stage also uses (``ScoreConfig.first_stage_prior``)."""
        cfg = self.score_config
        return sc.hubness(self._float(embeds, "embedding"), self._score_data["text_bank"], cfg.hubness_temperature,
                          cfg.photo_hubness_floor)

    def _joint(self, query: EncodedText, tokens: FloatArray, embeds: FloatArray) -> FloatArray:
        """The joint pass's term (N,): the cross_encoder graph, in chunks of its largest n."""
        if len(tokens) == 0:
            return np.zeros((0,), np.float32)  # onnxruntime fails on n = 0: never call it
        sess = self.session("cross_encoder")
        feed = {"text_states": query.states, "attention_mask": query.mask,
                "text_embeds": np.ascontiguousarray(query.embedding[None], np.float32)}
        out = [sess.run(["joint"], {**feed, "image_tokens": tokens[i:i + self.max_candidates],
                                    "image_embeds": embeds[i:i + self.max_candidates]})[0]
               for i in range(0, len(tokens), self.max_candidates)]
        return np.concatenate(out).astype(np.float32)

    @staticmethod
    def _check_candidates(tokens: npt.NDArray[Any], embeds: npt.NDArray[Any]) -> None:
        tokens, embeds = np.asarray(tokens), np.asarray(embeds)
        if tokens.ndim != 3 or embeds.ndim != 2 or len(tokens) != len(embeds):
            raise ValueError(f"score_candidates needs tokens (N, T, Dt) and embeds (N, D) with the same N, "
                             f"got {tokens.shape} and {embeds.shape}")

    # ---- int8 storage --------------------------------------------------------------------------
    def quantize(self, x: npt.NDArray[Any], kind: str) -> npt.NDArray[np.int8]:
        """float -> int8 with the storage scale of ``kind`` ("embedding" or "token")."""
        scale = float(self.manifest["storage"][f"{kind}_int8_scale"])
        return np.clip(np.round(np.asarray(x, np.float32) * scale), -127, 127).astype(np.int8)

    def _float(self, x: npt.NDArray[Any], kind: str) -> FloatArray:
        x = np.asarray(x)
        if x.dtype == np.int8:
            return (x.astype(np.float32) / float(self.manifest["storage"][f"{kind}_int8_scale"]))
        return np.ascontiguousarray(x, dtype=np.float32)


def validate_multilingual(section: Any, files: dict[str, Any]) -> list[str]:
    """Problems with a manifest's optional ``multilingual`` section (docs/bundle.md)."""
    if not isinstance(section, dict):
        return ["multilingual: not a JSON object"]
    p: list[str] = []
    graph, tok = section.get("graph"), section.get("tokenizer")
    variants = graph.get("variants") if isinstance(graph, dict) else None
    if not isinstance(variants, dict) or "onnx/fp32" not in variants:
        p.append("multilingual.graph.variants: missing or without 'onnx/fp32'")
    else:
        for v, info in variants.items():
            path = info.get("path") if isinstance(info, dict) else None
            if not isinstance(path, str) or path not in files:
                p.append(f"multilingual.graph.variants[{v}].path {path!r} is not listed in files")
    if not isinstance(tok, dict) or not isinstance(tok.get("file"), str) or tok["file"] not in files:
        p.append("multilingual.tokenizer.file: missing or not listed in files")
    elif not isinstance(tok.get("pad_id"), int):
        p.append("multilingual.tokenizer.pad_id: expected int")
    if not isinstance(section.get("max_text_len"), int):
        p.append("multilingual.max_text_len: expected int")
    if section.get("routing") not in ROUTINGS:
        p.append(f"multilingual.routing: expected one of {', '.join(ROUTINGS)}")
    return p


def _read_score_data(path: Path) -> dict[str, FloatArray]:
    """The arrays of ``score.npz`` (``SCORE_ARRAYS``), float32."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: np.ascontiguousarray(z[k], np.float32) for k in SCORE_ARRAYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise BundleError(f"{path}: unreadable score data ({e})") from None
    return data
