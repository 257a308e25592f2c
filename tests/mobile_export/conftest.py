"""Fixtures of the mobile_export tests (the shared ``tiny_bundle`` lives in tests/conftest.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")


@pytest.fixture(scope="session")
def export_report(tiny_bundle: Path) -> dict:
    """The report ``export_bundle`` returned for ``tiny_bundle``."""
    return json.loads((tiny_bundle.parent / "export_report.json").read_text())


@pytest.fixture()
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle that a test may damage."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
