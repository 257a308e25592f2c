"""The conformance kit every bundle ships in ``conformance/`` (docs/bundle.md, "Conformance kit").

Reference images rendered by code (each exercises one rule of ``manifest.preprocessing``: the JPEG
decode scale, the EXIF orientation, alpha on white, greyscale, downscaling with antialiasing and
upscaling, the squash of a non-square photo), reference texts (one longer than ``max_text_len``),
and what the bundle's own runtime (``edge_xmr.bundle.Bundle``, fp32) makes of them: the 8-bit RGB
pixels after resizing, the embeddings, the token ids and the rerank scores against the kit's
images as candidates. ``check.py`` (``conformance_check.py``) compares a port's outputs with them.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from edge_xmr.bundle import Bundle

KIT = "conformance"
TEXTS = (
    "a dog running on the beach",
    "Two CHILDREN playing in the snow, near a red car!",
    "café au lait: naïve señor's piñata (2024)",
    "a very long caption about a man in a blue shirt who is riding a red bicycle down a busy street "
    "past a white dog, many parked cars, a few tall trees, and children who are playing with a ball",
)
TOLERANCES = {
    # 0..255 units. A port that follows the contract with another libjpeg build differs by rounding
    # (<= 1 level); non-antialiased bicubic, a bilinear filter or a decode at another scale do not pass
    "pixels": {"mean_abs": 0.5, "p99_abs": 2.0},
    "embedding_min_cosine": {"fp32": 0.999, "reduced": 0.99},  # reduced: int8 graphs, CoreML fp16
    "score_max_abs": {"fp32": 1e-3, "reduced": 0.25},
}


def _pattern(w: int, h: int, seed: int) -> np.ndarray:
    """(h, w, 3) uint8: a smooth colour field, a patch of fine diagonal stripes (period ~3 px: aliasing
    shows) and a disc: the content a resize filter's antialiasing and a decode scale change."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    c = rng.uniform(40, 215, (3, 3))
    img = c[0] + (c[1] - c[0]) * (xx / w)[..., None] + (c[2] - c[0]) * (yy / h)[..., None]
    stripes = (np.sin((xx + yy) * 2.1) > 0)[..., None]
    quarter = ((xx > 0.65 * w) & (yy < 0.3 * h))[..., None]
    img = np.where(quarter & stripes, 245.0, np.where(quarter, 15.0, img))
    disc = ((xx - 0.3 * w) ** 2 + (yy - 0.65 * h) ** 2 < (0.18 * min(w, h)) ** 2)[..., None]
    img = np.where(disc, rng.uniform(0, 255, 3), img)
    return img.clip(0, 255).astype(np.uint8)


def _jpeg(a: np.ndarray, orientation: int = 1, mode: str = "RGB") -> bytes:
    im = Image.fromarray(a).convert(mode)
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[274] = orientation
    im.save(buf, "JPEG", quality=70, exif=exif.tobytes())
    return buf.getvalue()


def reference_images(size: int) -> list[dict[str, Any]]:
    """The kit's images for input side ``size``: ``{"name", "file", "data", "tests"}`` each."""
    S = size
    alpha = np.zeros((7 * S // 5, 3 * S // 4, 4), np.uint8)
    alpha[..., :3] = _pattern(3 * S // 4, 7 * S // 5, 3)
    yy, xx = np.mgrid[0:alpha.shape[0], 0:alpha.shape[1]]
    alpha[..., 3] = np.where(xx < alpha.shape[1] // 2, 255, np.where(yy < alpha.shape[0] // 2, 96, 0))
    png = io.BytesIO()
    Image.fromarray(alpha, "RGBA").save(png, "PNG")
    return [
        {"name": "jpeg_scale2", "file": "jpeg_scale2.jpg", "data": _jpeg(_pattern(3 * S + S // 3, 2 * S + S // 2, 1)),
         "tests": "JPEG decoded at 1/2 (min(w // S, h // S) = 2), antialiased downscale, squash of a 4:3 photo"},
        {"name": "jpeg_scale4_exif6", "file": "jpeg_scale4_exif6.jpg",
         "data": _jpeg(_pattern(4 * S + 7, 4 * S + S // 2, 2), orientation=6),
         "tests": "JPEG decoded at 1/4, EXIF orientation 6 (rotate 90 degrees clockwise) applied before resizing"},
        {"name": "rgba_upscale", "file": "rgba_upscale.png", "data": png.getvalue(),
         "tests": "PNG with alpha (opaque, 96/255 and transparent parts) composited on white; bicubic upscaling"},
        {"name": "grey_full", "file": "grey_full.jpg", "data": _jpeg(_pattern(2 * S + 1, 3 * S // 2, 4), mode="L"),
         "tests": "greyscale JPEG decoded at full size (min(w // S, h // S) = 1) -> RGB"},
    ]


def write_kit(root: Path, bundle: Bundle, checker: Path | None = None) -> dict[str, Any]:
    """Write ``root/conformance/`` for the loaded fp32 ``bundle`` (its own outputs are the expected
    values); returns the kit's report (files and sizes)."""
    from edge_xmr.preprocess import to_rgb8

    kit = root / KIT
    (kit / "images").mkdir(parents=True, exist_ok=True)
    pre = bundle.manifest["preprocessing"]
    size = int(pre["size"])
    images = reference_images(size)
    paths = []
    for im in images:
        p = kit / "images" / im["file"]
        p.write_bytes(im["data"])
        paths.append(p)
    arrays: dict[str, np.ndarray] = {}
    embeds, tokens = bundle.encode_images(paths)
    for im, p, e in zip(images, paths, embeds):
        arrays[f"pixels_rgb8/{im['name']}"] = to_rgb8(p, size)
        arrays[f"image_embeds/{im['name']}"] = e
    arrays["candidates/image_tokens"], arrays["candidates/image_embeds"] = tokens, embeds
    for j, text in enumerate(TEXTS):
        ids, mask = bundle.tokenizer.encode([text], bundle.max_text_len)
        arrays[f"input_ids/{j}"] = ids[0, : int(mask[0].sum())]
        q = bundle.encode_query(text)
        arrays[f"text_embeds/{j}"] = q.embedding
        arrays[f"scores/{j}"] = bundle.score_encoded(q, tokens, embeds)
    np.savez_compressed(kit / "expected.npz", **arrays)
    cases = {
        "about": "Run your port on these inputs, save its outputs in one .npz and run "
                 "'python conformance/check.py RESULTS.npz' (keys and tolerances: check.py, docs/bundle.md)",
        "preprocessing": pre,
        "images": [{k: v for k, v in im.items() if k != "data"} for im in images],
        "texts": list(TEXTS),
        "candidates": "expected.npz candidates/image_tokens (n, T, Dt) and candidates/image_embeds (n, D): "
                      "the kit's images, in the order above, as stored float32 data",
        "expected_from": f"edge_xmr.bundle.Bundle (onnx/{bundle.precision}) on this bundle",
        "tolerances": TOLERANCES,
    }
    (kit / "cases.json").write_text(json.dumps(cases, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    shutil.copyfile(checker or Path(__file__).with_name("conformance_check.py"), kit / "check.py")
    files = sorted(p for p in kit.rglob("*") if p.is_file())
    return {"files": [p.relative_to(root).as_posix() for p in files],
            "kb": round(sum(p.stat().st_size for p in files) / 1e3, 1)}
