"""What every ``edge-xmr`` command shares: bounded numeric options, ``--json`` output, progress.

Conventions (also in ``edge-xmr --help`` and docs/runtime.md, "Command-line conventions"):

- stdout carries results only; progress, notes and errors go to stderr.
- ``--json`` prints the result as JSON on stdout instead of text, one document per line (ASCII:
  other characters are escaped, so a file name that is not valid UTF-8 survives the round trip);
  ``--json-out FILE`` writes a report to FILE and leaves stdout to the text.
- Every numeric option is bounded: a value out of range is one line on stderr and exit status 2.
- A progress bar is drawn only on a terminal; elsewhere (a log file, a pipe, ``TERM=dumb``) plain
  lines at every tenth of the work; ``--quiet`` turns both off.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ..providers import max_threads

MAX_PORT = 65535
MAX_BATCH = 1024  # photos per indexing batch (two batches of decoded photos are in memory at once)


def int_range(lo: int, hi: int | Callable[[], int] | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``lo`` to ``hi`` (a number, or a function giving
    it when the option is parsed; ``None``: no upper bound)."""

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
        top = hi() if callable(hi) else hi
        if v < lo or (top is not None and v > top):
            bound = f"from {lo} to {top}" if top is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {v}")
        return v

    return parse


def _max_k() -> int:
    from ..index.stores import MAX_K

    return MAX_K


THREADS = int_range(0, max_threads)  # 0: the runtime's default
WORKERS = int_range(1, max_threads)
K = int_range(1, _max_k)  # results: a search returns at most MAX_K (4096)
RERANK = int_range(0, _max_k)
PORT = int_range(0, MAX_PORT)  # 0: any free port
BATCH = int_range(1, MAX_BATCH)
COUNT = int_range(1)  # a sample size (clipped by the data)


# ---- JSON output -----------------------------------------------------------------------------------
def add_json(p: argparse.ArgumentParser, what: str = "the result", out_file: bool = False) -> None:
    """``--json`` (print JSON on stdout) and, for reports, ``--json-out FILE``."""
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout instead of text")
    if out_file:
        p.add_argument("--json-out", type=Path, default=None, metavar="FILE",
                       help="also write the full report as JSON to FILE")


def print_json(obj: Any, out: TextIO | None = None) -> None:
    """One JSON document on one line of stdout, flushed (a reader sees it at once)."""
    out = out or sys.stdout
    out.write(json.dumps(obj, ensure_ascii=True, default=str) + "\n")
    out.flush()


def write_json(path: Path | None, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` (nothing when ``path`` is None)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")


# ---- progress --------------------------------------------------------------------------------------
def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal that can redraw a bar (not ``TERM=dumb``)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM", "") != "dumb"


class Progress:
    """Progress of a long step on stderr: a tqdm bar on a terminal, else a plain line at every tenth
    of the work (no carriage returns in logs), nothing when ``quiet``."""

    def __init__(self, desc: str, unit: str = "it", quiet: bool = False, stream: TextIO | None = None):
        self.desc, self.unit, self.quiet = desc, unit, quiet
        self.stream = stream or sys.stderr
        self.bar: Any = None
        self.tenths = -1  # last tenth reported as a plain line

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, done: int, total: int | None, **counts: object) -> None:
        if self.quiet:
            return
        if is_terminal(self.stream):
            self._draw(done, total, counts)
            return
        tenths = 10 * done // total if total else done
        if tenths > self.tenths:
            self.tenths = tenths
            self._line(done, total, counts)

    def refresh(self) -> None:
        """Redraw the bar (its elapsed time); plain lines are not repeated."""
        if self.bar is not None:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _draw(self, done: int, total: int | None, counts: dict[str, object]) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=self.stream, dynamic_ncols=True)
        self.bar.total = total
        self.bar.n = done
        self.bar.set_postfix({k: str(v) for k, v in counts.items()}, refresh=False)
        self.bar.refresh()

    def _line(self, done: int, total: int | None, counts: dict[str, object]) -> None:
        of = f"/{total} {self.unit}s ({100 * done // total}%)" if total else f" {self.unit}s"
        extra = "".join(f", {k} {v}" for k, v in counts.items())
        self.stream.write(f"{self.desc}: {done}{of}{extra}\n")
        self.stream.flush()
