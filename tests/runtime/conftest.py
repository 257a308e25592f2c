"""Fixtures of the runtime tests: a fake bundle, photo folders, and the real exported tiny bundle."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fakes import FakeBundle  # noqa: E402


@pytest.fixture()
def fake_bundle() -> FakeBundle:
    return FakeBundle()


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


@pytest.fixture()
def photo_tree(tmp_path: Path) -> Path:
    """root/{a, a/deep, b}: 9 small JPEGs and PNGs, some with EXIF dates."""
    root = tmp_path / "photos"
    for i in range(4):
        write_photo(root / "a" / f"img{i}.jpg", i, exif_time=f"2020:0{i + 1}:15 10:00:00")
    for i in range(2):
        write_photo(root / "a" / "deep" / f"d{i}.png", 10 + i, fmt="PNG")
    for i in range(3):
        write_photo(root / "b" / f"b{i}.jpg", 20 + i, exif_time=f"2022:0{i + 1}:01 08:30:00")
    return root


@pytest.fixture(scope="session")
def real_bundle_dir(request: pytest.FixtureRequest) -> Path:
    """The real exported bundle of the tiny model (the shared ``tiny_bundle`` fixture)."""
    try:
        value = request.getfixturevalue("tiny_bundle")
    except pytest.FixtureLookupError:
        pytest.skip("tiny_bundle fixture not available")
    return Path(getattr(value, "root", None) or value) if not isinstance(value, (str, Path)) else Path(value)
