"""Which terms of the cross-encoder score make rerank@20 add (Flickr8k dev, t2i R@1).

    python bench/rerank_terms.py --model default --data ../shared/data/flickr8k [--max-queries 1000]

Scores the bi-encoder's top 20 of each sampled dev caption with every subset of the score's terms
(bi-encoder cosine always; late interaction, joint pass, hubness at their calibrated weights) and
writes bench/results/rerank_terms.json. Torch model, CPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default="../shared/data/flickr8k")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--max-queries", type=int, default=1000)
    ap.add_argument("--json", default="bench/results/rerank_terms.json")
    args = ap.parse_args()
    from edge_xmr.data import read_captions
    from edge_xmr.model import bases

    m = bases.load(bases.resolve(args.model)).eval()
    data = read_captions(args.data, args.split)
    rng = np.random.default_rng(0)
    q = np.sort(rng.choice(len(data.captions), min(args.max_queries, len(data.captions)), replace=False))
    texts = [data.captions[c] for c in q]
    target = np.array([data.caption_image[c] for c in q])
    iemb, itok = m.encode_images(data.image_paths())
    iemb_t, itok_t = torch.from_numpy(iemb), torch.from_numpy(itok)
    with torch.no_grad():
        ids, mask = m._tokens(texts)
        temb, states = m.text_upper(m.text_lower(ids, mask), mask)
        top = (temb @ iemb_t.T).argsort(dim=1, descending=True)[:, :20]
        c = m.cross
        w = {"li": float(c.li_weight), "joint": float(c.res_weight), "hub_image": float(c.hub[0])}
        terms = {"cos": float(c.log_scale.exp()) * (temb[:, None] * iemb_t[top]).sum(-1)}
        terms["li"] = w["li"] * c.late_interaction(c.text_tokens(states[-1]), mask, itok_t[top])
        c.li_weight.fill_(0.0)
        c.hub.copy_(torch.tensor([0.0, 0.0, float(c.hub[2])]))
        c.res_weight.fill_(w["joint"])
        with_joint = m.cross_logits(states, mask, temb, itok_t[top], iemb_t[top])
        terms["joint"] = with_joint - terms["cos"]
        raw = torch.logsumexp(float(c.hub[2]) * iemb_t @ c.text_bank.T, dim=-1)
        terms["hub_image"] = -w["hub_image"] * raw.clamp(min=float(c.hub_floor[0]))[top]
        unfloored = -w["hub_image"] * raw[top]  # the correction without its floor (docs/model.md)
    rows = {}
    extra = ["li", "joint", "hub_image"]
    for r in range(len(extra) + 1):
        for combo in itertools.combinations(extra, r):
            s = terms["cos"] + sum((terms[t] for t in combo), torch.zeros_like(terms["cos"]))
            pick = top[torch.arange(len(top)), s.argmax(1)].numpy()
            rows["cos" + "".join(f" + {t}" for t in combo)] = round(float((pick == target).mean() * 100), 2)
    s = terms["cos"] + terms["li"] + terms["joint"] + unfloored
    pick = top[torch.arange(len(top)), s.argmax(1)].numpy()
    rows["all, hubness without its floor"] = round(float((pick == target).mean() * 100), 2)
    w["hub_floor_image"] = float(c.hub_floor[0])
    out = {"model": str(args.model), "queries": len(q), "weights": w, "t2i_R@1_rerank20": rows,
           "bi_encoder_t2i_R@1": round(float((top[:, 0].numpy() == target).mean() * 100), 2)}
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"{'terms':35s} t2i R@1")
    for k, v in rows.items():
        print(f"{k:35s} {v:6.2f}")


if __name__ == "__main__":
    main()
