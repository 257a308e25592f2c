"""Library: the verbs users call on a photo index (open, index, search, similar, remove, stats, close).

A façade over the layers below it: the store (``edge_xmr.index.PhotoStore``: the SQLite file, its
rows and vectors), the model bundle (``edge_xmr.bundle.Bundle``), the indexer (``edge_xmr.indexer``)
and the search (``edge_xmr.search``). Which bundle opens an index is decided in one place,
``edge_xmr.discovery``, shared with the command line.

Example::

    >>> from edge_xmr import Library
    >>> with Library.open("photos.db") as lib:                       # doctest: +SKIP
    ...     report = lib.index("~/Pictures")
    ...     hits = lib.search("a dog on the beach", k=3)
    >>> report.added, [h.path for h in hits]                          # doctest: +SKIP
    (1204, ['/home/me/Pictures/2023/IMG_0412.jpg', ...])

Threads: one ``Library`` may be shared by threads. Its calls run one at a time (a lock around each
verb: they share one SQLite connection), so results are those of some serial order of the calls.
For searches in parallel, open one ``Library`` per thread: SQLite's WAL lets them read the same file
while one of them (or another process) indexes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .assets import Asset, SyncReport, remove_assets, sync_assets
from .index.filters import DateLike
from .index.library import EncoderBundle, LibraryInfo, PhotoStore, Stats
from .index.stores import DEFAULT_STORE, StoreKind
from .indexer import IndexOptions, IndexReport, Progress, index_files, index_folder
from .ray_index import RayOptions
from .score import Normalization
from .search import Hit, LabelHit, TextHit, classify, rank_texts, search, similar

BundleLike = EncoderBundle | str | os.PathLike[str]  # a loaded bundle, or a bundle folder


class Library:
    """A photo index file with the model bundle that fills and searches it (see the module docstring)."""

    def __init__(self, store: PhotoStore, bundle: EncoderBundle | None):
        self._store = store
        self._bundle = bundle
        self._lock = threading.RLock()

    @classmethod
    def open(cls, db: str | os.PathLike[str] | None = None, bundle: BundleLike | None = None, *,
             load_model: bool = True, store: StoreKind = DEFAULT_STORE, create: bool = True,
             providers: str | Sequence[str] | None = None, threads: int | None = None,
             precision: str | None = None) -> Library:
        """Open (or create) an index.

        Args:
            db: the index file (default: ``$EDGE_XMR_DB``, else the platform's data folder).
            bundle: a loaded bundle, or a bundle folder; ``None``: the bundle the index was built with,
                else ``$EDGE_XMR_BUNDLE``, else the default model's (``edge_xmr.discovery``).
            load_model: ``False`` opens the index without a model (stats and remove work; indexing
                and search need one); ``bundle`` is then ignored.
            store: for a new index: how embeddings are stored (``int8``, ``float32`` or ``bit``).
            create: create the file if missing.
            providers, threads, precision: onnxruntime settings and graph precision ("fp32" or
                "int8"; None: fp32 if the bundle has it, else int8) when the bundle is loaded from a folder.

        Raises:
            ModelMismatchError: the index was built with another model.
            LibraryError: missing file (create=False) or no model to create a new index with.
            NoBundleError: no bundle given and none found.
            BundleError: the bundle folder is incomplete or was changed.
        """
        from .paths import default_db_path

        path = Path(db).expanduser() if db is not None else default_db_path()
        loaded, bundle_path = _load_bundle(path, bundle, providers, threads, precision) if load_model else (None, "")
        return cls(PhotoStore.open(path, loaded, bundle_path=bundle_path, store=store, create=create), loaded)

    # ---- what it is ----------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The index file."""
        return self._store.path

    @property
    def info(self) -> LibraryInfo:
        """What the index records of itself (model, store, dimensions)."""
        return self._store.info

    @property
    def bundle(self) -> EncoderBundle | None:
        """The loaded model bundle (``None``: opened with ``load_model=False``)."""
        return self._bundle

    @property
    def store(self) -> PhotoStore:
        """The layer below: rows and vectors of the index file (for tools; not needed to search)."""
        return self._store

    def close(self) -> None:
        with self._lock:
            self._store.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- filling it ----------------------------------------------------------------------------
    def index(self, root: str | os.PathLike[str], progress: Callable[[Progress], None] | None = None,
              options: IndexOptions | None = None, ray: RayOptions | None = None) -> IndexReport:
        """Index a folder tree incrementally (see ``edge_xmr.indexer``): new and changed photos are
        embedded, unchanged ones skipped, moved ones recognised by content, deleted ones removed.
        ``ray``: decode and encode on a Ray cluster (``edge_xmr.ray_index``, the ``[ray]`` extra);
        this process still scans and writes the index."""
        pipeline = None
        if ray is not None:
            from .ray_index import RayPipeline

            pipeline = RayPipeline(ray)
        with self._lock:
            return index_folder(self._store, self._bundle, root, progress=progress, options=options or IndexOptions(),
                                pipeline=pipeline)

    def add(self, paths: Sequence[str | os.PathLike[str]]) -> IndexReport:
        """Index the given photo files (new or changed ones are embedded, others skipped)."""
        with self._lock:
            return index_files(self._store, self._bundle, [os.path.abspath(p) for p in paths], options=IndexOptions())

    def sync_assets(self, assets: Iterable[Asset], complete: bool = False) -> SyncReport:
        """Index photos an app gives by its own asset id and modification stamp (``edge_xmr.assets``):
        unchanged stamps are skipped, new ones embedded; with ``complete=True`` (the app listed all
        its assets) indexed assets not given are removed. Hits name them ``Hit.asset_id``."""
        with self._lock:
            return sync_assets(self._store, self._bundle, assets, complete=complete)

    def remove_assets(self, ids: Sequence[str]) -> int:
        """Forget assets by the app's ids; returns the photos removed."""
        with self._lock:
            return remove_assets(self._store, ids)

    def remove(self, path: str | os.PathLike[str]) -> int:
        """Forget a photo, or every photo under a folder (files are not touched); returns the count."""
        with self._lock:
            return self._store.remove(path)

    # ---- searching it --------------------------------------------------------------------------
    def search(self, text: str, k: int = 10, rerank: int = 20, after: DateLike = None, before: DateLike = None,
               folder: str | os.PathLike[str] | None = None) -> list[Hit]:
        """Text -> the best ``k`` photos: KNN top ``rerank``, cross-encoder rerank (0: no rerank)."""
        with self._lock:
            return search(self._store, self._bundle, text, k=k, rerank=rerank, after=after, before=before,
                          folder=folder)

    def search_many(self, texts: Sequence[str], k: int = 10, rerank: int = 20, after: DateLike = None,
                    before: DateLike = None, folder: str | os.PathLike[str] | None = None) -> list[list[Hit]]:
        """Several queries at once: ``search`` of each text, in order (one list of hits per text).
        Every query is checked before the first one runs (an empty one raises ``QueryError``)."""
        from .search import clean_query

        for t in texts:
            clean_query(t)
        with self._lock:
            return [search(self._store, self._bundle, t, k=k, rerank=rerank, after=after, before=before,
                           folder=folder) for t in texts]

    def similar(self, photo: str | os.PathLike[str] | int, k: int = 10, after: DateLike = None,
                before: DateLike = None, folder: str | os.PathLike[str] | None = None) -> list[Hit]:
        """Photo (indexed path, id, or any image file) -> the most similar other photos."""
        with self._lock:
            return similar(self._store, self._bundle, photo, k=k, after=after, before=before, folder=folder)

    def rank_texts(self, photo: str | os.PathLike[str] | int, texts: Sequence[str]) -> list[TextHit]:
        """Photo -> the texts ranked by the cross-encoder (with bi-encoder scores)."""
        with self._lock:
            return rank_texts(self._store, self._bundle, photo, texts)

    # ---- reading it ----------------------------------------------------------------------------
    def classify(self, labels: Sequence[str], photos: Sequence[str | os.PathLike[str] | int] | None = None,
                 normalize: Normalization = "center") -> list[LabelHit]:
        """Zero-shot labels: each photo's best label, every label's cosines normalised over the library
        first (``edge_xmr.search.classify``; ``center``, ``zscore`` or ``none``)."""
        with self._lock:
            return classify(self._store, self._bundle, labels, photos=photos, normalize=normalize)

    def stats(self, max_skipped: int = 100) -> Stats:
        """Counts, skipped files with reasons, model, store type and size on disk."""
        with self._lock:
            return self._store.stats(max_skipped)

    def count(self) -> int:
        """Photos in the index."""
        with self._lock:
            return self._store.count()

    def photo_id(self, path: str | os.PathLike[str]) -> int | None:
        """The id of the photo at ``path`` (any path leading to it), ``None`` if it is not indexed."""
        with self._lock:
            return self._store.photo_id(path)


def _load_bundle(db: Path, bundle: BundleLike | None, providers: str | Sequence[str] | None, threads: int | None,
                 precision: str | None) -> tuple[EncoderBundle, str]:
    """The loaded bundle and its folder (recorded in the index as a hint for the next open)."""
    if bundle is None or isinstance(bundle, (str, os.PathLike)):
        from .bundle import Bundle
        from .discovery import find_bundle

        path = find_bundle(bundle, db).resolve()
        return Bundle.load(path, precision=precision, providers=providers, threads=threads), str(path)  # type: ignore[arg-type]
    where = getattr(bundle, "root", None) or getattr(bundle, "path", None)
    return bundle, str(Path(where).resolve()) if where else ""


__all__ = ["BundleLike", "Library"]
