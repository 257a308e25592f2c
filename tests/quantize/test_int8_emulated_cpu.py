"""The toy teacher's int8 bundle on an AVX2 CPU without VNNI, emulated by qemu-user (``-cpu Haswell``:
onnxruntime then picks its int16-pair u8s8 kernels, the ones that saturate on full-range int8 weights).
The export's int8 graphs give the same numbers there as on this machine, so the export's int8 check
measures what every x86 user gets; full-range weights, the negative control, do not.

CI installs qemu-user (.ci/run); elsewhere the test is skipped when qemu-x86_64 is missing (under
CI=true it fails instead)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mobile_export import graph_runner, parity
from mobile_export.api import SAMPLE_TEXTS
from mobile_export.quantize_int8 import quantize_int8

CHILD = Path(graph_runner.__file__)


def _qemu() -> str:
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("emulating an x86 CPU needs an x86-64 host (this venv's binaries are x86-64 only there)")
    exe = shutil.which("qemu-x86_64")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("qemu-x86_64 is missing: .ci/run installs qemu-user for this test")
        pytest.skip("qemu-x86_64 not installed (apt-get install qemu-user)")
    return exe


def _run(cmd_prefix: list[str], tmp: Path, feeds: dict[str, np.ndarray], graphs: dict[str, Path]) -> dict:
    np.savez(tmp / "in.npz", **feeds)
    out = tmp / f"out_{len(cmd_prefix)}.npz"
    subprocess.run([*cmd_prefix, sys.executable, str(CHILD), str(tmp / "in.npz"), str(out),
                    *[f"{k}={v}" for k, v in graphs.items()]], check=True, capture_output=True, timeout=600,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return dict(np.load(out))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_int8_text_graphs_same_on_avx2_without_vnni(toy_teacher, toy_teacher_bundle, tmp_path):
    qemu = _qemu()
    model = toy_teacher[0]
    ids, mask = model.tokenizer.encode(list(SAMPLE_TEXTS), model.cfg.max_text_len)
    feeds = {"input_ids": ids, "attention_mask": mask}
    onnx_dir = toy_teacher_bundle / "onnx"
    full_range = tmp_path / "full_range_text.onnx"  # the negative control: 8-bit weights, as before
    quantize_int8(onnx_dir / "fp32" / "text_encoder.onnx", full_range, reduce_range=False)
    graphs = {"fp32": onnx_dir / "fp32" / "text_encoder.onnx", "int8": onnx_dir / "int8" / "text_encoder.onnx",
              "full": full_range}
    here = _run([], tmp_path, feeds, graphs)
    avx2 = _run([qemu, "-cpu", "Haswell"], tmp_path, feeds, graphs)
    key = "{}/text_embeds".format
    # the shipped int8 graph: the same embeddings on both CPUs, and as close to fp32 as the export said
    assert np.abs(here[key("int8")] - avx2[key("int8")]).max() < 1e-4
    cos_avx2 = _cos(avx2[key("fp32")], avx2[key("int8")])
    assert cos_avx2.mean() >= parity.INT8_MIN_COSINE
    assert cos_avx2.min() > 0.999  # the toy text tower's margin, measured 0.9999 on both CPUs
    # the negative control is worse than the reduced range on the emulated CPU: its int16 pair sums
    # saturate there (where this machine has VNNI, it also differs from this machine's result)
    cos_full = _cos(avx2[key("fp32")], avx2[key("full")])
    assert cos_full.mean() < cos_avx2.mean()
    if {"avx512_vnni", "avx_vnni"} & set(parity.cpu_isa()["features"]):
        assert np.abs(here[key("full")] - avx2[key("full")]).max() > 1e-3
