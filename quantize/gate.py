"""The accuracy gate: a candidate bundle against a reference bundle on the same labelled photos.

Both bundles run in the torch-free runtime (:class:`edge_xmr.bundle.Bundle`) through
:func:`edge_xmr.evaluate.evaluate`, so the recalls are those of ``edge-xmr eval``. The gate passes
when the chosen metric (default ``rerank@20.t2i.R@1``) drops by at most ``max_drop`` points.

>>> report = check("fp32_bundle", "int8_bundle", "samples/ci/data")   # doctest: +SKIP
>>> report.passed, report.drop                                          # doctest: +SKIP
(True, 0.0)
>>> print(render_markdown(report))                                      # doctest: +SKIP

Besides the recalls it reports how close the candidate's outputs are to the reference's: cosine of
the text / image embeddings and image tokens (when both bundles have the same sizes), and how many
of the reference's bi-encoder top-10 the candidate also puts in its top-10.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_xmr.errors import EdgeXmrError

DEFAULT_METRIC = "rerank@20.t2i.R@1"
DEFAULT_MAX_DROP = 0.5  # points of recall (percent)
TOP_K = 10  # depth of the top-k agreement
_METRIC = re.compile(r"^(bi_encoder|cross_encoder|rerank@(\d+))\.(t2i|i2t)\.R@(1|5|10)$")


class GateError(EdgeXmrError, ValueError):
    """A usage or input problem (unknown metric, missing bundle or data): the gate cannot run."""


@dataclass(frozen=True)
class GateReport:
    """What ``check`` measured. Recalls are percentages; ``drop`` = reference - candidate."""

    passed: bool  # drop <= max_drop
    metric: str  # "method.direction.R@k", e.g. "rerank@20.t2i.R@1"
    max_drop: float  # the allowed drop, in points
    reference_value: float  # the metric of the reference bundle
    candidate_value: float  # the metric of the candidate bundle
    drop: float  # reference_value - candidate_value (negative: the candidate is better)
    reference: dict[str, Any]  # {"bundle", "precision", "name", "model_id", "size_mb"}
    candidate: dict[str, Any]  # same keys as ``reference``
    data: dict[str, Any]  # {"root", "split", "n_images", "n_captions", "n_queries"}
    recalls: dict[str, dict[str, dict[str, dict[str, float]]]]  # method -> dir -> R@k -> {reference, candidate, drop}
    latency_ms: dict[str, dict[str, float]]  # method -> {reference, candidate}: median per text query
    agreement: dict[str, Any]  # embedding cosines and top-10 agreement (see ``output_agreement``)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_metric(metric: str) -> tuple[str, str, str]:
    """``"rerank@20.t2i.R@1"`` -> ``("rerank@20", "t2i", "R@1")``; raises GateError when malformed."""
    m = _METRIC.match(metric.strip())
    if not m:
        raise GateError(f"unknown metric {metric!r}: expected METHOD.DIR.R@K with METHOD bi_encoder, "
                        f"rerank@N or cross_encoder, DIR t2i or i2t, K 1, 5 or 10 (e.g. {DEFAULT_METRIC})")
    return m.group(1), m.group(3), f"R@{m.group(4)}"


class _Recorder:
    """Wraps a bundle for ``evaluate`` and keeps the outputs of its bulk encoding calls."""

    def __init__(self, bundle: Any):
        self.bundle = bundle
        self.texts: npt.NDArray[np.float32] | None = None
        self.images: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None

    def embed_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        out = self.bundle.embed_texts(texts)
        if self.texts is None:
            self.texts = out
        return out  # type: ignore[no-any-return]

    def encode_images(self, images: Sequence[Any]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        out = self.bundle.encode_images(images)
        if self.images is None:
            self.images = out
        return out  # type: ignore[no-any-return]

    def encode_texts(self, texts: Sequence[str]) -> list[Any]:
        return self.bundle.encode_texts(texts)  # type: ignore[no-any-return]

    def encode_query(self, text: str) -> Any:
        return self.bundle.encode_query(text)

    def score_encoded(self, query: Any, tokens: npt.NDArray[Any], embeds: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        return self.bundle.score_encoded(query, tokens, embeds)  # type: ignore[no-any-return]


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def _stats(c: np.ndarray) -> dict[str, float]:
    return {"mean": round(float(c.mean()), 5), "min": round(float(c.min()), 5),
            "p1": round(float(np.percentile(c, 1)), 5)}


def topk_agreement(ref: np.ndarray, got: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Per row of two score matrices (Q, N): the fraction of ``ref``'s top-k also in ``got``'s top-k."""
    k = min(k, ref.shape[1])
    a = np.argsort(-ref, axis=1, kind="stable")[:, :k]
    b = np.argsort(-got, axis=1, kind="stable")[:, :k]
    return np.array([len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist())])


