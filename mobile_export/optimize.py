"""onnxruntime's offline transformer fusions for the graphs with text blocks, with a measured speed-up.

The fused graph is only worth keeping when it is faster: onnxruntime already applies its own online
fusions (BiasGelu, FusedMatMul, ...) when a session starts, so the offline optimizer's extra
fusions (SkipLayerNormalization, Attention when its pattern matches) must beat that baseline.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "BiasGelu", "Gelu", "FastGelu",
             "LayerNormalization", "EmbedLayerNormalization")


def fuse_transformer(src: str | Path, dst: str | Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """Run onnxruntime's BERT-type fusions on ``src`` (self-contained .onnx) into ``dst``.

    Returns the fused-operator counts (only the non-zero ones).
    """
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                         opt_level=0, use_gpu=False)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    opt.save_model_to_file(str(dst))
    stats = opt.get_fused_operator_statistics()
    return {k: int(v) for k, v in stats.items() if v}


def time_sessions(paths: dict[str, Path], feeds: dict[str, np.ndarray], reps: int = 9,
                  threads: int = 1, budget_s: float = 1.0) -> dict[str, float]:
    """Best-of-runs ms per run of each graph on the same inputs, runs interleaved.

    The minimum is the least disturbed by other processes on a shared CPU. Runs ``reps`` rounds, and
    more (up to 50) while the time spent stays under ``budget_s``.
    """
    import onnxruntime as ort

    sessions = {}
    for k, p in paths.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sessions[k] = ort.InferenceSession(str(p), sess_options=so, providers=["CPUExecutionProvider"])
        sessions[k].run(None, feeds)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in sessions}
    start = time.perf_counter()
    for i in range(50):
        if i >= reps and time.perf_counter() - start > budget_s:
            break
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feeds)
            times[k].append(time.perf_counter() - t)
    return {k: round(float(np.min(v)) * 1e3, 3) for k, v in times.items()}


def fusion_speedup(plain: str | Path, fused: str | Path, feeds: dict[str, np.ndarray],
                   rounds: int = 9, threads: int = 1) -> dict[str, Any]:
    """``{"ms_plain", "ms_fused", "speedup"}``: speedup = median over ``rounds`` of the paired ratio
    plain / fused (timed back to back, order alternating), so a CPU shared with other work shifts
    both sides of a pair alike; > 1 means the fused graph is faster. One intra-op thread."""
    import onnxruntime as ort

    sessions = []
    for p in (plain, fused):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sessions.append(ort.InferenceSession(str(p), sess_options=so, providers=["CPUExecutionProvider"]))
        sessions[-1].run(None, feeds)  # warm-up
    times: list[list[float]] = [[], []]
    for r in range(rounds):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            t = time.perf_counter()
            sessions[i].run(None, feeds)
            times[i].append(time.perf_counter() - t)
    ratio = float(np.median(np.array(times[0]) / np.array(times[1])))
    return {"ms_plain": round(float(np.median(times[0])) * 1e3, 3),
            "ms_fused": round(float(np.median(times[1])) * 1e3, 3), "speedup": round(ratio, 3)}
