"""Done-when of issue 14: in a fresh venv without torch, ``pip install <the built wheel>``, then
``edge-xmr index DIR``, ``edge-xmr search TEXT`` and ``Library.open(db).search(...)`` work with the
default model (the packaged int8 bundle). Slow: builds a wheel and a venv (about a minute)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _run(*cmd: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, env=env, cwd=cwd)
    assert p.returncode == 0, f"{cmd}: {p.stdout}\n{p.stderr}"
    return p.stdout


def test_wheel_in_a_torch_free_venv_searches_with_the_default_model(tmp_path, photo_tree):
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", ROOT)
    (wheel,) = (tmp_path / "dist").glob("edge_xmr-*.whl")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    bin_ = venv / ("Scripts" if os.name == "nt" else "bin")
    _run(bin_ / "python", "-m", "pip", "install", "-q", wheel)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_XMR_", "PYTHON"))}
    env.update(EDGE_XMR_DB=str(tmp_path / "photos.db"), EDGE_XMR_CACHE=str(tmp_path / "cache"))
    out = _run(bin_ / "python", "-c", "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('onnx'))",
               env=env, cwd=tmp_path)
    assert out.split() == ["None", "None"]  # the venv really is torch-free
    assert "9 added" in _run(bin_ / "edge-xmr", "index", photo_tree, "--quiet", env=env, cwd=tmp_path)
    assert str(photo_tree) in _run(bin_ / "edge-xmr", "search", "a dog", "--k", "3", env=env, cwd=tmp_path)
    code = ("import os; from edge_xmr import Library\n"
            "with Library.open(os.environ['EDGE_XMR_DB']) as lib:\n"
            "    hits = lib.search('a dog on the grass', k=3)\n"
            "    assert len(hits) == 3 and lib.bundle.precision == 'int8', hits\n"
            "print('OK')\n")
    assert _run(bin_ / "python", "-c", code, env=env, cwd=tmp_path).strip() == "OK"
    assert not (tmp_path / "cache" / "bundles").exists()  # nothing exported on the user's side
