"""A generated zoo of hostile files and names, what a careful library must make of each, and the
invariants an index must keep whatever happened to the run that wrote it.

``build_zoo(root)`` returns a ``Zoo``: the kinds of hostile input it holds and, for every file, the
expected outcome; ``expected_keys`` is the oracle (the index keys of the files that exist, can be
read and decode, one per file however many paths lead to it), computed from the zoo's own
description, not from the indexer.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from runtime_photos import write_photo

from edge_xmr.index.db import connect
from edge_xmr.index.filters import folder_key
from edge_xmr.index.pathkeys import fs_path, path_key

INDEXED, BAD, IGNORED, LOCKED = "indexed", "bad", "ignored", "locked"


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels (a decompression bomb when huge)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def jpeg_claiming(path: Path, width: int, height: int) -> None:
    """A small JPEG whose SOF header claims ``width`` x ``height`` (65500 x 65500: 4.3 gigapixels)."""
    write_photo(path, 7, size=(16, 16))
    data = bytearray(path.read_bytes())
    i = data.index(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))


@dataclass
class Zoo:
    root: Path
    outcome: dict[bytes, str] = field(default_factory=dict)  # os.fsencode(path) -> INDEXED/BAD/IGNORED/LOCKED
    aliases: dict[bytes, bytes] = field(default_factory=dict)  # a second path of an indexed file -> the first
    kinds: list[str] = field(default_factory=list)  # the hostile inputs it holds
    locked: list[Path] = field(default_factory=list)  # chmod 000 (file or folder)

    def add(self, path: Path | bytes, outcome: str) -> None:
        self.outcome[os.fsencode(path)] = outcome

    def expected_keys(self, unlocked: bool = False) -> set[str]:
        """Keys of the files that a complete run must have indexed."""
        ok = {INDEXED, LOCKED} if unlocked else {INDEXED}
        return {path_key(os.path.realpath(os.fsdecode(p))) for p, o in self.outcome.items() if o in ok}

    def alias_keys(self) -> dict[str, str]:
        """Key of a second name of a file -> key of its first name."""
        return {path_key(os.fsdecode(a)): path_key(os.fsdecode(p)) for a, p in self.aliases.items()}

    def lock(self) -> None:
        for p in self.locked:
            p.chmod(0)

    def unlock(self) -> None:
        for p in self.locked:
            p.chmod(0o755 if p.is_dir() else 0o644)


def build_zoo(root: Path, lockable: bool = True) -> Zoo:
    zoo = Zoo(root)
    ok = root / "ok"
    for i in range(6):
        zoo.add(write_photo(ok / f"p{i}.jpg", i), INDEXED)
    zoo.add(write_photo(ok / "deep" / "er" / "d.png", 50, fmt="PNG"), INDEXED)
    zoo.kinds.append("ordinary JPEG/PNG photos, nested folders")

    names = root / "names"
    names.mkdir()
    raw = os.fsencode(names)
    for seed, name in enumerate([b"x\xff.jpg", b"caf\xe9.jpg", b"\xed\xa0\x80surrogate.jpg"], 100):
        write_photo(Path(os.fsdecode(raw + b"/" + name)), seed)
        zoo.add(raw + b"/" + name, INDEXED)
    zoo.kinds.append("names that are not UTF-8 (0xFF, Latin-1, an encoded surrogate)")
    for seed, name in enumerate(["new\nline.jpg", "  spaced  name .jpg", "tab\there.jpg", "фото 📷.jpg",
                                 "x\ufffd.jpg", "x\ufffdFF.jpg", "caf\u00e9.jpg", "cafe\u0301.jpg",
                                 "$(rm -rf ~);'\"`.jpg", "a" * 240 + ".jpg"], 200):
        zoo.add(write_photo(names / name, seed), INDEXED)
    zoo.kinds += ["names with a newline, tab, leading/trailing spaces", "non-Latin names and emoji",
                  "a literal U+FFFD and a name that looks like an escape", "NFC and NFD spellings (two files)",
                  "shell metacharacters in a name", "a 244-byte name"]

    bad = root / "bad"
    bad.mkdir()
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    big.save(bad / "full.jpg", quality=90)
    zoo.add(bad / "full.jpg", INDEXED)
    data = (bad / "full.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (bad / "header-only.jpg").write_bytes(data[:200])
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("this is not an image\n")
    (bad / "random.png").write_bytes(np.random.default_rng(1).integers(0, 255, 3000, dtype=np.uint8).tobytes())
    (bad / "bomb.png").write_bytes(png_header(30_000, 30_000))
    jpeg_claiming(bad / "huge-dims.jpg", 65_500, 65_500)
    for name in ("truncated.jpg", "header-only.jpg", "empty.jpg", "text.jpg", "random.png", "bomb.png",
                 "huge-dims.jpg"):
        zoo.add(bad / name, BAD)
    zoo.kinds += ["zero-byte file", "truncated JPEG (a third, and the header only)", "text named .jpg",
                  "random bytes named .png", "PNG header claiming 30000x30000", "JPEG header claiming 65500x65500"]
    Image.new("CMYK", (40, 30), (10, 200, 30, 5)).save(bad / "cmyk.jpg")
    Image.fromarray((np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16)).save(bad / "gray16.png")
    Image.new("P", (20, 20)).save(bad / "palette.gif")
    for name in ("cmyk.jpg", "gray16.png", "palette.gif"):
        zoo.add(bad / name, INDEXED)
    zoo.kinds.append("CMYK, 16-bit and palette images (must be indexed)")

    odd = root / "odd"
    odd.mkdir()
    os.symlink(root, odd / "loop")  # a folder link back to the root: a loop when links are followed
    os.symlink(odd / "nowhere.jpg", odd / "dangling.jpg")
    os.symlink(ok / "p0.jpg", odd / "link-to-p0.jpg")  # a second path to an indexed photo
    zoo.add(odd / "link-to-p0.jpg", IGNORED)
    os.link(ok / "p1.jpg", odd / "hardlink-p1.jpg")  # a hard link: the same file under a second name
    zoo.aliases[os.fsencode(odd / "hardlink-p1.jpg")] = os.fsencode(ok / "p1.jpg")
    zoo.add(odd / "hardlink-p1.jpg", IGNORED)
    if hasattr(os, "mkfifo"):
        os.mkfifo(odd / "fifo.jpg")
        zoo.add(odd / "fifo.jpg", IGNORED)
    (odd / "folder.jpg").mkdir()
    zoo.add(write_photo(odd / "folder.jpg" / "inner.jpg", 300), INDEXED)
    zoo.add(write_photo(odd / ".hidden.jpg", 301), IGNORED)
    (odd / "notes.txt").write_text("not an image extension")
    zoo.kinds += ["symlink loop", "dangling symlink", "symlink to a photo", "hard link to a photo", "FIFO named .jpg",
                  "folder named .jpg", "hidden file", "non-image extension"]

    if lockable:
        locked = root / "locked"
        zoo.add(write_photo(locked / "l0.jpg", 400), LOCKED)
        zoo.add(write_photo(locked / "sub" / "l1.jpg", 401), LOCKED)
        zoo.add(write_photo(ok / "unreadable.jpg", 402), LOCKED)
        zoo.locked += [locked, ok / "unreadable.jpg"]
        zoo.kinds += ["unreadable file (chmod 000)", "unreadable folder (chmod 000)"]
    return zoo


def remove_tree(root: Path) -> None:
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o755)
    shutil.rmtree(root, ignore_errors=True)


# ---- invariants -------------------------------------------------------------------------------------
def check_index(db: Path, expected: set[str] | None = None, subset_of: set[str] | None = None,
                aliases: dict[str, str] | None = None) -> set[str]:
    """Check an index file after anything (a crash included); returns its photo keys, each alias
    (a second name of one file, e.g. a hard link) given as its first name.

    Always: ``PRAGMA integrity_check`` is ok; photos, vectors and rerank rows correspond one to one;
    no key twice and no file twice (device, inode); every photo's folder row is its folder.
    ``expected``: the keys must be exactly these. ``subset_of``: no key outside these."""
    conn = connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        ids = {int(r[0]) for r in conn.execute("SELECT id FROM photos")}
        assert {int(r[0]) for r in conn.execute("SELECT rowid FROM vectors")} == ids
        assert {int(r[0]) for r in conn.execute("SELECT id FROM rerank")} == ids
        rows = conn.execute("SELECT p.path, f.path, v.folder FROM photos p JOIN folders f ON f.id = p.folder_id"
                            " JOIN vectors v ON v.rowid = p.id").fetchall()
        assert len(rows) == len(ids), "a photo without its folder row"
        keys = [str(k) for k, _, _ in rows]
        assert len(set(keys)) == len(keys), "a key twice"
        for key, folder, _ in rows:
            assert folder == folder_key(os.path.dirname(key)), (key, folder)
        assert [int(f) for _, _, f in rows] == [int(r[0]) for r in conn.execute(
            "SELECT p.folder_id FROM photos p JOIN vectors v ON v.rowid = p.id")]
        inodes = [_inode(k) for k in keys]
        present = [i for i in inodes if i is not None]
        assert len(set(present)) == len(present), "one file indexed twice"
    finally:
        conn.close()
    got = {(aliases or {}).get(k, k) for k in keys}
    if expected is not None:
        assert got == expected, f"missing {sorted(expected - got)[:5]}, extra {sorted(got - expected)[:5]}"
    if subset_of is not None:
        assert got <= subset_of, f"not expected: {sorted(got - subset_of)[:5]}"
    return got


def _inode(key: str) -> tuple[int, int] | None:
    try:
        st = os.stat(fs_path(key))
    except OSError:
        return None
    return st.st_dev, st.st_ino
