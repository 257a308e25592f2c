"""Bulk indexing on a Ray cluster: decoding and the image encoder as Ray Data ``map_batches``
stages, the index written by this process alone (optional ``[ray]`` extra).

The run is the local one (``edge_xmr.indexer``): the same scan, the same identity rules (content
hash, moves and copies), the same batched transactions, so the same incremental and resume
semantics (what is committed stays; a rerun skips it). Only the step between "files that need
work" and "prepared photos to write" moves to the cluster:

1. the files that need work go to a Ray dataset, ``chunk`` at a time (the driver never holds more);
2. ``_Decoder`` actors read each file (sha256, header, and the reduced-size decode unless the
   content is indexed: a sorted array of the indexed hashes goes to them with each chunk), exactly
   as ``indexer._prepare`` does, since they call it;
3. ``_Encoder`` actors each hold one onnxruntime session of the bundle's image encoder and run
   ``indexer.encode_group`` on ``IndexOptions.encoder_batch`` photos at a time;
4. the driver streams the results back (in any order) into ``indexer._Run``'s writer.

Every node reads the photos and the bundle at the paths the driver gives: the photo folder and the
bundle must be visible at the same paths on every node (a NAS or NFS mount; the packaged default
bundle is inside the installed package), and edge-xmr with the ``[ray]`` extra must be installed in
the same Python on every node. The index file lives on the driver only. Ray schedules the actors;
there is no scheduler here (docs/runtime.md, "Bulk indexing on Ray").
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .errors import EdgeXmrError
from .indexer import _Entry, _prepare, _Prepared, _take, encode_group, heif_available

if TYPE_CHECKING:
    from .indexer import _Run

RAY_MISSING = "indexing on Ray needs the ray extra (pip install 'edge-xmr[ray]')"


class RayIndexError(EdgeXmrError):
    """Ray is not installed, or the cluster cannot run the bundle (another model on a node)."""


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # cluster to join ("auto", "HOST:6379", "ray://HOST:10001"); None: the one
    # $RAY_ADDRESS names, else a new local Ray instance (an instance this process already started is used as is)
    encoders: int = 0  # image-encoder actors (0: half the cluster's CPUs, at least 1)
    decoders: int = 0  # decoding actors (0: the cluster's CPUs left after the encoders, at least 1)
    encoder_threads: int = 1  # onnxruntime intra-op threads of each encoder actor (the CPUs it reserves)
    decode_batch: int = 8  # files per decoding call
    chunk: int = 4096  # files per Ray dataset: the driver lists and streams this many at a time


def require_ray() -> Any:
    """The ``ray`` module (with Ray Data); RayIndexError naming the extra if it is not installed."""
    try:
        import ray
        import ray.data  # noqa: F401 - the [data] part of the extra
    except ImportError as e:
        raise RayIndexError(RAY_MISSING) from e
    return ray


def _known_hashes(run: _Run) -> npt.NDArray[np.bytes_]:
    """The content hashes indexed when the run starts, hex, sorted (for ``np.searchsorted``; hex so
    that numpy's bytes type keeps every byte)."""
    rows = run.lib.connection.execute("SELECT DISTINCT hash FROM photos WHERE hash IS NOT NULL").fetchall()
    return np.array(sorted(bytes(h).hex().encode() for (h,) in rows), dtype="S64")


class _Decoder:
    """Ray actor: ``indexer._prepare`` on each file of a batch (hash, header, decode)."""

    def __init__(self, size: int, known: npt.NDArray[np.bytes_]):
        self.size = size
        self.known_hashes = known
        self.heif = heif_available()

    def known(self, digest: bytes) -> bool:
        h = digest.hex().encode()
        i = int(np.searchsorted(self.known_hashes, h))
        return i < len(self.known_hashes) and self.known_hashes[i] == h

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = [pickle.dumps(_prepare(pickle.loads(e), self.size, self.known, self.heif)) for e in batch["entry"]]
        return {"item": np.array(out, dtype=object)}


class _Encoder:
    """Ray actor: one onnxruntime session of the bundle's image encoder (``indexer.encode_group``)."""

    def __init__(self, bundle_dir: str, precision: str | None, model_id: str, threads: int, step: int):
        from .bundle import Bundle

        self.bundle = Bundle.load(bundle_dir, precision=precision, threads=threads)
        if self.bundle.model_id != model_id:
            raise RayIndexError(f"the bundle at {bundle_dir} on this node is another model "
                                f"({self.bundle.model_id[:12]}, the driver's is {model_id[:12]})")
        self.step = step

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        group = [pickle.loads(x) for x in batch["item"]]
        return {"item": np.array([pickle.dumps(p) for p in encode_group(self.bundle, group, self.step)], dtype=object)}


class RayPipeline:
    """``indexer.Pipeline`` on a Ray cluster (see the module docstring)."""

    def __init__(self, options: RayOptions = RayOptions()):
        if min(options.encoder_threads, options.decode_batch, options.chunk) < 1 or min(options.encoders,
                                                                                          options.decoders) < 0:
            raise ValueError("encoder_threads, decode_batch and chunk must be >= 1, encoders and decoders >= 0")
        self.options = options
        self.ray = require_ray()

    def start(self) -> float:
        """Join (or start) the cluster; returns its CPU count."""
        ray = self.ray
        if not ray.is_initialized():
            ray.init(address=self.options.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the caller's progress callback reports
        ctx.print_on_execution_start = False
        return float(ray.cluster_resources().get("CPU", 1))

    def actors(self, cpus: float) -> tuple[int, int]:
        """(encoder actors, decoder actors) for a cluster of ``cpus`` CPUs."""
        o = self.options
        enc = o.encoders or max(1, int(cpus // (2 * o.encoder_threads)))
        dec = o.decoders or max(1, int(cpus) - enc * o.encoder_threads)
        if enc * o.encoder_threads + dec > cpus:  # Ray would wait for the missing CPUs forever
            raise RayIndexError(f"the Ray cluster has {cpus:g} CPUs; {enc} encoders x {o.encoder_threads} threads + "
                                f"{dec} decoders need {enc * o.encoder_threads + dec} (index without --ray, or "
                                f"set RayOptions.encoders / decoders)")
        return enc, dec

    def __call__(self, run: _Run, todo: Iterator[_Entry]) -> Iterator[_Prepared]:
        ray, o = self.ray, self.options
        where = getattr(run.bundle, "root", None) or getattr(run.bundle, "path", None)
        if where is None or not (Path(where) / "manifest.json").is_file():
            raise RayIndexError("indexing on Ray needs a bundle loaded from a folder (the actors load it there)")
        encoder_args = {"bundle_dir": str(Path(where).resolve()), "precision": getattr(run.bundle, "precision", None),
                        "model_id": run.bundle.model_id, "threads": o.encoder_threads,
                        "step": run.options.encoder_batch}
        enc = dec = 0
        while True:
            chunk = [{"entry": pickle.dumps(e)} for e in _take(todo, o.chunk)]
            if not chunk:
                return  # nothing (more) to do: a run with nothing new never starts Ray
            if not enc:
                enc, dec = self.actors(self.start())
            known = _known_hashes(run)  # committed so far, earlier chunks included
            ds = ray.data.from_items(chunk)
            ds = ds.map_batches(_Decoder, fn_constructor_kwargs={"size": run.size, "known": known},
                                batch_size=o.decode_batch, compute=ray.data.ActorPoolStrategy(size=dec), num_cpus=1)
            ds = ds.map_batches(_Encoder, fn_constructor_kwargs=encoder_args, batch_size=run.options.encoder_batch,
                                compute=ray.data.ActorPoolStrategy(size=enc), num_cpus=o.encoder_threads)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for x in batch["item"]:
                    yield pickle.loads(x)


__all__ = ["RAY_MISSING", "RayIndexError", "RayOptions", "RayPipeline", "require_ray"]
