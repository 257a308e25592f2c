"""Regenerate every figure of BENCHMARKS.md (PNG) and BENCHMARKS.md itself from benchmark runs.

    python bench/report.py --run          # run every benchmark, then draw (about 25-35 min on 2 cores)
    python bench/report.py                # only redraw from the JSON files in bench/results/
    python bench/report.py --run --only recall_depth demo

Benchmarks (run here, each writes one JSON file in bench/results/report/; without --run a figure
uses that file, else the benchmark's own run in bench/results/, which this script never overwrites):

- ``export``: bench/bench_export.py (export_lite.json): bundle sizes per variant; keeps the bundle
  (ONNX fp32 + int8) in the cache for the next two
- ``quantize``: bench/bench_quantize.py (quantize.json, only with ``--student MODEL_DIR``): teacher
  (the default model) and distilled student x fp32 / int8: recalls, query latency, bundle size
- ``recall_depth``: bench/bench_recall_depth.py (recall_depth.json): Flickr8k dev recall vs rerank
  depth for the default bundle's fp32 and int8 graphs (and the student's, when quantize ran)
- ``runtime``: bench/bench_runtime.py (runtime.json): latency vs library size, stage times
- ``demo``: ``edge-xmr demo`` in a fresh cache (demo.json): set-up + indexing + queries, wall time

Every figure states the machine, the date and the command of the run it draws; numbers come only
from those files. When run here, the command and date of each benchmark go to provenance.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED_RESULTS = REPO / "bench" / "results"  # what the benchmarks write when run on their own
RESULTS = SHARED_RESULTS / "report"  # what this script's runs write (never overwrites the files above)
FIGURES = REPO / "bench" / "figures"
DOC = REPO / "BENCHMARKS.md"
NOTE = REPO / "bench" / "results" / "report" / "NOTE.md"  # placed under the header when present
PROVENANCE = RESULTS / "provenance.json"
FLICKR_CITE = "Flickr8k: Hodosh, Young & Hockenmaier 2013, JAIR 47"
STEPS = ("export", "quantize", "recall_depth", "runtime", "demo")
QUANT_WORK = Path(tempfile.gettempdir()) / "edge_xmr_bench_quantize"  # bench_quantize.py's bundles


# ---- running the benchmarks ---------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} (Python {platform.python_version()})"


def bench_bundle() -> Path:
    from edge_xmr.demo import cache_dir

    return cache_dir() / "bench" / "lite_bundle"


def onnx_precisions(bundle: Path) -> list[str]:
    """The ONNX precisions a bundle holds (fp32 when its manifest is not there yet)."""
    try:
        m = json.loads((bundle / "manifest.json").read_text())
    except (OSError, ValueError):
        return ["fp32"]
    return sorted({v.split("/", 1)[1] for v in m["graphs"]["text_encoder"]["variants"] if v.startswith("onnx/")})


def recall_variants(with_student: bool) -> list[tuple[str, Path]]:
    """Bundles compared by recall_depth: the default model's (from the export step; the teacher) and,
    when bench_quantize.py ran in this invocation, its distilled student."""
    out = [("teacher" if with_student else "default", bench_bundle())]
    if with_student:
        out.append(("student", QUANT_WORK / "student_bundle"))
    return out


def commands(quick: bool, student: str | None, ran_quantize: bool = False) -> dict[str, list[str]]:
    py = sys.executable
    b = bench_bundle()
    variants = []
    for name, path in recall_variants(ran_quantize):
        for prec in [p for p in onnx_precisions(path) if p in ("fp32", "int8")]:
            variants += ["--variant", f"{name} {prec}={path}:{prec}"]
    out = rel(RESULTS)
    return {
        "export": [py, "bench/bench_export.py", "--json", f"{out}/export_lite.json", "--keep", str(b)]
        + (["--images", "32", "--no-speed"] if quick else []),
        "quantize": [py, "bench/bench_quantize.py", "--teacher", "default", "--student", student or "?",
                     "--out", f"{out}/quantize.json"] + (["--max-queries", "50", "--latency-queries", "10"] if quick else []),
        "recall_depth": [py, "bench/bench_recall_depth.py", *variants, "--out", f"{out}/recall_depth.json"]
        + (["--queries", "50"] if quick else []),
        "runtime": [py, "bench/bench_runtime.py", "--bundle", str(b), "--out", f"{out}/runtime.json"]
        + (["--quick"] if quick else []),
        "demo": [py, "-m", "edge_xmr.cli", "demo"],
    }


def rel(p: Path) -> str:
    try:
        return p.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(p)


def shown(cmd: list[str]) -> str:
    return " ".join(["python", *cmd[1:]]).replace(str(Path.home()), "~")


def run_step(name: str, cmd: list[str]) -> None:
    shown_cmd = shown(cmd)
    print(f"\n== {name}: {shown_cmd}", flush=True)
    env = dict(os.environ)
    tmp = None
    if name == "demo":  # a fresh cache: set-up (bundle export) + indexing + queries, as on a new machine
        tmp = tempfile.mkdtemp(prefix="edge_xmr_demo_")
        env["EDGE_XMR_CACHE"] = tmp
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=REPO, env=env, text=True, capture_output=name == "demo")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = round(time.time() - t0, 1)
    if p.returncode != 0:
        if name == "demo":
            print(p.stdout[-3000:], p.stderr[-3000:], sep="\n")
        raise SystemExit(f"{name} failed (exit {p.returncode})")
    if name == "demo":
        print(p.stdout)
        (RESULTS / "demo.json").write_text(json.dumps(parse_demo(p.stdout, seconds), indent=1) + "\n")
    prov = json.loads(PROVENANCE.read_text()) if PROVENANCE.is_file() else {}
    prov[name] = {"command": shown_cmd, "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(t0)),
                  "machine": machine(), "seconds": seconds}
    PROVENANCE.write_text(json.dumps(prov, indent=1) + "\n")


def parse_demo(out: str, seconds: float) -> dict[str, Any]:
    """The demo's printed results -> per-query top hit, stage times and the expected-photo check."""
    queries = []
    for block in out.split("text → image: ")[1:]:
        q = re.match(r"“(.*?)”", block)
        t = re.search(r"embed ([\d.]+) ms · KNN ([\d.]+) ms · rerank ([\d.]+) ms \((\d+) candidates\) · total ([\d.]+)",
                      block)
        top = re.search(r"1\. cross +(-?[\d.]+) +bi (-?[\d.]+) +(\S+)", block)
        ok = re.search(r"([✓✗]) expected (\S+) first", block)
        queries.append({"query": q.group(1) if q else "", "top1": top.group(3) if top else None,
                        "cross": float(top.group(1)) if top else None, "bi": float(top.group(2)) if top else None,
                        "expected": ok.group(2) if ok else None, "correct": ok.group(1) == "✓" if ok else None,
                        "embed_ms": float(t.group(1)) if t else None, "knn_ms": float(t.group(2)) if t else None,
                        "rerank_ms": float(t.group(3)) if t else None, "candidates": int(t.group(4)) if t else None,
                        "total_ms": float(t.group(5)) if t else None})
    return {"wall_s_fresh_cache": seconds, "queries": queries}


