#!/usr/bin/env bash
# Reproduces the embedded default model (edge_xmr/assets/default_model) from its training recipe.
# Needs ../shared/data/flickr8k (research-use data, never copied into the repo) and the [train] extra.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/flickr8k}
OUT=${OUT:-runs/default}
export HF_HUB_OFFLINE=1
edge-xmr train --data "$DATA" --split train --eval-split dev --base lite --out "$OUT" \
  --epochs 8 --ce-queries 16 --ce-epochs 1 --li-loss 1.0 --class-distill 0.5 --crop-views 0 \
  --tower-blocks 3 --lr-tower 1e-4
# born-again self-distillation: a student of the teacher's own shape (all 6 text blocks trainable) learns from
# the teacher above; 10 epochs, about 33 minutes on 2 cores (docs/model.md)
edge-xmr distill --teacher "$OUT" --data "$DATA" --split train --eval-split dev --student lite-full \
  --out "${OUT}_sd" --epochs 10
# WiSE-FT: average the teacher's and the distilled student's weights (0.5 each), encode each photo as the
# average of two views (the photo, and its mirror image enlarged to 320 pixels), then recalibrate on dev
# (hubness bank of 4096 training captions); the average keeps the teacher's behaviour on photos unlike
# Flickr8k (docs/model.md)
edge-xmr calibrate --model "${OUT}_sd" --mix "$OUT" --alpha 0.5 --views 224,320m --data "$DATA" \
  --out "${OUT}_wise"
python - "${OUT}_wise" <<'PY'
import sys
from edge_xmr.model import bases
bases.save(bases.load(sys.argv[1]), bases.default_model_dir(), half=True)  # compact form (4-bit deltas)
PY
rm -f edge_xmr/assets/default_model/tokenizer.json  # the base package ships it
du -sh edge_xmr/assets/default_model
