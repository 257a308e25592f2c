"""Fixtures of the quantize tests: a toy caption folder the tiny model learns in seconds, the tiny
model trained on it (a teacher whose recall is far above chance, so a broken candidate shows), its
bundle (ONNX fp32 + int8) and a deliberately broken bundle (text projection zeroed)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "black": (10, 10, 10),
           "white": (245, 245, 245)}


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    """Six photos (five plain colours, one red|blue), two captions each, split 'all'."""
    root = tmp_path_factory.mktemp("toy")
    (root / "images").mkdir()
    (root / "splits").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for name, rgb in COLOURS.items():
        arr = np.clip(np.array(rgb)[None, None] + rng.normal(0, 10, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(root / "images" / f"{name}.png")
        rows += [(f"{name}.png", f"a {name} photo"), (f"{name}.png", name)]
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[:, :16], arr[:, 16:] = COLOURS["red"], COLOURS["blue"]
    Image.fromarray(arr).save(root / "images" / "red_blue.png")
    rows += [("red_blue.png", "red and blue"), ("red_blue.png", "a blue and red photo")]
    (root / "captions.tsv").write_text("image\tcaption\n" + "".join(f"{i}\t{c}\n" for i, c in rows))
    (root / "splits" / "all.txt").write_text("\n".join(sorted({r[0] for r in rows})) + "\n")
    return root


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory) -> Path:
    """A private feature cache for the whole session (the tiny tower's features of the toy photos)."""
    d = tmp_path_factory.mktemp("feature_cache")
    os.environ["EDGE_XMR_CACHE"] = str(d)
    return d


@pytest.fixture(scope="session")
def toy_teacher(toy_data, feature_cache, tmp_path_factory):
    """The tiny model trained on the toy folder (bi-encoder and rerank R@1 reach 100 in ~30 epochs)."""
    pytest.importorskip("torch")
    import torch

    from edge_xmr.config import preset
    from edge_xmr.data import read_captions
    from edge_xmr.model import bases, build
    from edge_xmr.train.loop import Trainer
    from edge_xmr.train_config import TrainConfig

    torch.set_num_threads(1)
    data = read_captions(toy_data, "all")
    out = tmp_path_factory.mktemp("toy_teacher")
    cfg = TrainConfig(epochs=30, batch_size=6, ce_start_epoch=10, ce_queries=6, hard_negatives=2, hard_pool=3,
                      random_negatives=1, hub_bank=0, warmup_steps=5, eval_queries=12, ckpt_every=10_000,
                      lr_text=3e-3, lr_head=1e-2, feature_dropout=0.0, threads=1)
    Trainer(build(preset("tiny")), data, data, out, cfg, progress=False).fit()
    return bases.load(out), out


@pytest.fixture(scope="session")
def toy_teacher_bundle(toy_teacher, tmp_path_factory) -> Path:
    from mobile_export import export_bundle

    root = tmp_path_factory.mktemp("toy_bundle") / "bundle"
    export_bundle(toy_teacher[0], root, precisions=("fp32", "int8"), fusion="off", mobile=False, threads=1)
    return root


@pytest.fixture(scope="session")
def broken_bundle(toy_teacher, tmp_path_factory) -> Path:
    """The trained teacher with its text projection zeroed: every caption gets the same embedding."""
    import torch

    from mobile_export import export_bundle

    model = copy.deepcopy(toy_teacher[0])
    model.tokenizer = toy_teacher[0].tokenizer
    with torch.no_grad():
        model.text_proj.weight.zero_()
    root = tmp_path_factory.mktemp("broken_bundle") / "bundle"
    export_bundle(model, root, precisions=("fp32",), fusion="off", mobile=False, threads=1)
    return root


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
