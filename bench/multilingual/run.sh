#!/usr/bin/env bash
# Issue 15: distil the multilingual query encoder onto the default model, export it into a bundle and
# measure text -> image recall per language on the dev reporting half (bench/multilingual/README.md).
# Usage: bash bench/multilingual/run.sh [DATA] [WORK]   (WORK: scratch folder, outside the repository)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=$(cd "${1:-../shared/data/flickr8k}" && pwd)  # absolute: calib_images.txt lists paths relative to itself
WORK=${2:-/tmp/edge_xmr_multilingual}
VOCAB=${VOCAB:-32000}
X=".venv/bin/edge-xmr"
OUT=bench/multilingual
mkdir -p "$WORK"
head -201 "$DATA/splits/train.txt" | tail -200 | sed "s|^|$DATA/images/|" > "$WORK/calib_images.txt"
for v in full "$VOCAB"; do
  s="$WORK/student_$v"
  [[ -f "$s/multilingual.safetensors" ]] || nice -n 10 $X distil-multilingual --data "$DATA" --out "$s" \
      --cache "$WORK/cache" --dev-queries edge_xmr/train/dev_tune.txt --no-progress $([[ $v == full ]] || echo --vocab "$v")
  b="$WORK/bundle_$v"
  [[ -f "$b/manifest.json" ]] || nice -n 10 $X export --model default --out "$b" --precision fp32,int8 \
      --calib-images "$WORK/calib_images.txt" --calib-captions "$DATA/captions.tsv" --fusion off --no-mobile \
      --multilingual "$s" --overwrite --json-out "$WORK/export_$v.json" > /dev/null
done
ev() { nice -n 10 $X eval --model "$1" --data "$DATA" --split dev --queries-lang $OUT/dev_report_captions.tsv \
         --rerank 20 --routing "$2" --precision "$3" --json-out "$4"; }
ev "$WORK/bundle_full" auto fp32 $OUT/results_full_auto_fp32.json
ev "$WORK/bundle_full" auto int8 $OUT/results_full_auto_int8.json
ev "$WORK/bundle_full" never fp32 $OUT/results_full_never_fp32.json     # the English encoder for every language
ev "$WORK/bundle_full" always fp32 $OUT/results_full_always_fp32.json   # the multilingual encoder for every language
ev "$WORK/bundle_$VOCAB" auto int8 $OUT/results_vocab${VOCAB}_auto_int8.json
ev "$WORK/bundle_$VOCAB" auto fp32 $OUT/results_vocab${VOCAB}_auto_fp32.json
.venv/bin/python bench/multilingual/sizes.py "$WORK" "$VOCAB" > $OUT/sizes.json
# English must not lose: the standard dev evaluation (reporting half, all five captions per photo) with the
# router on and off
for r in auto never; do
  nice -n 10 $X eval --model "$WORK/bundle_full" --data "$DATA" --split dev --queries edge_xmr/train/dev_report.txt \
      --skip-cross-all --rerank 20 --routing $r --json-out $OUT/results_full_english_$r.json
done
# a variant: only the head trained (the base's DNN frozen at its pretrained weights)
s="$WORK/student_headonly"; b="$WORK/bundle_headonly"
[[ -f "$s/multilingual.safetensors" ]] || nice -n 10 $X distil-multilingual --data "$DATA" --out "$s" \
    --cache "$WORK/cache" --dev-queries edge_xmr/train/dev_tune.txt --no-progress --lr-base 0
[[ -f "$b/manifest.json" ]] || nice -n 10 $X export --model default --out "$b" --precision fp32 \
    --calib-images "$WORK/calib_images.txt" --calib-captions "$DATA/captions.tsv" --fusion off --no-mobile \
    --multilingual "$s" --overwrite > /dev/null
ev "$b" auto fp32 $OUT/results_headonly_auto_fp32.json
# with parallel pairs: 9000 translated TRAINING captions: 1500 each in de, es, zh, 1000 each in fr, ja, ru, 500 each in it, pt, ko
# (train_parallel.tsv, README.md), each seen 4 times per epoch next to the 30k English captions
s="$WORK/student_parallel"; b="$WORK/bundle_parallel"
[[ -f "$s/multilingual.safetensors" ]] || nice -n 10 $X distil-multilingual --data "$DATA" --out "$s" \
    --cache "$WORK/cache" --dev-queries edge_xmr/train/dev_tune.txt --no-progress --parallel $OUT/train_parallel.tsv
[[ -f "$b/manifest.json" ]] || nice -n 10 $X export --model default --out "$b" --precision fp32,int8 \
    --calib-images "$WORK/calib_images.txt" --calib-captions "$DATA/captions.tsv" --fusion off --no-mobile \
    --multilingual "$s" --overwrite --json-out "$WORK/export_parallel.json" > /dev/null
ev "$b" auto fp32 $OUT/results_parallel_auto_fp32.json
ev "$b" auto int8 $OUT/results_parallel_auto_int8.json
nice -n 10 $X eval --model "$b" --data "$DATA" --split dev --queries edge_xmr/train/dev_report.txt \
    --skip-cross-all --rerank 20 --routing auto --json-out $OUT/results_parallel_english_auto.json
