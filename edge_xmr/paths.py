"""Where the runtime keeps its files by default, following each platform's conventions.

- Linux and other Unix: ``$XDG_DATA_HOME/edge-xmr`` (default ``~/.local/share/edge-xmr``)
- macOS: ``~/Library/Application Support/edge-xmr``
- Windows: ``%LOCALAPPDATA%\\edge-xmr`` (default ``~\\AppData\\Local\\edge-xmr``)

``$EDGE_XMR_DB`` overrides the photo index file and ``$EDGE_XMR_BUNDLE`` the model bundle.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

APP = "edge-xmr"
DB_ENV = "EDGE_XMR_DB"
BUNDLE_ENV = "EDGE_XMR_BUNDLE"
DB_NAME = "library.db"

_ASSETS = Path(__file__).resolve().parent / "assets"
# where the packaged default model's exported bundle may live (first with a manifest.json wins)
_DEFAULT_BUNDLES = (_ASSETS / "default_bundle", _ASSETS / "default_model" / "bundle", _ASSETS / "default_model")


def data_dir(platform: str | None = None, env: Mapping[str, str] | None = None,
             home: Path | None = None) -> Path:
    """The per-user data folder of edge-xmr on this (or the given) platform."""
    platform = platform or sys.platform
    env = os.environ if env is None else env
    home = home or Path.home()
    if platform == "darwin":
        return home / "Library" / "Application Support" / APP
    if platform.startswith("win"):
        base = env.get("LOCALAPPDATA") or str(home / "AppData" / "Local")
        return Path(base) / APP
    base = env.get("XDG_DATA_HOME") or str(home / ".local" / "share")
    return Path(base) / APP


def default_db_path() -> Path:
    """``$EDGE_XMR_DB`` or ``<data_dir>/library.db``."""
    env = os.environ.get(DB_ENV, "").strip()
    return Path(env).expanduser() if env else data_dir() / DB_NAME


def default_bundle_dir() -> Path | None:
    """``$EDGE_XMR_BUNDLE`` or the bundle of the embedded default model; ``None`` if neither exists."""
    env = os.environ.get(BUNDLE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return packaged_bundle_dir()


def packaged_bundle_dir() -> Path | None:
    """The default model's exported bundle packaged with edge_xmr; ``None`` if this install has none."""
    for cand in _DEFAULT_BUNDLES:
        if (cand / "manifest.json").is_file():
            return cand
    return None
