"""Frozen image-tower features, computed once and cached on disk: the tower's final grid, or (when its
last blocks are fine-tuned) the input of those blocks."""

from __future__ import annotations

import functools
import hashlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..data import DataError
from PIL import Image

from ..preprocess import ImageError, load_image, to_pixels
from ..model.joint import JointModel
from ..model.views import make_view


def cache_dir() -> Path:
    d = Path(os.environ.get("EDGE_XMR_CACHE", Path.home() / ".cache" / "edge_xmr")) / "features"
    d.mkdir(parents=True, exist_ok=True)
    return d


def random_crop(path: Path, size: int, seed: int, min_area: float = 0.45) -> Image.Image:
    """A random-resized crop of the photo (area 45-100 %, aspect 3/4-4/3, random flip), deterministic
    in ``seed``: a training view the frozen tower sees once, so augmentation costs nothing per step."""
    r = np.random.default_rng(seed)
    im = load_image(path, 2 * size)
    w, h = im.size
    area = w * h * r.uniform(min_area, 1.0)
    aspect = math.exp(r.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw, ch = min(w, int(round(math.sqrt(area * aspect)))), min(h, int(round(math.sqrt(area / aspect))))
    x0, y0 = int(r.integers(0, w - cw + 1)), int(r.integers(0, h - ch + 1))
    im = im.crop((x0, y0, x0 + cw, y0 + ch))
    if r.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return im


def _view_tag(model: JointModel, flip: bool, size: int | None) -> str:
    """Cache-key part of a view: the mirror flag, and the side when it is not the input size."""
    return f"|{flip}" + ("" if size in (None, model.cfg.image.size) else f"|side{size}")


def tower_grids(model: JointModel, paths: list[Path], flip: bool = False, batch_size: int = 64,
                progress: bool = True, desc: str = "image features", crop_seed: int | None = None,
                size: int | None = None) -> np.ndarray:
    """Grid features (N, P, C) float16 of the frozen tower for ``paths`` (horizontally flipped with
    ``flip``; enlarged to ``size`` pixels as ``views.make_view`` does; a random-resized crop per photo with
    ``crop_seed``), cached by tower, image size, view, file names, sizes and mtimes."""
    head = (f"{model.cfg.image}{_view_tag(model, flip, size)}".encode()
            + (b"" if crop_seed is None else f"|crop{crop_seed}".encode()) + tower_weights_tag(model).encode())

    def load(i: int, chunk: list[Path]) -> list:
        if crop_seed is None:
            return list(chunk)
        return [random_crop(p, model.cfg.image.size, crop_seed * 1_000_003 + i + j) for j, p in enumerate(chunk)]

    return _cached_features(model, paths, head, model.cfg.image.tower, _GridOnly(model.image_tower), flip,
                            batch_size, progress, desc, load, size)


def _cached_features(model: JointModel, paths: list[Path], head: bytes, stem: str, module: torch.nn.Module,
                     flip: bool, batch_size: int, progress: bool, desc: str,
                     load: Any = lambda i, chunk: list(chunk), size: int | None = None) -> np.ndarray:
    """``module`` (pixels -> features) over ``paths`` in batches, float16, cached on disk under a key of
    ``head`` and the files' names, sizes and mtimes (memory-mapped when cached)."""
    h = hashlib.sha256(head)
    for p in paths:
        st = p.stat()
        h.update(f"{p.name}|{st.st_size}|{int(st.st_mtime)}".encode())
    f = cache_dir() / f"{stem}-{h.hexdigest()[:20]}.npy"
    if f.is_file():
        return np.load(f, mmap_mode="r")
    side = size or model.cfg.image.size
    run = _ort_module(module, side)  # onnxruntime: depthwise convs ~10x faster than eager torch
    out = None
    for i in tqdm(range(0, len(paths), batch_size), desc=desc, unit="batch", disable=not progress):
        try:
            px = to_pixels(load(i, list(paths[i:i + batch_size])), model.cfg.image)
        except ImageError as e:
            raise DataError(str(e)) from None
        if flip or side != model.cfg.image.size:
            px = make_view(torch.from_numpy(px), side, flip).contiguous().numpy()
        x = run(px)
        if out is None:
            out = np.empty((len(paths), *x.shape[1:]), np.float16)
        out[i:i + len(x)] = x.astype(np.float16)
    assert out is not None
    tmp = f.with_suffix(".tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, f)
    return out


def _tail_digest(model: JointModel) -> str:
    pre = tuple(model.frozen_prefixes())
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        if k.startswith("image_tower.") and not k.startswith(pre):
            h.update(k.encode() + v.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=4)
def _pretrained_tail_digest(cfg: Any) -> str:
    from ..model import bases

    return _tail_digest(bases.build(cfg, pretrained=True))


def tower_weights_tag(model: JointModel) -> str:
    """"" for the pretrained tower; for a tower whose last blocks were fine-tuned, a tag of their weights
    (so cached features of one tower are never served for another)."""
    if not model.cfg.freeze_image_tower or not model.cfg.tower_train_blocks:
        return ""
    cur = _tail_digest(model)
    return "" if cur == _pretrained_tail_digest(model.cfg) else f"|tail{cur[:16]}"


def tower_prefix(model: JointModel, paths: list[Path], upto: int, flip: bool = False, batch_size: int = 64,
                 progress: bool = True, size: int | None = None) -> np.ndarray:
    """Activations (N, C, h, w) float16 of the frozen start of the tower (stem + blocks[:upto]): the input
    of its trained last blocks. Cached like ``tower_grids``."""
    return _cached_features(model, paths, f"{model.cfg.image}{_view_tag(model, flip, size)}|prefix{upto}".encode(),
                            f"{model.cfg.image.tower}-prefix{upto}", _Prefix(model.image_tower, upto), flip,
                            batch_size, progress, f"tower blocks <{upto}", size=size)


class _Prefix(torch.nn.Module):
    def __init__(self, tower: torch.nn.Module, upto: int):
        super().__init__()
        self.tower, self.upto = tower, upto

    def forward(self, px: torch.Tensor) -> torch.Tensor:
        return self.tower.prefix(px, self.upto)


def _ort_module(module: torch.nn.Module, size: int):
    """A torch module px (B,3,S,S) -> tensor as an onnxruntime function on numpy; eager torch fallback."""
    import tempfile
    import warnings

    module.eval()
    try:
        import onnxruntime as ort

        f = Path(tempfile.mkdtemp()) / "module.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (torch.zeros(2, 3, size, size),), str(f), input_names=["px"],
                              output_names=["y"], dynamic_axes={"px": {0: "b"}, "y": {0: "b"}}, opset_version=17,
                              dynamo=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])
        return lambda x: sess.run(None, {"px": x})[0]
    except Exception:  # noqa: BLE001 - any export problem: fall back to eager torch
        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return module(torch.from_numpy(x)).numpy()
        return run


class _GridOnly(torch.nn.Module):
    def __init__(self, tower: torch.nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, px: torch.Tensor) -> torch.Tensor:
        return self.tower(px)[1]
