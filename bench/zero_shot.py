"""Zero-shot labelling and library-adaptive statistics: Flickr8k dev next to photos unlike Flickr8k.

    python bench/zero_shot.py --model default --data ../shared/data/flickr8k [--json bench/results/zero_shot.json]

Every score here is the bi-encoder cosine made comparable across texts by the library's own photos
(``score.LibraryMoments.normalized``: ``none``, ``center`` = minus the text's mean cosine over the
library, ``zscore`` = also over its std), the statistic ``Library.classify`` uses.

1. Flickr8k dev, zero-shot labels (torch model, cached tower features). A fixed label list (LABELS,
   written before any run); a dev photo has a label when at least 3 of its 5 captions name it (word,
   plural too) and no other label qualifies; the text is "a photo of a <label>."; the library is all
   1000 dev photos. Accuracy and class-averaged accuracy per half; the normalisation is chosen on the
   TUNING half and read once on the reporting half. Also image -> text bi-encoder R@1 (a photo against
   all 5000 captions, each caption normalised over the library) and text -> image R@1 with a
   library-side prior (cosine − α · e·μ: how close a photo is to the library's mean photo).
2. Photos unlike Flickr8k: the photographs that ship inside the scikit-image wheel (no download;
   SKIMAGE_SET, one label each), indexed with the runtime (the exported default bundle, int8 store)
   into a fresh library; ``Library.classify`` with each normalisation (accuracy), each label as a
   text -> photo query (R@1, rerank 0 and 20, first-stage prior on and off), and the demo's 6
   queries over its 8 photos (how many put the expected photo first, prior on and off). Nothing is
   tuned on this set.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

LABELS = ("dog", "cat", "horse", "bicycle", "beach", "snow", "water", "car", "ball", "mountain", "street",
          "grass", "boat", "baby", "bird", "guitar")
PROMPT = "a photo of a {}."
MIN_CAPTIONS = 3
NORMS = ("none", "center", "zscore")
ALPHAS = (0.0, 0.25, 0.5, 1.0)
# (file inside skimage/data, label): the wheel's photographs of things (scans, charts and drawings left out)
SKIMAGE_SET = (
    ("astronaut.png", "astronaut"), ("brick.png", "brick wall"), ("camera.png", "man with a camera"),
    ("chelsea.png", "cat"), ("clock_motion.png", "clock"), ("coffee.png", "cup of coffee"),
    ("coins.png", "pile of old coins"), ("grass.png", "grass"), ("gravel.png", "gravel"),
    ("hubble_deep_field.jpg", "galaxies in the night sky"), ("moon.png", "moon"),
    ("motorcycle_left.png", "motorcycle"), ("page.png", "page of printed text"), ("rocket.jpg", "rocket launch"),
)


def _pct(x) -> float:
    x = np.asarray(x, bool)
    return round(float(x.mean()) * 100, 2) if x.size else 0.0


def label_accuracy(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    return {"accuracy": _pct(pred == gt),
            "class_averaged": round(float(np.mean([np.mean(pred[gt == c] == c) for c in np.unique(gt)])) * 100, 2),
            "majority_label": _pct(gt == np.bincount(gt).argmax())}


def dev_labels(captions, owner: np.ndarray, n_images: int) -> np.ndarray:
    """(I,) label index of each dev photo (-1: none or several): >= MIN_CAPTIONS captions name exactly one."""
    pats = [re.compile(rf"\b{lab}(s|es)?\b") for lab in LABELS]
    count = np.zeros((n_images, len(LABELS)), np.int64)
    for c, o in zip(captions, owner):
        for j, p in enumerate(pats):
            count[o, j] += bool(p.search(c.lower()))
    has = count >= MIN_CAPTIONS
    return np.where(has.sum(1) == 1, has.argmax(1), -1)


def flickr_dev(model: str, data: str, threads: int) -> dict:
    from dev_outputs import load_dev

    from edge_xmr.score import LibraryMoments
    from edge_xmr.train.calibrate import dev_halves

    d = load_dev(model, data, threads)
    dev, iemb, temb = d.dev, d.iemb.numpy(), d.temb.numpy()
    lemb = d.model.embed_texts([PROMPT.format(lab) for lab in LABELS])
    owner = np.asarray(dev.caption_image)
    lib = LibraryMoments.of(iemb)  # the library: every dev photo
    gt = dev_labels(dev.captions, owner, len(dev.images))
    label_scores = {n: lib.normalized(lemb, iemb, n) for n in NORMS}  # (L, I)
    cap_scores = {n: lib.normalized(temb, iemb, n) for n in NORMS}  # (C, I)
    prox = iemb @ lib.mean.astype(np.float32)  # each photo's cosine with the library's mean photo
    out: dict = {"labels": list(LABELS), "prompt": PROMPT, "min_captions": MIN_CAPTIONS, "library_photos": len(iemb)}
    for name, imgs in zip(("tuning", "reporting"), dev_halves(dev.images)):
        sel = imgs[gt[imgs] >= 0]
        caps = np.flatnonzero(np.isin(owner, imgs))
        out[name] = {
            "labelled_photos": int(len(sel)),
            "label_accuracy": {n: label_accuracy(s[:, sel].argmax(0), gt[sel]) for n, s in label_scores.items()},
            "i2t_bi_R@1": {n: _pct(owner[s[:, imgs].argmax(0)] == imgs) for n, s in cap_scores.items()},
            "t2i_bi_R@1_library_prior": {f"alpha={a}": _pct((cap_scores["none"][caps] - a * prox).argmax(1)
                                                           == owner[caps]) for a in ALPHAS},
        }
    tuned = out["tuning"]["label_accuracy"]
    out["normalization_chosen_on_tuning_half"] = max(NORMS, key=lambda n: (tuned[n]["accuracy"], -NORMS.index(n)))
    return out


def skimage_set(bundle_dir: Path | None) -> dict:
    from edge_xmr import demo
    from edge_xmr.index import Library

    src = demo.skimage_data_dir()
    bundle = str(bundle_dir) if bundle_dir else str(demo.default_bundle())
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        for f, lab in SKIMAGE_SET:
            (photos / (lab.replace(" ", "_") + Path(f).suffix)).write_bytes((src / f).read_bytes())
        demo_photos = demo.sample_photos(Path(tmp) / "demo")
        labels = [lab for _, lab in SKIMAGE_SET]
        out: dict = {"photos": [f for f, _ in SKIMAGE_SET], "labels": labels, "prompt": PROMPT}
        with Library.open(Path(tmp) / "z.db", bundle) as lib:
            lib.index(photos)
            texts = [PROMPT.format(lab) for lab in labels]
            truth = {lib.photo_id(photos / (lab.replace(" ", "_") + Path(f).suffix)): i
                     for i, (f, lab) in enumerate(SKIMAGE_SET)}
            out["label_accuracy"] = {}
            for n in NORMS:
                hits = lib.classify(texts, normalize=n)
                out["label_accuracy"][n] = _pct([truth[h.photo_id] == h.index for h in hits])
            shipped = lib.bundle.score_config
            prox = lib.store.embeddings(lib.store.all_ids()) @ lib.store.moments().mean.astype(np.float32)
            out["t2i"] = {}
            for prior in (0.0, shipped.first_stage_prior):
                lib.bundle.score_config = replace(shipped, first_stage_prior=prior)
                for rr in (0, 20):
                    r1 = [truth.get(lib.search(t, k=1, rerank=rr)[0].photo_id) == i for i, t in enumerate(texts)]
                    out["t2i"][f"first_stage_prior={prior} rerank={rr} R@1"] = _pct(r1)
            lib.bundle.score_config = shipped
            ids = np.asarray(lib.store.all_ids())
            q = lib.bundle.embed_texts(texts)
            e = lib.store.embeddings(ids.tolist())
            out["t2i_bi_R@1_library_prior"] = {f"alpha={a}": _pct([truth[int(ids[np.argmax(q[i] @ e.T - a * prox)])] == i
                                                                   for i in range(len(texts))]) for a in ALPHAS}
        with Library.open(Path(tmp) / "d.db", bundle) as lib:
            lib.index(demo_photos)
            shipped = lib.bundle.score_config
            out["demo_queries"] = {}
            for prior in (0.0, shipped.first_stage_prior):
                lib.bundle.score_config = replace(shipped, first_stage_prior=prior)
                found = [Path(lib.search(q.text, k=1)[0].path).name == q.expect for q in demo.SAMPLE_QUERIES]
                out["demo_queries"][f"first_stage_prior={prior}"] = f"{sum(found)} of {len(found)}"
            lib.bundle.score_config = shipped
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default="../shared/data/flickr8k")
    ap.add_argument("--bundle", default=None, help="an exported bundle (default: the demo's export of the default)")
    ap.add_argument("--json", default="bench/results/zero_shot.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-flickr", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    out = {"command": f"python bench/zero_shot.py --model {args.model} --data {args.data}"
                      + (f" --bundle {args.bundle}" if args.bundle else "")}
    if not args.skip_flickr:
        out["flickr8k_dev"] = flickr_dev(args.model, args.data, args.threads)
    out["skimage_photos"] = skimage_set(Path(args.bundle) if args.bundle else None)
    out["minutes"] = round((time.time() - t0) / 60, 1)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