# ---- reading results ---------------------------------------------------------------------------
def result_file(name: str) -> Path:
    """This script's run of a benchmark if there is one, else the benchmark's own run."""
    return RESULTS / name if (RESULTS / name).is_file() else SHARED_RESULTS / name


def load(name: str) -> dict[str, Any] | None:
    f = result_file(name)
    return json.loads(f.read_text()) if f.is_file() else None


def provenance(step: str, fallback_cmd: str, result: str) -> dict[str, str]:
    prov = json.loads(PROVENANCE.read_text()) if PROVENANCE.is_file() else {}
    f = result_file(result)
    if step in prov and f.parent == RESULTS:
        return prov[step]
    date = time.strftime("%Y-%m-%d %H:%M", time.localtime(f.stat().st_mtime)) if f.is_file() else "?"
    script = fallback_cmd.split()[1] if len(fallback_cmd.split()) > 1 else fallback_cmd
    return {"command": f"python {script} (arguments not recorded: run outside bench/report.py)",
            "date": f"{date} (file time)", "machine": machine()}


def footer(fig: Any, prov: dict[str, str], extra: str = "") -> None:
    text = f"{prov['machine']} · {prov['date']} · {prov['command']}"
    if extra:
        text += f"\n{extra}"
    fig.text(0.01, 0.01, text, fontsize=6.5, color="#555", ha="left", va="bottom", wrap=True)


def runtime_prov(rt: dict[str, Any], prov: dict[str, str]) -> dict[str, str]:
    """Provenance plus the load average the runtime benchmark saw (the CPU is shared)."""
    m = rt.get("machine", {})
    a, b = m.get("loadavg_at_start"), m.get("loadavg_at_end")
    if not (a and b):
        return prov
    return {**prov, "machine": f"{prov['machine']}, load average {a[0]} at start, {b[0]} at end"}


