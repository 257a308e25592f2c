"""onnxruntime sessions on the best local execution provider (torch-free).

onnxruntime silently falls back to the CPU (with a warning only) when a requested provider is
missing or fails to initialise. Here a requested provider that this onnxruntime build lacks is
refused with a clear message, and ``active_provider(session)`` reports what really runs.

Example::

    >>> from edge_xmr.providers import choose_providers
    >>> choose_providers(available=["CUDAExecutionProvider", "CPUExecutionProvider"])
    ['CUDAExecutionProvider', 'CPUExecutionProvider']
    >>> choose_providers("cpu", available=["CUDAExecutionProvider", "CPUExecutionProvider"])
    ['CPUExecutionProvider']
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from .errors import EdgeXmrError

CPU = "CPUExecutionProvider"

# best first: Apple Neural Engine/GPU, NVIDIA, Windows GPUs, Intel, Qualcomm NPU, Android NNAPI,
# the XNNPACK CPU kernels of mobile builds, plain CPU (CUDA before TensorRT: TensorRT builds engines
# for minutes on first use, so it is used only when asked for).
PREFERENCE: tuple[str, ...] = (
    "CoreMLExecutionProvider",
    "CUDAExecutionProvider",
    "TensorrtExecutionProvider",
    "DmlExecutionProvider",
    "OpenVINOExecutionProvider",
    "QNNExecutionProvider",
    "NnapiExecutionProvider",
    "XnnpackExecutionProvider",
    CPU,
)

ALIASES: dict[str, str] = {
    "coreml": "CoreMLExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "cpu": CPU,
}

# provider options used when a provider is chosen (others run with their defaults)
_OPTIONS: dict[str, dict[str, str]] = {
    "CoreMLExecutionProvider": {"ModelFormat": "MLProgram", "MLComputeUnits": "ALL"},
}

PROVIDERS_ENV = "EDGE_XMR_PROVIDERS"  # comma-separated override, e.g. "cpu" or "cuda,cpu"
THREADS_ENV = "EDGE_XMR_THREADS"  # intra-op thread count
SPIN_ENV = "EDGE_XMR_SPIN"  # "1": let idle onnxruntime threads spin (lower latency on an idle machine)


class ProviderError(EdgeXmrError, ValueError):
    """A requested execution provider is unknown or not available in this onnxruntime build, or a
    thread count is out of range."""


def available_providers() -> list[str]:
    """Providers compiled into the installed onnxruntime (not a guarantee that they initialise)."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def resolve(name: str) -> str:
    """A short alias ("cuda") or a full provider name -> the full name; unknown names raise."""
    key = name.strip()
    if key.lower() in ALIASES:
        return ALIASES[key.lower()]
    if key in PREFERENCE or key.endswith("ExecutionProvider"):
        return key
    raise ProviderError(f"unknown execution provider {name!r}; use one of {', '.join(sorted(ALIASES))}")


def _requested(override: str | Sequence[str] | None) -> list[str]:
    if override is None:
        override = os.environ.get(PROVIDERS_ENV, "")
    names = override.split(",") if isinstance(override, str) else list(override)
    return [resolve(n) for n in names if n.strip()]


def choose_providers(override: str | Sequence[str] | None = None,
                     available: Sequence[str] | None = None) -> list[str]:
    """The providers to ask onnxruntime for, best first, always ending with the CPU.

    Args:
        override: names or aliases to use instead of the automatic choice (a comma-separated string
            or a list); ``None`` reads ``$EDGE_XMR_PROVIDERS`` and falls back to the ranking.
        available: the providers of this build (default: asked from onnxruntime).
    """
    avail = list(available) if available is not None else available_providers()
    wanted = _requested(override)
    if not wanted:
        return [p for p in PREFERENCE if p in avail and p != CPU] + [CPU]
    missing = [p for p in wanted if p not in avail]
    if missing:
        raise ProviderError(
            f"execution provider {', '.join(missing)} is not available in this onnxruntime build "
            f"(available: {', '.join(avail)}); install the matching onnxruntime package "
            "(onnxruntime-gpu, onnxruntime-directml, onnxruntime-openvino, ...) or choose another")
    return wanted if CPU in wanted else wanted + [CPU]


def max_threads() -> int:
    """The most threads any setting accepts: 4 per CPU core. More only costs memory (each thread has
    its own stack and buffers: 20000 onnxruntime threads took 3.4 GB and hung) and never speed."""
    return 4 * (os.cpu_count() or 1)


def thread_count(threads: int | None = None) -> int:
    """Intra-op threads: the argument, else ``$EDGE_XMR_THREADS``, else 0 (onnxruntime's default:
    one per physical core); at most ``max_threads()`` (more raises ProviderError)."""
    if threads is None:
        env = os.environ.get(THREADS_ENV, "").strip()
        threads = int(env) if env.isdigit() else 0
    if not 0 <= threads <= max_threads():
        raise ProviderError(f"threads must be between 0 and {max_threads()} (4 per CPU core), got {threads}")
    return threads


def create_session(path: str | Path, providers: str | Sequence[str] | None = None,
                   threads: int | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on the best available (or the requested) provider.

    Args:
        path: the .onnx (or .ort) file.
        providers: override of the provider choice (see ``choose_providers``).
        threads: intra-op thread count (see ``thread_count``).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = thread_count(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle intra-op threads sleep instead of spinning: on a machine shared with other work (a
    # phone, a laptop, this 2-core box while something else trains) spinning threads steal the
    # CPU from the thread doing the work. Measured on the cross-encoder with 20 candidates, 2 threads,
    # load average ~5: 74 ms spinning vs 54 ms not (fp32), 49 vs 23 ms (int8).
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if os.environ.get(SPIN_ENV) == "1" else "0")
    chosen = choose_providers(providers)
    with_options = [(p, _OPTIONS[p]) if p in _OPTIONS else p for p in chosen]
    return ort.InferenceSession(str(path), sess_options=so, providers=with_options)


def active_provider(session: Any) -> str:
    """The provider that really runs the session (the first one onnxruntime registered)."""
    active = list(session.get_providers())
    return str(active[0]) if active else CPU
