"""Which model bundle opens an index: the one place the API (``Library.open``) and the CLI decide it.

Order (docs/runtime.md): the bundle given (``--bundle``), else the bundle the index recorded when it
was last opened (if that folder still holds a bundle), else ``$EDGE_XMR_BUNDLE``, else the default
model's bundle: the one packaged with edge_xmr (``edge_xmr/assets/default_bundle``), else one exported
from the embedded default model into the user cache (needs torch: ``edge_xmr.demo.default_bundle``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .errors import EdgeXmrError
from .paths import BUNDLE_ENV, packaged_bundle_dir

MANIFEST = "manifest.json"

# (step, done, total): progress of exporting the default bundle (only when it must be built)
ProgressFn = Callable[[str, int, int], None]


class NoBundleError(EdgeXmrError):
    """No model bundle was given and none could be found."""


def is_bundle_dir(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def find_bundle(bundle: str | os.PathLike[str] | None = None, db: str | os.PathLike[str] | None = None,
                progress: ProgressFn | None = None) -> Path:
    """The bundle folder to open the index ``db`` with (in the order of this module's docstring).

    Raises:
        NoBundleError: none given, none recorded, none packaged, and none can be exported here.
        IndexFileError: ``db`` exists but is no index file.
    """
    if bundle is not None:
        return Path(bundle).expanduser()
    recorded = recorded_bundle(db) if db is not None else None
    if recorded is not None:
        return recorded
    env = os.environ.get(BUNDLE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return default_model_bundle(progress)


def recorded_bundle(db: str | os.PathLike[str]) -> Path | None:
    """The bundle folder the index ``db`` names in its meta table, if it still holds a bundle."""
    from .index.db import connect
    from .index.schema import has_schema, read_meta

    path = Path(db).expanduser()
    if not path.is_file():
        return None
    conn = connect(path, readonly=True)
    try:
        hint = read_meta(conn).get("bundle_path", "") if has_schema(conn) else ""
    finally:
        conn.close()
    return Path(hint) if hint and is_bundle_dir(Path(hint)) else None


def default_model_bundle(progress: ProgressFn | None = None) -> Path:
    """The default model's bundle: packaged with edge_xmr, else exported into the user cache."""
    packaged = packaged_bundle_dir()
    if packaged is not None:
        return packaged
    from .demo import DemoError, default_bundle

    try:
        return default_bundle(progress=progress)
    except DemoError as e:
        raise NoBundleError(f"no model bundle: pass --bundle DIR (bundle=... in Python) or set "
                            f"${BUNDLE_ENV} ({e})") from None


__all__ = ["NoBundleError", "default_model_bundle", "find_bundle", "is_bundle_dir", "recorded_bundle"]
