"""Run ``edge-xmr ARGS...`` in this process as the installed command does, with the fake bundle
(numpy only, no export needed): for tests of process-level behaviour (exit status, stderr, pipes).

usage: python runtime_cli_fake.py ARGS...
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runtime_fakes import FakeBundle  # noqa: E402

from edge_xmr.cli import main  # noqa: E402
from edge_xmr.cli import runtime as cli_runtime  # noqa: E402

cli_runtime.load_bundle = lambda path, provider, threads, precision="fp32", routing=None: FakeBundle()  # type: ignore[assignment]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
