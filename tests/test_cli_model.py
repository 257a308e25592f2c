"""End to end: train the tiny model on a tiny caption folder, evaluate it, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")


def run(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "edge_xmr.cli", *args], capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(p.stderr[-2000:])
    return p


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("caps")
    (root / "images").mkdir()
    (root / "splits").mkdir()
    rng = np.random.default_rng(0)
    lines, names = ["image\tcaption"], []
    colours = ["red", "blue", "green", "black"]
    for i in range(24):
        c = colours[i % 4]
        arr = np.zeros((40, 40, 3), np.uint8)
        arr[..., i % 3] = 200
        arr += rng.integers(0, 40, arr.shape, dtype=np.uint8)
        Image.fromarray(arr).save(root / "images" / f"p{i}.jpg")
        names.append(f"p{i}.jpg")
        lines += [f"p{i}.jpg\ta {c} photo", f"p{i}.jpg\ta picture that is {c}"]
    (root / "captions.tsv").write_text("\n".join(lines) + "\n")
    (root / "splits" / "train.txt").write_text("\n".join(names[:16]) + "\n")
    (root / "splits" / "dev.txt").write_text("\n".join(names[16:]) + "\n")
    return root


def test_train_resume_and_eval(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_XMR_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "model"
    common = ["train", "--data", str(folder), "--eval-split", "dev", "--base", "tiny", "--out", str(out),
              "--batch-size", "4", "--ce-queries", "2", "--hard-pool", "4", "--hard-negatives", "2",
              "--eval-queries", "8", "--no-progress"]
    run(*common, "--epochs", "2")
    assert (out / "model.safetensors").is_file() and (out / "last" / "train_state.pt").is_file()
    p = run(*common, "--epochs", "3")  # resumes from epoch 2
    assert "resumed" in p.stderr and "epoch 2" in p.stderr
    log = json.loads((out / "train_log.json").read_text())
    assert [h["epoch"] for h in log["history"] if "epoch" in h] == [1, 2, 3]
    assert "hubness" in log["history"][-1]
    # the hubness floor is the 5th percentile of the statistic of dev's TUNING half's photos (recomputed here)
    import torch

    from edge_xmr.data import read_captions
    from edge_xmr.model import bases
    from edge_xmr.train.calibrate import dev_halves

    m = bases.load(out)
    dev = read_captions(folder, "dev")
    tune, report = dev_halves(dev.images)
    assert len(tune) and len(report)
    emb, _ = m.encode_images([dev.image_paths()[i] for i in tune])
    stat = torch.logsumexp(m.cfg.score.hubness_temperature * torch.from_numpy(emb) @ m.cross.text_bank.T, -1).numpy()
    # (training computed the statistic from cached tower features: agreement to ~1e-3, photos ~1e-1 apart)
    floor = m.cfg.score.photo_hubness_floor
    assert floor == pytest.approx(float(np.percentile(stat, 5)), abs=1e-2)
    assert floor != pytest.approx(float(np.percentile(stat, 50)), abs=1e-2)
    cal = log["history"][-1]["hubness"]
    assert cal["score"]["photo_hubness_floor"] == pytest.approx(floor, abs=1e-5)
    assert cal["tuning"]["i2t_queries"] == len(tune) and cal["reporting"]["i2t_queries"] == len(report)
    res = tmp_path / "res.json"
    run("eval", "--model", str(out), "--data", str(folder), "--split", "dev", "--ce-subset", "6",
        "--json-out", str(res))
    r = json.loads(res.read_text())
    assert set(r["results"]) == {"bi_encoder", "rerank@10", "rerank@20", "rerank@50", "cross_encoder"}
    for m in r["results"].values():
        for d in ("t2i", "i2t"):
            assert set(m[d]) == {"R@1", "R@5", "R@10"} and all(0 <= v <= 100 for v in m[d].values())
    assert r["n_images"] == 6 and r["n_captions"] == 12 and r["subset"]["images"] == 6
    assert set(r["latency_ms"]) == set(r["results"])
    # with all candidates reranked, rerank@k (k >= n) and the cross-encoder over all agree
    assert r["results"]["rerank@50"] == r["results"]["cross_encoder"]


@pytest.mark.parametrize("args,needle", [
    (["eval", "--model", "{tmp}/nope", "--data", "{folder}"], "model directory not found"),
    (["eval", "--model", "{tmp}", "--data", "{folder}"], "config.json: missing"),
    (["eval", "--model", "{tmp}", "--data", "{folder}", "--split", "test"], "unknown split 'test'"),
    (["eval", "--model", "{tmp}", "--data", "{tmp}/nodata"], "data directory not found"),
    (["train", "--data", "{folder}", "--split", "nope", "--out", "{tmp}/o"], "unknown split 'nope'"),
])
def test_user_errors_are_one_line(folder, tmp_path, args, needle):
    p = run(*[a.format(tmp=tmp_path, folder=folder) for a in args], check=False)
    assert p.returncode == 2
    assert needle in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_undecodable_training_image_is_named(folder, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("EDGE_XMR_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "images" / "p3.jpg").write_bytes(b"not a jpeg")
    p = run("train", "--data", str(bad), "--base", "tiny", "--out", str(tmp_path / "o"), "--epochs", "1",
            "--batch-size", "4", "--no-progress", check=False)
    assert p.returncode == 2 and "p3.jpg" in p.stderr and "Traceback" not in p.stderr
