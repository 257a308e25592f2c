"""Image decoding and preprocessing (numpy + Pillow only), identical in training, export and runtime.

Rule (written out in full in the bundle's ``manifest.preprocessing``, see ``CONTRACT``):

1. decode; a JPEG at 1/s of its size by libjpeg's DCT scaling, s the largest of 8, 4, 2, 1 with
   s <= min(width // size, height // size) (Pillow's ``draft``);
2. apply the EXIF orientation; convert to 8-bit RGB (alpha composited on white);
3. resize the whole image to size x size (aspect not kept, as in the training data) with Pillow's
   antialiased bicubic (a = -0.5), each pass rounded to 8 bits;
4. scale to [0, 1], then (x - mean) / std per channel, channels first.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps
from .errors import EdgeXmrError

FloatArray = npt.NDArray[np.float32]


class ImageError(EdgeXmrError, ValueError):
    """An image that cannot be used; the message names the file and the reason."""


class ImageReadError(ImageError):
    """The file could not be read (permission denied, an I/O error): its content may be fine."""


def load_image(path: str | Path | BinaryIO, size: int = 224) -> Image.Image:
    """Open, draft-decode and orient an image file (a path, or a binary file open at its start)
    -> RGB PIL image (raises ImageError, ImageReadError when reading failed)."""
    name = str(getattr(path, "name", "<stream>")) if hasattr(path, "read") else str(path)
    try:
        if not hasattr(path, "read") and Path(path).stat().st_size == 0:  # type: ignore[arg-type]
            raise ImageError(f"{name}: empty file")
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (size, size))  # reduced-size DCT decoding (a 12 MP photo decodes at 1/8)
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: decompression bomb ({e})") from None
    except OSError as e:
        if e.errno is not None:  # the operating system's error, not Pillow's verdict on the bytes
            raise ImageReadError(f"{name}: cannot read file ({e.strerror or e})") from e
        raise ImageError(f"{name}: cannot decode image ({e})") from None
    except (SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: cannot decode image ({e})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode (CMYK, 16-bit, palette, alpha, ...) -> 8-bit RGB."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float32)
        hi = float(a.max()) or 1.0
        im = Image.fromarray((a / hi * 255.0).clip(0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        im = Image.fromarray(((a - lo) / ((hi - lo) or 1.0) * 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.split()[-1])
        return bg
    return im.convert("RGB")


def to_rgb8(image: Any, size: int) -> npt.NDArray[np.uint8]:
    """One path / PIL image / HxWx3 uint8 array -> (size, size, 3) uint8 RGB: steps 1-3 of the rule
    (what a bundle's conformance kit stores as the expected pixels)."""
    if isinstance(image, (str, Path)):
        im = load_image(image, size)
    elif isinstance(image, Image.Image):
        im = to_rgb(image)
    else:
        im = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC)
    return np.asarray(im, np.uint8)


def to_pixels(images: Sequence[Any], cfg: Any) -> FloatArray:
    """Paths / PIL images / HxWx3 uint8 arrays -> (B, 3, S, S) float32 normalised pixels.

    ``cfg`` has ``size``, ``mean`` and ``std`` (an ImageConfig or the bundle's preprocessing dict).
    """
    size = int(cfg["size"] if isinstance(cfg, dict) else cfg.size)
    mean = np.asarray(cfg["mean"] if isinstance(cfg, dict) else cfg.mean, np.float32)
    std = np.asarray(cfg["std"] if isinstance(cfg, dict) else cfg.std, np.float32)
    out = np.empty((len(images), 3, size, size), np.float32)
    for i, x in enumerate(images):
        a = to_rgb8(x, size).astype(np.float32) / 255.0  # (S, S, 3)
        out[i] = ((a - mean) / std).transpose(2, 0, 1)
    return out


CONTRACT = {  # manifest.preprocessing's description of each step (docs/mobile.md, step 3)
    "decode": "JPEG: libjpeg DCT scaling at 1/s (scale_num 1, scale_denom s), s = the largest of 8, 4, 2, 1 "
              "with s <= min(width // size, height // size) of the stored (not yet oriented) width and "
              "height, giving ceil(width / s) x ceil(height / s); libjpeg's islow IDCT, fancy chroma "
              "upsampling, JFIF YCbCr -> RGB (Pillow's draft('RGB', (size, size))). Other formats: full size",
    "exif_orientation": "EXIF Orientation (tag 274) applied after decoding, before resizing",
    "color": "8-bit RGB: alpha composited on white (255, 255, 255); greyscale, palette and CMYK as "
             "Pillow's convert('RGB'); 16-bit and 32-bit integer greyscale scaled by the image's maximum "
             "to 0..255 first",
    "resize_filter": {
        "kernel": "cubic convolution (Keys)", "a": -0.5, "antialias": True,
        "support": "2 x max(1, input side / output side) input pixels each side of the output pixel centre",
        "coordinates": "pixel centres: the input position of output pixel i is (i + 0.5) * input / output",
        "order": "horizontal pass, then vertical pass (separable)",
        "rounding": "each pass rounded to the nearest integer and clipped to 0..255 (8-bit intermediate image)",
        "reference": "PIL.Image.resize((size, size), Image.BICUBIC)",
    },
    "normalize": "x = (rgb / 255 - mean) / std per channel, float32",
}


def decode_image(data: bytes, size: int = 224, name: str = "image") -> Image.Image:
    """``load_image`` for bytes in memory (a file the caller opened and checked itself)."""
    if not data:
        raise ImageError(f"{name}: empty file")
    buf = io.BytesIO(data)
    buf.name = name  # type: ignore[attr-defined]  # load_image names the file in its errors
    return load_image(buf, size)
