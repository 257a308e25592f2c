"""Fixtures of the runtime tests: a fake bundle, photo folders, and the real exported tiny bundle."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runtime_fakes import FakeBundle  # noqa: E402
from runtime_photos import write_photo  # noqa: E402

from edge_xmr import Library  # noqa: E402


@pytest.fixture()
def fake_bundle() -> FakeBundle:
    return FakeBundle()


@pytest.fixture()
def fake_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``edge_xmr.cli`` with the fake bundle: its loader faked, ``$EDGE_XMR_BUNDLE`` a folder with a
    manifest (so it is found as the default bundle), ``$EDGE_XMR_DB`` and ``$EDGE_XMR_CACHE`` in
    ``tmp_path`` (child processes inherit them); returns the bundle folder."""
    from edge_xmr.cli import runtime as cli_runtime

    monkeypatch.setattr(cli_runtime, "load_bundle",
                        lambda path, provider, threads, precision=None, routing=None: FakeBundle())
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    (bundle_dir / "manifest.json").write_text("{}")
    monkeypatch.setenv("EDGE_XMR_BUNDLE", str(bundle_dir))
    monkeypatch.setenv("EDGE_XMR_DB", str(tmp_path / "default.db"))
    monkeypatch.setenv("EDGE_XMR_CACHE", str(tmp_path / "cache"))
    return bundle_dir


@pytest.fixture()
def lib(tmp_path: Path, photo_tree: Path) -> Iterator[Library]:
    """A library over ``photo_tree`` indexed with the fake bundle."""
    lib = Library.open(tmp_path / "i.db", FakeBundle())
    lib.index(photo_tree)
    yield lib
    lib.close()


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
