"""PyTorch -> CoreML ML Programs (``.mlpackage``): fp16 and int8-weight variants, plus the checks Linux
can do (reload, I/O names/dtypes/shape ranges against the ONNX spec, int8 weights present, sizes).

coremltools is imported inside the functions (extra ``[coreml]``). CoreML has no int64 I/O, so token
ids and masks are int32 in the CoreML graphs (int64 in ONNX); floats are float32 at the boundary
(fp16 inside the fp16 and int8 variants).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .specs import GraphSpec

if TYPE_CHECKING:
    from edge_xmr.model import JointModel

COREML_VARIANTS = ("fp16", "int8")
COREML_DTYPE = {"int64": "int32", "float32": "float32"}  # ONNX I/O dtype -> CoreML I/O dtype
_INSTALL = "pip install 'edge-xmr[coreml]'"


def coreml_available() -> bool:
    return importlib.util.find_spec("coremltools") is not None


def require_coreml() -> Any:
    """Import coremltools or raise ImportError naming the pip command."""
    try:
        import coremltools as ct
    except ImportError as e:
        raise ImportError(f"CoreML export needs coremltools: {_INSTALL}") from e
    return ct


def _patch_scalar_casts(ct: Any) -> None:
    """coremltools 9.0 casts folded size values with ``int(array([n]))``, which numpy >= 2.4 refuses
    ("only 0-dimensional arrays can be converted"). Re-register ``int``/``bool`` with ``.item()``."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.frontend.torch.torch_op_registry import register_torch_op

    if getattr(ops, "_edge_xmr_scalar_cast", False):
        return
    original = ops._cast

    def cast(context: Any, node: Any, dtype: type, dtype_name: str) -> None:
        x = ops._get_inputs(context, node, expected=1)[0]
        if x.can_be_folded_to_const() and np.ndim(x.val) > 0 and np.size(x.val) == 1:
            context.add(mb.const(val=dtype(np.asarray(x.val).reshape(-1)[0].item()), name=node.name), node.name)
        else:
            original(context, node, dtype, dtype_name)

    def to_int(context: Any, node: Any) -> None:
        cast(context, node, int, "int32")

    def to_bool(context: Any, node: Any) -> None:
        cast(context, node, bool, "bool")

    to_int.__name__, to_bool.__name__ = "int", "bool"  # the registry keys are the function names
    register_torch_op(to_int, override=True)
    register_torch_op(to_bool, override=True)
    ops._edge_xmr_scalar_cast = True


def _ranges(spec: GraphSpec, cfg: Any, fixed: dict[str, int] | None) -> dict[str, tuple[int, int]]:
    """[lower, upper] of each dynamic dim: the spec's ranges, or ``fixed`` sizes (lower = upper)."""
    return {d: (fixed[d], fixed[d]) for d in fixed} if fixed else spec.dim_ranges(cfg)


def _ct_inputs(ct: Any, spec: GraphSpec, cfg: Any, fixed: dict[str, int] | None = None) -> list[Any]:
    lo_hi = _ranges(spec, cfg, fixed)
    out = []
    for t in spec.inputs:
        dims = []
        for d in spec.concrete_shape(t, cfg):
            if isinstance(d, str):
                lo, hi = lo_hi[d]
                dims.append(hi if lo == hi else
                            ct.RangeDim(lower_bound=lo, upper_bound=hi, default=min(spec.export_sizes[d], hi)))
            else:
                dims.append(d)
        out.append(ct.TensorType(name=t.name, shape=ct.Shape(dims),
                                 dtype=np.int32 if t.dtype == "int64" else np.float32))
    return out


