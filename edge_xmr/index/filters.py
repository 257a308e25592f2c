"""Search filters (capture date range, folder subtree) and the path/time conventions they use.

Times are "wall-clock seconds": the local date and time at which a photo was taken, counted as
if it were UTC. EXIF capture times carry no time zone, so file mtimes are converted the same way
and ``after="2024-05-01"`` means "from 1 May 2024, 00:00 on the camera's clock".
"""

from __future__ import annotations

import calendar
import os
import time
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import PurePath

from .pathkeys import path_key, resolve


@dataclass(frozen=True)
class Filters:
    after: int | None = None  # keep photos taken at or after this wall-clock second
    before: int | None = None  # keep photos taken before this wall-clock second
    folder: str | None = None  # keep photos in this folder or below (a folder_key)

    @property
    def empty(self) -> bool:
        return self.after is None and self.before is None and self.folder is None


DateLike = date | datetime | str | int | float | None


def make_filters(after: DateLike = None, before: DateLike = None,
                 folder: str | os.PathLike[str] | None = None) -> Filters:
    """User filter values -> Filters (dates: ``date``, ``datetime``, ISO text, or epoch seconds)."""
    return Filters(after=to_wall_seconds(after), before=to_wall_seconds(before),
                   folder=folder_key(path_key(resolve(folder))) if folder is not None else None)


def to_wall_seconds(value: DateLike) -> int | None:
    """A date or datetime (naive = wall clock; aware = converted to local time) -> wall seconds."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return wall_seconds_from_epoch(float(value))
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not a date: {value!r} (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone().replace(tzinfo=None)
        return calendar.timegm(value.timetuple())
    if isinstance(value, date):
        return calendar.timegm(value.timetuple())
    raise TypeError(f"not a date: {value!r}")


def wall_seconds_from_epoch(seconds: float) -> int:
    """Epoch seconds (e.g. a file mtime) -> local wall-clock seconds."""
    return calendar.timegm(time.localtime(seconds))


def wall_to_iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")


def folder_key(folder: str) -> str:
    """An absolute folder path's key (``pathkeys.path_key``) -> POSIX-style key ending in "/"
    ("C:\\a" -> "C:/a/")."""
    key = PurePath(folder).as_posix()
    return key if key.endswith("/") else key + "/"


def key_range(key: str) -> tuple[str, str]:
    """[low, high) bounds of every key at or below ``key`` ("/" sorts just before "0")."""
    return key, key[:-1] + "0"


def path_range(folder: str) -> tuple[str, str]:
    """[low, high) bounds of every native path (or path key) strictly below the folder."""
    base = folder.rstrip("/\\") + os.sep
    return base, base[:-1] + chr(ord(os.sep) + 1)
