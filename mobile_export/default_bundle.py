"""The default model's bundle that ships inside edge_xmr (``edge_xmr/assets/default_bundle``), so a
torch-free install searches right after ``pip install``.

Regenerate it (after the default model, its score config or the exporter changes) with::

    python -m mobile_export.default_bundle            # writes edge_xmr/assets/default_bundle
    python -m mobile_export.default_bundle --check    # exit 1 if the shipped bundle is stale

What ships (docs/bundle.md, "The packaged default bundle"): the checked export of
``edge_xmr/assets/default_model`` with its int8 graphs only (the fp32 graphs, 114 MB, are the export's
reference and are dropped after the parity checks: the runtime then runs int8), and the text
encoder's int8 embedding table moved out of ``text_encoder.onnx`` into its own external-data file,
so that no committed file exceeds ``MAX_FILE_MB``. The manifest's ``packaged`` section records the
hash of the source weights and config (``edge_xmr.demo.model_hash``: config.json, with the score
config, and model.safetensors): tests/mobile_export/test_default_bundle.py fails when they differ.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from edge_xmr.bundle import MANIFEST, sha256_path
from edge_xmr.demo import default_model_dir, model_hash

TARGET = Path(__file__).resolve().parents[1] / "edge_xmr" / "assets" / "default_bundle"
MAX_FILE_MB = 15.0  # the repository's limit for one committed file
KEEP = "onnx/int8"  # the variant that ships
TABLE = "model.text.tok.weight_int8"  # the text encoder's int8 token embedding table
TABLE_FILE = "text_embeddings.bin"  # where it goes (next to text_encoder.onnx)
COMMAND = "python -m mobile_export.default_bundle"


def build(target: Path = TARGET, model_dir: Path | None = None, threads: int | None = None) -> dict[str, Any]:
    """Export the default model, keep the int8 variant, split the embedding table; returns the manifest."""
    from edge_xmr.demo import DemoError, sample_photos

    from . import export_bundle

    model_dir = model_dir or default_model_dir()
    try:
        calib: list[str] | None = sorted(str(p) for p in sample_photos().iterdir() if p.suffix in (".png", ".jpg"))
    except DemoError:
        calib = None  # synthetic calibration images (recorded in manifest.storage.calibration)
    with tempfile.TemporaryDirectory(prefix="edge_xmr_default_bundle_") as tmp:
        out = Path(tmp) / "bundle"
        export_bundle(model_dir, out, formats=("onnx",), precisions=("fp32", "int8"), calib_images=calib,
                      mobile=False, overwrite=True, threads=threads)
        manifest = _pack(out, model_hash(model_dir))
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(out, target)
    return manifest


def _pack(root: Path, source_hash: str) -> dict[str, Any]:
    """Drop every variant but ``KEEP``, move the embedding table to its own file, rewrite the manifest."""
    m = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    dropped = sorted({v for g in m["graphs"].values() for v in g["variants"] if v != KEEP})
    for g in m["graphs"].values():
        g["variants"] = {v: info for v, info in g["variants"].items() if v == KEEP}
    for v in dropped:
        shutil.rmtree(root / v, ignore_errors=True)
    m["sizes"] = {v: s for v, s in m["sizes"].items() if v == KEEP}
    _split_table(root / KEEP / "text_encoder.onnx")
    m["files"] = {p.relative_to(root).as_posix(): sha256_path(p) for p in sorted(root.rglob("*"))
                  if p.is_file() and p.name != MANIFEST}
    m["packaged"] = {
        "command": COMMAND,
        "source_model_hash": source_hash,  # edge_xmr.demo.model_hash of the model directory exported
        "dropped_variants": dropped,
        "note": f"{TABLE} of text_encoder.onnx is external data in {KEEP}/{TABLE_FILE}",
    }
    (root / MANIFEST).write_text(json.dumps(m, indent=2) + "\n", encoding="utf-8")
    return dict(m)


def _split_table(graph: Path) -> None:
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    (t,) = [t for t in model.graph.initializer if t.name == TABLE]
    data = t.raw_data
    (graph.parent / TABLE_FILE).write_bytes(data)
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    for key, value in (("location", TABLE_FILE), ("offset", "0"), ("length", str(len(data)))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(graph))


def file_sizes_mb(root: Path = TARGET) -> dict[str, float]:
    return {p.relative_to(root).as_posix(): round(p.stat().st_size / 1e6, 3) for p in sorted(root.rglob("*"))
            if p.is_file()}


def stale_reason(root: Path = TARGET, model_dir: Path | None = None) -> str | None:
    """Why the shipped bundle does not match the default model (None: it matches)."""
    f = root / MANIFEST
    if not f.is_file():
        return f"no bundle at {root}"
    recorded = json.loads(f.read_text(encoding="utf-8")).get("packaged", {}).get("source_model_hash")
    now = model_hash(model_dir or default_model_dir())
    if recorded != now:
        return f"built from model {str(recorded)[:12]}, the default model is now {now[:12]}: run {COMMAND}"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=TARGET, help=f"bundle folder (default {TARGET})")
    ap.add_argument("--check", action="store_true", help="only say whether the shipped bundle is stale (exit 1)")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    if a.check:
        why = stale_reason(a.out)
        print(why or f"{a.out} matches the default model", file=sys.stderr if why else sys.stdout)
        return 1 if why else 0
    build(a.out, threads=a.threads)
    sizes = file_sizes_mb(a.out)
    for name, mb in sizes.items():
        print(f"{mb:8.3f} MB  {name}")
    print(f"{sum(sizes.values()):8.3f} MB  total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
