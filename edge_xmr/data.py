"""Caption folders: ``images/``, ``captions.tsv`` (image<TAB>caption, with header), ``splits/NAME.txt``.

Torch-free; every problem raises DataError with a one-line message naming the file.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from .errors import EdgeXmrError


class DataError(EdgeXmrError, ValueError):
    """A caption folder that is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class CaptionSet:
    root: Path  # the caption folder
    images: tuple[str, ...]  # image file names, in split order
    captions: tuple[str, ...]  # all captions of these images
    caption_image: tuple[int, ...]  # index into ``images`` of each caption's image

    def image_paths(self) -> list[Path]:
        return [self.root / "images" / name for name in self.images]

    def image_captions(self) -> list[list[int]]:
        """For each image, the indices of its captions."""
        out: list[list[int]] = [[] for _ in self.images]
        for c, i in enumerate(self.caption_image):
            out[i].append(c)
        return out


def read_captions(root: str | Path, split: str | None = None) -> CaptionSet:
    """Read a caption folder; ``split`` restricts to ``splits/<split>.txt`` (None: every captioned image)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data directory not found")
    tsv = root / "captions.tsv"
    if not tsv.is_file():
        raise DataError(f"{tsv}: captions file not found")
    by_image: dict[str, list[str]] = {}
    try:
        with tsv.open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if header is None or [h.strip().lower() for h in header[:2]] != ["image", "caption"]:
                raise DataError(f"{tsv}: malformed header (expected 'image<TAB>caption')")
            for lineno, row in enumerate(reader, start=2):
                if not row or not "".join(row).strip():
                    continue
                if len(row) != 2 or not row[0].strip() or not row[1].strip():
                    raise DataError(f"{tsv}:{lineno}: malformed row (expected 'image<TAB>caption')")
                by_image.setdefault(row[0].strip(), []).append(row[1].strip())
    except UnicodeDecodeError as e:
        raise DataError(f"{tsv}: not UTF-8 ({e.reason} at byte {e.start})") from None
    if not by_image:
        raise DataError(f"{tsv}: no captions")
    if split is None:
        names = sorted(by_image)
    else:
        sp = root / "splits" / f"{split}.txt"
        if not sp.is_file():
            avail = sorted(p.stem for p in (root / "splits").glob("*.txt")) if (root / "splits").is_dir() else []
            raise DataError(f"{sp}: unknown split {split!r} (available: {', '.join(avail) or 'none'})")
        names = [ln.strip() for ln in sp.read_text(encoding="utf-8").splitlines() if ln.strip()]
        missing = [n for n in names if n not in by_image]
        if missing:
            raise DataError(f"{sp}: {len(missing)} images have no caption in {tsv.name}, e.g. {missing[0]}")
        if not names:
            raise DataError(f"{sp}: empty split")
    img_dir = root / "images"
    absent = [n for n in names if not (img_dir / n).is_file()]
    if absent:
        raise DataError(f"{img_dir / absent[0]}: image file not found ({len(absent)} missing)")
    captions: list[str] = []
    owner: list[int] = []
    for i, n in enumerate(names):
        for c in by_image[n]:
            captions.append(c)
            owner.append(i)
    return CaptionSet(root, tuple(names), tuple(captions), tuple(owner))


def read_names(path: str | Path) -> list[str]:
    """Photo names from a list file, one per line ('#' starts a comment line)."""
    f = Path(path)
    try:
        text = f.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{f}: cannot read the photo list ({e})") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def read_query_table(path: str | Path) -> dict[str, list[tuple[str, str]]]:
    """Captions of the same photos in several languages: a UTF-8 TSV with header
    ``image<TAB>lang1<TAB>lang2...`` (e.g. ``en de es zh``), one photo per row ->
    {language: [(image, caption), ...]} in row order."""
    f = Path(path)
    try:
        with f.open(encoding="utf-8", newline="") as fh:
            rows = [r for r in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE) if r and "".join(r).strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{f}: cannot read the query table ({e})") from None
    if not rows or rows[0][0].strip().lower() != "image" or len(rows[0]) < 2:
        raise DataError(f"{f}: malformed header (expected 'image<TAB>language...')")
    langs = [h.strip() for h in rows[0][1:]]
    out: dict[str, list[tuple[str, str]]] = {lang: [] for lang in langs}
    for lineno, r in enumerate(rows[1:], start=2):
        if len(r) != len(langs) + 1 or not all(x.strip() for x in r):
            raise DataError(f"{f}:{lineno}: expected {len(langs) + 1} non-empty columns")
        for lang, text in zip(langs, r[1:]):
            out[lang].append((r[0].strip(), text.strip()))
    return out
