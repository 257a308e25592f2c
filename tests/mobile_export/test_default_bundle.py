"""The default model's bundle packaged in edge_xmr (``mobile_export.default_bundle``): not stale vs the
torch default model's weights and config, within the committed-file budget, and its outputs agree
with the torch model's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_xmr.bundle import Bundle
from edge_xmr.paths import packaged_bundle_dir
from mobile_export import default_bundle as db

TEXTS = ["a dog running on the grass", "two children playing in the snow", "a cup of coffee on a table",
         "a man riding a bicycle down the street"]


def test_packaged_bundle_is_found_and_is_the_shipped_one():
    assert packaged_bundle_dir() == db.TARGET


def test_shipped_bundle_is_not_stale():
    """Fails when the default model's weights or config (score weights included) changed since the
    bundle was built: rerun ``python -m mobile_export.default_bundle``."""
    assert db.stale_reason() is None


def test_a_changed_config_makes_it_stale(tmp_path):
    model = Path(shutil.copytree(db.default_model_dir(), tmp_path / "model"))
    assert db.stale_reason(model_dir=model) is None
    cfg = json.loads((model / "config.json").read_text())
    cfg["score"]["cosine"] += 1.0
    (model / "config.json").write_text(json.dumps(cfg))
    assert "run python -m mobile_export.default_bundle" in (db.stale_reason(model_dir=model) or "")


def test_shipped_bundle_fits_the_budget_and_is_int8_only():
    sizes = db.file_sizes_mb()
    assert max(sizes.values()) <= db.MAX_FILE_MB, sizes
    assert sum(sizes.values()) <= 40.0, sizes  # the stated budget (docs/bundle.md)
    m = json.loads((db.TARGET / "manifest.json").read_text())
    assert {v for g in m["graphs"].values() for v in g["variants"]} == {"onnx/int8"}
    assert Bundle.load(db.TARGET).precision == "int8"  # every file's sha256 checked


@pytest.fixture(scope="module")
def torch_default():
    from edge_xmr.model import load

    return load(db.default_model_dir()).eval()


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:128]
    out = []
    for i in range(4):  # smooth colour fields, not noise: what the towers see in photos
        base = rng.uniform(0, 255, 3)
        grad = np.stack([np.sin(xx / (10 + 7 * i)), np.cos(yy / (9 + 5 * i)), np.sin((xx + yy) / 23)], -1)
        out.append(np.clip(base + 80 * grad, 0, 255).astype(np.uint8))
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_shipped_bundle_matches_the_torch_default(torch_default):
    """int8 runtime vs the torch model: embeddings (cosine, as the export's own int8 check) and the
    rerank score's ranking of the candidates."""
    bundle = Bundle.load(db.TARGET, threads=1)
    images = _images()
    te, (ie, it) = torch_default.embed_texts(TEXTS), torch_default.encode_images(images)
    be, (bie, bit) = bundle.embed_texts(TEXTS), bundle.encode_images(images)
    assert _cos(te, be).min() > 0.98 and _cos(ie, bie).min() > 0.98
    assert _cos(it.reshape(len(images), -1), bit.reshape(len(images), -1)).min() > 0.97
    for t in TEXTS:
        ref = np.asarray(torch_default.score_encoded(t, it, ie))
        got = bundle.score_candidates(t, bit, bie)
        assert np.argmax(ref) == np.argmax(got) and np.corrcoef(ref, got)[0, 1] > 0.95, (ref, got)
