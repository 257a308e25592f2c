"""Photos an app feeds by its own asset ids (iOS ``PHAsset.localIdentifier``, Android MediaStore
``_ID``), not by file path: no path, and no hash of the original (hashing means downloading it).

Each asset is an id, a modification stamp (any integer that changes when the photo changes, e.g.
``PHAsset.modificationDate`` in milliseconds or MediaStore ``GENERATION_MODIFIED``), its capture
time, and a loader the sync calls only for new or changed assets. Semantics, as for files:

- same id, same stamp: not touched (the loader is not called);
- a new id or a new stamp: loaded and embedded (replacing the old vectors);
- a loader that fails: recorded in ``skipped`` with the reason; bad image data is tried again once
  the stamp changes, any other failure (the photo could not be fetched) on every sync, and an
  indexed photo whose new data cannot be fetched keeps its old vectors;
- ids not given are removed only when the app says the sync is complete (``complete=True``), or
  one by one with ``remove_assets``.

Every batch is one transaction: a sync stopped at any point resumes where it stopped.
How the ids sit in the index file: ``edge_xmr.index.library.ASSET_PREFIX``; docs/mobile.md.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import numpy.typing as npt
from PIL import Image

from .index.filters import DateLike, to_wall_seconds
from .index.library import EncoderBundle, PhotoRecord, PhotoStore, asset_key, require_model
from .index.schema import SKIP_CONTENT, SKIP_UNREADABLE
from .preprocess import ImageError, to_rgb

# what a loader returns: encoded image bytes (JPEG, PNG, HEIC with the [heif] extra; EXIF orientation
# applied), a PIL image or an HxWx3 uint8 array (both already upright)
AssetImage = Union[bytes, Image.Image, npt.NDArray[np.uint8]]


@dataclass(frozen=True)
class Asset:
    id: str  # the app's id of the photo (PHAsset.localIdentifier, MediaStore _ID as text)
    stamp: int  # changes whenever the photo changes (modificationDate in ms, GENERATION_MODIFIED)
    load: Callable[[], AssetImage]  # the image; called only when the asset is new or its stamp changed
    taken: DateLike = None  # capture time (creationDate, DATE_TAKEN); None: unknown (sorts as 1970)


@dataclass(frozen=True)
class SyncReport:
    seen: int = 0  # assets given
    added: int = 0  # new assets embedded
    updated: int = 0  # assets with a new stamp, re-embedded
    unchanged: int = 0  # assets with the stamp already indexed (or already refused for bad data)
    skipped: int = 0  # assets whose loader failed in this sync (see ``stats``)
    removed: int = 0  # indexed assets not given in a complete sync
    seconds: float = 0.0  # wall time


@dataclass
class _Loaded:
    asset: Asset
    record: PhotoRecord | None  # None: the loader failed
    image: Image.Image | None  # model-sized
    error: str = ""
    kind: str = SKIP_CONTENT


def sync_assets(store: PhotoStore, model: EncoderBundle | None, assets: Iterable[Asset], complete: bool = False,
                batch_size: int = 32) -> SyncReport:
    """Bring the index up to date with the app's assets (semantics in the module docstring)."""
    bundle = require_model(model)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    size = int(bundle.manifest["preprocessing"]["size"])
    t0 = time.perf_counter()
    indexed, skipped = store.asset_states()
    counts = dict.fromkeys(("seen", "added", "updated", "unchanged", "skipped", "removed"), 0)
    seen: set[str] = set()
    batch: list[Asset] = []
    for a in assets:
        _check(a, seen)
        counts["seen"] += 1
        if indexed.get(a.id) == a.stamp or skipped.get(a.id) == (a.stamp, SKIP_CONTENT):
            counts["unchanged"] += 1
            continue
        batch.append(a)
        if len(batch) >= batch_size:
            _apply(store, bundle, [_load(x, size) for x in batch], indexed, counts)
            batch = []
    if batch:
        _apply(store, bundle, [_load(x, size) for x in batch], indexed, counts)
    if complete:
        gone = (set(indexed) | set(skipped)) - seen
        counts["removed"] = remove_assets(store, sorted(gone))
    return SyncReport(**counts, seconds=time.perf_counter() - t0)


def remove_assets(store: PhotoStore, ids: Sequence[str]) -> int:
    """Forget assets by id (their skipped records too); returns the photos removed."""
    keys = [asset_key(i) for i in ids]
    with store.transaction():
        return sum(store.forget_key(k) for k in keys)


def _check(a: Asset, seen: set[str]) -> None:
    asset_key(a.id)  # a non-empty string
    if not isinstance(a.stamp, int) or isinstance(a.stamp, bool):
        raise ValueError(f"asset {a.id!r}: the stamp must be an integer, got {a.stamp!r}")
    if a.id in seen:
        raise ValueError(f"asset {a.id!r} is given twice in one sync")
    seen.add(a.id)


def _load(a: Asset, size: int) -> _Loaded:
    """Call the app's loader and decode its image; a failure is recorded, never raised."""
    try:
        data = a.load()
    except Exception as e:  # noqa: BLE001 - the app's loader (a download, a permission): try again next sync
        return _Loaded(a, None, None, f"the app could not load it ({type(e).__name__}: {e})", SKIP_UNREADABLE)
    try:
        im, w, h = _image(data, a.id, size)
    except Exception as e:  # noqa: BLE001 - bad image data: try again once the stamp changes
        return _Loaded(a, None, None, f"cannot decode image ({e})")
    taken = to_wall_seconds(a.taken) if a.taken is not None else 0
    return _Loaded(a, PhotoRecord(asset_key(a.id), b"", 0, a.stamp, taken, w, h), im)


def _image(data: Any, name: str, size: int) -> tuple[Image.Image, int, int]:
    """(model-sized RGB image, width, height upright) of what a loader returned."""
    from .indexer import _decode, _header

    if isinstance(data, (bytes, bytearray, memoryview)):
        if not data:
            raise ImageError("empty image data")
        buf = io.BytesIO(bytes(data))
        buf.name = name  # type: ignore[attr-defined]  # named in decoder errors
        w, h, _ = _header(buf)
        buf.seek(0)
        return _decode(buf, size), w, h
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 3 or data.shape[2] != 3:
            raise ImageError(f"an image array must be HxWx3 uint8, got {data.shape} {data.dtype}")
        data = Image.fromarray(data)
    if not isinstance(data, Image.Image):
        raise ImageError(f"a loader returns bytes, a PIL image or an HxWx3 uint8 array, not {type(data).__name__}")
    w, h = data.size
    im = to_rgb(data)
    return (im if im.size == (size, size) else im.resize((size, size), Image.Resampling.BICUBIC)), w, h


def _apply(store: PhotoStore, bundle: EncoderBundle, batch: list[_Loaded], indexed: dict[str, int],
           counts: dict[str, int]) -> None:
    good = [x for x in batch if x.record is not None]
    embeds, tokens = bundle.encode_images([x.image for x in good]) if good else (None, None)
    with store.transaction():
        j = 0
        for x in batch:
            if x.record is None:
                store.record_skipped(asset_key(x.asset.id), 0, x.asset.stamp, x.error, x.kind)
                counts["skipped"] += 1
                continue
            assert embeds is not None and tokens is not None
            store.add_photos([x.record], embeds[j:j + 1], tokens[j:j + 1])
            j += 1
            counts["updated" if x.asset.id in indexed else "added"] += 1
            indexed[x.asset.id] = x.asset.stamp


__all__ = ["Asset", "AssetImage", "SyncReport", "remove_assets", "sync_assets"]