def runtime_rows(rt: dict[str, Any]) -> list[dict[str, Any]]:
    """Latency rows with the store of the pass each component row belongs to."""
    rows, store = [], "?"
    for r in rt.get("latency", []):
        if r["store"] in ("int8", "float32", "bit"):
            store = r["store"]
        rows.append({**r, "pass": store})
    return rows


# ---- figures -----------------------------------------------------------------------------------
def fig_recall_depth(plt: Any, rd: dict[str, Any]) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.4))
    ks = rd["depths"]
    for i, v in enumerate(rd["variants"]):
        ax.plot(ks, [v["by_depth"][str(k)]["R@1"] for k in ks], "o-", color=f"C{i}", label=f"{v['name']}: R@1 after rerank@k")
        if i == 0:  # the ceiling of every variant is close: one line keeps the plot readable
            ax.plot(ks, [v["by_depth"][str(k)]["in_top_k"] for k in ks], ":", color=f"C{i}", alpha=0.7,
                    label=f"{v['name']}: photo in the bi-encoder's top k (ceiling of rerank@k)")
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("rerank depth k (candidates scored by the cross-encoder; k = 1: bi-encoder only)")
    ax.set_ylabel("text→image recall (%)")
    ax.set_title(f"Recall@1 vs rerank depth — {rd['data']['name']}, {rd['data']['images']} photos, "
                 f"{rd['data']['queries']} queries", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.subplots_adjust(bottom=0.24)
    footer(fig, {"machine": _mach(rd), "date": rd["date"], "command": _home(rd["command"])}, FLICKR_CITE)
    return save(fig, "recall_vs_depth.png")


def _home(cmd: str) -> str:
    return cmd.replace(str(Path.home()), "~")


def _mach(rd: dict[str, Any]) -> str:
    m = rd.get("machine", {})
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, load {m.get('loadavg', ['?'])[0]}"


_CANON = {  # query names of bench_runtime.py (old and new spellings) -> one key
    "rerank=20": "rerank20", "rerank=0": "rerank0", "rerank=20 +folder+date": "rerank20_filters",
    "rerank=20, int8 graphs": "rerank20_int8", "rerank=20, int8 text+cross graphs": "rerank20_int8",
    "numpy exact float + rerank=20": "numpy_rerank20", "KNN top-20 (vec0 + rescoring)": "knn",
    "numpy exact brute force top-20": "numpy_knn", "text encoder": "embed",
    "cross-encoder on 20 (+ token fetch)": "cross",
}


def canon(r: dict[str, Any]) -> str | None:
    q = str(r["query"]).removeprefix("search ").removeprefix("stage: ")
    if r["store"] == "numpy float (RAM)" and q == "rerank=20":
        return "numpy_rerank20"
    return _CANON.get(q)


LATENCY_SERIES = {  # key -> label, in legend order
    "rerank20": "search, rerank top 20 (sqlite-vec)",
    "rerank0": "search, no rerank (sqlite-vec)",
    "rerank20_int8": "search, rerank top 20, int8 graphs",
    "numpy_rerank20": "exact numpy search + rerank top 20 (float matrix in RAM)",
    "knn": "sqlite-vec KNN top-20 only",
    "numpy_knn": "exact numpy top-20 only",
}


def latency_series(rt: dict[str, Any], store: str = "int8") -> dict[str, list[tuple[int, float, float]]]:
    out: dict[str, list[tuple[int, float, float]]] = {}
    for r in runtime_rows(rt):
        key = canon(r)
        if r["pass"] == store and key in LATENCY_SERIES:
            out.setdefault(key, []).append((int(r["n"]), float(r["p50_ms"]), float(r["p90_ms"])))
    return {LATENCY_SERIES[k]: sorted(out[k]) for k in LATENCY_SERIES if k in out}


def fig_latency(plt: Any, rt: dict[str, Any], prov: dict[str, str]) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.4))
    for i, (name, pts) in enumerate(latency_series(rt).items()):
        n, p50, p90 = zip(*pts)
        ax.plot(n, p50, "o-", color=f"C{i}", label=name)
        ax.fill_between(n, p50, p90, color=f"C{i}", alpha=0.12)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("photos in the library")
    ax.set_ylabel("ms per query (p50; band up to p90)")
    ax.set_title("Query latency vs library size (int8 store, k = 10)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.subplots_adjust(bottom=0.24)
    footer(fig, prov, f"Real vectors: {FLICKR_CITE}; larger sizes: synthetic unit vectors.")
    return save(fig, "latency_vs_size.png")


STAGES = (("embed", "embed the query"), ("knn", "KNN + rescoring"), ("cross", "rerank 20 (+ token fetch)"))


def stage_table(rt: dict[str, Any], store: str = "int8") -> list[dict[str, Any]]:
    by: dict[tuple[str, int], dict[str, float]] = {}
    for r in runtime_rows(rt):
        key = canon(r)
        if r["pass"] == store and key:
            by.setdefault((r["data"], int(r["n"])), {})[key] = float(r["p50_ms"])
    out = []
    for (data, n), q in sorted(by.items(), key=lambda x: x[0][1]):
        if all(s in q for s, _ in STAGES):
            out.append({"data": data, "n": n, **{label: q[s] for s, label in STAGES},
                        "whole search (rerank=20)": q.get("rerank20")})
    return out


def fig_stages(plt: Any, rt: dict[str, Any], prov: dict[str, str]) -> Path:
    rows = stage_table(rt)
    fig, ax = plt.subplots(figsize=(9, 2.4 + 0.5 * len(rows)))
    for y, r in enumerate(rows):
        left = 0.0
        for i, (_, label) in enumerate(STAGES):
            ax.barh(y, r[label], left=left, color=f"C{i}", label=label if y == 0 else None)
            left += r[label]
        if r["whole search (rerank=20)"]:
            ax.plot([r["whole search (rerank=20)"]], [y], "k|", markersize=18,
                    label="whole search (measured end to end)" if y == 0 else None)
    ax.set_yticks(range(len(rows)), [r["data"] for r in rows], fontsize=8)
    ax.set_xlabel("ms (p50 of each stage measured alone)")
    ax.set_title("Where the time of one text query goes (int8 store, rerank 20, k = 10)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, axis="x")
    fig.subplots_adjust(bottom=0.34, top=0.9, left=0.17, right=0.7)
    footer(fig, prov, f"Real vectors: {FLICKR_CITE}")
    return save(fig, "query_stages.png")


def variant_rows(q: dict[str, Any]) -> list[dict[str, Any]]:
    """quantize.json rows -> one flat row per variant (teacher/student x precision)."""
    out = []
    for r in q["rows"]:
        res = r["results"]
        out.append({"variant": r["name"], "bundle MB": r["size"]["total_mb"],
                    "bi R@1": res["bi_encoder"]["t2i"]["R@1"], "rerank@20 R@1": res["rerank@20"]["t2i"]["R@1"],
                    "rerank@20 R@5": res["rerank@20"]["t2i"]["R@5"], "rerank@20 R@10": res["rerank@20"]["t2i"]["R@10"],
                    "query ms (rerank@20)": r["latency_ms"]["rerank@20"], "query ms (bi)": r["latency_ms"]["bi_encoder"]})
    return out


def fig_variants(plt: Any, q: dict[str, Any], prov: dict[str, str]) -> Path:
    rows = variant_rows(q)
    names = [r["variant"].replace(" ", "\n") for r in rows]
    colors = ["C0" if r["variant"].startswith("teacher") else "C3" for r in rows]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(11, 4))
    a1.bar(names, [r["bundle MB"] for r in rows], color=colors)
    for i, r in enumerate(rows):
        a1.text(i, r["bundle MB"], f"{r['bundle MB']:.1f}", ha="center", va="bottom", fontsize=8)
    a1.set_ylabel("MB shipped (graphs + tokenizer)")
    a1.set_title("Bundle size", fontsize=9)
    x = range(len(rows))
    a2.bar([i - 0.2 for i in x], [r["bi R@1"] for r in rows], 0.4, label="bi-encoder", color="C1")
    a2.bar([i + 0.2 for i in x], [r["rerank@20 R@1"] for r in rows], 0.4, label="rerank@20", color="C2")
    a2.set_xticks(list(x), names)
    a2.set_ylabel("text→image R@1 (%)")
    a2.set_title(f"Recall ({q['data']['split']}, {q['data']['n_images']} photos)", fontsize=9)
    a2.legend(fontsize=7)
    a3.bar(names, [r["query ms (rerank@20)"] for r in rows], color=colors)
    a3.set_ylabel("ms per text query (median)")
    a3.set_title("Query: embed + rank + rerank 20", fontsize=9)
    for ax in (a1, a2, a3):
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle("Teacher / student x fp32 / int8", fontsize=10)
    fig.subplots_adjust(bottom=0.27, wspace=0.35)
    footer(fig, prov, f"Flickr8k dev; {FLICKR_CITE}. {q['machine'].get('note', '')}")
    return save(fig, "variants.png")


def fig_variants_default(plt: Any, ex: dict[str, Any] | None, rd: dict[str, Any] | None,
                         prov_ex: dict[str, str]) -> Path:
    """Without bench_quantize.py's run: the default model's formats (sizes) and fp32/int8 (recall)."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    sizes = (ex or {}).get("report", {}).get("sizes", {})
    names = list(sizes)
    a1.bar(names, [sizes[n]["total"] for n in names], color="C0")
    for i, n in enumerate(names):
        a1.text(i, sizes[n]["total"], f"{sizes[n]['total']:.1f}", ha="center", va="bottom", fontsize=8)
    a1.set_ylabel("MB (graphs)")
    a1.set_title("Default model: size per format / precision", fontsize=9)
    a1.tick_params(axis="x", labelsize=7, rotation=20)
    lines = [f"sizes: {prov_ex['machine']} · {prov_ex['date']} · {prov_ex['command']}"]
    if rd:
        vs = rd["variants"]
        k = "20" if "20" in vs[0]["by_depth"] else str(max(rd["depths"]))
        x = range(len(vs))
        a2.bar([i - 0.2 for i in x], [v["bi_encoder"]["R@1"] for v in vs], 0.4, label="bi-encoder", color="C1")
        a2.bar([i + 0.2 for i in x], [v["by_depth"][k]["R@1"] for v in vs], 0.4, label=f"rerank@{k}", color="C2")
        a2.set_xticks(list(x), [f"{v['name']}\n{v['size_mb']:.0f} MB" for v in vs], fontsize=7)
        a2.set_ylabel("text→image R@1 (%)")
        a2.set_title(f"Recall per precision ({rd['data']['name']}, {rd['data']['queries']} queries)", fontsize=9)
        a2.legend(fontsize=7)
        lines.append(f"recall: {_mach(rd)} · {rd['date']} · {_home(rd['command'])} · {FLICKR_CITE}")
    a2.text(0.5, -0.3, "student: not measured yet (bench/bench_quantize.py)", transform=a2.transAxes,
            ha="center", fontsize=7, color="#a00")
    fig.subplots_adjust(bottom=0.36, wspace=0.3)
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=6, color="#555", ha="left", va="bottom", wrap=True)
    return save(fig, "variants.png")


def quantize_prov(q: dict[str, Any]) -> dict[str, str]:
    m = q.get("machine", {})
    return {"machine": f"{machine().split(',')[0]}, {m.get('cpu_count', '?')} cores, "
                       f"{m.get('onnxruntime_threads', '?')} onnxruntime thread(s)",
            "date": str(q.get("date", "?"))[:16].replace("T", " ") + " UTC", "command": str(q.get("command", "?"))}


def save(fig: Any, name: str) -> Path:
    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / name
    fig.savefig(path, dpi=110)
    fig.clf()
    return path


# ---- BENCHMARKS.md -----------------------------------------------------------------------------
def md_table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    def cell(x: Any) -> str:
        return f"{x:.2f}" if isinstance(x, float) else ("–" if x is None else str(x))

    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                     + ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows])


def src(prov: dict[str, str]) -> str:
    note = f" ({prov['note']})" if prov.get("note") else ""
    return f"*Run:* `{prov['command']}`{note} · {prov['date']} · {prov['machine']}"


def write_doc(rd: dict[str, Any] | None, rt: dict[str, Any] | None, ex: dict[str, Any] | None,
              demo: dict[str, Any] | None, qz: dict[str, Any] | None, sc: dict[str, Any] | None = None) -> None:
    cmds = commands(False, None)
    p_rt = runtime_prov(rt or {}, provenance("runtime", shown(cmds["runtime"]), "runtime.json"))
    p_ex = provenance("export", shown(cmds["export"]), "export_lite.json")
    p_demo = provenance("demo", "python -m edge_xmr.cli demo (fresh cache)", "demo.json")
    parts = [HEADER.format(cmd="python bench/report.py --run")]
    if NOTE.is_file():  # a hand-written note on which model each section ran on (kept across runs)
        parts.append(NOTE.read_text())

    parts.append("## 1. Recall@1 vs rerank depth\n")
    if rd:
        parts.append(f"![recall vs depth](bench/figures/recall_vs_depth.png)\n\n*Run:* `{_home(rd['command'])}` · "
                     f"{rd['date']} · {_mach(rd)}. Data: {rd['data']['name']} ({rd['data']['images']} photos, "
                     f"{rd['data']['queries']} caption queries; {FLICKR_CITE}).\n")
        rows = []
        for v in rd["variants"]:
            for k in rd["depths"]:
                d = v["by_depth"][str(k)]
                rows.append({"variant": v["name"], "k": k, "R@1": d["R@1"], "R@5": d["R@5"], "R@10": d["R@10"],
                             "photo in top k": d["in_top_k"]})
        parts.append(md_table(rows, ["variant", "k", "R@1", "R@5", "R@10", "photo in top k"]) + "\n")
    else:
        parts.append(NOT_RUN.format(cmd="python bench/report.py --run --only export recall_depth"))

    parts.append("## 2. Query latency vs library size\n")
    if rt:
        parts.append(f"![latency vs size](bench/figures/latency_vs_size.png)\n\n{src(p_rt)}. Bundle: "
                     f"{rt.get('bundle', {}).get('origin', '?')} ({rt.get('bundle', {}).get('model', '?')}).\n")
        rows = [{"series": name, "photos": n, "p50 ms": p50, "p90 ms": p90}
                for name, pts in latency_series(rt).items() for n, p50, p90 in pts]
        parts.append(md_table(rows, ["series", "photos", "p50 ms", "p90 ms"]) + "\n")
    else:
        parts.append(NOT_RUN.format(cmd="python bench/report.py --run --only runtime"))

    parts.append("## 3. Stage breakdown of one query\n")
    if rt and stage_table(rt):
        parts.append(f"![query stages](bench/figures/query_stages.png)\n\n{src(p_rt)}.\n")
        parts.append(md_table(stage_table(rt), ["data", *[label for _, label in STAGES], "whole search (rerank=20)"])
                     + "\n")
    else:
        parts.append(NOT_RUN.format(cmd="python bench/report.py --run --only runtime"))
    if demo and demo.get("queries"):
        parts.append(f"\n`edge-xmr demo` on the sample photos, fresh cache (bundle export + indexing + queries): "
                     f"**{demo['wall_s_fresh_cache']:.0f} s** wall time. {src(p_demo)}.\n")
        parts.append(md_table(demo["queries"], ["query", "top1", "expected", "correct", "cross", "bi", "embed_ms",
                                                "knn_ms", "rerank_ms", "total_ms"]) + "\n")

    parts.append("## 4. Bundle size and recall per variant\n")
    if qz:
        pq = quantize_prov(qz)
        parts.append(f"![variants](bench/figures/variants.png)\n\n*Run:* `{pq['command']}` · {pq['date']} · "
                     f"{pq['machine']}. Data: Flickr8k {qz['data']['split']} ({qz['data']['n_images']} photos, "
                     f"queries {qz['data']['queries']}; {FLICKR_CITE}).\n")
        rows = variant_rows(qz)
        parts.append(md_table(rows, list(rows[0])) + "\n")
        crit = qz.get("summary", {}).get("criteria", {})
        if crit:
            parts.append("\n" + "\n".join(f"- {k}: **{'yes' if v else 'no'}**" for k, v in crit.items()) + "\n")
    else:
        if ex or rd:
            parts.append("![variants](bench/figures/variants.png)\n")
        parts.append("Teacher / student: " + NOT_RUN.format(
            cmd="python bench/report.py --run --only quantize --student MODEL_DIR"))
        if rd:
            rows = [{"variant": v["name"], "bundle MB": v["size_mb"], "bi R@1": v["bi_encoder"]["R@1"],
                     "rerank@20 R@1": v["by_depth"].get("20", {}).get("R@1"), "image ms": v["image_embed_ms"],
                     "cross ms / candidate": v["cross_ms_per_candidate"]} for v in rd["variants"]]
            parts.append(f"\nfp32 / int8 of the default model: *Run:* `{_home(rd['command'])}` · {rd['date']} "
                         f"({rd['data']['name']}, {rd['data']['queries']} queries; {FLICKR_CITE}).\n\n"
                         + md_table(rows, list(rows[0])) + "\n")
    if ex and ex.get("report", {}).get("sizes"):
        parts.append(f"\nEvery format of the default model's bundle: {src(p_ex)}. Model: {ex.get('model', '?')}; "
                     f"export wall time {ex.get('export_wall_s')} s.\n")
        rows = [{"variant": n, **{k: v for k, v in sz.items()}} for n, sz in ex["report"]["sizes"].items()]
        cols = ["variant"] + sorted({k for r in rows for k in r if k not in ("variant", "total")}) + ["total"]
        parts.append(md_table(rows, cols) + "\n\n(MB = 10^6 bytes; `shared_weights`: one weight file the ONNX "
                     "graphs share; ORT and Core ML files each hold their own weights.)\n")
    parts.append(scale_section(sc))
    parts.append(PUBLISHED)
    DOC.write_text("\n".join(parts))


SCALE_SERIES = [("search rerank=20", "first pass: whole search"), ("numpy exact + rerank=20", "numpy exact: whole search"),
                ("vec0 brute force + rerank=20", "vec0 brute force: whole search"),
                ("KNN top-20: first pass", "first pass: KNN"), ("KNN top-20: numpy exact float32", "numpy: KNN"),
                ("KNN top-20: vec0 brute force (schema 3)", "vec0 brute force: KNN")]


def scale_section(sc: dict[str, Any] | None) -> str:
    """Section 5 from bench/results/scale.json (bench/bench_scale.py draws its own figure: building
    the 1M-photo index takes long, so ``--run`` does not run it)."""
    if not sc:
        return ("## 5. Library size (in-RAM first pass)\n"
                + NOT_RUN.format(cmd="python bench/bench_scale.py --sizes 10000 100000 300000 1000000"))
    sizes = sorted(r["n"] for r in sc["rows"] if r["data"] == "synthetic")
    head = (f"## 5. Library size: {sizes[0]:,} to {sizes[-1]:,} photos (in-RAM first pass)\n"
            + ("" if sizes[-1] >= 1_000_000 else "\n1M photos: not run (`python bench/bench_scale.py --sizes "
               "1000000` adds it).\n"))
    m, fc = sc["machine"], sc["first_pass_config"]
    out = [head, f"![latency vs size](bench/figures/scale_latency.png)\n\n*Run:* `{sc['command']}`"
           + "".join(f", `{c}`" for c in sc.get("earlier_commands", [])) + f" · {m['date']} · {m['cpu']}, "
           f"{m['cpus']} cores; {m['shared']} (load average {m['loadavg_at_start'][0]:.1f} at start, "
           f"{m['loadavg_at_end'][0]:.1f} at end). Bundle: default ({sc['bundle']['precision']}). Synthetic photos: "
           f"a mixture of Gaussians with the mean and covariance of the default bundle's embeddings of the 7000 "
           f"Flickr8k train + dev photos ({sc['synthetic']['clusters']}, within-cluster share "
           f"{sc['synthetic']['within_cluster_std_share']}: {sc['synthetic']['calibration']}); `real` is those "
           f"7000 photos. Queries: Flickr8k dev captions. First pass (`FirstPassConfig`): exact codes up to "
           f"{fc['exact_max']:,} photos, above PCA to {fc['dims']} dimensions and the best {fc['rescore']} "
           f"rescored exactly. Latency: p50 ms (p90 ms) wall time, the variants interleaved query by query; "
           f"*vs numpy*: per query, the search's time minus the numpy search's run next to it (median; negative "
           f"= faster). Recall@10 against exact float search; *filtered*: a date + folder filter keeping about "
           f"{sc['rows'][-1]['filtered_fraction']:.0%} of the photos. *open + load*: opening the index and the "
           f"first search (which loads every code), next to `np.load` of the float32 matrix.\n"]
    rows = []
    for r in sc["rows"]:
        lat, rec = r["latency_ms"], r["recall@10"]
        row: dict[str, Any] = {"data": r["data"], "photos": r["n"], "codes": r["first_pass"]["codes"]}
        for key, label in SCALE_SERIES:
            row[label] = f"{lat[key]['p50']} ({lat[key]['p90']})"
        paired = r.get("paired_minus_numpy_ms", {}).get("search rerank=20")
        row["first pass vs numpy (paired)"] = f"{paired['p50']:+.1f}" if paired else None
        row["recall@10"] = f"{rec['first pass, unfiltered']:.3f}"
        row["recall@10 filtered"] = f"{rec['first pass, date+folder filter']:.3f}"
        if "first pass, PCA codes forced, unfiltered" in rec:
            row["recall@10"] += f" (PCA forced: {rec['first pass, PCA codes forced, unfiltered']:.3f})"
        row["bytes / photo"] = r["db_bytes_per_photo"]
        row["open + load s (npy)"] = f"{r['open_and_load_s']} ({r['float32_npy_load_s']})"
        row["first pass RAM MB"] = r["first_pass"]["ram_mb"]
        if r.get("peak_rss_mb"):
            row["peak RSS MB (first pass / numpy / vec0)"] = " / ".join(
                f"{r['peak_rss_mb'][v]:.0f}" for v in ("first pass", "numpy", "vec0"))
        rows.append(row)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    out.append(md_table(rows, cols) + "\n")
    sweeps = [{"photos": r["n"], "data": r["data"], "PCA dims": p["dims"], "rescored": p["rescore"],
               "recall@10": f"{p['recall@10']:.3f}", "KNN top-20 p50 ms": p["knn_top20_p50_ms"]}
              for r in sc["rows"] for p in r.get("first_pass_sweep", [])]
    if sweeps:
        out.append(f"\nRecall against the PCA code's size and the photos rescored (default {fc['dims']} dims, "
                   f"{fc['rescore']} rescored, at least 2x those wanted; KNN alone, not interleaved):\n\n"
                   + md_table(sweeps, list(sweeps[0])) + "\n")
    return "\n".join(out)


HEADER = """# Benchmarks

Every number and figure on this page comes from a benchmark run on the machine named under it;
`{cmd}` re-runs them all and regenerates this page and `bench/figures/*.png`
(`python bench/report.py` alone redraws from the JSON files in `bench/results/report/`, or the
benchmarks' own runs in `bench/results/`). Figures quoted from papers are in the last section,
labelled **published**, and never mixed with ours.
"""

NOT_RUN = "*Not run yet:* `{cmd}`.\n"

PUBLISHED = """
## Published figures (context only: not measured here, other data, other hardware)

From the authors' papers, as collected in the project's field notes:

- **Retrieve Fast, Rerank Smart** (Geigle et al., TACL 2022), joint model, COCO 5k text→image R@1:
  bi-encoder 52.5, retrieve top-20 + rerank 54.7; rerank depth k = 10 / 20 / 50 gave 54.8 / 54.7 / 54.6
  (*published*). Per query over 50k images: bi-encoder 16 ms, retrieve + rerank 74 ms, cross-encoder
  over all ≈ 2 min (*published*).
- **CLIP ViT-B/32** zero-shot Flickr30k text→image R@1 58.8 (*published*); **MobileCLIP-S0** 67.7,
  1.5 + 1.6 ms on an iPhone 12 Pro Max (*published*).
- **Flickr8k** (Hodosh, Young, Hockenmaier 2013, JAIR 47): early-2010s models report text→image
  R@1 around 10–13 (*published*).
"""


def main(argv: list[str] | None = None) -> int:
    global RESULTS, SHARED_RESULTS, FIGURES, DOC, PROVENANCE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="store_true", help="run the benchmarks first")
    ap.add_argument("--only", nargs="*", choices=STEPS, default=None, help="with --run: only these benchmarks")
    ap.add_argument("--quick", action="store_true", help="with --run: small sizes (smoke test, not for the report)")
    ap.add_argument("--student", default=None, help="with --run: the distilled student's model directory "
                                                     "(runs bench/bench_quantize.py: teacher/student x fp32/int8)")
    ap.add_argument("--results", type=Path, default=RESULTS, help=argparse.SUPPRESS)  # tests
    ap.add_argument("--shared-results", type=Path, default=SHARED_RESULTS, help=argparse.SUPPRESS)
    ap.add_argument("--figures", type=Path, default=FIGURES, help=argparse.SUPPRESS)
    ap.add_argument("--doc", type=Path, default=DOC, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    RESULTS, SHARED_RESULTS, FIGURES, DOC = a.results, a.shared_results, a.figures, a.doc
    PROVENANCE = RESULTS / "provenance.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    if a.run:
        ran_quantize = False
        for step in a.only or STEPS:
            if step == "quantize" and not a.student:
                print("\n== quantize: skipped (no --student MODEL_DIR); using bench/results/quantize.json if present")
                continue
            run_step(step, commands(a.quick, a.student, ran_quantize)[step])  # after the steps before it ran
            ran_quantize |= step == "quantize"

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rd, rt, ex, demo = load("recall_depth.json"), load("runtime.json"), load("export_lite.json"), load("demo.json")
    qz = load("quantize.json")
    cmds = commands(False, None)
    made = []
    if rd:
        made.append(fig_recall_depth(plt, rd))
    if rt:
        p_rt = runtime_prov(rt, provenance("runtime", shown(cmds["runtime"]), "runtime.json"))
        made.append(fig_latency(plt, rt, p_rt))
        if stage_table(rt):
            made.append(fig_stages(plt, rt, p_rt))
    if qz:
        made.append(fig_variants(plt, qz, quantize_prov(qz)))
    elif ex or rd:
        made.append(fig_variants_default(plt, ex, rd, provenance("export", shown(cmds["export"]), "export_lite.json")))
    write_doc(rd, rt, ex, demo, qz, load("scale.json"))
    for p in made:
        print(f"wrote {p}")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
