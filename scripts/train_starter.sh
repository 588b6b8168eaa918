#!/usr/bin/env bash
# Reproduce the shipped starter model (ddasr_nipype/resources/models/ixi-t1w-x2) from the shared
# development data. Held-out test split, never used here: HR sub-trio; LR sub-IXI546, sub-IXI565,
# sub-IXI577, sub-IXI603, sub-IXI606. Three steps:
#   1. one GPU, about 5 minutes: the DSN and the residual generator (scripts/train_starter_gpu.py,
#      preset starter-gpu, variant `res`); the DSN and the SRN stages are time-limited;
#   2. CPU, about 13 minutes: fine-tune with Gaussian noise on every synthetic LR crop
#      (preset starter-finetune-noise);
#   3. CPU, about 13 minutes: fine-tune on non-local-means-denoised HR targets
#      (preset starter-finetune-denoise). Its bundle is what scripts/ship_starter.py packs.
#   usage: scripts/train_starter.sh [SHARED_DATA_DIR] [OUT_DIR] [STEP1_BUNDLE]
# With STEP1_BUNDLE (a bundle from step 1, e.g. trained on another machine) step 1 is skipped.
set -euo pipefail
data=${1:-../shared/data}
out=${2:-out/starter}
step1=${3:-}
python=${PYTHON:-.venv/bin/python}
train=${DDASR_TRAIN:-.venv/bin/ddasr-train}
held_out='^sub-IXI(546|565|577|603|606)$'
labels=(--hr-participant-label forrest --hr-participant-label otsu)
for d in "$data"/lr/sub-*; do
  label=$(basename "$d")
  [[ $label =~ $held_out ]] || labels+=(--lr-participant-label "$label")
done
if [[ -z $step1 ]]; then
  "$python" scripts/train_starter_gpu.py "$data" "$out/gpu" --pack "$out/gpu-pack" --variant res --device cuda
  step1=$out/gpu/runs/res/ixi-t1w-x2-res
fi
common=(--hr "$data/hr" --lr "$data/lr" "${labels[@]}" --dsn-from "$step1" --device auto --seed 0
        --allow-random-vgg19 --num-threads 1 --no-tensorboard)
"$train" "${common[@]}" --preset starter-finetune-noise --init-generator "$step1" \
  --out "$out/finetune-noise" --name ixi-t1w-x2-finetune-noise
"$train" "${common[@]}" --preset starter-finetune-denoise --init-generator "$out/finetune-noise" \
  --out "$out/ixi-t1w-x2" --name ixi-t1w-x2
echo "trained: $out/ixi-t1w-x2 (pack it with scripts/ship_starter.py $out/ixi-t1w-x2 --name ixi-t1w-x2)"
