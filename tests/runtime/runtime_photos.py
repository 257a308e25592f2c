"""Small test photos with optional EXIF capture time and orientation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def write_photo(path: Path, seed: int, size: tuple[int, int] = (48, 40), exif_time: str | None = None,
                orientation: int | None = None, fmt: str = "JPEG") -> Path:
    """A small random photo, optionally with an EXIF capture time and orientation."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    im = Image.fromarray(base).resize(size, Image.BILINEAR)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if exif_time is not None:
        exif.get_ifd(0x8769)[0x9003] = exif_time
    path.parent.mkdir(parents=True, exist_ok=True)
    kw: dict[str, Any] = {"exif": exif.tobytes()} if len(exif) or exif_time else {}
    im.save(path, fmt, **kw)
    return path