def output_agreement(ref: _Recorder, cand: _Recorder) -> dict[str, Any]:
    """Cosine statistics of the candidate's outputs against the reference's (None where the sizes
    differ, e.g. a distilled student with fewer image tokens) and bi-encoder top-10 agreement."""
    assert ref.texts is not None and ref.images is not None and cand.texts is not None and cand.images is not None
    (re_, rt), (ce, ct) = ref.images, cand.images
    same = ref.texts.shape == cand.texts.shape
    out: dict[str, Any] = {
        "text_cosine": _stats(_cos_rows(ref.texts, cand.texts)) if same else None,
        "image_cosine": _stats(_cos_rows(re_, ce)) if re_.shape == ce.shape else None,
        "token_cosine": _stats(_cos_rows(rt, ct)) if rt.shape == ct.shape else None,
    }
    s_ref, s_cand = ref.texts @ re_.T, cand.texts @ ce.T  # (C, I)
    t2i, i2t = topk_agreement(s_ref, s_cand), topk_agreement(s_ref.T, s_cand.T)
    out[f"t2i_top{TOP_K}_agreement"] = round(float(t2i.mean()), 4)
    out[f"i2t_top{TOP_K}_agreement"] = round(float(i2t.mean()), 4)
    return out


def _describe(bundle: Any, path: Path, precision: str) -> dict[str, Any]:
    m = bundle.manifest
    size = m.get("sizes", {}).get(f"onnx/{precision}", {}).get("total")
    return {"bundle": str(path), "precision": precision, "name": m["model"]["name"],
            "model_id": m["model"]["id"], "size_mb": size}


def _load(path: str | Path, precision: str, threads: int | None, what: str) -> Any:
    from edge_xmr.bundle import Bundle, BundleError

    try:
        return Bundle.load(path, precision=precision, threads=threads)
    except BundleError as e:
        raise GateError(f"{what}: {e}") from None


