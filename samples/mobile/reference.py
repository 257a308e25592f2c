"""Reference search for app developers: a bundle folder + onnxruntime + an index file, nothing else.

This is the contract an iOS app (CoreML or onnxruntime + sqlite-vec) or an Android app
(onnxruntime + sqlite-vec) implements, written out in plain Python so each step can be ported
line by line. It does NOT import edge_xmr: only numpy, onnxruntime, tokenizers (the Hugging Face
tokenizer that reads ``tokenizer.json``; swift-transformers / the tokenizers JNI bindings on
mobile), Pillow (image decoding) and SQLite with the sqlite-vec extension.

    python samples/mobile/reference.py BUNDLE INDEX.db "a dog on the beach" [-k 5] [--rerank 20]
    python samples/mobile/reference.py BUNDLE INDEX.db --image photo.jpg
    python samples/mobile/reference.py BUNDLE --conformance OUT.npz   # then: python BUNDLE/conformance/check.py OUT.npz

Steps of a text query (see docs/mobile.md for every tensor and table):

1. tokenise   ``tokenizer.json`` -> input_ids, attention_mask  (1, L) int64, L <= max_text_len
2. embed      text_encoder -> text_embeds (1, D) float32, unit length, and text_states (J, 1, L, W):
              the query's states that the cross-encoder starts from (the text runs once per query)
3. KNN in SQL int8-quantise the query, ``vectors MATCH vec_int8(?) AND k = ?`` (over-fetch 2x)
4. rescore    decode each candidate's stored embedding (int8 + 4-bit residual), cosine with the query
5. rerank     the score's terms from the query's text_embeds / final text_states and the candidates'
              stored embeddings and image tokens (``score.npz``: late interaction's projection, the
              hubness banks), weighted by ``manifest.score.config``; the cross_encoder graph (the joint
              pass) only when its weight ``joint`` is not 0 (docs/bundle.md, "The score")
6. results    rerank order for the reranked head, bi-encoder order after it
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps
from tokenizers import Tokenizer

OVERSAMPLE = {"int8": 2, "float32": 1, "bit": 16}  # KNN candidates fetched per wanted result


# ---- the bundle ----------------------------------------------------------------------------------------
class Model:
    """The three ONNX graphs, the tokenizer and the preprocessing of one bundle folder."""

    def __init__(self, bundle: str | Path, precision: str = "fp32"):
        root = Path(bundle)
        self.manifest: dict[str, Any] = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        m = self.manifest
        self.max_len = int(m["max_text_len"])
        self.pad_id = int(m["tokenizer"]["pad_id"])
        self.tok = Tokenizer.from_file(str(root / m["tokenizer"]["file"]))  # truncates as the file says
        self.tok.no_padding()
        self.pre = m["preprocessing"]
        self.max_n = int(m["graphs"]["cross_encoder"].get("dim_ranges", {}).get("n", [1, 256])[1])
        opts = ort.SessionOptions()
        self.sessions = {g: ort.InferenceSession(str(root / m["graphs"][g]["variants"][f"onnx/{precision}"]["path"]),
                                                 opts, providers=["CPUExecutionProvider"])
                         for g in ("text_encoder", "image_encoder", "cross_encoder")}
        self.w = m["score"]["config"]  # the score's weights
        with np.load(root / m["score"]["data"], allow_pickle=False) as z:
            self.arrays = {k: z[k].astype(np.float32) for k in ("li_weight", "li_bias", "text_bank", "image_bank")}

    # 1. tokenise
    def tokenize(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """One text -> input_ids, attention_mask (1, L) int64; too long: cut, keeping the final [SEP]
        (tokenizer.json's own truncation does it; the cut below is for bundles whose file has none)."""
        ids = list(self.tok.encode(text).ids)
        if len(ids) > self.max_len:
            ids = ids[: self.max_len - 1] + ids[-1:]
        arr = np.asarray([ids], np.int64)
        return arr, np.ones_like(arr)

    # 2. embed a text: its embedding (to retrieve) and its states (to rerank), one run of the text encoder
    def encode_text(self, text: str) -> dict[str, np.ndarray]:
        """-> {"text_embeds": (1, D) unit length, "text_states": (J, 1, L, W), "attention_mask": (1, L)}."""
        ids, mask = self.tokenize(text)
        emb, states = self.sessions["text_encoder"].run(["text_embeds", "text_states"],
                                                        {"input_ids": ids, "attention_mask": mask})
        return {"text_embeds": emb.astype(np.float32), "text_states": states.astype(np.float32), "attention_mask": mask}

    # embed a photo (the image->image query; indexing runs the same graph)
    def pixels(self, path: str | Path) -> np.ndarray:
        """manifest.preprocessing.steps: decode (a JPEG at 1/s by DCT scaling), EXIF orientation, 8-bit RGB
        (alpha on white), squash to S x S (antialiased bicubic), [0, 1], (x - mean) / std, NCHW."""
        s = int(self.pre["size"])
        with Image.open(path) as f:
            if f.format == "JPEG":
                # libjpeg decodes at 1/k: k the largest of 8, 4, 2, 1 with k <= min(w // s, h // s) (stored size)
                f.draft("RGB", (s, s))
            im = ImageOps.exif_transpose(f)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                white = Image.new("RGB", im.size, (255, 255, 255))
                white.paste(im, mask=im.split()[-1])
                im = white
            rgb = im.convert("RGB").resize((s, s), Image.Resampling.BICUBIC)  # Pillow's bicubic: a = -0.5, antialiased
        a = np.asarray(rgb, np.float32) / np.float32(255.0)
        mean, std = np.asarray(self.pre["mean"], np.float32), np.asarray(self.pre["std"], np.float32)
        return ((a - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)  # (1, 3, S, S)

    def embed_image(self, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
        """-> image_embeds (D,) unit length, image_tokens (T, Dt)."""
        e, t = self.sessions["image_encoder"].run(["image_embeds", "image_tokens"], {"pixel_values": self.pixels(path)})
        return e[0], t[0]

    # 5. rerank
    def cross_scores(self, query: dict[str, np.ndarray], tokens: np.ndarray, embeds: np.ndarray) -> np.ndarray:
        """One encoded query (``encode_text``) against n >= 1 candidates (tokens (n, T, Dt), embeds (n, D))
        -> scores (n,): cosine·cos + late_interaction·LI − photo_hubness·hub(e) − text_hubness·hub(t)
        (+ joint·J from the cross_encoder graph when ``joint`` is not 0)."""
        w, a = self.w, self.arrays
        tokens, embeds = tokens.astype(np.float32), embeds.astype(np.float32)
        t = query["text_embeds"][0]
        score = w["cosine"] * (embeds @ t)
        if w["late_interaction"]:
            h = query["text_states"][-1, 0]  # (L, W) the text's final states
            q = h @ a["li_weight"].T + a["li_bias"]
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            v = tokens / np.linalg.norm(tokens, axis=2, keepdims=True)
            score += w["late_interaction"] * np.einsum("ld,ntd->nlt", q, v).max(-1).mean(-1)

        score -= w["photo_hubness"] * self.photo_prior(embeds)
        score -= w["text_hubness"] * self._hub(t[None], a["image_bank"], w["text_hubness_floor"])[0]
        if w["joint"]:
            score += w["joint"] * np.concatenate([self.sessions["cross_encoder"].run(["joint"], {
                **query, "image_tokens": tokens[i:i + self.max_n], "image_embeds": embeds[i:i + self.max_n]})[0]
                for i in range(0, len(tokens), self.max_n)])
        return score.astype(np.float32)

    def photo_prior(self, embeds: np.ndarray) -> np.ndarray:
        """hub(e) (n,): the per-photo prior, in the rerank score and (first_stage_prior) before the cut."""
        return self._hub(embeds.astype(np.float32), self.arrays["text_bank"], self.w["photo_hubness_floor"])

    def _hub(self, x: np.ndarray, bank: np.ndarray, floor: float) -> np.ndarray:
        if not len(bank):
            return np.zeros(len(x), np.float32)
        z = self.w["hubness_temperature"] * (x @ bank.T)
        top = z.max(-1)
        return np.maximum(top + np.log(np.exp(z - top[:, None]).sum(-1)), floor)


# ---- the index file ------------------------------------------------------------------------------------
def connect(db: str | Path) -> Any:
    """SQLite with sqlite-vec loaded (stdlib sqlite3 when it can load extensions, else apsw)."""
    import sqlite_vec

    import sqlite3

    conn: Any = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    if hasattr(conn, "enable_load_extension"):
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
        return conn
    import apsw  # this Python's sqlite3 cannot load extensions (e.g. some pyenv and macOS builds)

    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    conn.enable_load_extension(True)
    conn.load_extension(sqlite_vec.loadable_path())
    return conn


@dataclass(frozen=True)
class IndexMeta:
    store: str  # int8 | float32 | bit: how vectors.embedding is stored
    dim: int  # D
    emb_scale: float  # int8 scale of embeddings: q = clip(round(x * scale), -127, 127)
    tok_scale: float  # int8 scale of image tokens
    tokens: tuple[int, int]  # (T, Dt)
    model_id: str  # the bundle's manifest model.id when indexed
    embedding_id: str  # its model.embedding_id ("" in older indexes): equal ids = same stored vectors


def read_meta(conn: Any) -> IndexMeta:
    m = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    return IndexMeta(store=m.get("store", "int8"), dim=int(m["embedding_dim"]),
                     emb_scale=float(m["embedding_int8_scale"]), tok_scale=float(m["token_int8_scale"]),
                     tokens=(int(m["token_count"]), int(m["token_dim"])), model_id=m["model_id"],
                     embedding_id=m.get("embedding_id", ""))


def same_vectors(meta: IndexMeta, manifest: dict[str, Any]) -> bool:
    """The index's vectors are this bundle's: same model, or same encoders (only the reranker differs)."""
    eid = manifest["model"].get("embedding_id", "")
    return meta.model_id == manifest["model"]["id"] or bool(eid and eid == meta.embedding_id)


def quantize(x: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.rint(x * scale), -127, 127).astype(np.int8)


def query_blob(q: np.ndarray, meta: IndexMeta) -> tuple[str, bytes]:
    """The SQL type function and the bytes that vec0's MATCH binds for a unit query vector."""
    if meta.store == "float32":
        return "vec_f32(?)", q.astype(np.float32).tobytes()
    if meta.store == "bit":
        return "vec_bit(?)", np.packbits(q > 0, bitorder="little").tobytes()
    return "vec_int8(?)", quantize(q, meta.emb_scale).tobytes()


def decode_embedding(knn: bytes | None, refine: bytes | None, meta: IndexMeta) -> np.ndarray:
    """4. Stored blobs -> unit float vector (D,): int8 codes + 4-bit rounding residual / scale."""
    if meta.store == "float32":
        x = np.frombuffer(knn or b"", np.float32).astype(np.float32)
        return x / max(float(np.linalg.norm(x)), 1e-12)
    codes, res = (knn, refine) if meta.store == "int8" else (refine[: meta.dim], refine[meta.dim:])  # type: ignore[index]
    x = np.frombuffer(codes or b"", np.int8).astype(np.float32)
    if res:
        b = np.frombuffer(res, np.uint8)
        r = np.empty(b.size * 2, np.float32)
        r[0::2] = (b & 15).astype(np.float32) - 8  # low nibble first
        r[1::2] = (b >> 4).astype(np.float32) - 8
        x = x + r / np.float32(16)
    x = x / np.float32(meta.emb_scale)
    return (x / max(float(np.linalg.norm(x)), 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class Result:
    photo_id: int
    path: str
    taken: int  # capture time, "wall-clock seconds" (local time counted as UTC)
    bi_score: float  # cosine of query and photo embedding
    cross_score: float | None  # cross-encoder score (None: not reranked)


def first_stage(model: Model, conn: Any, meta: IndexMeta, q: np.ndarray, n: int,
                rerank: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidates: the KNN's n best; with ``first_stage_prior`` and some of them returned unreranked
    (rerank < n), its 2n best reordered by cosine·cos − first_stage_prior·hub(e) and cut to n
    (edge_xmr.search.first_stage; a full rerank holds the prior in its own score)."""
    beta = float(model.w.get("first_stage_prior", 0.0))
    if not beta or rerank >= n:
        return knn(conn, meta, q, n)
    ids, embeds, bi = knn(conn, meta, q, 2 * n)
    key = (model.w["cosine"] * bi - beta * model.photo_prior(embeds)).astype(np.float32)
    order = np.argsort(-key, kind="stable")[:n]
    return ids[order], embeds[order], bi[order]


def knn(conn: Any, meta: IndexMeta, q: np.ndarray, n: int, after: int | None = None,
        before: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3 + 4. KNN in SQL (filters run inside vec0), then exact rescoring -> (ids, embeds, cosines), best first."""
    fn, blob = query_blob(q, meta)
    where, params = [f"embedding MATCH {fn}", "k = ?"], [blob, max(1, min(4096, n * OVERSAMPLE[meta.store]))]
    if after is not None:
        where.append("taken >= ?")
        params.append(after)
    if before is not None:
        where.append("taken < ?")
        params.append(before)
    col = "NULL" if meta.store == "bit" else "embedding"
    rows = list(conn.execute(f"SELECT rowid, {col} FROM vectors WHERE {' AND '.join(where)}", params))
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, meta.dim), np.float32), np.zeros(0, np.float32)
    ids = [int(r[0]) for r in rows]
    refine = {int(i): e for i, e in conn.execute(
        f"SELECT id, embedding FROM rerank WHERE id IN ({','.join('?' * len(ids))})", ids)}
    embeds = np.stack([decode_embedding(bytes(v) if v is not None else None,
                                        bytes(refine[i]) if refine.get(i) is not None else None, meta)
                       for i, (_, v) in zip(ids, rows)])
    scores = embeds @ q
    order = np.argsort(-scores, kind="stable")[:n]
    return np.asarray(ids, np.int64)[order], embeds[order], scores[order].astype(np.float32)


def image_tokens(conn: Any, meta: IndexMeta, ids: np.ndarray) -> np.ndarray:
    """int8 tokens of the candidates, dequantised -> (n, T, Dt) float32."""
    ids_l = [int(i) for i in ids]
    blobs = {int(i): bytes(t) for i, t in conn.execute(
        f"SELECT id, tokens FROM rerank WHERE id IN ({','.join('?' * len(ids_l))})", ids_l)}
    return np.stack([np.frombuffer(blobs[i], np.int8).astype(np.float32).reshape(meta.tokens) / meta.tok_scale
                     for i in ids_l])


def photos(conn: Any, ids: list[int]) -> dict[int, tuple[str, int]]:
    return {int(i): (str(p), int(t)) for i, p, t in conn.execute(
        f"SELECT id, path, taken FROM photos WHERE id IN ({','.join('?' * len(ids))})", ids)}


def search(model: Model, conn: Any, text: str, k: int = 10, rerank: int = 20) -> list[Result]:
    """Text -> the best k photos: KNN top max(k, rerank), the first ``rerank`` reranked."""
    meta = read_meta(conn)
    if not same_vectors(meta, model.manifest):
        raise SystemExit("this index was built with another model: its embeddings mean nothing to this bundle")
    query = model.encode_text(text)
    ids, embeds, bi = first_stage(model, conn, meta, query["text_embeds"][0], max(k, rerank), rerank)
    n = min(rerank, len(ids))
    cross = model.cross_scores(query, image_tokens(conn, meta, ids[:n]), embeds[:n]) if n else np.zeros(0, np.float32)
    order = [int(i) for i in np.argsort(-cross, kind="stable")] + list(range(n, len(ids)))
    return _results(conn, ids, bi, cross, order[:k])


def similar(model: Model, conn: Any, image: str | Path, k: int = 10) -> list[Result]:
    """Image -> image: bi-encoder only (a photo file that need not be indexed)."""
    meta = read_meta(conn)
    e, _ = model.embed_image(image)
    ids, _, bi = knn(conn, meta, e, k + 1)
    own = {i for i, (p, _) in photos(conn, [int(x) for x in ids]).items() if Path(p) == Path(image).resolve()}
    keep = [j for j, i in enumerate(ids) if int(i) not in own][:k]
    return _results(conn, ids, bi, np.zeros(0, np.float32), keep)


def _results(conn: Any, ids: np.ndarray, bi: np.ndarray, cross: np.ndarray, order: list[int]) -> list[Result]:
    info = photos(conn, [int(ids[j]) for j in order]) if order else {}
    return [Result(int(ids[j]), *info[int(ids[j])], float(bi[j]), float(cross[j]) if j < len(cross) else None)
            for j in order if int(ids[j]) in info]


# ---- the conformance kit -------------------------------------------------------------------------------
def conformance_results(model: Model, kit: str | Path) -> dict[str, np.ndarray]:
    """This port's outputs on the bundle's conformance kit (``conformance/cases.json``), keyed as
    ``conformance/check.py`` reads them."""
    kit = Path(kit)
    cases = json.loads((kit / "cases.json").read_text(encoding="utf-8"))
    with np.load(kit / "expected.npz") as ex:
        tokens, embeds = ex["candidates/image_tokens"], ex["candidates/image_embeds"]
    out: dict[str, np.ndarray] = {}
    for im in cases["images"]:
        px = model.pixels(kit / "images" / im["file"])
        out[f"pixel_values/{im['name']}"] = px
        out[f"image_embeds/{im['name']}"] = model.sessions["image_encoder"].run(["image_embeds"], {"pixel_values": px})[0][0]
    for j, text in enumerate(cases["texts"]):
        q = model.encode_text(text)
        out[f"input_ids/{j}"] = model.tokenize(text)[0][0]
        out[f"text_embeds/{j}"] = q["text_embeds"][0]
        out[f"scores/{j}"] = model.cross_scores(q, tokens, embeds)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Reference search over an edge-xmr index (bundle + onnxruntime + SQL)")
    ap.add_argument("bundle")
    ap.add_argument("db", nargs="?")
    ap.add_argument("text", nargs="?")
    ap.add_argument("--conformance", metavar="OUT.npz", default=None,
                    help="write this port's outputs on the bundle's conformance kit (no index needed)")
    ap.add_argument("--image", default=None, help="image -> image query instead of text")
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--rerank", type=int, default=20)
    a = ap.parse_args(argv)
    if a.conformance:
        np.savez(a.conformance, **conformance_results(Model(a.bundle), Path(a.bundle) / "conformance"))
        print(f"wrote {a.conformance}: check it with python {Path(a.bundle) / 'conformance' / 'check.py'} {a.conformance}")
        return 0
    if a.db is None:
        ap.error("give an index file (or --conformance OUT.npz)")
    if (a.text is None) == (a.image is None):
        ap.error("give a text query or --image FILE")
    model, conn = Model(a.bundle), connect(a.db)
    hits = similar(model, conn, a.image, a.k) if a.image else search(model, conn, a.text, a.k, a.rerank)
    for i, h in enumerate(hits, 1):
        cross = "" if h.cross_score is None else f"cross {h.cross_score:7.3f}  "
        print(f"{i:2d}. {cross}bi {h.bi_score:.3f}  {h.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
