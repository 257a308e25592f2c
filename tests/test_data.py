"""Caption folders: reading, splits and clear errors naming the file."""

from __future__ import annotations

import pytest
from PIL import Image

from edge_xmr.data import DataError, read_captions


def make_folder(root, n=4, rows=None):
    (root / "images").mkdir(parents=True)
    (root / "splits").mkdir()
    lines = ["image\tcaption"]
    for i in range(n):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / "images" / f"im{i}.jpg")
        lines += [f"im{i}.jpg\ta photo number {i}", f"im{i}.jpg\tanother caption {i}"]
    (root / "captions.tsv").write_text("\n".join(rows or lines) + "\n", encoding="utf-8")
    (root / "splits" / "train.txt").write_text("im0.jpg\nim1.jpg\n")
    return root


def test_read_all_and_split(tmp_path):
    root = make_folder(tmp_path / "d")
    cs = read_captions(root)
    assert len(cs.images) == 4 and len(cs.captions) == 8
    assert cs.image_captions()[2] == [4, 5]
    tr = read_captions(root, "train")
    assert tr.images == ("im0.jpg", "im1.jpg") and len(tr.captions) == 4


@pytest.mark.parametrize("case,match", [
    ("nodir", "data directory not found"),
    ("notsv", "captions.tsv: captions file not found"),
    ("header", "malformed header"),
    ("row", r"captions.tsv:3: malformed row"),
    ("split", "unknown split 'test'"),
    ("image", "image file not found"),
    ("binary", "not UTF-8"),
])
def test_errors_name_the_file(tmp_path, case, match):
    root = make_folder(tmp_path / "d")
    split = None
    if case == "nodir":
        root = tmp_path / "missing"
    elif case == "notsv":
        (root / "captions.tsv").unlink()
    elif case == "header":
        (root / "captions.tsv").write_text("a,b\nx,y\n")
    elif case == "row":
        (root / "captions.tsv").write_text("image\tcaption\nim0.jpg\tok\nim1.jpg\n")
    elif case == "split":
        split = "test"
    elif case == "image":
        (root / "images" / "im3.jpg").unlink()
    elif case == "binary":
        (root / "captions.tsv").write_bytes(b"image\tcaption\nim0.jpg\t\xff\xfe bad\n")
    with pytest.raises(DataError, match=match):
        read_captions(root, split)