def check(reference: str | Path, candidate: str | Path, data: str | Path, metric: str = DEFAULT_METRIC,
          max_drop: float = DEFAULT_MAX_DROP, split: str | None = None, max_queries: int | None = None,
          reference_precision: str = "fp32", candidate_precision: str = "fp32",
          rerank_ks: Sequence[int] = (10, 20, 50), cross_all: bool = False, threads: int | None = None,
          seed: int = 0, progress: Callable[[str], None] | None = None) -> GateReport:
    """Run both bundles on the caption folder ``data`` and compare them.

    Args:
        reference: the reference bundle folder (e.g. the fp32 export of the released model).
        candidate: the bundle under test (may be the same folder with another ``candidate_precision``).
        data: caption folder (images/, captions.tsv, splits/).
        metric: gated metric ``METHOD.DIR.R@K`` (methods as in ``edge-xmr eval``: bi_encoder,
            rerank@N, cross_encoder).
        max_drop: the largest allowed drop of the metric, in points (percent).
        split: split name in ``data`` (None: every captioned image).
        max_queries: deterministic sample of queries per direction (None: all).
        reference_precision / candidate_precision: the bundles' ONNX variants ("fp32", "int8", or a
            variant added by ``edge-xmr quantize``, e.g. "int8-static").
        rerank_ks: rerank depths reported (the metric's depth is always added).
        cross_all: also run the cross-encoder over every pair (slow; forced for a cross_encoder metric).
        threads: onnxruntime intra-op threads (None: its default).
        seed: query sampling seed (both bundles see the same queries).
        progress: called with one-line progress messages.

    Raises:
        GateError: malformed metric, negative ``max_drop``, a bundle or the data that cannot be read.
    """
    from edge_xmr.data import DataError, read_captions
    from edge_xmr.evaluate import EvalSettings, evaluate
    from edge_xmr.preprocess import ImageError

    method, direction, k = parse_metric(metric)
    if not max_drop >= 0:
        raise GateError(f"max_drop must be >= 0, got {max_drop}")
    if max_queries is not None and max_queries < 1:
        raise GateError("max_queries must be >= 1")
    ks = set(rerank_ks)
    if method.startswith("rerank@"):
        ks.add(int(method.split("@")[1]))
    if min(ks, default=1) < 1:
        raise GateError("rerank depths must be >= 1")
    try:
        captions = read_captions(data, split)
    except DataError as e:
        raise GateError(str(e)) from None
    say = progress or (lambda s: None)
    ref_b = _load(reference, reference_precision, threads, "reference")
    cand_b = _load(candidate, candidate_precision, threads, "candidate")
    settings = EvalSettings(rerank_ks=tuple(sorted(ks)), max_queries=max_queries, seed=seed,
                            cross_all=cross_all or method == "cross_encoder", latency_queries=10)
    runs: dict[str, dict[str, Any]] = {}
    recorders = {"reference": _Recorder(ref_b), "candidate": _Recorder(cand_b)}
    for role, rec in recorders.items():
        def tell(s: str, r: str = role) -> None:
            say(f"{r}: {s}")

        try:
            runs[role] = evaluate(rec, captions, settings, progress=tell)
        except ImageError as e:
            raise GateError(str(e)) from None
    recalls: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for meth, dirs in runs["reference"]["results"].items():
        recalls[meth] = {}
        for d, vals in dirs.items():
            recalls[meth][d] = {}
            for kk, v in vals.items():
                c = runs["candidate"]["results"][meth][d][kk]
                recalls[meth][d][kk] = {"reference": round(v, 4), "candidate": round(c, 4), "drop": round(v - c, 4)}
    row = recalls[method][direction][k]
    drop = row["reference"] - row["candidate"]
    latency = {m: {"reference": round(runs["reference"]["latency_ms"][m], 3),
                   "candidate": round(runs["candidate"]["latency_ms"].get(m, float("nan")), 3)}
               for m in runs["reference"]["latency_ms"]}
    r = runs["reference"]
    return GateReport(
        passed=bool(drop <= max_drop + 1e-9), metric=f"{method}.{direction}.{k}", max_drop=float(max_drop),
        reference_value=row["reference"], candidate_value=row["candidate"], drop=round(drop, 4),
        reference=_describe(ref_b, Path(reference), reference_precision),
        candidate=_describe(cand_b, Path(candidate), candidate_precision),
        data={"root": str(data), "split": split, "n_images": r["n_images"], "n_captions": r["n_captions"],
              "n_queries": r["n_queries"]},
        recalls=recalls, latency_ms=latency,
        agreement=output_agreement(recorders["reference"], recorders["candidate"]))


# ---- rendering -------------------------------------------------------------------------------------
def _fmt(x: Any, nd: int = 1) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def _signed(x: float) -> str:
    return f"{x + 0.0:+.1f}"  # + 0.0 turns -0.0 into 0.0


