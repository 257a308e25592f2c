"""``import edge_xmr`` (the runtime) never imports torch or transformers."""

from __future__ import annotations

import subprocess
import sys


def test_import_does_not_pull_torch():
    code = ("import sys, edge_xmr, edge_xmr.data, edge_xmr.evaluate, edge_xmr.tokenizer, edge_xmr.preprocess, "
            "edge_xmr.config, edge_xmr.cli; edge_xmr.cli.build_parser(); "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
