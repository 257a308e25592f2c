"""``export_bundle``: JointModel -> one bundle folder (docs/bundle.md), checked before it is published.

Pipeline: ONNX fp32 (parity vs PyTorch) -> transformer fusions (kept only when measured faster) ->
int8 (parity vs fp32 on sample photos and captions) -> mobile usability + ORT format -> shared weight
storage -> CoreML -> manifest -> the torch-free runtime reloads the bundle and must reproduce the
PyTorch rankings. Everything is written to a hidden sibling folder first and moved into place only
when every check passed; a failed check raises :class:`ExportError` carrying the full report.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .specs import GRAPHS

if TYPE_CHECKING:
    from edge_xmr.model import JointModel

Format = Literal["onnx", "coreml"]
Precision = Literal["fp32", "int8"]
Fusion = Literal["auto", "on", "off"]
FORMATS: tuple[str, ...] = ("onnx", "coreml")
PRECISIONS: tuple[str, ...] = ("fp32", "int8")
COREML_FOR = {"fp32": "fp16", "int8": "int8"}  # requested precision -> CoreML variant
MIN_FUSION_SPEEDUP = 1.05  # "auto" keeps fused graphs only when at least this much faster
MAX_SAMPLES = 256  # sample photos / captions used by the int8 checks and the storage calibration
RUNTIME_SAMPLES = 48  # photos / captions of the runtime-vs-PyTorch ranking check
ORT_INT8_MIN_COSINE = 0.99  # ORT-format int8 graph vs its .onnx (the int8 kernels of the two
# optimisation levels differ by about as much as int8 differs from fp32: measured 0.997 on the lite text encoder)

SAMPLE_TEXTS = (
    "a dog running on the beach", "two children playing in the snow", "a man riding a red bike",
    "a black cat sitting on a car", "people standing in the street", "a girl in a blue dress",
    "a boy jumping into the water", "a white dog with a ball in the grass", "a woman and a man sitting",
    "a rocket launch", "green grass and blue water", "a child with a red ball",
    "two dogs are playing", "a man is standing on the beach", "a red car in the snow",
    "people are running in the street",
)


class ExportError(RuntimeError):
    """An export whose checks failed; ``report`` holds every measurement."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


def synthetic_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Deterministic smooth colour images (HxWx3 uint8) for exports without sample photos."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    out = []
    for _ in range(n):
        c = rng.uniform(0, 1, (4, 3))
        img = (c[0] * (1 - xx[..., None]) * (1 - yy[..., None]) + c[1] * xx[..., None] * (1 - yy[..., None])
               + c[2] * (1 - xx[..., None]) * yy[..., None] + c[3] * xx[..., None] * yy[..., None])
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 1, 3)
        out.append((img * 255).clip(0, 255).astype(np.uint8))
    return out


def _load_model(model_or_dir: Any) -> JointModel:
    from edge_xmr.model import JointModel, load
    from edge_xmr.model.bases import resolve

    model = model_or_dir if isinstance(model_or_dir, JointModel) else load(resolve(model_or_dir))
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer (build it with edge_xmr.model.build or load a model dir)")
    return model.eval()