def render_markdown(rep: GateReport) -> str:
    """The report as GitHub-flavoured markdown, for a pull-request comment."""
    mark = "✅ passed" if rep.passed else "❌ failed"
    ref, cand = rep.reference, rep.candidate
    lines = [
        f"### Accuracy gate {mark}: `{rep.metric}` dropped {rep.drop:+.2f} points (allowed {rep.max_drop:.2f})",
        "",
        f"reference **{ref['name']}** `{ref['bundle']}` ({ref['precision']}, {_fmt(ref['size_mb'], 2)} MB) "
        f"{_fmt(rep.reference_value, 2)} → candidate **{cand['name']}** `{cand['bundle']}` "
        f"({cand['precision']}, {_fmt(cand['size_mb'], 2)} MB) {_fmt(rep.candidate_value, 2)}",
        "",
        f"data `{rep.data['root']}` split `{rep.data['split'] or 'all'}`: {rep.data['n_images']} photos, "
        f"{rep.data['n_captions']} captions, queries t2i {rep.data['n_queries']['t2i']} / "
        f"i2t {rep.data['n_queries']['i2t']}",
        "",
        "| method | dir | R@1 ref | R@1 cand | Δ | R@5 ref | R@5 cand | Δ | R@10 ref | R@10 cand | Δ |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for meth, dirs in rep.recalls.items():
        for d, vals in dirs.items():
            cells = []
            for k in ("R@1", "R@5", "R@10"):
                v = vals[k]
                bold = "**" if f"{meth}.{d}.{k}" == rep.metric else ""
                cells += [f"{v['reference']:.1f}", f"{v['candidate']:.1f}", f"{bold}{_signed(-v['drop'])}{bold}"]
            lines.append(f"| {meth} | {d} | " + " | ".join(cells) + " |")
    a = rep.agreement
    lines += ["", "| output agreement | mean | min | p1 |", "|---|---|---|---|"]
    for name in ("text_cosine", "image_cosine", "token_cosine"):
        s = a.get(name)
        lines.append(f"| {name.replace('_', ' ')} | " + (" | ".join(f"{s[x]:.4f}" for x in ("mean", "min", "p1"))
                                                         if s else "– (sizes differ) | – | –") + " |")
    for d in ("t2i", "i2t"):
        lines.append(f"| {d} top-{TOP_K} agreement | {a[f'{d}_top{TOP_K}_agreement']:.3f} | | |")
    lines += ["", "| median ms / text query | reference | candidate |", "|---|---|---|"]
    for m, v in rep.latency_ms.items():
        lines.append(f"| {m} | {v['reference']:.2f} | {v['candidate']:.2f} |")
    lines += ["", "<sub>Recalls in percent (`edge-xmr eval`); Δ = candidate − reference; latency measured "
                  "on the machine that ran the gate, informative only.</sub>"]
    return "\n".join(lines) + "\n"


def render_text(rep: GateReport) -> str:
    """A short plain-text summary for the terminal."""
    head = (f"{'PASS' if rep.passed else 'FAIL'}: {rep.metric} reference {rep.reference_value:.2f} "
            f"candidate {rep.candidate_value:.2f} drop {rep.drop:+.2f} (max {rep.max_drop:.2f})")
    lines = [head, f"{'method':<12}{'dir':<5}" + "".join(f"{k + ' ref -> cand (delta)':>27}" for k in ("R@1", "R@5", "R@10"))]
    for meth, dirs in rep.recalls.items():
        for d, vals in dirs.items():
            cells = "".join(f"{v['reference']:>11.1f} ->{v['candidate']:>6.1f} ({_signed(-v['drop'])})"
                            for v in (vals[k] for k in ("R@1", "R@5", "R@10")))
            lines.append(f"{meth:<12}{d:<5}{cells}")
    a = rep.agreement
    cos = ", ".join(f"{n.split('_')[0]} cos {a[n]['mean']:.4f}" for n in ("text_cosine", "image_cosine", "token_cosine")
                    if a.get(n))
    lines.append((cos + ", " if cos else "") + f"t2i top-{TOP_K} agreement {a[f't2i_top{TOP_K}_agreement']:.3f}, "
                 f"i2t {a[f'i2t_top{TOP_K}_agreement']:.3f}")
    return "\n".join(lines)
