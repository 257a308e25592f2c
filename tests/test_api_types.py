"""The public API is typed: a README-style user script passes ``mypy --strict``, and so do the
façade modules; ``edge_xmr`` exports every error under one base, typed and lazily imported."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
USER_SCRIPT = ROOT / "tests" / "api" / "user_script.py"
# the façade and what it is built from; the rest of the package is checked as followed imports
STRICT_MODULES = ["edge_xmr/__init__.py", "edge_xmr/library.py", "edge_xmr/discovery.py", "edge_xmr/errors.py",
                  "edge_xmr/paths.py"]


def _mypy(tmp_path: Path, *targets: str) -> subprocess.CompletedProcess[str]:
    try:
        import mypy  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):  # CI installs every extra: a missing mypy there is a broken set-up
            pytest.fail("mypy is missing; it comes with the [dev] extra (scripts/test.sh installs it)")
        pytest.skip("mypy comes with the [dev] extra (scripts/test.sh installs it)")
    env = {**os.environ, "MYPYPATH": str(ROOT)}  # the checkout, however edge_xmr is installed
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-color-output",
                           "--cache-dir", str(tmp_path / "mypy-cache"), *targets],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_user_script_and_facade_pass_mypy_strict(tmp_path):
    """One mypy run over the user script, the façade modules and a script with a type error: only
    the bad script is reported (so the check sees the real types: ``Hit.taken`` is a datetime)."""
    bad = tmp_path / "bad_script.py"
    bad.write_text("from edge_xmr import Library\n\nwith Library.open('x.db') as lib:\n"
                   "    day: str = lib.search('a dog')[0].taken\n", encoding="utf-8")
    p = _mypy(tmp_path, str(USER_SCRIPT), *STRICT_MODULES, str(bad))
    errors = [line for line in p.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and errors[0].startswith(str(bad)) and 'has type "datetime"' in errors[0], p.stdout + p.stderr


def _type_checking_names() -> dict[str, str]:
    """name -> module of the ``if TYPE_CHECKING:`` imports of edge_xmr/__init__.py."""
    tree = ast.parse((ROOT / "edge_xmr" / "__init__.py").read_text(encoding="utf-8"))
    out = {}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.level == 1
                for a in imp.names:
                    assert a.asname == a.name  # "import X as X": re-exported under --strict
                    out[a.name] = f"edge_xmr.{imp.module}"
    return out


def test_lazy_names_match_the_typed_imports():
    import edge_xmr

    assert _type_checking_names() == edge_xmr._LAZY
    for name in edge_xmr._LAZY:
        assert getattr(edge_xmr, name).__name__ == name


def test_every_error_is_exported_under_one_base():
    """Every exception class defined in the runtime (edge_xmr outside the CLI and training) derives
    from EdgeXmrError and is exported from ``edge_xmr``."""
    import importlib

    import edge_xmr

    defined = set()
    for path in (ROOT / "edge_xmr").rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("").parts
        if rel[1] in ("cli", "train", "model", "train_config"):
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error") and not node.name.startswith("_"):
                mod = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
                defined.add((node.name, mod))
    assert defined
    for name, mod in sorted(defined):
        cls = getattr(importlib.import_module(mod), name)
        if cls.__name__ == "HttpError":  # the server's HTTP status carrier, never raised to callers
            continue
        assert issubclass(cls, edge_xmr.EdgeXmrError), name
        assert getattr(edge_xmr, name) is cls, f"{name} ({mod}) is not exported from edge_xmr"
