#!/usr/bin/env bash
# Reproduce the shipped starter model (ddasr_nipype/resources/models/ixi-t1w-x2) from the shared
# development data. Held-out test split, never used here: HR sub-trio; LR sub-IXI546, sub-IXI565,
# sub-IXI577, sub-IXI603, sub-IXI606.
#   usage: scripts/train_starter.sh [SHARED_DATA_DIR] [OUT_DIR]
set -euo pipefail
data=${1:-../shared/data}
out=${2:-out/starter/ixi-t1w-x2}
held_out='^sub-IXI(546|565|577|603|606)$'
lr_labels=()
for d in "$data"/lr/sub-*; do
  label=$(basename "$d")
  [[ $label =~ $held_out ]] || lr_labels+=(--lr-participant-label "$label")
done
exec "${DDASR_TRAIN:-.venv/bin/ddasr-train}" \
  --hr "$data/hr" --lr "$data/lr" --out "$out" \
  --hr-participant-label forrest --hr-participant-label otsu \
  "${lr_labels[@]}" \
  --preset starter --device auto --seed 0 --allow-random-vgg19 --num-threads 2 \
  --name ixi-t1w-x2 "${@:3}"
