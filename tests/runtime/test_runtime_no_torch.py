"""The runtime works in a process where importing torch or transformers fails."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


HERE = Path(__file__).resolve().parent

BLOCK = textwrap.dedent("""
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers", "torchvision", "onnx"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
""")

RUN = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    db, root, bundle = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    import edge_xmr
    from edge_xmr import Library
    from edge_xmr.cli import main
    if bundle == "fake":
        sys.path.insert(0, sys.argv[4])
        from runtime_fakes import FakeBundle
        bundle = FakeBundle()
    with Library.open(db, bundle) as lib:
        r = lib.index(root)
        assert r.added == 9, r
        hits = lib.search("a dog", k=3, rerank=5)
        assert len(hits) == 3 and all(h.cross_score is not None for h in hits)
        assert len(lib.similar(root / "a" / "img0.jpg", k=2)) == 2
        assert len(lib.rank_texts(root / "a" / "img0.jpg", ["a", "b"])) == 2
    if not isinstance(bundle, str):
        bundle = None
    else:
        assert main(["search", "a dog", "--db", db, "--json", "--k", "2"]) == 0
        assert main(["stats", "--db", db]) == 0
    bad = [m for m in ("torch", "transformers") if m in sys.modules]
    assert not bad, bad
    print("OK")
""")


def _run(tmp_path: Path, photo_tree: Path, bundle: str) -> None:
    code = BLOCK + RUN
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "i.db"), str(photo_tree), bundle, str(HERE)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "OK" in p.stdout, p.stdout + p.stderr


def test_runtime_without_torch_fake_model(tmp_path, photo_tree):
    _run(tmp_path, photo_tree, "fake")


def test_runtime_without_torch_real_bundle(tmp_path, photo_tree, real_bundle_dir):
    _run(tmp_path, photo_tree, str(real_bundle_dir))


def test_blocker_really_blocks(tmp_path):
    p = subprocess.run([sys.executable, "-c", BLOCK + "import torch"], capture_output=True, text=True)
    assert p.returncode != 0 and "blocked" in p.stderr


DEFAULT_MODEL = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    db, root = sys.argv[1], Path(sys.argv[2])
    os.environ.pop("EDGE_XMR_BUNDLE", None)
    from edge_xmr import Library
    from edge_xmr.cli import main
    assert main(["index", str(root), "--db", db, "--quiet"]) == 0   # no --bundle: the packaged default model
    assert main(["search", "a dog", "--db", db, "--k", "2"]) == 0
    with Library.open(db) as lib:                                   # no bundle: the index's recorded one
        hits = lib.search("a dog", k=3)
        assert len(hits) == 3 and lib.bundle.precision == "int8", hits
    with Library.open(db + ".new") as lib:                          # a new index: the packaged default
        assert lib.index(root).added == 9
    bad = [m for m in ("torch", "transformers", "onnx") if m in sys.modules]
    assert not bad, bad
    print("OK")
""")


def test_default_model_works_without_torch(tmp_path, photo_tree):
    """A torch-free process searches with the default model at once: the packaged int8 bundle, found
    by ``edge_xmr.discovery`` (no export into the cache, no --bundle)."""
    env = {k: v for k, v in os.environ.items() if k != "EDGE_XMR_BUNDLE"}
    env["EDGE_XMR_CACHE"] = str(tmp_path / "cache")
    p = subprocess.run([sys.executable, "-c", BLOCK + DEFAULT_MODEL, str(tmp_path / "i.db"), str(photo_tree)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0 and "OK" in p.stdout, p.stdout + p.stderr
    assert not (tmp_path / "cache").exists()  # nothing was exported
