"""samples/laptop_search runs on a folder with the public API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def test_laptop_search_sample(provisioned, tmp_path):
    root = tmp_path / "pics"
    root.mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(root / f"img{i}.jpg")
    env = {**os.environ, "EDGE_XMR_BUNDLE": str(provisioned), "EDGE_XMR_CACHE": str(tmp_path / "cache")}
    p = subprocess.run([sys.executable, str(REPO / "samples" / "laptop_search" / "search_my_photos.py"), str(root),
                        "a dog", "snow", "-k", "2"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "4 photos" in p.stderr and p.stdout.count("cross") == 4 and "more like" in p.stdout
