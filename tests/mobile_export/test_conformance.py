"""The conformance kit: the mobile reference conforms, deliberately wrong ports do not."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reference():
    spec = importlib.util.spec_from_file_location("mobile_reference", REPO / "samples" / "mobile" / "reference.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def _check(bundle: Path, results: dict, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run the bundle's own check.py (a standalone script) on a port's results."""
    out = tmp_path / "results.npz"
    np.savez(out, **results)
    return subprocess.run([sys.executable, str(bundle / "conformance" / "check.py"), str(out), "--json", *extra],
                          capture_output=True, text=True, check=False)


def test_kit_is_in_the_bundle_and_the_manifest(tiny_bundle):
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    kit = m["conformance"]
    for key in ("cases", "expected", "check"):
        assert kit[key] in m["files"]
    images = json.loads((tiny_bundle / kit["cases"]).read_text())["images"]
    assert len(images) == 4 and all(f"conformance/images/{i['file']}" in m["files"] for i in images)
    steps = m["preprocessing"]["steps"]
    assert "scale_denom s" in steps["decode"] and steps["resize_filter"]["a"] == -0.5
    assert steps["resize_filter"]["antialias"] is True


def test_reference_port_conforms(tiny_bundle, reference, tmp_path):
    res = reference.conformance_results(reference.Model(tiny_bundle), tiny_bundle / "conformance")
    r = _check(tiny_bundle, res, tmp_path)
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["ok"], [c for c in report["checks"] if not c["ok"]]
    assert len(report["checks"]) == 4 * 3 + 4 * 4  # every image and text checked


def _rgb(f: Image.Image) -> Image.Image:
    """EXIF orientation and RGB with alpha on white, as the contract says (the wrong ports below differ
    from the reference in one rule each)."""
    im = ImageOps.exif_transpose(f)
    if im.mode == "RGBA":
        white = Image.new("RGB", im.size, (255, 255, 255))
        white.paste(im, mask=im.split()[-1])
        return white
    return im.convert("RGB")


def _no_draft(path, s):
    with Image.open(path) as f:
        return _rgb(f).resize((s, s), Image.Resampling.BICUBIC)


def _draft_2x(path, s):
    """docs/mobile.md used to allow it: a reduced decode of at least 2 S per side."""
    with Image.open(path) as f:
        if f.format == "JPEG":
            f.draft("RGB", (2 * s, 2 * s))
        return _rgb(f).resize((s, s), Image.Resampling.BICUBIC)


def _torch_bicubic(path, s):
    """A plain (not antialiased) bicubic, as torch / OpenCV resize by default."""
    import torch
    import torch.nn.functional as F

    with Image.open(path) as f:
        if f.format == "JPEG":
            f.draft("RGB", (s, s))
        a = np.asarray(_rgb(f), np.float32)
    x = F.interpolate(torch.from_numpy(a).permute(2, 0, 1)[None], (s, s), mode="bicubic", align_corners=False)
    return Image.fromarray(x.clamp(0, 255).round()[0].permute(1, 2, 0).numpy().astype(np.uint8))


def _pillow(path, s):
    """The contract followed with Pillow directly: must conform (the oracle for the three above)."""
    with Image.open(path) as f:
        if f.format == "JPEG":
            f.draft("RGB", (s, s))
        return _rgb(f).resize((s, s), Image.Resampling.BICUBIC)


@pytest.mark.parametrize(("port", "conforms", "fails_on"), [
    (_pillow, True, ()), (_no_draft, False, ("jpeg_scale2", "jpeg_scale4_exif6")),
    (_draft_2x, False, ("jpeg_scale2", "jpeg_scale4_exif6")), (_torch_bicubic, False, ("jpeg_scale2", "grey_full"))],
    ids=["pillow", "no-draft", "draft-2x", "torch-bicubic"])
def test_wrong_ports_fail(tiny_bundle, reference, tmp_path, monkeypatch, port, conforms, fails_on):
    model = reference.Model(tiny_bundle)
    s, pre = int(model.pre["size"]), model.pre

    def pixels(path):
        a = np.asarray(port(path, s), np.float32) / 255.0
        return ((a - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)).transpose(2, 0, 1)[None]

    monkeypatch.setattr(model, "pixels", pixels)
    r = _check(tiny_bundle, reference.conformance_results(model, tiny_bundle / "conformance"), tmp_path)
    report = json.loads(r.stdout)
    assert (r.returncode == 0) == conforms and report["ok"] == conforms
    failed = {c["name"].split(":")[0].split()[1] for c in report["checks"] if not c["ok"] and c["name"].startswith("pixels")}
    assert failed == set(fails_on) or (not conforms and set(fails_on) <= failed), failed


def test_wrong_truncation_and_missing_keys_fail(tiny_bundle, reference, tmp_path):
    res = reference.conformance_results(reference.Model(tiny_bundle), tiny_bundle / "conformance")
    res["input_ids/3"] = res["input_ids/3"][:-1]  # cut without keeping the final special token
    del res["scores/0"]
    report = json.loads(_check(tiny_bundle, res, tmp_path).stdout)
    failed = {c["name"] for c in report["checks"] if not c["ok"]}
    assert "input_ids 3: identical" in failed and any("scores/0" in p for p in report["problems"])


def test_tokenizer_json_truncates_like_the_runtime(tiny_bundle):
    """A port that encodes with tokenizer.json as it is gets the runtime's ids for an over-long text."""
    from tokenizers import Tokenizer

    from edge_xmr.bundle import Bundle

    b = Bundle.load(tiny_bundle)
    text = json.loads((tiny_bundle / "conformance" / "cases.json").read_text())["texts"][3]
    hf = Tokenizer.from_file(str(tiny_bundle / "tokenizer.json")).encode(text).ids
    ids, mask = b.tokenizer.encode([text], b.max_text_len)
    assert len(hf) == b.max_text_len and hf == ids[0, : int(mask[0].sum())].tolist()


def test_check_reports_unreadable_results(tiny_bundle, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    r = subprocess.run([sys.executable, str(tiny_bundle / "conformance" / "check.py"), str(bad)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
