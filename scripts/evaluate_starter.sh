#!/usr/bin/env bash
# Evaluate a starter-model bundle on the held-out split (see scripts/train_starter.sh):
#  - paired: the held-out HR subject (sub-trio, 1 mm) degraded with k-space truncation + Rician noise
#    (a degradation the model was not trained on), with three other unseen ones (area averaging, realsr
#    blur + noise, realesrgan's two rounds) and with bicubic down-sampling, super-resolved, and
#    compared with the HR (PSNR/SSIM, whole slice, inside the head mask and inside deepbet's brain mask);
#  - unpaired: the five held-out real IXI LR scans, NIQE/BRISQUE of real LR, bicubic x2 and the model,
#    on the whole slice and on the head's bounding box (niqe_head, brisque_head).
#   usage: scripts/evaluate_starter.sh [BUNDLE] [SHARED_DATA_DIR] [OUT_DIR]
set -euo pipefail
bundle=${1:-ixi-t1w-x2}
data=${2:-../shared/data}
out=${3:-out/starter-eval}
eval_cmd=${DDASR_EVAL:-.venv/bin/ddasr-eval}
"$eval_cmd" --hr "$data/hr" --participant-label trio --model "$bundle" \
  --degradation kspace-rician --degradation bicubic --degradation area --degradation realsr \
  --degradation realesrgan --brain-mask deepbet --out "$out/paired" --panels 3 \
  --network-only
"$eval_cmd" --lr "$data/lr" --model "$bundle" --out "$out/unpaired" --panels 1 \
  --metric niqe --metric brisque --metric niqe_head --metric brisque_head --network-only \
  --participant-label IXI546 --participant-label IXI565 --participant-label IXI577 \
  --participant-label IXI603 --participant-label IXI606
