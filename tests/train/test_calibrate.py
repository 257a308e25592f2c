"""Weight interpolation (WiSE-FT) and ``edge-xmr calibrate`` on a tiny caption folder."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_xmr.cli import main  # noqa: E402
from edge_xmr.config import preset  # noqa: E402
from edge_xmr.model import bases, build, save  # noqa: E402
from edge_xmr.train.calibrate import interpolate  # noqa: E402


def _pair():
    a, b = build(preset("tiny")), build(preset("tiny"))  # the tiny build is deterministic: perturb b
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for v in b.state_dict().values():
            if v.is_floating_point():
                v.add_(0.1 * torch.randn(v.shape, generator=g))
        a.cross.hub.copy_(torch.tensor([0.5, 0.25, 10.0]))
        b.cross.hub.copy_(torch.tensor([1.0, 1.0, 20.0]))
    return a, b


def test_interpolate_is_the_weighted_mean_of_every_weight():
    a, b = _pair()
    ref_a = {k: v.clone() for k, v in a.state_dict().items()}
    ref_b = b.state_dict()
    interpolate(a, b, 0.25)
    got = a.state_dict()
    for k, v in got.items():
        if k in bases.CALIBRATED_BUFFERS or not v.is_floating_point():
            assert torch.equal(v, ref_a[k]), k  # set by the calibration, not averaged
        else:
            np.testing.assert_allclose(v.numpy(), 0.25 * ref_b[k].numpy() + 0.75 * ref_a[k].numpy(), atol=1e-6,
                                       err_msg=k)
    assert any(not torch.equal(ref_a[k], got[k]) for k in got)


def test_interpolate_refuses_models_of_another_shape():
    a, _ = _pair()
    with pytest.raises(ValueError, match="models differ"):
        interpolate(a, build(preset("tiny", n_image_tokens=3)), 0.5)
    with pytest.raises(ValueError, match="alpha"):
        interpolate(a, a, 1.5)


def test_cli_calibrate_mixes_sets_views_and_recalibrates(caption_folder, tmp_path, capsys):
    a, b = _pair()
    save(a, tmp_path / "a")
    save(b, tmp_path / "b")
    out = tmp_path / "out"
    rc = main(["calibrate", "--model", str(tmp_path / "a"), "--mix", str(tmp_path / "b"), "--data", str(caption_folder),
               "--split", "all", "--eval-split", "all", "--out", str(out), "--views", "32,40m",
               "--hub-bank", "8", "--hub-bank-images", "6"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    assert 0 <= result["dev_t2i_rerank20_R@1"] <= 100
    m = bases.load(out)
    assert m.cfg.views == ((32, False), (40, True))
    assert m.cross.text_bank.shape[0] == 8 and m.cross.image_bank.shape[0] == 6
    assert float(m.cross.hub[0]) == result["beta_image"] and float(m.cross.hub_floor[0]) > -1e3
    mixed, _ = _pair()
    interpolate(mixed, b, 0.5)
    np.testing.assert_allclose(m.text_proj.weight.detach().numpy(), mixed.text_proj.weight.detach().numpy(), atol=1e-6)
    # the banks hold the photos as the model now encodes them: the photo and its enlarged mirror image
    photos = sorted((caption_folder / "images").iterdir())
    got = m.cross.image_bank.numpy()
    dist = lambda e: np.abs(e[:, None] - got[None]).sum(-1).min(0).max()  # noqa: E731
    assert dist(m.embed_images(photos)) < 2e-2  # cached float16 tower features: not exact
    plain = bases.load(out)
    plain.cfg = replace(plain.cfg, views=())
    assert dist(plain.embed_images(photos)) > 5e-2
    caps = [ln.split("\t")[1] for ln in (caption_folder / "captions.tsv").read_text().splitlines()[1:]]
    np.testing.assert_allclose(np.linalg.norm(m.cross.text_bank.numpy(), axis=1), 1.0, atol=1e-5)
    bank = m.cross.text_bank.numpy()
    assert np.abs(m.embed_texts(caps)[:, None] - bank[None]).sum(-1).min(0).max() < 1e-4  # training captions


def test_cli_calibrate_user_errors(caption_folder, tmp_path, capsys):
    a, _ = _pair()
    save(a, tmp_path / "a")
    save(build(preset("tiny", n_image_tokens=3)), tmp_path / "c")
    args = ["calibrate", "--model", str(tmp_path / "a"), "--data", str(caption_folder), "--split", "all", "--eval-split",
            "all", "--out", str(tmp_path / "o")]
    assert main(args + ["--mix", str(tmp_path / "c")]) == 2
    assert "models differ" in capsys.readouterr().err
    assert main(args[:2] + [str(tmp_path / "nope")] + args[3:]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(args[:-4] + ["--eval-split", "nosuch", "--out", str(tmp_path / "o")]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert main(args + ["--views", "16m"]) == 2  # below the input size (32)
    assert "--views 16m: bad view (16, True)" in capsys.readouterr().err
    assert main(args + ["--views", "32,big"]) == 2
    assert "'big' is not a side" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
