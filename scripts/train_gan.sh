#!/usr/bin/env bash
# Train the GAN model ixi-t1w-x2-gan on CPU (preset t1w-x2-gan-cpu; its MODEL_CARD.md gives the figures):
# the SRN stage of DDASR on the DSN's IXI-site pairs (the DSN of the bundled ixi-t1w-x2, trained on the HR
# scans and the real IXI LR scans), fine-tuned from the default generator INIT_BUNDLE. With PAIRS=bicubic,
# the same recipe on bicubic pairs: the paper's ablation of the DSN.
#   usage: scripts/train_gan.sh SHARED_DATA_DIR OUT_DIR INIT_BUNDLE [dsn|bicubic] [extra ddasr-train options...]
# The 25 IXI training subjects are the LR reference; the five held-out ones (IXI546, 565, 577, 603, 606)
# are never read.
set -euo pipefail
data=$1
out=$2
init=$3
pairs=${4:-dsn}
shift $(( $# > 4 ? 4 : $# ))
hr=$(scripts/hr_training_set.sh "$data" "$out/hr-all")
train=${DDASR_TRAIN:-.venv/bin/ddasr-train}
common=(--hr "$hr" --preset t1w-x2-gan-cpu --init-generator "$init" --device cpu --seed 0
        --allow-random-vgg19 --num-threads 1 --no-tensorboard)
if [[ $pairs == dsn ]]; then
  labels=()
  for sub in "$data"/lr/sub-*; do
    label=${sub##*/sub-}
    case "$label" in IXI546|IXI565|IXI577|IXI603|IXI606) continue ;; esac
    labels+=(--lr-participant-label "$label")
  done
  exec "$train" "${common[@]}" --lr "$data/lr" "${labels[@]}" --dsn-from ixi-t1w-x2 \
    --out "$out/ixi-t1w-x2-gan" --name ixi-t1w-x2-gan "$@"
else
  exec "$train" "${common[@]}" --degradation bicubic --out "$out/ixi-t1w-x2-gan-bicubic" \
    --name ixi-t1w-x2-gan-bicubic "$@"
fi
