"""The ``edge-xmr`` command: a thin wrapper over the public functions.

Each subcommand lives in its own module with ``register(subparsers)``; modules import heavy
libraries (torch, transformers, onnx) only inside the function that runs the command.
:func:`main` is the one place where errors become one line on stderr and an exit status.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

from .. import __version__
from ..errors import EdgeXmrError

# subcommand modules, in the order shown by --help
_MODULES = ["train", "calibrate", "eval", "export", "runtime", "quantize", "demo", "multilingual"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_PIPE_CLOSED = 0, 1, 2, 130, 141

EPILOG = """\
conventions:
  stdout    results only; progress, notes and errors go to stderr
  --json    print the result as JSON on stdout instead of text (one document per line; search
            --queries: one object per input line); --json-out FILE also writes a report to FILE
  progress  a bar on a terminal, plain lines at every tenth when stderr is not one; none with
            --quiet (index, check) or --no-progress (train, distill)
  exit      0 done; 1 a check failed (check, export); 2 bad input or usage: one line on stderr
            ("edge-xmr CMD: error: ..."), nothing changed; 130 interrupted; 141 stdout closed
            by its reader (e.g. | head -1), which ends the command quietly

environment:
  EDGE_XMR_DB          index file (default: the platform's data folder, see XDG_DATA_HOME)
  EDGE_XMR_BUNDLE      model bundle folder (default: the index's own, else the default model's)
  EDGE_XMR_CACHE       cache folder: default bundle, thumbnails (default: see XDG_CACHE_HOME)
  EDGE_XMR_PROVIDERS   onnxruntime execution providers, e.g. cpu or cuda,cpu (as --provider)
  EDGE_XMR_THREADS     onnxruntime intra-op threads (as --threads)
  EDGE_XMR_SPIN        1: idle onnxruntime threads spin (lower latency on an idle machine)
  XDG_DATA_HOME, XDG_CACHE_HOME (Linux), LOCALAPPDATA (Windows): the platform's folders

docs/runtime.md, "Command-line conventions", says more."""


class UserError(EdgeXmrError):
    """A problem with the user's input: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line (and exit status 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edge-xmr", description=__doc__.splitlines()[0], epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"edge-xmr {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name in _MODULES:
        try:
            mod = importlib.import_module(f"edge_xmr.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"edge_xmr.cli.{name}":
                continue  # subcommand not built yet
            raise
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (see ``EPILOG``)."""
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a reader that closed the pipe shows here, not at interpreter exit
    except BrokenPipeError:
        return _stdout_closed()


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    _tolerant_stdout()
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _expected_errors() as e:
        print(f"edge-xmr {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE


def _expected_errors() -> tuple[type[BaseException], ...]:
    """What bad input raises: the library's errors, the file system's, a missing optional
    dependency, and SQLite's (a damaged index found during a query)."""
    kinds: tuple[type[BaseException], ...] = (EdgeXmrError, OSError, ImportError)
    apsw = sys.modules.get("apsw")
    return kinds + (apsw.Error,) if apsw is not None else kinds


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    elif type(e).__module__ == "apsw":
        text = f"SQLite: {e} (the index file may be damaged or locked)"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


def _tolerant_stdout() -> None:
    """File names that are not valid UTF-8 (kept by Python as surrogates) print as their bytes."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        utf8 = (getattr(sys.stdout, "encoding", "") or "").lower().replace("-", "") == "utf8"
        reconfigure(errors="surrogateescape" if utf8 else "backslashreplace")


def _stdout_closed() -> int:
    """The reader of stdout went away (``| head -1``): a normal end of a pipeline, not an error.
    Later writes (Python's own flush at exit) go to /dev/null instead of raising again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (captured by a test)
        pass
    return EXIT_PIPE_CLOSED


if __name__ == "__main__":
    sys.exit(main())
