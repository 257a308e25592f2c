#!/usr/bin/env bash
# The accuracy gate on the CI sample set: export MODEL (fp32 + dynamic int8), optionally a CANDIDATE
# bundle, and run `edge-xmr check`. Exit status: that of the gate (0 pass, 1 metric dropped too much,
# 2 usage / input error). Reports: $OUT/gate.json and $OUT/gate.md (the pull-request comment).
#
#   MODEL=default bash samples/ci/gate.sh                         # int8 graphs vs fp32 of one model
#   CANDIDATE=path/to/student_bundle MAX_DROP=2 bash samples/ci/gate.sh   # another bundle vs MODEL fp32
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
DATA="${DATA:-$HERE/data}"
SPLIT="${SPLIT:-all}"
MODEL="${MODEL:-default}"
OUT="${OUT:-build/ci-gate}"
METRIC="${METRIC:-rerank@20.t2i.R@1}"
MAX_DROP="${MAX_DROP:-2.1}"  # one query of the 48 CI captions (2.08 points); 0.5 is checked on Flickr8k dev
CANDIDATE="${CANDIDATE:-}"
CANDIDATE_PRECISION="${CANDIDATE_PRECISION:-}"  # default: int8 of MODEL's bundle; fp32 of a CANDIDATE bundle
mkdir -p "$OUT"
if [[ "$DATA" == "$HERE/data" && ! -f "$DATA/captions.tsv" ]]; then
  python "$HERE/make_data.py"   # the CI set is generated (scikit-image photos + drawn shapes), not committed
fi

if [[ ! -f "$OUT/reference/manifest.json" ]]; then
  edge-xmr export --model "$MODEL" --out "$OUT/reference" --precision fp32,int8 --no-mobile --overwrite \
    --calib-images "$DATA/images" --calib-captions "$DATA/captions.tsv" --json-out "$OUT/export.json"
fi
if [[ -z "$CANDIDATE" ]]; then
  CANDIDATE="$OUT/reference"            # the int8 graphs of the same bundle
  CANDIDATE_PRECISION="${CANDIDATE_PRECISION:-int8}"
else
  CANDIDATE_PRECISION="${CANDIDATE_PRECISION:-fp32}"
fi
edge-xmr check --reference "$OUT/reference" --candidate "$CANDIDATE" --candidate-precision "$CANDIDATE_PRECISION" \
  --data "$DATA" --split "$SPLIT" --metric "$METRIC" --max-drop "$MAX_DROP" \
  --json-out "$OUT/gate.json" --markdown "$OUT/gate.md"
