"""onnxruntime sessions on the best local execution provider (torch-free).

(minimal version; the runtime issue extends it with provider ranking and reporting)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def create_session(path: str | Path, providers: list[str] | None = None, threads: int | None = None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=so, providers=providers or ["CPUExecutionProvider"])
