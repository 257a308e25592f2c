"""Which test-time views of a photo help retrieval (Flickr8k dev, t2i R@1 over every dev caption).

    python bench/bench_views.py --model default --data ../shared/data/flickr8k

Encodes every dev photo once per view (the photo, its mirror image, bicubic enlargements of the
224-pixel input, mirrored or not: ``ModelConfig.views``) with the model's weights, then scores sets of
views averaged as the model would average them. Per set: bi-encoder R@1, the share of captions whose photo
is in the top 20, and rerank@20 R@1 with cosine + late interaction - hubness (the joint pass is left out:
it needs a text-block pass per candidate, and added nothing on top of these terms in
bench/rerank_terms.py). The weights of late interaction and hubness are chosen on dev by grid search; the
held-out column chooses them on the captions of half the photos and measures the other half, both ways,
averaged over 10 random halvings. Relative image-encoder cost: pixels per photo over one 224 view.
Writes bench/results/views.json. Torch model, CPU; about 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

VIEWS = {"224": (224, False), "224m": (224, True), "288m": (288, True), "320": (320, False),
         "320m": (320, True), "352m": (352, True), "384m": (384, True)}
SETS = ["224", "224+224m", "224+288m", "224+320m", "224+320", "224+352m", "224+384m", "224+224m+320+320m"]
LI = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
HUB = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default="../shared/data/flickr8k")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--json", default="bench/results/views.json")
    args = ap.parse_args()
    from edge_xmr.data import read_captions
    from edge_xmr.model import bases

    torch.set_num_threads(2)
    m = bases.load(bases.resolve(args.model)).eval()
    data = read_captions(args.data, args.split)
    paths = data.image_paths()
    target = np.array(data.caption_image)
    c = m.cross
    scale, temp = float(c.log_scale.detach().exp()), m.cfg.score.hubness_temperature
    chunks = []  # per 250 captions: (embeddings, late-interaction text tokens, mask)
    with torch.no_grad():
        for i in range(0, len(data.captions), 250):
            ids, mask = m._tokens(list(data.captions[i:i + 250]))
            t, states = m.text_upper(m.text_lower(ids, mask), mask)
            chunks.append((t, c.text_tokens(states[-1]), mask))
        temb = torch.cat([t for t, _, _ in chunks])

    enc: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    seconds: dict[str, float] = {}
    for name, view in VIEWS.items():
        m.cfg = replace(m.cfg, views=(view,) if view != (m.cfg.image.size, False) else ())
        t0 = time.perf_counter()
        e, tok = m.encode_images(paths, batch_size=50)
        seconds[name] = time.perf_counter() - t0
        enc[name] = torch.from_numpy(e), torch.from_numpy(tok)
        print(f"encoded view {name}: {seconds[name]:.0f} s", flush=True)

    rng = np.random.default_rng(0)
    halves = [np.isin(target, rng.permutation(len(data.images))[: len(data.images) // 2]) for _ in range(10)]
    rows = {}
    for s in SETS:
        names = s.split("+")
        e = torch.nn.functional.normalize(sum(enc[n][0] for n in names), dim=-1)  # as views.average_views
        tok = torch.stack([enc[n][1] for n in names]).mean(0)
        with torch.no_grad():
            cos = temb @ e.T  # (Q, N)
            top = cos.argsort(1, descending=True)[:, :20]
            cos_part = scale * torch.gather(cos, 1, top)
            li, start = [], 0
            for _, t_tok, mask in chunks:  # the model's own late interaction over each caption's top 20
                li.append(c.late_interaction(t_tok, mask, tok[top[start:start + len(mask)]]))
                start += len(mask)
            li = torch.cat(li)  # (Q, 20)
            hub = torch.logsumexp(temp * e @ c.text_bank.T, -1)
            hub = torch.maximum(hub, torch.quantile(hub, 0.05))[top]  # floored at the 5th percentile
        top_n = top.numpy()
        hits = {}
        for lw in LI:
            for b in HUB:
                pick = (cos_part + lw * scale * li - b * hub).argmax(1).numpy()
                hits[(lw, b)] = top_n[np.arange(len(top_n)), pick] == target
        full = {w: float(h.mean() * 100) for w, h in hits.items()}
        best = max(full, key=full.get)
        held = []
        for half in halves:
            parts = [half, ~half]
            got = [hits[max(hits, key=lambda w: hits[w][a].mean())][b] for a, b in (parts, parts[::-1])]
            held.append(float(np.concatenate(got).mean() * 100))
        cost = sum((VIEWS[n][0] / 224) ** 2 for n in names)
        rows[s] = {"bi_R@1": float((top_n[:, 0] == target).mean() * 100),
                   "in_top20": float((top_n == target[:, None]).any(1).mean() * 100),
                   "rerank20_R@1": full[best], "rerank20_R@1_heldout": float(np.mean(held)),
                   "li_weight": best[0], "beta_image": best[1], "relative_cost": cost,
                   "encode_s": sum(seconds[n] for n in names)}
    print(f"{'views':22s} {'cost':>5s} {'bi R@1':>7s} {'in top20':>8s} {'rr20 R@1':>8s} {'held out':>8s} {'encode s':>8s}")
    for s, r in rows.items():
        print(f"{s:22s} {r['relative_cost']:5.2f} {r['bi_R@1']:7.2f} {r['in_top20']:8.2f} {r['rerank20_R@1']:8.2f} "
              f"{r['rerank20_R@1_heldout']:8.2f} {r['encode_s']:8.0f}")
    out = {"model": m.cfg.name, "split": args.split, "n_images": len(data.images), "n_captions": len(data.captions),
           "note": "rerank = cosine + late interaction - hubness (no joint pass); weights chosen on dev",
           "views": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
