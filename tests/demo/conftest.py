"""Fixtures of the demo tests: a real bundle provisioned the way a fresh machine gets the default one."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_xmr import demo


@pytest.fixture(scope="session")
def provisioned(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx")
    cache = tmp_path_factory.mktemp("cache")
    steps: list[tuple[str, int, int]] = []
    path = demo.default_bundle(cache, model_dir=tiny_model_dir, progress=lambda *a: steps.append(a))
    assert path == demo.bundle_cache_path(tiny_model_dir, cache) and (path / "manifest.json").is_file()
    assert steps[0][1] == 0 and steps[-1][1] == steps[-1][2]  # the progress bar starts and completes
    assert demo.default_bundle(cache, model_dir=tiny_model_dir, progress=lambda *a: steps.append(("again",))) == path
    assert steps[-1] != ("again",)  # cached: no second export
    return path
