"""Fault injection for the photo-library tests.

- ``Faults`` (in-process): paths whose opening or listing fails the way a real machine fails them:
  permission denied (``deny``), a drive that drops while a folder is being listed (``drop``:
  EIO after the first entry), a file deleted between the scan and its reading (``vanish``). It patches ``os.scandir``, ``os.open`` and ``open``, the calls any
  implementation must go through, and counts the faults it raised (``hits``), so a test can check
  that the fault was really met. Works as root, where ``chmod 000`` blocks nothing.
- ``unprivileged_preexec`` (subprocess): where the tests run as root, a child without the
  capabilities that bypass file permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so that a
  real ``chmod 000`` applies to it; ``None`` where permissions apply anyway (not root).
"""

from __future__ import annotations

import builtins
import ctypes
import errno
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_PR_CAPBSET_DROP, _CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 24, 1, 2


def _norm(path: Any) -> str | None:
    if isinstance(path, int):
        return None
    return os.path.abspath(os.fsdecode(os.fspath(path)))


class _DroppingScandir:
    """A listing that yields its first entry, then fails with EIO (a drive that went away)."""

    def __init__(self, real: Any):
        self._real = real

    def __enter__(self) -> _DroppingScandir:
        return self

    def __exit__(self, *exc: object) -> None:
        self._real.close()

    def close(self) -> None:
        self._real.close()

    def __iter__(self) -> Iterator[os.DirEntry[str]]:
        for d in self._real:
            yield d
            raise OSError(errno.EIO, "Input/output error")


class Faults:
    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.denied: set[str] = set()
        self.dropped: set[str] = set()
        self.vanished: set[str] = set()
        self.hits: Counter[str] = Counter()  # path -> faults raised
        self.opens: Counter[str] = Counter()  # path -> opens that went through
        real_scandir, real_os_open, real_open = os.scandir, os.open, builtins.open

        def scandir(path: Any = ".") -> Any:
            p = _norm(path)
            if p in self.denied:
                self._hit(p)
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
            it = real_scandir(path)
            if p in self.dropped:
                self._hit(p)
                return _DroppingScandir(it)
            return it

        def os_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
            self._check_open(path)
            return real_os_open(path, flags, *args, **kw)

        def open_(file: Any, *args: Any, **kw: Any) -> Any:
            if kw.get("opener") is None:  # with an opener, the opener's os.open is checked
                self._check_open(file)
            return real_open(file, *args, **kw)

        monkeypatch.setattr(os, "scandir", scandir)
        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(builtins, "open", open_)

    def _hit(self, p: str) -> None:
        self.hits[p] += 1

    def _check_open(self, path: Any) -> None:
        p = _norm(path)
        if p is None:
            return
        if p in self.denied:
            self._hit(p)
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        if p in self.vanished:
            self._hit(p)
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", os.fspath(path))
        self.opens[p] += 1

    def deny(self, *paths: str | Path) -> None:
        self.denied.update(_norm(p) for p in paths)  # type: ignore[misc]

    def drop(self, *paths: str | Path) -> None:
        self.dropped.update(_norm(p) for p in paths)  # type: ignore[misc]

    def vanish(self, *paths: str | Path) -> None:
        """Listed by the scan, gone when opened (deleted in between)."""
        self.vanished.update(_norm(p) for p in paths)  # type: ignore[misc]

    def heal(self) -> None:
        """The cause is fixed: permissions restored, the drive back."""
        self.denied.clear()
        self.dropped.clear()
        self.vanished.clear()


def _drop_dac_capabilities() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def unprivileged_preexec() -> Callable[[], None] | None:
    """What makes a child process obey file permissions (see the module docstring)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    return _drop_dac_capabilities


def permissions_apply(tmp: Path) -> bool:
    """Whether a child started with ``unprivileged_preexec`` is refused a ``chmod 000`` file."""
    probe = tmp / "locked-probe"
    probe.write_text("x")
    probe.chmod(0)
    try:
        r = subprocess.run([sys.executable, "-c", f"open({str(probe)!r}).read()"], capture_output=True,
                           text=True, preexec_fn=unprivileged_preexec(), timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        probe.chmod(0o644)
    return r.returncode != 0 and "PermissionError" in r.stderr
