"""``export_bundle``: JointModel -> one bundle folder (docs/bundle.md), checked before it is published.

Pipeline: ONNX fp32 and its fixed-shape mobile variants (parity vs PyTorch) -> transformer fusions (checked and timed; shipped per spec) ->
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edge_xmr.errors import EdgeXmrError

from .specs import GRAPHS

if TYPE_CHECKING:
    from edge_xmr.model import JointModel

Format = Literal["onnx", "coreml"]
Precision = Literal["fp32", "int8"]
Fusion = Literal["spec", "on", "off"]
FORMATS: tuple[str, ...] = ("onnx", "coreml")
PRECISIONS: tuple[str, ...] = ("fp32", "int8")
COREML_FOR = {"fp32": "fp16", "int8": "int8"}  # requested precision -> CoreML variant
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


class ExportError(EdgeXmrError, RuntimeError):
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
    if fusion not in ("spec", "on", "off"):
        raise ValueError(f"fusion must be spec, on or off, not {fusion!r}")


def export_bundle(model_or_dir: JointModel | str | Path, out_dir: str | Path,
                  formats: Sequence[Format] = ("onnx",), precisions: Sequence[Precision] = ("fp32",),
                  calib_images: Sequence[Any] | None = None, calib_texts: Sequence[str] | None = None,
                  fusion: Fusion = "spec", int8_weight_only: str | None = None, mobile: bool = True,
                  coreml_target: str = "iOS17", overwrite: bool = False, threads: int | None = None,
                  seed: int = 0, multilingual: Any = None, routing: str = "auto") -> dict[str, Any]:
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
        fusion: onnxruntime transformer fusions on the graphs with text blocks. ``spec``: fuse, check
            and time them, and ship what each GraphSpec says (a fixed choice, so re-exporting a model
            gives the same model id); ``on``: ship the fused graphs; ``off``: neither fuse nor time.
        int8_weight_only: regex of MatMul/Gemm node names kept in float compute with int8 weights
            (sensitive layers); None quantizes every MatMul/Gemm dynamically.
        mobile: run onnxruntime's mobile usability check and write ORT-format copies.
        coreml_target: CoreML minimum deployment target (``ct.target`` name).
        overwrite: replace an existing bundle folder.
        threads: intra-op threads of torch (restored afterwards) and of the checking onnxruntime
            sessions; None keeps the libraries' defaults.
        seed: seed of the dummy inputs.
        multilingual: a ``MultilingualStudent`` (or its directory) distilled onto this model's text
            encoder: added as the bundle's optional multilingual query encoder (``mobile_export.multilingual``).
        routing: the bundle's default choice of text encoder per query (``edge_xmr.multilingual``).

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
        if multilingual is not None:
            _multilingual(report, stage, multilingual, tuple(precisions), routing)
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


@dataclass
class _Run:
    """State shared by the stages of one export."""

    model: JointModel
    stage: Path  # the bundle being written
    work: Path  # scratch files
    threads: int | None
    seed: int
    report: dict[str, Any]
    plain: dict[str, Path] = field(default_factory=dict)  # graph -> unfused fp32 .onnx
    mobile: dict[str, Path] = field(default_factory=dict)  # graph -> fixed-shape mobile variant (fp32 .onnx)
    graphs: dict[str, dict[str, Path]] = field(default_factory=dict)  # precision -> graph -> chosen .onnx
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # manifest variants
    _t: float = field(default_factory=time.perf_counter)

    @property
    def cfg(self) -> Any:
        return self.model.cfg

    @property
    def checks(self) -> dict[str, bool]:
        return self.report["checks"]  # type: ignore[no-any-return]

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.report["time_s"][name] = round(now - self._t, 2)
        self._t = now

    def rel(self, path: Path) -> str:
        return path.relative_to(self.stage).as_posix()


def _export(model: JointModel, stage: Path, work: Path, formats: tuple[str, ...], precisions: tuple[str, ...],
            calib_images: Sequence[Any] | None, calib_texts: Sequence[str] | None, fusion: str,
            int8_weight_only: str | None, mobile: bool, coreml_target: str, threads: int | None,
            seed: int) -> dict[str, Any]:
    from edge_xmr.preprocess import to_pixels

    from . import bundle as bw

    cfg = model.cfg
    report: dict[str, Any] = {"model": {"name": cfg.name, "base": cfg.base}, "formats": list(formats),
                              "precisions": list(precisions), "time_s": {}, "checks": {}}
    run = _Run(model, stage, work, threads, seed, report)
    synthetic = calib_images is None
    images = (list(calib_images)[:MAX_SAMPLES] if calib_images is not None
              else synthetic_images(32, cfg.image.size, seed))
    texts = list(calib_texts)[:MAX_SAMPLES] if calib_texts else list(SAMPLE_TEXTS)
    if not images or not texts:
        raise ValueError("calib_images / calib_texts must not be empty")
    pixels = to_pixels(images, cfg.image)
    ids, mask = model.tokenizer.encode(texts, cfg.max_text_len)
    report["samples"] = {"images": len(images), "texts": len(texts),
                         "images_source": "synthetic" if synthetic else "given"}
    bw.write_tokenizer(stage / "tokenizer.json", model.tokenizer, cfg.max_text_len)

    _onnx_fp32(run)
    _fusion(run, fusion)
    fp32_out = _int8(run, precisions, int8_weight_only, ids, mask, pixels)
    report["storage"] = bw.storage_scales(fp32_out[1], fp32_out[2])
    report["storage"]["calibration"] = f"{len(images)} {'synthetic' if synthetic else 'sample'} images"
    _copy_onnx(run)
    if mobile:
        _mobile(run)
    _share_weights(run)
    if "coreml" in formats:
        _coreml(run, tuple(COREML_FOR[p] for p in precisions), coreml_target)
    bw.write_score_data(stage, model)
    manifest = bw.write_manifest(stage, cfg, model.tokenizer.pad_id, run.variants, report["storage"])
    _conformance_kit(run)
    manifest = bw.write_manifest(stage, cfg, model.tokenizer.pad_id, run.variants, report["storage"],
                                 extra={"conformance": KIT_MANIFEST})
    report["sizes"] = manifest["sizes"]
    report["model"]["id"] = manifest["model"]["id"]
    _runtime_check(run, images[:RUNTIME_SAMPLES], texts[:RUNTIME_SAMPLES])
    return report


def _multilingual(report: dict[str, Any], stage: Path, student: Any, precisions: tuple[str, ...], routing: str) -> None:
    """Add the multilingual encoder to the staged bundle; its checks join the export's."""
    from edge_xmr.model.multilingual import load_student

    from .multilingual import add_multilingual

    if isinstance(student, (str, Path)):
        student = load_student(student)
    try:
        report["multilingual"] = add_multilingual(stage, student, precisions, routing)
        report["model"]["id"] = report["multilingual"]["model_id"]
    except ExportError as e:
        report["multilingual"] = e.report
    report["checks"].update(report["multilingual"].get("checks", {}))


