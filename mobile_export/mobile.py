"""Mobile readiness: onnxruntime's mobile usability check per graph and conversion to the ORT format.

The usability check is onnxruntime's own (``onnxruntime.tools.mobile_helpers.usability_checker``),
called through its functions instead of its logging front end so the result is data: for NNAPI,
CoreML ML Program and CoreML NeuralNetwork, the ops with no EP kernel (they fall back to the CPU),
how many partitions the graph splits into, and onnxruntime's verdict (YES / MAYBE / NO), both with
the dynamic shapes as exported and as if the shapes were fixed. ``export_mobile`` writes a graph's
fixed-shape mobile variant (the accelerators' copy, ``rewrite.py``).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_xmr.model import JointModel

    from .specs import GraphSpec

EPS = ("NNAPI", "CoreML_MLProgram", "CoreML_NeuralNetwork")


def usability(path: str | Path) -> dict[str, Any]:
    """Mobile usability of one self-contained .onnx graph (optimized to BASIC first, as ORT does)."""
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    def run(check: Any, model: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for fixed, key in ((True, "as_exported"), (False, "if_shapes_fixed")):
            info = check(model, fixed)
            out[key] = {
                "suitability": info.suitability().name,
                "supported_nodes_pct": round(100.0 * info.num_supported_nodes / max(info.num_nodes, 1), 1),
                "partitions": int(info.num_partitions),
                "fallback_ops": sorted(info.unsupported_ops),
            }
        out["fallback_ops"] = out["if_shapes_fixed"]["fallback_ops"]
        return out

    with tempfile.TemporaryDirectory() as tmp:
        opt = Path(tmp) / Path(path).name
        optimize_model(Path(path), opt, use_external_initializers=True)
        model = ModelProtoWithShapeInfo(opt).model_with_shape_info
        dynamic, _ = uc.check_shapes(model.graph)
        report: dict[str, Any] = {"dynamic_inputs": sorted(i.name for i in dynamic)}
        report["NNAPI"] = run(uc.check_nnapi_partitions, model)
        report["CoreML_MLProgram"] = run(
            lambda m, f: uc.check_coreml_partitions(m, f, "coreml_supported_mlprogram_ops.md"), model)
        report["CoreML_NeuralNetwork"] = run(
            lambda m, f: uc.check_coreml_partitions(m, f, "coreml_supported_neuralnetwork_ops.md"), model)
    return report


def export_mobile(model: JointModel, spec: GraphSpec, path: str | Path, seed: int = 0) -> dict[str, Any]:
    """The fixed-shape mobile variant of ``spec``'s graph (sizes ``spec.fixed_sizes``), rewritten for
    the accelerators (``rewrite.mobile_rewrite``), saved self-contained at ``path``.

    Returns ``{"sizes", "rewrites"}``."""
    import onnx

    from .onnx_export import export_onnx
    from .rewrite import mobile_rewrite

    sizes = spec.fixed_sizes(model.cfg)
    export_onnx(model, spec, path, seed, fixed=sizes)
    m = onnx.load(str(path))
    counts = mobile_rewrite(m)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return {"sizes": sizes, "rewrites": counts}


def summary(report: dict[str, Any]) -> dict[str, str]:
    """One line per provider of a ``usability`` report, as onnxruntime's checker words its verdict
    (the shapes as exported: a mobile variant's are fixed)."""
    out = {}
    for ep in EPS:
        r = report[ep]["as_exported"]
        out[ep] = (f"should perform well as is: {r['suitability']} ({r['supported_nodes_pct']}% of nodes "
                   f"in {r['partitions']} partition(s); CPU fallback: {', '.join(r['fallback_ops']) or 'none'})")
    return out


def to_ort_format(src: str | Path, dst: str | Path, target_platform: str | None = None) -> Path:
    """Convert an .onnx graph to the ORT format (``.ort``) for onnxruntime-mobile.

    Fixed optimisation style at the BASIC level: only hardware-independent optimisations are baked
    in, so the graph stays portable and NNAPI / CoreML can still claim whole subgraphs.
    ``target_platform="arm"`` allows int8 QDQ kernels (as the onnxruntime converter does).
    """
    import onnxruntime as ort

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(dst)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.add_session_config_entry("session.save_model_format", "ORT")
    so.add_session_config_entry("session.qdqisint8allowed", "1" if target_platform == "arm" else "0")
    ort.InferenceSession(str(src), sess_options=so, providers=["CPUExecutionProvider"])
    return dst


def required_operators(ort_files: list[Path], out: str | Path) -> Path:
    """Write onnxruntime's ``required_operators.config`` (for a reduced-size mobile build); the
    model list in its header names the files relative to the config's folder."""
    from onnxruntime.tools.ort_format_model import create_config_from_models

    out = Path(out)
    log = logging.getLogger("ort_format_model.utils")  # it logs each config at INFO
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        create_config_from_models(ort_files, out, enable_type_reduction=False)
    finally:
        log.setLevel(level)
    lines = out.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# - "):
            f = Path(line[4:])
            lines[i] = "# - " + (f.relative_to(out.parent).as_posix() if f.is_relative_to(out.parent) else f.name)
    out.write_text("\n".join(lines) + "\n")
    return out
