#!/usr/bin/env bash
# Reproduce the shipped starter model (ddasr_nipype/resources/models/ixi-t1w-x2) from the shared
# development data. Held-out test split, never used here: HR sub-trio; LR sub-IXI546, sub-IXI565,
# sub-IXI577, sub-IXI603, sub-IXI606. Steps (MODEL_CARD.md, "What was trained"):
#   1. one GPU, three runs of scripts/train_starter_gpu.py (base preset starter-gpu), about 15 minutes:
#      a. the DSN (with the residual generator `res`): the DSN ships in the bundle for the degradation
#         node; the shipped generator is not trained on its pairs;
#      b. `nl-bic-d0b8`: the noise-level generator, from scratch on classical bicubic pairs of the two
#         HR training subjects (32 features, no stride-2 stage, 8 RRDBs);
#      c. `nl-bic-d0b8-ft`: b trained on at half the learning rate;
#   2. CPU, about 20 minutes: preset starter-finetune-nl (white LR noise on half the crops, the noise
#      level read from the head only), 600 iterations from 1c;
#   3. pack it with the output settings it was evaluated with (the command is printed at the end).
#   usage: scripts/train_starter.sh [SHARED_DATA_DIR] [OUT_DIR] [NL_GENERATOR_BUNDLE DSN_BUNDLE]
# With the two bundles (1c's and one with a DSN, e.g. trained on another machine) step 1 is skipped.
set -euo pipefail
data=${1:-../shared/data}
out=${2:-out/starter}
step1=${3:-}
dsn=${4:-}
python=${PYTHON:-.venv/bin/python}
train=${DDASR_TRAIN:-.venv/bin/ddasr-train}
if [[ -z $step1 ]]; then
  gpu=("$python" scripts/train_starter_gpu.py "$data" --device cuda)
  "${gpu[@]}" "$out/gpu" --pack "$out/gpu-pack" --variant res
  dsn=$out/gpu/runs/res/ixi-t1w-x2-res
  "${gpu[@]}" "$out/gpu-nl" --pack "$out/gpu-nl-pack" --skip-eval --dsn-from "$dsn" --variant nl-bic-d0b8
  "${gpu[@]}" "$out/gpu-nl-ft" --pack "$out/gpu-nl-ft-pack" --skip-eval --dsn-from "$dsn" \
    --variant nl-bic-d0b8-ft --init "nl-bic-d0b8-ft=$out/gpu-nl/runs/nl-bic-d0b8/ixi-t1w-x2-nl-bic-d0b8"
  step1=$out/gpu-nl-ft/runs/nl-bic-d0b8-ft/ixi-t1w-x2-nl-bic-d0b8-ft
fi
[[ -n $dsn ]] || { echo "give the bundle whose DSN to ship as the fourth argument" >&2; exit 2; }
"$train" --hr "$data/hr" --hr-participant-label forrest --hr-participant-label otsu --degradation bicubic \
  --preset starter-finetune-nl --init-generator "$step1" --out "$out/ixi-t1w-x2" --name ixi-t1w-x2 \
  --device auto --seed 0 --allow-random-vgg19 --num-threads 1 --no-tensorboard
echo "trained: $out/ixi-t1w-x2; pack it with"
echo "  $python scripts/ship_starter.py $out/ixi-t1w-x2 --name ixi-t1w-x2 --dsn-from $dsn --strength 0.4 --background input"
