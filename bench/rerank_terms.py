"""Which terms of the rerank score earn their place, measured honestly (Flickr8k dev, rerank@20 R@1).

    python bench/rerank_terms.py --model default --data ../shared/data/flickr8k \
        [--json bench/results/rerank_terms_report.json] [--write-config edge_xmr/assets/default_model]

Dev is split by photo into the committed tuning and reporting halves (``edge_xmr/train/dev_tune.txt``,
``dev_report.txt``). Every dev caption is a text -> photo query over all 1000 dev photos, every dev
photo an image -> text query over all 5000 captions; the terms of each query's bi-encoder top 20 are
computed once (the model's own banks; the hubness floors at the 5th percentile of the TUNING half).
The weights are chosen on the tuning half only (``edge_xmr.train.calibrate.choose_score``: the best
score without the joint pass, the best with it, and the chosen one: the joint pass only if it adds
>= 1.0 R@1 there), then the reporting half is scored once with each. The JSON also has R@1 of every
subset of the terms at the with-joint weights, on both halves, and the model's shipped weights.
``--write-config DIR`` writes the chosen ScoreConfig into DIR/config.json (nothing else changes).
Torch model, CPU; dev tower features cached (EDGE_XMR_CACHE).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

EXTRA = ("late_interaction", "joint", "photo_hubness")  # the terms added to the cosine


def subsets(rs, cfg) -> dict[str, float]:
    """R@1 of the cosine plus every subset of EXTRA, each term at its weight in ``cfg`` (others 0)."""
    from edge_xmr.train.calibrate import recall_at_1

    out = {}
    for r in range(len(EXTRA) + 1):
        for combo in itertools.combinations(EXTRA, r):
            w = {t: (getattr(cfg, t) if t in combo else 0.0) for t in EXTRA}
            out["cosine" + "".join(f" + {t}" for t in combo)] = round(recall_at_1(rs, replace(cfg, **w)), 2)
    return out


def spread(rs, cfg) -> dict[str, float]:
    """Mean over queries of the std, within the query's top 20, of each weighted term."""
    return {t: round(float(np.mean(np.std(abs(cfg.weight(t)) * rs.terms[t], axis=1))), 4)
            for t in ("cosine", *EXTRA)}


def _rounded(x):
    """R@1 figures to 2 decimals (score weights are kept exact: they are the config)."""
    if isinstance(x, dict):
        return {k: (v if k in ("score", "without_joint", "with_joint", "shipped_score") and isinstance(v, dict)
                    and "cosine" in v else _rounded(v)) for k, v in x.items()}
    return round(x, 2) if isinstance(x, float) else x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default="../shared/data/flickr8k")
    ap.add_argument("--json", default="bench/results/rerank_terms_report.json")
    ap.add_argument("--min-joint-gain", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write-config", default=None, metavar="DIR",
                    help="write the chosen score into DIR/config.json (DIR: the model directory measured)")
    args = ap.parse_args()
    import torch

    from edge_xmr.data import read_captions
    from edge_xmr.model import bases
    from edge_xmr.train.calibrate import choose_score, recall_at_1
    from edge_xmr.train.loop import Trainer
    from edge_xmr.train_config import TrainConfig

    torch.set_num_threads(args.threads)
    t0 = time.time()
    m = bases.load(bases.resolve(args.model)).eval()
    shipped = m.cfg.score
    train, dev = read_captions(args.data, "train"), read_captions(args.data, "dev")
    trainer = Trainer(m, train, dev, Path("/nonexistent"), TrainConfig(class_distill=0.0), progress=False)
    trainer.load_dev_features()
    sets, figures = trainer.dev_sets(shipped.hubness_temperature, shipped.cosine)
    base = m.cfg.score  # unweighted: the cosine weight, temperature and the tuning half's floors
    choice = choose_score(sets["t2i"][0], base, sets["i2t"][0], args.min_joint_gain)
    shipped_here = replace(shipped, photo_hubness_floor=base.photo_hubness_floor,
                           text_hubness_floor=base.text_hubness_floor)
    halves = {}
    for h, name in enumerate(("tuning", "reporting")):
        t2i, i2t = sets["t2i"][h], sets["i2t"][h]
        halves[name] = {
            **figures[name],
            "t2i_rerank20_R@1": {"chosen": recall_at_1(t2i, choice.score), "without_joint": recall_at_1(t2i, choice.plain),
                                 "with_joint": recall_at_1(t2i, choice.with_joint),
                                 "shipped_weights (chosen on all of dev)": recall_at_1(t2i, shipped_here)},
            "i2t_rerank20_R@1": {"chosen": recall_at_1(i2t, choice.score), "without_joint": recall_at_1(i2t, choice.plain),
                                 "with_joint": recall_at_1(i2t, choice.with_joint),
                                 "shipped_weights (chosen on all of dev)": recall_at_1(i2t, shipped_here)},
            "t2i_term_subsets_at_with_joint_weights": subsets(t2i, choice.with_joint),
            "t2i_weighted_term_std_in_top20": spread(t2i, choice.with_joint),
        }
    rep = halves["reporting"]["t2i_rerank20_R@1"]
    out = {
        "command": "python bench/rerank_terms.py --model " + str(args.model) + " --data " + str(args.data)
                   + (f" --write-config {args.write_config}" if args.write_config else ""),
        "model": str(args.model), "split": "dev, by photo: edge_xmr/train/dev_tune.txt / dev_report.txt",
        "gallery": "all 1000 dev photos (t2i) / all 5000 dev captions (i2t); queries of one half each",
        "rerank_k": 20, "min_joint_gain": args.min_joint_gain,
        "chosen_on_tuning_half": {"score": choice.score.to_dict(), "without_joint": choice.plain.to_dict(),
                                  "with_joint": choice.with_joint.to_dict() if choice.with_joint else None,
                                  "tuning_t2i_R@1": choice.tune_t2i, "tuning_i2t_R@1": choice.tune_i2t},
        "shipped_score": shipped.to_dict(),
        "joint_pass_gain_on_reporting_half": round(rep["with_joint"] - rep["without_joint"], 2),
        "halves": halves, "minutes": round((time.time() - t0) / 60, 1),
    }
    Path(args.json).write_text(json.dumps(_rounded(out), indent=1) + "\n")
    if args.write_config:
        d = Path(args.write_config)
        cfg = json.loads((d / "config.json").read_text())
        cfg["score"] = choice.score.to_dict()
        (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for name, h in halves.items():
        print(f"{name} half: {h['t2i_queries']} t2i / {h['i2t_queries']} i2t queries, bi t2i R@1 {h['t2i_bi_R@1']:.2f}, "
              f"right photo in top 20 {h['t2i_in_top20']:.2f}, bi i2t R@1 {h['i2t_bi_R@1']:.2f}")
        print(f"  {'score':40s} {'t2i R@1':>8s} {'i2t R@1':>8s}")
        for k in h["t2i_rerank20_R@1"]:
            print(f"  {k:40s} {h['t2i_rerank20_R@1'][k]:8.2f} {h['i2t_rerank20_R@1'][k]:8.2f}")
        for k, v in h["t2i_term_subsets_at_with_joint_weights"].items():
            print(f"  {k:40s} {v:8.2f}")
    print(f"joint pass on the reporting half: {out['joint_pass_gain_on_reporting_half']:+.2f} t2i R@1; "
          f"chosen score {json.dumps(choice.score.to_dict())}")


if __name__ == "__main__":
    main()