def _onnx_fp32(run: _Run) -> None:
    """Export every graph to ONNX fp32 and compare it with PyTorch."""
    from . import parity
    from .onnx_export import export_onnx

    run.plain = {g: export_onnx(run.model, spec, run.work / "fp32" / f"{g}.onnx", run.seed)
                 for g, spec in GRAPHS.items()}
    run.lap("onnx_export")
    run.report["parity_fp32"] = {g: parity.torch_vs_onnx(run.model, spec, run.plain[g], threads=run.threads)
                                 for g, spec in GRAPHS.items()}
    for g, r in run.report["parity_fp32"].items():
        run.checks[f"fp32_parity:{g}"] = r["ok"]
    run.graphs["fp32"] = dict(run.plain)
    run.lap("parity_fp32")
    _mobile_variants(run)


def _mobile_variants(run: _Run) -> None:
    """Every graph's fixed-shape mobile variant (``GraphSpec.mobile_sizes``), compared with PyTorch."""
    from . import parity
    from .mobile import export_mobile

    run.report["mobile_variants"] = {}
    for g, spec in GRAPHS.items():
        path = run.work / "mobile" / f"{g}.onnx"
        info = export_mobile(run.model, spec, path, run.seed)
        info["parity"] = parity.fixed_vs_torch(run.model, spec, path, info["sizes"], threads=run.threads)
        run.checks[f"mobile_parity:{g}"] = info["parity"]["ok"]
        run.report["mobile_variants"][g] = info
        run.mobile[g] = path
    run.lap("mobile_variants")


def _fusion(run: _Run, fusion: str) -> None:
    """onnxruntime transformer fusions on the graphs with text blocks, kept where measured faster."""
    from . import parity
    from .optimize import fuse_transformer, fusion_speedup

    run.report["fusion"] = {}
    for g, spec in GRAPHS.items():
        if spec.fusion == "never" or fusion == "off":
            continue
        fused = run.work / "fused" / f"{g}.onnx"
        ops = fuse_transformer(run.plain[g], fused, run.cfg.text.heads, run.cfg.text.width)
        par = parity.torch_vs_onnx(run.model, spec, fused, threads=run.threads)
        sizes = _bench_sizes(g, run.cfg)
        speed = fusion_speedup(run.plain[g], fused, spec.dummy(run.cfg, sizes, np.random.default_rng(run.seed)))
        keep = fusion == "on" or spec.fusion == "ship"
        run.report["fusion"][g] = {"fused_ops": ops, "max_abs_diff": par["max_abs_diff"], **speed,
                                   "bench_sizes": sizes, "kept": keep}
        if keep:
            run.checks[f"fp32_parity_fused:{g}"] = par["ok"]
            run.graphs["fp32"][g] = fused
    run.lap("fusion")


