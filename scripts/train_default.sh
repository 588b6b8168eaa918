#!/usr/bin/env bash
# Train the default generator t1w-x2 on CPU (its MODEL_CARD.md gives the figures), in three stages:
#   1. preset t1w-x2-cpu (blind, L1, physically grounded LR synthesis), stopped at iteration 4000 of its
#      8000-iteration schedule (--srn-stop-at 4000) -> OUT/t1w-x2-stage1;
#   2. preset t1w-x2-nl-cpu: stage 1 fine-tuned with a noise-level input, 3000 iterations -> OUT/t1w-x2-stage2;
#   3. the learned noise-level estimator (scripts/train_noise_estimator.py on stage 2's pairs, 3000
#      iterations, ~4 min) -> out/ln/noise-estimator.pt (where preset t1w-x2-ln-cpu reads it), then preset
#      t1w-x2-ln-cpu: stage 2 fine-tuned told the added noise level, stopped at iteration 1500 of its
#      4000-iteration schedule (--srn-stop-at 1500), bf16, seed 10 (stages 1-2: seed 0) -> OUT/t1w-x2.
#   usage: scripts/train_default.sh [SHARED_DATA_DIR] [OUT_DIR] [extra ddasr-train options...]
# HR training set: scripts/hr_training_set.sh (every HR subject but the held-out sub-trio and sub-vxm).
# About 2 h (stage 1) + 1.4 h (stage 2) + 0.3 h (stage 3, bfloat16 on a CPU with AVX512-BF16) on one
# CPU thread each. Resumable: the same command with --resume
# continues from the last checkpoint of the stage that was running (SIGTERM exits 75); a finished stage 1
# or 2 is not trained again.
set -euo pipefail
data=${1:-../shared/data}
out=${2:-out/default}
shift $(( $# > 2 ? 2 : $# ))
hr=$(scripts/hr_training_set.sh "$data" "$out/hr-all")
train=${DDASR_TRAIN:-.venv/bin/ddasr-train}
common=(--hr "$hr" --degradation mri --device cpu --allow-random-vgg19 --num-threads 1 --no-tensorboard)
if [[ ! -f $out/t1w-x2-stage1/manifest.json ]]; then
  "$train" "${common[@]}" --seed 0 --preset t1w-x2-cpu --srn-stop-at 4000 --out "$out/t1w-x2-stage1" \
    --name t1w-x2-stage1 "$@"
fi
if [[ ! -f $out/t1w-x2-stage2/manifest.json ]]; then
  "$train" "${common[@]}" --seed 0 --preset t1w-x2-nl-cpu --init-generator "$out/t1w-x2-stage1" \
    --out "$out/t1w-x2-stage2" --name t1w-x2-stage2 "$@"
fi
if [[ ! -f out/ln/noise-estimator.pt ]]; then
  "${PYTHON:-.venv/bin/python}" scripts/train_noise_estimator.py "$out/t1w-x2-stage2.work/pairs/pairs.npz" \
    out/ln/noise-estimator.pt
fi
exec "$train" "${common[@]}" --seed 10 --preset t1w-x2-ln-cpu --precision bf16 --srn-stop-at 1500 \
  --init-generator "$out/t1w-x2-stage2" --out "$out/t1w-x2" --name t1w-x2 "$@"
