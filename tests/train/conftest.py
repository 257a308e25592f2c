"""A tiny caption folder (12 coloured noise photos, 2 captions each, one split ``all``)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture()
def caption_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_XMR_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "caps"
    (root / "images").mkdir(parents=True)
    (root / "splits").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        arr = rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)
        arr[..., i % 3] = 230
        Image.fromarray(arr).save(root / "images" / f"p{i}.png")
        rows += [f"p{i}.png\ta photo {['red', 'green', 'blue'][i % 3]}", f"p{i}.png\tnumber {i}"]
    (root / "captions.tsv").write_text("image\tcaption\n" + "\n".join(rows) + "\n")
    (root / "splits" / "all.txt").write_text("\n".join(f"p{i}.png" for i in range(12)) + "\n")
    return root
