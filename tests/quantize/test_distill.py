"""Distillation: the student cut from the teacher, the losses, a short resumable run, and the student's
bundle through the gate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from quantize.distill_config import STUDENTS, DistillConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FAST = dict(epochs=2, batch_size=6, ce_queries=6, ce_candidates=3, threads=1, eval_queries=12, lr_text=3e-3,
            lr_head=1e-2, ckpt_every=1)


def test_student_is_cut_from_the_teacher(toy_teacher):
    from quantize.distill import make_student

    teacher = toy_teacher[0]
    spec = STUDENTS["tiny-half"]
    s = make_student(teacher, spec)
    assert s.cfg.text.layers == 2 and s.cfg.cross_layers == 1 and s.cfg.n_image_tokens == 2
    assert s.cfg.name.endswith("+tiny-half")
    ts, ss = teacher.state_dict(), s.state_dict()
    for j, t in enumerate(spec.text_layers):
        assert torch.equal(ss[f"text.blocks.{j}.fc1.weight"], ts[f"text.blocks.{t}.fc1.weight"])
    assert torch.equal(ss["token_pool.queries"], ts["token_pool.queries"][:2])
    assert torch.equal(ss["cross.pos"][-1], ts["cross.pos"][-1])  # the photo-embedding token's row
    assert torch.equal(ss["image_head.net.1.weight"], ts["image_head.net.1.weight"])
    # the student runs both roles with the tensors a bundle expects
    e, tok = s.encode_images([np.full((32, 32, 3), 90, np.uint8)] * 3)
    assert e.shape == (3, 16) and tok.shape == (3, 2, 8)
    assert s.score_encoded("a red photo", tok, e).shape == (3,)


def test_bad_student_spec(toy_teacher):
    from quantize.distill import make_student
    from quantize.distill_config import StudentSpec

    with pytest.raises(ValueError, match="outside the teacher"):
        make_student(toy_teacher[0], StudentSpec("x", text_layers=(0, 5), cross_layers=1, n_image_tokens=2))


def test_kl_is_zero_for_equal_logits_and_positive_otherwise():
    from quantize.distill import _kl

    a = torch.randn(4, 6)
    assert float(_kl(a, a, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(_kl(a, a.flip(1), 2.0)) > 0


def test_distill_resumes_and_exports(toy_teacher, toy_teacher_bundle, toy_data, tmp_path):
    from edge_xmr.data import read_captions
    from edge_xmr.model import load
    from quantize.distill import distill, export_student
    from quantize.gate import check

    data = read_captions(toy_data, "all")
    out = tmp_path / "student"
    logs: list[str] = []
    distill(toy_teacher[1], data, data, out, STUDENTS["tiny-half"], DistillConfig(**{**FAST, "epochs": 1}),
            log=logs.append, progress=False)
    assert (out / "last" / "distill_state.pt").is_file()
    res = distill(toy_teacher[1], data, data, out, STUDENTS["tiny-half"], DistillConfig(**FAST), log=logs.append,
                  progress=False)
    assert any(s.startswith("resumed from") and "epoch 1" in s for s in logs)
    epochs = [h["epoch"] for h in res["history"] if "epoch" in h]
    assert epochs == [1, 2]
    log = json.loads((out / "distill_log.json").read_text())
    assert log["student"]["name"] == "tiny-half" and "hubness" in log["history"][-1]
    student = load(out)  # a normal model directory
    assert student.cfg.text.layers == 2
    bundle = tmp_path / "student_bundle"
    rep = export_student(out, bundle, calib_data=data, fusion="off", mobile=False, threads=1)
    assert rep["ok"] and {"onnx/fp32", "onnx/int8"} <= set(rep["sizes"])
    gate = check(toy_teacher_bundle, bundle, toy_data, split="all")
    assert gate.agreement["token_cosine"] is None  # 2 image tokens vs the teacher's 4
    assert gate.candidate["name"].endswith("+tiny-half")
    assert gate.candidate["size_mb"] < gate.reference["size_mb"]


def test_late_interaction_distillation_terms(toy_teacher, toy_data, tmp_path):
    """The optional LI terms run, are logged and train the student's LI projection."""
    import torch

    from edge_xmr.data import read_captions
    from quantize.distill import Distiller, make_student

    data = read_captions(toy_data, "all")
    student = make_student(toy_teacher[0], STUDENTS["tiny-half"])
    before = student.cross.li_text.weight.detach().clone()
    d = Distiller(toy_teacher[0], student, data, None, tmp_path / "s",
                  DistillConfig(**{**FAST, "kd_li_weight": 1.0, "gt_li_weight": 0.5, "ce_queries": 0}),
                  STUDENTS["tiny-half"], progress=False)
    d.base.load_features()
    stats = d.train_step(np.arange(min(6, len(data.images))))
    assert stats["kd_li"] >= 0 and stats["gt_li"] > 0
    assert not torch.equal(student.cross.li_text.weight, before)


def test_distill_cli_usage_errors(toy_data, tmp_path):
    def run(*a: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edge_xmr.cli", "distill", *a], capture_output=True, text=True,
                              cwd=REPO, timeout=120)

    p = run("--teacher", "x", "--data", str(toy_data), "--split", "all", "--student", "huge", "--out", str(tmp_path))
    assert p.returncode == 2 and "--student 'huge': choose from" in p.stderr
    p = run("--teacher", str(tmp_path / "none"), "--data", str(toy_data), "--split", "all", "--student", "tiny-half",
            "--out", str(tmp_path / "s"))
    assert p.returncode == 2 and "model directory not found" in p.stderr
    p = run("--teacher", "x", "--data", str(tmp_path / "nodata"), "--student", "tiny-half", "--out", str(tmp_path))
    assert p.returncode == 2 and "data directory not found" in p.stderr