def _check_options(formats: Sequence[str], precisions: Sequence[str], fusion: str) -> None:
    bad = [f for f in formats if f not in FORMATS] + [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise ValueError(f"unknown or missing format/precision {bad}: formats {FORMATS}, precisions {PRECISIONS}")
    if fusion not in ("auto", "on", "off"):
        raise ValueError(f"fusion must be auto, on or off, not {fusion!r}")


def export_bundle(model_or_dir: JointModel | str | Path, out_dir: str | Path,
                  formats: Sequence[Format] = ("onnx",), precisions: Sequence[Precision] = ("fp32",),
                  calib_images: Sequence[Any] | None = None, calib_texts: Sequence[str] | None = None,
                  fusion: Fusion = "auto", int8_weight_only: str | None = None, mobile: bool = True,
                  coreml_target: str = "iOS17", overwrite: bool = False, threads: int | None = None,
                  seed: int = 0) -> dict[str, Any]:
    """Export a JointModel (or a model directory, or ``"default"``) as a checked bundle.

    Args:
        model_or_dir: a JointModel, a model directory, or ``"default"`` (the embedded model).
        out_dir: the bundle folder to create (must be absent or empty unless ``overwrite``).
        formats: ``"onnx"`` (ONNX fp32 is always written: it is the model identity and the runtime's
            reference) and/or ``"coreml"`` (.mlpackage, fp16 for ``fp32``, int8 weights for ``int8``).
        precisions: ``"fp32"`` and/or ``"int8"``.
        calib_images: sample photos (paths / PIL / uint8 arrays) for the int8 check, the retrieval
            checks and the int8 storage scales; synthetic images when None (say so in the report).
        calib_texts: sample captions for the same checks; built-in captions when None.
        fusion: onnxruntime transformer fusions on the text and cross-encoder graphs: ``auto`` keeps
            them when measured >= 1.05x faster, ``on`` always, ``off`` never.
        int8_weight_only: regex of MatMul/Gemm node names kept in float compute with int8 weights
            (sensitive layers); None quantizes every MatMul/Gemm dynamically.
        mobile: run onnxruntime's mobile usability check and write ORT-format copies.
        coreml_target: CoreML minimum deployment target (``ct.target`` name).
        overwrite: replace an existing bundle folder.
        threads: intra-op threads of torch (restored afterwards) and of the checking onnxruntime
            sessions; None keeps the libraries' defaults.
        seed: seed of the dummy inputs.

    Returns:
        The report: parity numbers, fusion speed-ups, mobile fallbacks, CoreML checks, sizes, timings.

    Raises:
        ExportError: a parity check failed (``err.report`` has the numbers); nothing is published.
    """
    _check_options(formats, precisions, fusion)
    t_start = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty (pass overwrite=True to replace it)")
    model = _load_model(model_or_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    work = Path(tempfile.mkdtemp(prefix="edge_xmr_export_"))
    import torch

    torch_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        report = _export(model, stage, work, tuple(formats), tuple(precisions), calib_images, calib_texts,
                         fusion, int8_weight_only, mobile, coreml_target, threads, seed)
        failed = [k for k, ok in report["checks"].items() if not ok]
        report["ok"] = not failed
        report["time_s"]["total"] = round(time.perf_counter() - t_start, 2)
        if failed:
            raise ExportError(f"export checks failed: {', '.join(failed)} (nothing written to {out})", report)
        if out.exists():
            shutil.rmtree(out)
        os.replace(stage, out)
        report["bundle"] = str(out)
        return report
    finally:
        torch.set_num_threads(torch_threads)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)


def _export(model: JointModel, stage: Path, work: Path, formats: tuple[str, ...], precisions: tuple[str, ...],
            calib_images: Sequence[Any] | None, calib_texts: Sequence[str] | None, fusion: str,
            int8_weight_only: str | None, mobile: bool, coreml_target: str, threads: int | None,
            seed: int) -> dict[str, Any]:
    from edge_xmr.bundle import Bundle
    from edge_xmr.preprocess import to_pixels

    from . import bundle as bw
    from . import parity
    from .onnx_export import export_onnx
    from .optimize import fuse_transformer, fusion_speedup
    from .quantize_int8 import quantize_int8

    cfg = model.cfg
    timer: dict[str, float] = {}
    checks: dict[str, bool] = {}
    report: dict[str, Any] = {"model": {"name": cfg.name, "base": cfg.base}, "formats": list(formats),
                              "precisions": list(precisions), "time_s": timer, "checks": checks}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        timer[name] = round(now - t, 2)
        t = now

    # sample data
    synthetic = calib_images is None
    images = list(calib_images)[:MAX_SAMPLES] if calib_images is not None else synthetic_images(32, cfg.image.size, seed)
    texts = list(calib_texts)[:MAX_SAMPLES] if calib_texts else list(SAMPLE_TEXTS)
    if not images or not texts:
        raise ValueError("calib_images / calib_texts must not be empty")
    pixels = to_pixels(images, cfg.image)
    ids, mask = model.tokenizer.encode(texts, cfg.max_text_len)
    report["samples"] = {"images": len(images), "texts": len(texts),
                         "images_source": "synthetic" if synthetic else "given"}
    model.tokenizer.save(stage / "tokenizer.json")

    # 1. ONNX fp32 + parity vs PyTorch
    plain = {g: export_onnx(model, spec, work / "fp32" / f"{g}.onnx", seed) for g, spec in GRAPHS.items()}
    lap("onnx_export")
    report["parity_fp32"] = {g: parity.torch_vs_onnx(model, spec, plain[g], threads=threads) for g, spec in GRAPHS.items()}
    for g, r in report["parity_fp32"].items():
        checks[f"fp32_parity:{g}"] = r["ok"]
    lap("parity_fp32")

    # 2. transformer fusions, kept where they help
    chosen = dict(plain)
    report["fusion"] = {}
    for g, spec in GRAPHS.items():
        if not spec.fuse or fusion == "off":
            continue
        fused = work / "fused" / f"{g}.onnx"
        ops = fuse_transformer(plain[g], fused, cfg.text.heads, cfg.text.width)
        par = parity.torch_vs_onnx(model, spec, fused, threads=threads)
        bench = spec.dummy(cfg, _bench_sizes(g, cfg), np.random.default_rng(seed))
        speed = fusion_speedup(plain[g], fused, bench)
        keep = par["ok"] and (fusion == "on" or speed["speedup"] >= MIN_FUSION_SPEEDUP)
        report["fusion"][g] = {"fused_ops": ops, "max_abs_diff": par["max_abs_diff"], **speed,
                               "bench_sizes": _bench_sizes(g, cfg), "kept": keep}
        if keep:
            chosen[g] = fused
            checks[f"fp32_parity_fused:{g}"] = par["ok"]
    lap("fusion")

    # 3. int8 + parity vs fp32 on the samples
    s32 = {g: parity.session(p, threads) for g, p in chosen.items()}
    fp32_out = parity.encode_all(s32["text_encoder"], s32["image_encoder"], ids, mask, pixels)
    variants: dict[str, dict[str, Path]] = {"fp32": chosen}
    if "int8" in precisions:
        q = {g: work / "int8" / f"{g}.onnx" for g in GRAPHS}
        report["quantization"] = {
            g: quantize_int8(plain[g], q[g], weight_only="|".join(
                x for x in (spec.int8_weight_only, int8_weight_only) if x) or None)
            for g, spec in GRAPHS.items()}
        lap("quantize_int8")
        report["parity_int8"] = parity.int8_vs_fp32(chosen, q, ids, mask, pixels, fp32_outputs=fp32_out,
                                                       threads=threads)
        checks["int8_cosine"] = report["parity_int8"]["ok"]
        variants["int8"] = q
        lap("parity_int8")
    report["storage"] = bw.storage_scales(fp32_out[1], fp32_out[2])
    report["storage"]["calibration"] = f"{len(images)} {'synthetic' if synthetic else 'sample'} images"

    # 4. bundle ONNX files (self-contained), mobile checks + ORT format, then shared weight storage
    manifest_variants: dict[str, dict[str, Any]] = {}
    for p in ("fp32", "int8"):
        if p in variants:
            manifest_variants[f"onnx/{p}"] = {}
            for g, src in variants[p].items():
                dst = stage / "onnx" / p / f"{g}.onnx"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                manifest_variants[f"onnx/{p}"][g] = {"path": dst.relative_to(stage).as_posix(),
                                                     "fused": chosen[g] != plain[g] if p == "fp32" else False}
    if mobile:
        report["mobile"] = {}
        for p in variants:
            report["mobile"][p] = {}
            manifest_variants[f"ort/{p}"] = {}
            ort_files = []
            for g, spec in GRAPHS.items():
                src = stage / "onnx" / p / f"{g}.onnx"
                from .mobile import to_ort_format, usability

                use = usability(src)
                dst = to_ort_format(src, stage / "ort" / p / f"{g}.ort")
                diff = parity.onnx_vs_onnx(spec, cfg, src, dst, threads=threads)
                # int8 kernels differ between optimisation levels (fused vs unfused dynamic MatMul)
                ok = diff["max_abs_diff"] <= spec.atol if p == "fp32" else diff["min_cosine"] >= ORT_INT8_MIN_COSINE
                checks[f"ort_format:{p}:{g}"] = ok
                report["mobile"][p][g] = {"usability": use, "ort_vs_onnx": diff}
                manifest_variants[f"ort/{p}"][g] = {"path": dst.relative_to(stage).as_posix()}
                ort_files.append(dst)
            from .mobile import required_operators

            required_operators(ort_files, stage / "ort" / p / "required_operators.config")
        lap("mobile")
    report["shared_weights"] = {}
    for p in variants:
        files = [stage / "onnx" / p / f"{g}.onnx" for g in GRAPHS]
        report["shared_weights"][p] = bw.share_weights(files)
        diff = max(parity.onnx_vs_onnx(GRAPHS[g], cfg, variants[p][g], f, threads=threads)["max_abs_diff"]
                   for g, f in zip(GRAPHS, files))
        checks[f"shared_weights:{p}"] = diff == 0.0
    lap("share_weights")
    for p in variants:
        for g in GRAPHS:
            if p == "fp32":
                manifest_variants["onnx/fp32"][g]["parity_vs_torch_max_abs_diff"] = report["parity_fp32"][g]["max_abs_diff"]
    if "int8" in variants:
        for g in GRAPHS:
            manifest_variants["onnx/int8"][g]["quantization"] = _describe(report["quantization"][g])
        pi8 = report["parity_int8"]
        manifest_variants["onnx/int8"]["text_encoder"]["cosine_vs_fp32"] = pi8["text_cosine"]
        manifest_variants["onnx/int8"]["image_encoder"]["cosine_vs_fp32"] = pi8["image_cosine"]
        manifest_variants["onnx/int8"]["cross_encoder"]["rerank_score_max_abs_diff"] = pi8["rerank_score_max_abs_diff"]

    # 5. CoreML
    if "coreml" in formats:
        from .coreml_export import check_coreml, export_coreml

        report["coreml"] = {}
        wanted = tuple(COREML_FOR[p] for p in precisions)
        for g, spec in GRAPHS.items():
            paths = export_coreml(model, spec, stage / "coreml", wanted, coreml_target, seed)
            for v, path in paths.items():
                rep = check_coreml(path, spec, cfg, v)
                report["coreml"].setdefault(v, {})[g] = rep
                checks[f"coreml:{v}:{g}"] = rep["ok"]
                manifest_variants.setdefault(f"coreml/{v}", {})[g] = {
                    "path": path.relative_to(stage).as_posix(), "target": coreml_target,
                    "io_dtypes": "int32 ids/mask (CoreML has no int64), float32 elsewhere"}
        lap("coreml")

    # 6. manifest, then the torch-free runtime must reproduce PyTorch
    manifest = bw.write_manifest(stage, cfg, model.tokenizer.pad_id, manifest_variants, report["storage"])
    report["sizes"] = manifest["sizes"]
    report["model"]["id"] = manifest["model"]["id"]
    report["runtime"] = {}
    ref = parity.torch_reference(model, images[:RUNTIME_SAMPLES], texts[:RUNTIME_SAMPLES])
    for p in variants:
        b = Bundle.load(stage, precision=p, threads=threads)
        r = parity.runtime_vs_torch(model, b, images[:RUNTIME_SAMPLES], texts[:RUNTIME_SAMPLES], exact=p == "fp32",
                                    reference=ref)
        report["runtime"][p] = r
        checks[f"runtime:{p}"] = r["ok"]
    lap("runtime_check")
    return report


def _describe(q: dict[str, Any]) -> str:
    parts = []
    if q["dynamic_ops"].get("MatMulInteger") or q["dynamic_ops"].get("DynamicQuantizeMatMul"):
        parts.append("dynamic int8 MatMul/Gemm (per-channel weights, per-tensor activations)")
    if q["weight_only_matmul"]:
        parts.append(f"{q['weight_only_matmul']} MatMul with int8 per-channel weights, float compute")
    if q["int8_gather"]:
        parts.append("int8 embedding rows (per-row scale)")
    if q["int8_conv"]:
        parts.append(f"{q['int8_conv']} conv weights int8 per channel, float compute")
    return "; ".join(parts)


def _bench_sizes(graph: str, cfg: Any) -> dict[str, int]:
    """Input sizes the fusion speed-up is measured at: a 32-caption batch; one query x 100 photos."""
    length = min(20, cfg.max_text_len)
    return {"batch": 32, "length": length} if graph == "text_encoder" else {"n": 100, "length": length}
