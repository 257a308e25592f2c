"""The demo's library part: the default bundle, sample photos, demo queries and per-stage search timings.

- :func:`default_bundle` finds the default model's bundle: the one packaged with edge_xmr
  (``edge_xmr/assets/default_bundle``, built by ``python -m mobile_export.default_bundle``), else
  one exported once from the embedded default model (``edge_xmr/assets/default_model``) into a user
  cache folder keyed by the model's hash. Exporting needs torch and the ``[train,export]`` extras;
  using a bundle never does.
- :func:`sample_photos` copies public-domain photos that ship inside the scikit-image wheel
  (no download) into the cache: a cat, a rocket launch, a cup of coffee, an astronaut, ...
- :func:`timed_search` runs the same retrieve-and-rerank as ``Library.search`` stage by stage and
  reports how long each stage took (embed the query, KNN in sqlite-vec, cross-encoder rerank).

Example::

    >>> from edge_xmr import demo
    >>> from edge_xmr import Library
    >>> lib = Library.open("demo.db", demo.default_bundle())        # doctest: +SKIP
    >>> lib.index(demo.sample_photos())                              # doctest: +SKIP
    >>> r = demo.timed_search(lib, "a cat", k=3)                     # doctest: +SKIP
    >>> r.hits[0].path, r.times.total_ms                             # doctest: +SKIP
    ('/home/me/.cache/edge-xmr/sample-photos/cat.png', 24.1)
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .index.filters import DateLike, make_filters
from .paths import APP, default_bundle_dir
from .errors import EdgeXmrError

if TYPE_CHECKING:
    from .index.library import PhotoStore
    from .library import Library
    from .search import Hit

CACHE_ENV = "EDGE_XMR_CACHE"
MODEL_FILES = ("config.json", "tokenizer.json", "model.safetensors")  # what identifies the default model
INSTALL_EXPORT = "pip install torch==2.13.0 'edge-xmr[train,export]'"

# (step, done, total): a coarse progress report of a long operation
ProgressFn = Callable[[str, int, int], None]


class DemoError(EdgeXmrError):
    """The demo cannot run as asked (no default model, missing extra, no sample photos)."""


# ---- folders --------------------------------------------------------------------------------------
def cache_dir(platform: str | None = None, env: Mapping[str, str] | None = None, home: Path | None = None) -> Path:
    """The per-user cache folder of edge-xmr (``$EDGE_XMR_CACHE`` overrides it).

    Linux: ``$XDG_CACHE_HOME/edge-xmr`` (``~/.cache/edge-xmr``); macOS: ``~/Library/Caches/edge-xmr``;
    Windows: ``%LOCALAPPDATA%\\edge-xmr\\Cache``.
    """
    platform = platform or sys.platform
    env = os.environ if env is None else env
    home = home or Path.home()
    if env.get(CACHE_ENV, "").strip():
        return Path(env[CACHE_ENV].strip()).expanduser()
    if platform == "darwin":
        return home / "Library" / "Caches" / APP
    if platform.startswith("win"):
        return Path(env.get("LOCALAPPDATA") or str(home / "AppData" / "Local")) / APP / "Cache"
    return Path(env.get("XDG_CACHE_HOME") or str(home / ".cache")) / APP


def default_model_dir() -> Path:
    """The embedded default model directory (same place as ``edge_xmr.model.bases.default_model_dir``,
    without importing torch)."""
    return Path(__file__).resolve().parent / "assets" / "default_model"


# ---- the default bundle ---------------------------------------------------------------------------
def model_hash(model_dir: str | os.PathLike[str]) -> str:
    """sha256 over a model directory's identifying files (name and bytes of each)."""
    d = Path(model_dir)
    h = hashlib.sha256()
    for name in MODEL_FILES:
        f = d / name
        if not f.is_file():
            continue
        h.update(name.encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def default_bundle(cache: Path | None = None, model_dir: Path | None = None,
                   progress: ProgressFn | None = None) -> Path:
    """The default model's bundle folder, exported into the cache the first time.

    Order: ``$EDGE_XMR_BUNDLE`` or a bundle packaged with edge_xmr (``edge_xmr.paths``), then
    ``<cache>/bundles/<model hash>``; if that is missing, the embedded default model is exported
    there (fp32 ONNX; needs torch, see ``INSTALL_EXPORT``).

    Raises:
        DemoError: no default model in this installation, or the export extras are missing.
    """
    if model_dir is None:
        packaged = default_bundle_dir()
        if packaged is not None and (packaged / "manifest.json").is_file():
            return packaged
        model_dir = default_model_dir()
    if not is_model_dir(model_dir):
        raise DemoError(f"no default model at {model_dir} (train one with 'edge-xmr train', "
                        "or pass a bundle folder with --bundle)")
    target = bundle_cache_path(model_dir, cache)
    if (target / "manifest.json").is_file():
        return target
    return export_bundle_to(model_dir, target, progress)


def bundle_cache_path(model_dir: Path, cache: Path | None = None) -> Path:
    """Where the bundle of a model directory is kept: ``<cache>/bundles/v<format>-<first 16 hex of its
    hash>`` (a runtime that reads another bundle format exports its own copy)."""
    from .bundle import FORMAT_VERSION

    return (cache or cache_dir()) / "bundles" / f"v{FORMAT_VERSION}-{model_hash(model_dir)[:16]}"


def require_export_extras() -> None:
    missing = [m for m in ("torch", "onnx", "mobile_export") if importlib.util.find_spec(m) is None]
    if missing:
        raise DemoError(f"building the default bundle needs {', '.join(missing)}: {INSTALL_EXPORT}")


def export_bundle_to(model_dir: Path, target: Path, progress: ProgressFn | None = None) -> Path:
    """Export a model directory to a checked fp32 ONNX bundle at ``target`` (``mobile_export`` builds
    it in a hidden sibling folder and moves it into place only when every parity check passed).

    The sample photos, when scikit-image is installed, calibrate the bundle's int8 storage scales.
    """
    require_export_extras()
    say = progress or (lambda step, done, total: None)
    from mobile_export import export_bundle  # torch: only here

    calib = None
    try:
        calib = sorted(str(p) for p in sample_photos().iterdir() if p.suffix in (".png", ".jpg"))
    except DemoError:
        pass  # synthetic calibration images (the export reports it)
    say("exporting the default model to ONNX and checking parity", 0, 1)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        export_bundle(model_dir, target, formats=("onnx",), precisions=("fp32",), calib_images=calib,
                      mobile=False, overwrite=True)
    except (ValueError, RuntimeError, OSError) as e:  # bad model dir, failed parity check, disk
        raise DemoError(f"building the bundle of {model_dir} failed: {e}") from e
    _check_bundle(target)
    say("bundle ready", 1, 1)
    return target


def _check_bundle(path: Path) -> None:
    if not (path / "manifest.json").is_file():
        raise DemoError(f"the export wrote no manifest.json in {path}")


# ---- sample photos --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplePhoto:
    source: str  # file name inside skimage/data (shipped in the wheel)
    name: str  # file name in the demo folder (says what the photo shows)
    credit: str  # licence note from scikit-image's documentation


# Photographs of things people search for (textures, scans and drawings in the same folder are
# left out: they are no one's photo library, and such "hub" images sit close to every query).
SAMPLE_PHOTOS: tuple[SamplePhoto, ...] = (
    SamplePhoto("chelsea.png", "cat.png", "Stefan van der Walt, CC0"),
    SamplePhoto("rocket.jpg", "rocket_launch.jpg", "SpaceX, public domain"),
    SamplePhoto("coffee.png", "coffee_cup.png", "Rachel Michetti, CC0"),
    SamplePhoto("astronaut.png", "astronaut.png", "NASA, public domain"),
    SamplePhoto("hubble_deep_field.jpg", "galaxies_hubble.jpg", "NASA, public domain"),
    SamplePhoto("camera.png", "man_with_camera.png", "Lav Varshney, CC0"),
    SamplePhoto("coins.png", "old_coins.png", "no known copyright restrictions"),
    SamplePhoto("clock_motion.png", "clock.png", "Stefan van der Walt, public domain"),
)


def skimage_data_dir() -> Path:
    """The ``skimage/data`` folder of the installed wheel, found without importing scikit-image."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DemoError("the sample photos come with scikit-image: pip install 'edge-xmr[demo]' "
                        "(or run the demo on your own folder with --photos DIR)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def sample_photos(dest: Path | None = None) -> Path:
    """Copy the bundled sample photos into ``dest`` (default ``<cache>/sample-photos``); returns it.

    Files already there with the same size are kept, so indexing it again finds nothing new; in
    the default folder, files that are not sample photos are removed.
    """
    src = skimage_data_dir()
    own = dest is None
    dest = dest or cache_dir() / "sample-photos"
    dest.mkdir(parents=True, exist_ok=True)
    if own:  # our cache folder: drop photos of older sample sets
        keep = {p.name for p in SAMPLE_PHOTOS}
        for f in dest.iterdir():
            if f.is_file() and f.name not in keep:
                f.unlink()
    found = 0
    for p in SAMPLE_PHOTOS:
        s, d = src / p.source, dest / p.name
        if not s.is_file():
            continue
        found += 1
        if not d.is_file() or d.stat().st_size != s.stat().st_size:
            tmp = d.with_suffix(d.suffix + ".tmp")
            shutil.copy2(s, tmp)
            os.replace(tmp, d)
    if not found:
        raise DemoError(f"no sample photos in {src} (scikit-image installed without its data?)")
    return dest


# ---- queries --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoQuery:
    text: str  # what the user types
    expect: str | None = None  # the sample photo that should come first (None: any folder)


SAMPLE_QUERIES: tuple[DemoQuery, ...] = (
    DemoQuery("a cat", "cat.png"),
    DemoQuery("a rocket launch", "rocket_launch.jpg"),
    DemoQuery("a cup of coffee", "coffee_cup.png"),
    DemoQuery("an astronaut", "astronaut.png"),
    DemoQuery("a man with a camera", "man_with_camera.png"),
    DemoQuery("stars in the night sky", "galaxies_hubble.jpg"),
)
FOLDER_QUERIES: tuple[DemoQuery, ...] = (
    DemoQuery("a dog running on the beach"),
    DemoQuery("children playing in the snow"),
    DemoQuery("a man riding a bicycle"),
    DemoQuery("people sitting at a table"),
)
SAMPLE_IMAGE_QUERY = "cat.png"  # the photo whose neighbours the demo shows on the sample set


def demo_db_path(photos: Path, model_id: str, cache: Path | None = None) -> Path:
    """One index per (photo folder, model): ``<cache>/demo/<hash>.db``. Pass the bundle's
    ``embedding_id`` where it has one: a bundle with only another reranker then reuses the index."""
    key = hashlib.sha256(f"{Path(photos).resolve()}\0{model_id}".encode()).hexdigest()[:16]
    return (cache or cache_dir()) / "demo" / f"{key}.db"


# ---- timed search ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageTimes:
    embed_ms: float  # tokenise + text encoder
    knn_ms: float  # sqlite-vec KNN + exact rescoring of the candidates
    rerank_ms: float  # read the candidates' image tokens + cross-encoder
    total_ms: float  # the whole query, including reading the results' metadata
    candidates: int  # photos the cross-encoder scored

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class TimedSearch:
    hits: list[Hit]  # best first, as ``Library.search`` returns them
    times: StageTimes


def timed_search(lib: Library, text: str, k: int = 10, rerank: int = 20, after: DateLike = None,
                 before: DateLike = None, folder: str | os.PathLike[str] | None = None) -> TimedSearch:
    """``Library.search`` stage by stage (same results, same order) with the time of each stage."""
    from .search import clean_query, first_stage

    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if rerank < 0:
        raise ValueError(f"rerank must be >= 0, got {rerank}")
    from .index.library import require_model

    bundle = require_model(lib.bundle)
    store = lib.store
    text = clean_query(text)
    filters = make_filters(after, before, folder)
    t0 = time.perf_counter()
    if store.count() == 0:
        return TimedSearch([], StageTimes(0.0, 0.0, 0.0, _ms(t0), 0))
    query = bundle.encode_query(text)  # one text pass: its embedding retrieves, its states rerank
    t1 = time.perf_counter()
    cands = first_stage(store, bundle, np.asarray(query.embedding, np.float32), max(k, rerank), filters, rerank)
    t2 = time.perf_counter()
    n = min(rerank, len(cands.ids))
    cross = np.zeros((0,), np.float32)
    if n:
        tokens = store.tokens(cands.ids[:n].tolist())
        cross = np.asarray(bundle.score_encoded(query, tokens, cands.embeds[:n]), np.float32).reshape(n)
    t3 = time.perf_counter()
    order = [int(i) for i in np.argsort(-cross, kind="stable")] + list(range(n, len(cands.ids)))
    hits = hits_for(store, cands.ids, cands.scores, cross, order[:k])
    times = StageTimes(embed_ms=1000 * (t1 - t0), knn_ms=1000 * (t2 - t1), rerank_ms=1000 * (t3 - t2),
                       total_ms=_ms(t0), candidates=n)
    return TimedSearch(hits, times)


def hits_for(lib: PhotoStore, ids: Any, bi: Any, cross: Any, order: list[int]) -> list[Hit]:
    """Hits for positions ``order`` of candidate arrays (ids, bi scores, cross scores of the first n)."""
    from .search import Hit

    chosen = [int(ids[i]) for i in order]
    info = lib.photo_info(chosen)
    out = []
    for i, pid in zip(order, chosen):
        p = info.get(pid)
        if p is None:  # removed by a concurrent writer
            continue
        out.append(Hit(path=p.path, bi_score=float(bi[i]), cross_score=float(cross[i]) if i < len(cross) else None,
                       photo_id=pid, taken=datetime.fromisoformat(p.taken), width=p.width, height=p.height))
    return out


def _ms(t0: float) -> float:
    return 1000 * (time.perf_counter() - t0)
