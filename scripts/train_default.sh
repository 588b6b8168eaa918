#!/usr/bin/env bash
# Train the default generator t1w-x2 on CPU (preset t1w-x2-cpu; its MODEL_CARD.md gives the figures).
#   usage: scripts/train_default.sh [SHARED_DATA_DIR] [OUT_DIR] [extra ddasr-train options...]
# HR training set: scripts/hr_training_set.sh (every HR subject but the held-out sub-trio and sub-vxm).
# The run is resumable: the same command with --resume continues from the last checkpoint (SIGTERM
# exits 75).
set -euo pipefail
data=${1:-../shared/data}
out=${2:-out/default}
shift $(( $# > 2 ? 2 : $# ))
hr=$(scripts/hr_training_set.sh "$data" "$out/hr-all")
train=${DDASR_TRAIN:-.venv/bin/ddasr-train}
exec "$train" --hr "$hr" --degradation mri --preset t1w-x2-cpu --out "$out/t1w-x2" --name t1w-x2 \
  --device cpu --seed 0 --allow-random-vgg19 --num-threads 1 --no-tensorboard "$@"