def _int8(run: _Run, precisions: tuple[str, ...], weight_only: str | None, ids: np.ndarray, mask: np.ndarray,
          pixels: np.ndarray) -> tuple[np.ndarray, ...]:
    """Quantize (from the unfused fp32 graphs) and compare with fp32 on the samples; returns the fp32
    outputs on the samples (text embeddings, image embeddings, image tokens)."""
    from . import parity
    from .quantize_int8 import quantize_int8

    s32 = {g: parity.session(p, run.threads) for g, p in run.graphs["fp32"].items()}
    fp32_out = parity.encode_all(s32["text_encoder"], s32["image_encoder"], ids, mask, pixels)
    if "int8" not in precisions:
        return fp32_out
    q = {g: run.work / "int8" / f"{g}.onnx" for g in GRAPHS}
    run.report["quantization"] = {
        g: quantize_int8(run.plain[g], q[g], weight_only="|".join(x for x in (spec.int8_weight_only, weight_only)
                                                                  if x) or None)
        for g, spec in GRAPHS.items()}
    run.lap("quantize_int8")
    run.report["parity_int8"] = parity.int8_vs_fp32(run.graphs["fp32"], q, ids, mask, pixels, fp32_outputs=fp32_out,
                                                    threads=run.threads)
    run.checks["int8_cosine"] = run.report["parity_int8"]["ok"]
    # every integer kernel's weights fit the range in which no CPU's u8s8 kernel saturates, so the
    # int8 figures measured here hold on AVX2-only, AVX-512, VNNI and ARM CPUs alike
    run.checks["int8_no_saturation"] = not any(r["int16_saturation_risk"] for r in run.report["quantization"].values())
    run.graphs["int8"] = q
    run.lap("parity_int8")
    return fp32_out


def _copy_onnx(run: _Run) -> None:
    """Self-contained ONNX graphs into the bundle, with what the manifest says about each."""
    for p, graphs in run.graphs.items():
        run.variants[f"onnx/{p}"] = {}
        for g, src in graphs.items():
            dst = run.stage / "onnx" / p / f"{g}.onnx"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            info: dict[str, Any] = {"path": run.rel(dst)}
            if p == "fp32":
                info["fused"] = src != run.plain[g]
                info["parity_vs_torch_max_abs_diff"] = run.report["parity_fp32"][g]["max_abs_diff"]
            else:
                info["quantization"] = _describe(run.report["quantization"][g])
            run.variants[f"onnx/{p}"][g] = info
    run.variants["mobile/fp32"] = {}
    for g, src in run.mobile.items():
        dst = run.stage / "onnx" / "fp32" / f"{g}.mobile.onnx"  # next to the fp32 graphs: weights shared
        shutil.copyfile(src, dst)
        info = run.report["mobile_variants"][g]
        run.variants["mobile/fp32"][g] = {
            "format": "onnx", "path": run.rel(dst), "fixed_sizes": info["sizes"],
            "padding": "inputs padded with zeros to fixed_sizes (padded tokens: attention_mask 0), outputs cut back",
            "rewrites": info["rewrites"], "parity_vs_torch_max_abs_diff": info["parity"]["max_abs_diff"]}
    if "int8" in run.graphs:
        pi8, v = run.report["parity_int8"], run.variants["onnx/int8"]
        v["text_encoder"]["cosine_vs_fp32"] = pi8["text_cosine"]
        v["image_encoder"]["cosine_vs_fp32"] = pi8["image_cosine"]
        v["cross_encoder"]["joint_max_abs_diff"] = pi8["joint_max_abs_diff"]
        for g in GRAPHS:
            v[g]["measured_on"] = pi8["cpu"]  # the CPU features the figures above were measured with


