#!/usr/bin/env bash
# The matched short comparison of docs/model.md "The Lite2 tower": the same recipe and schedule for the
# Lite0 (--base lite, 224 px) and Lite2 (--base lite2, 260 px) towers, nothing else different, then one
# evaluation of both on dev's reporting half + bundle size + image-encoder cost (bench/lite2_vs_lite0.py).
# Short (3 epochs, no cross-encoder stage, no self-distillation / WiSE / views): it fits a shared 2-core
# machine in about an hour with both runs side by side at 1 thread each. Needs ../shared/data/flickr8k.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/flickr8k}
export HF_HUB_OFFLINE=1
mkdir -p runs
train() {
  edge-xmr train --data "$DATA" --split train --eval-split dev --base "$1" --out "runs/short_$1" --epochs 3 \
    --ce-queries 16 --ce-epochs 0 --li-loss 1.0 --class-distill 0.5 --crop-views 0 --tower-blocks 3 \
    --lr-tower 1e-4 --threads 1 --no-progress
}
train lite > runs/short_lite.log 2>&1 &
train lite2 > runs/short_lite2.log 2>&1 &
wait
python bench/lite2_vs_lite0.py --models runs/short_lite runs/short_lite2 --data "$DATA" \
  --train-commands "$(declare -f train | tr -s ' \n' ' ')"