def export_coreml(model: JointModel, spec: GraphSpec, out_dir: str | Path,
                  variants: tuple[str, ...] = COREML_VARIANTS, target: str = "iOS17",
                  seed: int = 0, fixed: dict[str, int] | None = None) -> dict[str, Path]:
    """Write ``{variant}/{graph}.mlpackage`` under ``out_dir`` for each of ``fp16`` / ``int8``.

    Inputs have the spec's shape ranges, or with ``fixed`` (e.g. ``spec.fixed_sizes(cfg)``) static
    shapes (what the Neural Engine runs best; also a much smaller program to convert).

    fp16: ML Program with float16 compute. int8: the fp16 program with ``linear_quantize_weights``
    (int8, symmetric, per output channel); weights are dequantized on the fly by ``constexpr`` ops.
    """
    import torch

    ct = require_coreml()
    _patch_scalar_casts(ct)
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

    feeds = spec.dummy(model.cfg, fixed or spec.export_sizes, np.random.default_rng(seed))
    args = tuple(torch.from_numpy(feeds[t.name]).to(torch.int32 if t.dtype == "int64" else torch.float32)
                 for t in spec.inputs)
    module = spec.graph(model).eval()
    quiet = contextlib.redirect_stderr(io.StringIO())  # coremltools' per-pass progress bars
    with torch.no_grad(), warnings.catch_warnings(), quiet:
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, args, check_trace=False)
        fp16 = ct.convert(traced, inputs=_ct_inputs(ct, spec, model.cfg, fixed),
                          outputs=[ct.TensorType(name=t.name, dtype=np.float32) for t in spec.outputs],
                          convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, target),
                          compute_precision=ct.precision.FLOAT16)
    paths: dict[str, Path] = {}
    for v in variants:
        if v == "fp16":
            ml = fp16
        elif v == "int8":
            cfg = OptimizationConfig(global_config=OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=512))
            with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                ml = linear_quantize_weights(fp16, cfg)
        else:
            raise ValueError(f"unknown CoreML variant {v!r}: choose from {COREML_VARIANTS}")
        path = Path(out_dir) / v / f"{spec.name}.mlpackage"
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ml.short_description = f"edge_xmr {spec.name} ({v})"
        ml.save(str(path))
        paths[v] = path
    return paths


def _type_of(ft: Any) -> tuple[str, list[tuple[int, int]]]:
    """CoreML FeatureType -> (dtype, [(lower, upper or None)] per dim)."""
    arr = ft.multiArrayType
    dtype = {65568: "float32", 65552: "float16", 131104: "int32"}.get(arr.dataType, str(arr.dataType))
    ranges = arr.shapeRange.sizeRanges
    if len(ranges):
        dims = [(int(r.lowerBound), int(r.upperBound)) for r in ranges]
    else:
        dims = [(int(d), int(d)) for d in arr.shape]
    return dtype, dims


def check_coreml(path: str | Path, spec: GraphSpec, cfg: Any, variant: str,
                 fixed: dict[str, int] | None = None) -> dict[str, Any]:
    """Linux-side checks of one ``.mlpackage``; returns a report with ``ok`` and ``problems``.

    Reloads the package (no compilation), compares I/O names, dtypes and shape ranges with the ONNX
    spec, counts dequantize ops of the MIL program (int8 must have some) and measures the size.
    """
    ct = require_coreml()
    path = Path(path)
    problems: list[str] = []
    ml = ct.models.MLModel(str(path), skip_model_load=True)
    desc = ml.get_spec().description
    lo_hi = _ranges(spec, cfg, fixed)

    def compare(kind: str, got: Any, want: tuple[Any, ...], io: bool) -> None:
        names = [f.name for f in got]
        if names != [t.name for t in want]:
            problems.append(f"{kind} names {names} != {[t.name for t in want]}")
            return
        for f, t in zip(got, want):
            dtype, dims = _type_of(f.type)
            if dtype != COREML_DTYPE[t.dtype]:
                problems.append(f"{kind} {t.name}: dtype {dtype} != {COREML_DTYPE[t.dtype]}")
            shape = spec.concrete_shape(t, cfg)
            if not io:  # outputs: only the rank is declared before the model runs
                if dims and len(dims) != len(shape):
                    problems.append(f"{kind} {t.name}: rank {len(dims)} != {len(shape)}")
                continue
            want_dims = [lo_hi[d] if isinstance(d, str) else (d, d) for d in shape]
            if dims != want_dims:
                problems.append(f"{kind} {t.name}: shape ranges {dims} != {want_dims}")

    compare("input", desc.input, spec.inputs, io=True)
    compare("output", desc.output, spec.outputs, io=False)
    ops: dict[str, int] = {}
    for fn in ml.get_spec().mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                ops[op.type] = ops.get(op.type, 0) + 1
    n_deq = sum(v for k, v in ops.items() if "dequantize" in k or k == "constexpr_blockwise_shift_scale")
    if variant == "int8" and n_deq == 0:
        problems.append("int8 variant has no dequantize ops (weights were not quantized)")
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {"ok": not problems, "problems": problems, "size_mb": round(size / 1e6, 3),
            "dequantize_ops": n_deq, "n_ops": sum(ops.values()), "op_types": sorted(ops),
            "inputs": [{"name": f.name, "dtype": _type_of(f.type)[0], "ranges": _type_of(f.type)[1]}
                       for f in desc.input],
            "outputs": [f.name for f in desc.output]}