def _mobile(run: _Run) -> None:
    """onnxruntime's mobile usability check per graph and ORT-format copies (checked against the .onnx)."""
    from . import parity
    from .mobile import required_operators, summary, to_ort_format, usability

    run.report["mobile"] = {}
    for p in run.graphs:
        run.report["mobile"][p] = {}
        run.variants[f"ort/{p}"] = {}
        for g, spec in GRAPHS.items():
            src = run.stage / "onnx" / p / f"{g}.onnx"
            use = usability(src)
            dst = to_ort_format(src, run.stage / "ort" / p / f"{g}.ort")
            diff = parity.onnx_vs_onnx(spec, run.cfg, src, dst, threads=run.threads)
            # int8 kernels differ between optimisation levels (fused vs unfused dynamic MatMul)
            ok = diff["max_abs_diff"] <= spec.atol if p == "fp32" else diff["min_cosine"] >= ORT_INT8_MIN_COSINE
            run.checks[f"ort_format:{p}:{g}"] = ok
            run.report["mobile"][p][g] = {"usability": use, "ort_vs_onnx": diff}
            run.variants[f"ort/{p}"][g] = {"path": run.rel(dst)}
        required_operators([run.stage / "ort" / p / f"{g}.ort" for g in GRAPHS],
                           run.stage / "ort" / p / "required_operators.config")
    for g, info in run.variants.get("mobile/fp32", {}).items():
        use = usability(run.stage / info["path"])
        run.report["mobile"].setdefault("mobile/fp32", {})[g] = {"usability": use}
        info["accelerators"] = summary(use)
    run.lap("mobile")


def _share_weights(run: _Run) -> None:
    """Weights used by several graphs stored once; the graphs must still give identical outputs."""
    from . import bundle as bw
    from . import parity

    run.report["shared_weights"] = {}
    for p, graphs in run.graphs.items():
        files = [run.stage / "onnx" / p / f"{g}.onnx" for g in GRAPHS]
        mobile = {g: run.stage / "onnx" / p / f"{g}.mobile.onnx" for g in run.mobile} if p == "fp32" else {}
        run.report["shared_weights"][p] = bw.share_weights(files + list(mobile.values()))
        diffs = [parity.onnx_vs_onnx(GRAPHS[g], run.cfg, graphs[g], f, threads=run.threads)["max_abs_diff"]
                 for g, f in zip(GRAPHS, files)]
        diffs += [parity.onnx_vs_onnx(GRAPHS[g], run.cfg, run.mobile[g], f, threads=run.threads,
                                      fixed=run.report["mobile_variants"][g]["sizes"])["max_abs_diff"]
                  for g, f in mobile.items()]
        run.checks[f"shared_weights:{p}"] = max(diffs) == 0.0
    run.lap("share_weights")


def _coreml(run: _Run, wanted: tuple[str, ...], target: str) -> None:
    """CoreML packages and the checks Linux can do on them."""
    from .coreml_export import check_coreml, export_coreml

    run.report["coreml"] = {}
    for g, spec in GRAPHS.items():
        for v, path in export_coreml(run.model, spec, run.stage / "coreml", wanted, target, run.seed).items():
            rep = check_coreml(path, spec, run.cfg, v)
            run.report["coreml"].setdefault(v, {})[g] = rep
            run.checks[f"coreml:{v}:{g}"] = rep["ok"]
            run.variants.setdefault(f"coreml/{v}", {})[g] = {
                "path": run.rel(path), "target": target,
                "io_dtypes": "int32 ids/mask (CoreML has no int64), float32 elsewhere"}
    run.lap("coreml")


KIT_MANIFEST = {"dir": "conformance", "cases": "conformance/cases.json", "expected": "conformance/expected.npz",
                "check": "conformance/check.py",
                "run": "python conformance/check.py RESULTS.npz [--precision fp32|reduced] (docs/bundle.md)"}


def _conformance_kit(run: _Run) -> None:
    """The conformance kit (``conformance.py``) from the staged bundle's own fp32 runtime."""
    from edge_xmr.bundle import Bundle

    from .conformance import write_kit

    run.report["conformance"] = write_kit(run.stage, Bundle.load(run.stage, "fp32", threads=run.threads, verify=False))
    run.lap("conformance")


def _runtime_check(run: _Run, images: list[Any], texts: list[str]) -> None:
    """The finished bundle, loaded by the torch-free runtime, must reproduce the PyTorch rankings."""
    from edge_xmr.bundle import Bundle

    from . import parity

    run.report["runtime"] = {}
    ref = parity.torch_reference(run.model, images, texts)
    for p in run.graphs:
        b = Bundle.load(run.stage, precision=p, threads=run.threads)
        r = parity.runtime_vs_torch(run.model, b, images, texts, exact=p == "fp32", reference=ref)
        run.report["runtime"][p] = r
        run.checks[f"runtime:{p}"] = r["ok"]
    run.lap("runtime_check")


def _describe(q: dict[str, Any]) -> str:
    parts = []
    if q["dynamic_ops"].get("MatMulInteger") or q["dynamic_ops"].get("DynamicQuantizeMatMul"):
        parts.append("dynamic int8 MatMul/Gemm (per-channel weights in [-64, 64], per-tensor activations)")
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
