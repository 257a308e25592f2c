"""Rebuild ``samples/ci/data``: a tiny labelled caption folder for the accuracy gate in CI.

Photos: public-domain / CC0 photographs that ship inside the scikit-image wheel (credits in
``data/CREDITS.md``) plus deterministic synthetic pictures (coloured shapes). No Flickr8k file is
used: Flickr8k is for research use only and must never enter the repository.

    python samples/ci/make_data.py [OUT_DIR]  # needs pillow and scikit-image (the [demo] extra)
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent / "data"
SIZE = 128  # stored side in pixels (the models squash every photo to their own size anyway)

# skimage file, stored name, captions, credit (from scikit-image's documentation)
PHOTOS = (
    ("chelsea.png", "cat.jpg", ("a cat sitting on the floor", "a tabby cat looking to the side"),
     "Stefan van der Walt, CC0"),
    ("rocket.jpg", "rocket.jpg", ("a rocket launch with smoke", "a rocket lifting off into the sky"),
     "SpaceX, public domain"),
    ("coffee.png", "coffee.jpg", ("a cup of coffee on a saucer", "coffee in a white cup with a spoon"),
     "Rachel Michetti, CC0"),
    ("astronaut.png", "astronaut.jpg", ("an astronaut in a spacesuit", "a woman in an orange space suit"),
     "NASA, public domain"),
    ("hubble_deep_field.jpg", "galaxies.jpg", ("many galaxies in the dark night sky", "stars and galaxies in space"),
     "NASA, public domain"),
    ("camera.png", "cameraman.jpg", ("a man standing with a camera on a tripod", "a black and white photo of a photographer"),
     "Lav Varshney, CC0"),
    ("coins.png", "coins.jpg", ("old coins on a table", "rows of round metal coins"),
     "Greek coins from Pompeii, no known copyright restrictions"),
    ("horse.png", "horse.jpg", ("the black silhouette of a horse", "a horse drawn in black on white"),
     "public domain"),
)

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (240, 210, 30)}
SHAPES = ("circle", "square")
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15)}


def _skimage_data() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs scikit-image: pip install 'edge-xmr[demo]'")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _shape(colour: tuple[int, int, int], shape: str, bg: tuple[int, int, int]) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), bg)
    d = ImageDraw.Draw(img)
    box = (SIZE * 0.2, SIZE * 0.2, SIZE * 0.8, SIZE * 0.8)
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=colour)
    return img


def main(out: Path = OUT) -> None:
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    (out / "splits").mkdir()
    rows, credits = [], ["# Credits", "", "| file | source | licence |", "|---|---|---|"]
    src = _skimage_data()
    for source, name, caps, credit in PHOTOS:
        img = Image.open(src / source).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        img.save(out / "images" / name, quality=90)
        rows += [(name, c) for c in caps]
        credits.append(f"| {name} | scikit-image `{source}` | {credit} |")
    for cname, rgb in COLOURS.items():
        for shape in SHAPES:
            for bname, bg in BACKGROUNDS.items():
                name = f"{cname}_{shape}_on_{bname}.png"
                _shape(rgb, shape, bg).save(out / "images" / name)
                rows += [(name, f"a {cname} {shape} on a {bname} background"),
                         (name, f"a {cname} {'disc' if shape == 'circle' else 'box'} in front of {bname}")]
                credits.append(f"| {name} | drawn by make_data.py | CC0 |")
    names = sorted({r[0] for r in rows})
    with open(out / "captions.tsv", "w", encoding="utf-8") as f:
        f.write("image\tcaption\n")
        for name, cap in rows:
            f.write(f"{name}\t{cap}\n")
    (out / "splits" / "all.txt").write_text("\n".join(names) + "\n")
    (out / "splits" / "photos.txt").write_text("\n".join(sorted(p[1] for p in PHOTOS)) + "\n")
    (out / "CREDITS.md").write_text("\n".join(credits) + "\n")
    print(f"wrote {len(names)} images, {len(rows)} captions to {out}")


if __name__ == "__main__":
    import sys

    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
