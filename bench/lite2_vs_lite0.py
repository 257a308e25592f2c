"""Lite2 vs Lite0 image tower, trained with the same short schedule: quality on dev's reporting half,
indexing cost and bundle size, in one run.

    python bench/lite2_vs_lite0.py --models runs/short_lite runs/short_lite2 --data ../shared/data/flickr8k [--eval]

For each model directory (trained by ``edge-xmr train``, identical commands but ``--base``; their
``train_log.json`` holds the command's settings):

1. quality (``--phase quality``): the training run's calibration, which chose the score's weights on dev's
   tuning half and scored its reporting half once (the same code for both: ``train_log.json``); with
   ``--eval`` also ``edge-xmr eval`` on dev with the reporting half as the queries (the same command for
   both): bi-encoder and rerank@20 R@1, text -> image and image -> text;
2. size (``--phase cost``, 2-4): the packaged-style bundle (``mobile_export.default_bundle.build``: int8 graphs only) written to
   ``runs/bundle_<name>``: total bytes, and the int8 image graph's (1 and 2 are deterministic: a rerun
   reuses outputs written after the model);
3. indexing cost: the int8 image graph under onnxruntime on random pixels at the model's input side,
   1 thread x batch 1 and 2 threads x batch 8, the models interleaved in each round, median ms per
   photo and photos/s (the image encoder only: decoding and resizing the JPEG are not in it);
4. parameters of the image tower and of the whole model.

Prints a table and writes bench/results/lite2_vs_lite0.json with the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPORT = "edge_xmr/train/dev_report.txt"


def eval_command(model: str, data: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "edge_xmr.cli", "eval", "--model", model, "--data", data, "--split", "dev",
            "--queries", REPORT, "--rerank", "20", "--skip-cross-all", "--json-out", str(out)]


def quality(model: str, data: str, work: Path) -> dict:
    out = work / f"eval_{Path(model).name}.json"
    cmd = eval_command(model, data, out)
    if not _fresh(out, model):  # run once per trained model; a rerun of this script reuses it
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    res = json.loads(out.read_text())
    r = res["results"]
    return {"command": "python " + shlex.join(["-m", *cmd[2:]]),
            "queries": res["n_queries"],
            "gallery_images": res["n_images"],
            "t2i_bi_R@1": r["bi_encoder"]["t2i"]["R@1"], "t2i_rerank20_R@1": r["rerank@20"]["t2i"]["R@1"],
            "t2i_rerank20_R@5": r["rerank@20"]["t2i"]["R@5"], "t2i_rerank20_R@10": r["rerank@20"]["t2i"]["R@10"],
            "i2t_bi_R@1": r["bi_encoder"]["i2t"]["R@1"], "i2t_rerank20_R@1": r["rerank@20"]["i2t"]["R@1"]}


def _fresh(out: Path, model: str) -> bool:
    """``out`` exists and was written after the model's weights (deterministic outputs are reused)."""
    return out.is_file() and out.stat().st_mtime > (Path(model) / "model.safetensors").stat().st_mtime


def bundle(model: str, work: Path) -> tuple[Path, dict]:
    from mobile_export.default_bundle import build

    target = work / f"bundle_{Path(model).name}"
    t, reused = time.time(), _fresh(target / "manifest.json", model)
    if not reused:
        build(target=target, model_dir=Path(model), threads=2)
    files = [f for f in target.rglob("*") if f.is_file()]
    img = target / "onnx" / "int8" / "image_encoder.onnx"
    return target, {"path": str(target), "export_s": None if reused else round(time.time() - t, 1),
                    "bundle_bytes": sum(f.stat().st_size for f in files),
                    "image_encoder_int8_bytes": img.stat().st_size}


def params(model: str) -> dict:
    from edge_xmr.model import bases

    m = bases.load(model)
    return {"tower": m.cfg.image.tower, "side": m.cfg.image.size,
            "image_tower_params": sum(p.numel() for p in m.image_tower.parameters()),
            "model_params": sum(p.numel() for p in m.parameters())}


def timing(graphs: dict[str, tuple[Path, int]], rounds: int) -> dict:
    import onnxruntime as ort

    def session(path: Path, threads: int) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    setups = {"1 thread, batch 1": (1, 1), "2 threads, batch 8": (2, 8)}
    rng = np.random.default_rng(0)
    runs = {}
    for name, (path, side) in graphs.items():
        for label, (threads, batch) in setups.items():
            s = session(path, threads)
            px = rng.uniform(-1, 1, (batch, 3, side, side)).astype(np.float32)
            feed = {s.get_inputs()[0].name: px}
            s.run(None, feed)  # warm-up
            runs[(name, label)] = (s, feed, batch)
    times: dict[tuple[str, str], list[float]] = {k: [] for k in runs}
    for _ in range(rounds):  # interleaved: each round times every model in every setup
        for k, (s, feed, batch) in runs.items():
            t = time.perf_counter()
            s.run(None, feed)
            times[k].append((time.perf_counter() - t) * 1000 / batch)
    out: dict = {}
    for (name, label), v in times.items():
        ms = float(np.median(v))
        out.setdefault(name, {})[label] = {"ms_per_photo": round(ms, 2), "photos_per_s": round(1000 / ms, 1),
                                           "iqr_ms": [round(float(np.percentile(v, 25)), 2),
                                                      round(float(np.percentile(v, 75)), 2)]}
    return out


