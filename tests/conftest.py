"""Shared fixtures: a tiny random joint model (seconds to build) and its model directory."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
FLICKR = REPO.parent / "shared" / "data" / "flickr8k"


@pytest.fixture(scope="session")
def _tiny_model():
    pytest.importorskip("torch")
    from dataclasses import replace

    import torch

    from edge_xmr.config import preset
    from edge_xmr.model import build
    from edge_xmr.score import ScoreConfig

    m = build(preset("tiny")).eval()
    # make every term of the score non-trivial, as after training: the joint pass's MLP read-out (zero at
    # init), the hubness banks (empty until training fills them) and every weight, the joint pass's too
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        m.cross.out.weight.copy_(torch.randn(m.cross.out.weight.shape, generator=g))
        d = m.cfg.embed_dim
        m.cross.text_bank = torch.nn.functional.normalize(torch.randn(24, d, generator=g), dim=-1)
        m.cross.image_bank = torch.nn.functional.normalize(torch.randn(12, d, generator=g), dim=-1)
    m.cfg = replace(m.cfg, score=ScoreConfig(
        cosine=float(m.cross.log_scale.detach().exp()), late_interaction=2.0, joint=1.0, photo_hubness=0.5,
        text_hubness=0.3, hubness_temperature=10.0,
        photo_hubness_floor=4.6, text_hubness_floor=5.4))  # about the median of its photos' / texts' statistics
    return m


@pytest.fixture()
def tiny_model(_tiny_model):
    """A fresh deep copy of the session's tiny random JointModel."""
    m = copy.deepcopy(_tiny_model)
    m.tokenizer = _tiny_model.tokenizer
    return m


@pytest.fixture(scope="session")
def tiny_model_dir(_tiny_model, tmp_path_factory) -> Path:
    """The tiny model saved as a model directory (config.json, tokenizer.json, model.safetensors)."""
    from edge_xmr.model import save

    return save(_tiny_model, tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_bundle(_tiny_model, tmp_path_factory) -> Path:
    """A bundle exported from the tiny model: ONNX fp32 + int8 (and ORT-format copies), every export
    check passed. The export report is next to it, in ``export_report.json`` (not part of the bundle)."""
    import json

    from mobile_export import export_bundle

    root = tmp_path_factory.mktemp("tiny_bundle")
    report = export_bundle(_tiny_model, root / "bundle", formats=("onnx",), precisions=("fp32", "int8"),
                           fusion="off", threads=1)
    (root / "export_report.json").write_text(json.dumps(report, default=str))
    return root / "bundle"
