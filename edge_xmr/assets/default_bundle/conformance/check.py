"""Conformance check of a port (an app's preprocessing, tokenizer, graphs and score) against a bundle's kit.

A standalone file (numpy only), shipped in every bundle as ``conformance/check.py``. The port runs its
own code on the kit's inputs (``conformance/cases.json``: the images in ``conformance/images/``, the
texts, the candidates in ``expected.npz``) and saves what it got in one ``.npz`` (keys below); this
script compares that with ``conformance/expected.npz`` at the tolerances of ``cases.json`` and says
whether the port conforms.

    python conformance/check.py RESULTS.npz [--precision fp32|reduced] [--json]

Keys of RESULTS.npz, for each image i (its ``name`` in cases.json) and text j (0, 1, ...):

- ``pixel_values/<i>``  float32 (1, 3, S, S) or (3, S, S): what the port feeds ``image_encoder``
- ``image_embeds/<i>``  float32 (D,) (or (1, D)): ``image_encoder``'s output for those pixels
- ``input_ids/<j>``     int64 (L,) (or (1, L)): the tokenizer's ids after truncation
- ``text_embeds/<j>``   float32 (D,): ``text_encoder``'s output
- ``scores/<j>``        float32 (n,): the rerank score of text j against the kit's n candidates
  (``expected.npz``'s ``candidates/image_tokens`` (n, T, Dt) and ``candidates/image_embeds`` (n, D))

Exit status 0 when every check passes, 1 when one fails (each failing check is listed), 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

KIT = Path(__file__).resolve().parent


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def _get(results: Any, key: str, problems: list[str]) -> np.ndarray | None:
    if key not in results:
        problems.append(f"{key}: missing from the results")
        return None
    return np.asarray(results[key])


def check(results: Any, expected: Any, cases: dict[str, Any], precision: str = "fp32") -> dict[str, Any]:
    """Compare a port's ``results`` (mapping key -> array) with the kit; returns ``{"ok", "checks"}`` where
    each check is ``{"name", "ok", "value", "limit"}`` (and ``problems`` for missing/malformed keys)."""
    tol = cases["tolerances"]
    pre = cases["preprocessing"]
    mean, std = np.asarray(pre["mean"], np.float64), np.asarray(pre["std"], np.float64)
    checks: list[dict[str, Any]] = []
    problems: list[str] = []

    def add(name: str, value: float, limit: float, ok: bool) -> None:
        checks.append({"name": name, "ok": bool(ok), "value": round(value, 6), "limit": limit})

    cos_min = tol["embedding_min_cosine"][precision]
    for im in cases["images"]:
        name = im["name"]
        px = _get(results, f"pixel_values/{name}", problems)
        if px is not None:
            want = expected[f"pixels_rgb8/{name}"].astype(np.float64)  # (S, S, 3) 0..255
            if px.size != want.size:
                problems.append(f"pixel_values/{name}: {px.size} values, expected {want.size} (1, 3, S, S)")
            else:
                rgb = (px.reshape(3, *want.shape[:2]).transpose(1, 2, 0) * std + mean) * 255.0
                d = np.abs(rgb - want)
                lim = tol["pixels"]
                add(f"pixels {name}: mean |diff| (0-255)", float(d.mean()), lim["mean_abs"], d.mean() <= lim["mean_abs"])
                p99 = float(np.percentile(d, 99))
                add(f"pixels {name}: 99th percentile |diff|", p99, lim["p99_abs"], p99 <= lim["p99_abs"])
        e = _get(results, f"image_embeds/{name}", problems)
        if e is not None:
            c = _cos(e, expected[f"image_embeds/{name}"])
            add(f"image_embeds {name}: cosine", c, cos_min, c >= cos_min)
    for j, _ in enumerate(cases["texts"]):
        ids = _get(results, f"input_ids/{j}", problems)
        if ids is not None:
            want = expected[f"input_ids/{j}"]
            same = ids.reshape(-1).tolist() == want.reshape(-1).tolist()
            add(f"input_ids {j}: identical", float(same), 1.0, same)
        t = _get(results, f"text_embeds/{j}", problems)
        if t is not None:
            c = _cos(t, expected[f"text_embeds/{j}"])
            add(f"text_embeds {j}: cosine", c, cos_min, c >= cos_min)
        s = _get(results, f"scores/{j}", problems)
        if s is not None:
            want = expected[f"scores/{j}"]
            if s.reshape(-1).shape != want.shape:
                problems.append(f"scores/{j}: shape {s.shape}, expected {want.shape}")
                continue
            d = float(np.abs(s.reshape(-1) - want).max())
            lim = tol["score_max_abs"][precision]
            add(f"scores {j}: max |diff|", d, lim, d <= lim)
            same_top = int(np.argmax(s.reshape(-1))) == int(np.argmax(want))
            add(f"scores {j}: same best candidate", float(same_top), 1.0, same_top)
    return {"ok": not problems and all(c["ok"] for c in checks), "checks": checks, "problems": problems,
            "precision": precision}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Does a port conform to this bundle? (docs/bundle.md, Conformance kit)")
    ap.add_argument("results", type=Path, help=".npz the port wrote (keys: see this file's docstring)")
    ap.add_argument("--precision", choices=("fp32", "reduced"), default="fp32",
                    help="fp32 graphs, or reduced precision (int8 graphs, CoreML fp16): looser embedding/score limits")
    ap.add_argument("--kit", type=Path, default=KIT, help="the kit folder (default: this file's folder)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    try:
        cases = json.loads((args.kit / "cases.json").read_text(encoding="utf-8"))
        with np.load(args.kit / "expected.npz") as ex, np.load(args.results) as res:
            report = check(res, ex, cases, args.precision)
    except (OSError, ValueError, KeyError) as e:
        print(f"check.py: cannot read the kit or the results: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for c in report["checks"]:
            if not c["ok"]:
                print(f"FAIL {c['name']} = {c['value']} (limit {c['limit']})")
        for p in report["problems"]:
            print(f"FAIL {p}")
        n_ok = sum(c["ok"] for c in report["checks"])
        verdict = "CONFORMS" if report["ok"] else "DOES NOT CONFORM"
        print(f"{verdict}: {n_ok}/{len(report['checks'])} checks passed ({args.precision})")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