def train_summary(model: str) -> dict:
    f = Path(model) / "train_log.json"
    log = json.loads(f.read_text())
    epochs = [h for h in log["history"] if "epoch" in h]
    hub = next((h["hubness"] for h in log["history"] if "hubness" in h), {})
    cfg = log["config"]
    return {"train_config": {k: cfg[k] for k in ("epochs", "ce_queries", "ce_epochs", "li_loss", "class_distill",
                                                 "crop_views", "lr_tower", "batch_size", "threads", "seed")},
            "train_minutes": round(epochs[-1]["minutes"], 1) if epochs else None,
            "dev_tuning_checks": [{k: h[k] for k in ("epoch", "minutes", "dev_bi_R@1", "dev_rerank20_R@1") if k in h}
                                  for h in epochs],  # minutes: since the run (or its resume) started
            "calibration_choice": hub.get("score"),
            "calibration_figures": {h: hub.get(h) for h in ("tuning", "reporting")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", required=True, help="model directories (the first is the baseline)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--phase", choices=("quality", "cost", "all"), default="all",
                    help="quality: the training logs' calibration figures (+ --eval); cost: bundles, params, timing")
    ap.add_argument("--eval", action="store_true", help="quality phase: also run edge-xmr eval on the reporting half")
    ap.add_argument("--bundle-from", nargs="*", default=None,
                    help="cost phase: model dirs to export the bundles from, parallel to --models (default: --models; "
                         "sizes and timing depend on the shapes only)")
    ap.add_argument("--work", default="runs", help="where the bundles and eval outputs go (not committed)")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--json", default="bench/results/lite2_vs_lite0.json", help="results (merged into when it exists)")
    ap.add_argument("--train-commands", nargs="*", default=None, help="the training commands, recorded in the JSON")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.json)
    res: dict = json.loads(out.read_text()) if out.is_file() else {"models": {}, "commands": {}}
    command = "python " + shlex.join(sys.argv)
    names = [Path(m).name for m in args.models]
    for name, model in zip(names, args.models):
        r = res["models"].setdefault(name, {})
        r["dir"] = model
        if args.phase in ("quality", "all"):
            r.update(train_summary(model))
            if args.eval:
                print(f"{name}: eval on the reporting half", file=sys.stderr, flush=True)
                r["reporting_half_eval"] = quality(model, args.data, work)
            res["commands"]["quality"] = command
    if args.phase in ("cost", "all"):
        graphs = {}
        for name, src in zip(names, args.bundle_from or args.models):
            print(f"{name}: bundle from {src}", file=sys.stderr, flush=True)
            path, size = bundle(src, work)
            p = params(src)
            graphs[name] = (path / "onnx" / "int8" / "image_encoder.onnx", p["side"])
            res["models"][name].update(p, bundle={**size, "from": src})
        print("timing the int8 image graphs", file=sys.stderr, flush=True)
        for name, t in timing(graphs, args.rounds).items():
            res["models"][name]["image_encoder_int8"] = t
        res["rounds"] = args.rounds
        res["commands"]["cost"] = command
    if args.train_commands is not None:
        res["train_commands"] = args.train_commands
    res.update({"reporting_half": REPORT, "date": time.strftime("%Y-%m-%d"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs while it ran), "
                           f"Python {platform.python_version()}"})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    _table(res)


def _table(res: dict) -> None:
    cols = ("t2i bi", "t2i rr@20", "i2t rr@20", "ms 1t", "ms 2t b8", "photos/s 2t", "img MB", "bundle MB", "tower M")
    print(f"{'model (reporting half)':<24}" + "".join(f"{c:>12}" for c in cols))
    nan = float("nan")
    for name, r in res["models"].items():
        q = (r.get("calibration_figures") or {}).get("reporting") or {}
        t, b = r.get("image_encoder_int8", {}), r.get("bundle", {})
        vals = (q.get("t2i_bi_R@1", nan), q.get("t2i_rerank20_R@1", nan), q.get("i2t_rerank20_R@1", nan),
                t.get("1 thread, batch 1", {}).get("ms_per_photo", nan), t.get("2 threads, batch 8", {}).get("ms_per_photo", nan),
                t.get("2 threads, batch 8", {}).get("photos_per_s", nan), b.get("image_encoder_int8_bytes", nan) / 1e6,
                b.get("bundle_bytes", nan) / 1e6, r.get("image_tower_params", nan) / 1e6)
        print(f"{name:<24}" + "".join(f"{v:>12.2f}" for v in vals))


if __name__ == "__main__":
    main()
