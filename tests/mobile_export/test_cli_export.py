"""``edge-xmr export``: user errors are one line with exit status 2; a small export works."""

from __future__ import annotations

import json

from edge_xmr.bundle import Bundle
from edge_xmr.cli import main


def test_user_errors(tmp_path, capsys, tiny_model_dir):
    assert main(["export", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "b")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["export", "--model", str(tiny_model_dir), "--out", str(tmp_path / "b"), "--format", "tflite"]) == 2
    assert "--format" in capsys.readouterr().err
    assert main(["export", "--model", str(tiny_model_dir), "--out", str(tmp_path / "b"),
                 "--calib-images", str(tmp_path / "none")]) == 2


def test_export_fp32(tmp_path, capsys, tiny_model_dir):
    caps = tmp_path / "caps.txt"
    caps.write_text("a dog\na cat on a car\n")
    rc = main(["export", "--model", str(tiny_model_dir), "--out", str(tmp_path / "b"), "--fusion", "off",
               "--no-mobile", "--calib-captions", str(caps), "--json-out", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "bundle written" in out and "sizes" in out
    assert json.loads((tmp_path / "r.json").read_text())["samples"]["texts"] == 2
    assert Bundle.load(tmp_path / "b").embed_texts(["a dog"]).shape == (1, 16)
