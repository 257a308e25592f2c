"""The ``edge-xmr`` command: a thin wrapper over the public functions.

Each subcommand lives in its own module with ``register(subparsers)``; modules import heavy
libraries (torch, transformers, onnx) only inside the function that runs the command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand modules, in the order shown by --help
_MODULES = ["train", "calibrate", "eval", "export", "runtime", "quantize", "demo"]


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-xmr", description=__doc__.splitlines()[0])
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
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as e:
        print(f"edge-xmr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"edge-xmr {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
