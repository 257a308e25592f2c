"""Fixtures of the gallery tests: a colour-aware fake bundle, a small photo folder, a running server."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from web_helpers import COLOURS, ColourBundle, run_server, write_colour_photo  # noqa: E402


@pytest.fixture()
def colour_bundle() -> ColourBundle:
    return ColourBundle()


@pytest.fixture()
def colour_photos(tmp_path: Path) -> Path:
    """photos/{warm,cool}/: one photo per colour (names say the colour)."""
    root = tmp_path / "photos"
    for name, rgb in COLOURS.items():
        sub = "warm" if name in ("red", "yellow") else "cool"
        write_colour_photo(root / sub / f"{name}.jpg", rgb)
    return root


@pytest.fixture()
def indexed_db(tmp_path: Path, colour_bundle: ColourBundle, colour_photos: Path) -> Path:
    from edge_xmr import Library

    db = tmp_path / "index.db"
    with Library.open(db, colour_bundle) as lib:
        lib.index(colour_photos)
    return db


@pytest.fixture()
def gallery(tmp_path: Path, indexed_db: Path, colour_bundle: ColourBundle) -> Any:
    from edge_xmr.server import Gallery

    return Gallery(db=indexed_db, bundle=colour_bundle, thumbs=tmp_path / "thumbs")


@pytest.fixture()
def server(gallery: Any) -> Iterator[Any]:
    yield from run_server(gallery)
