#!/usr/bin/env bash
# Held-out evaluation of the bundled models (the figures of their model cards; README "Which model when"):
#  - paired (Table II, SR): the held-out HR subject sub-trio (1 mm) degraded with k-space truncation +
#    Rician noise, bicubic down-sampling and three more degradations no model was trained on, super-
#    resolved with each model's recommended output settings (the app's defaults) and its network alone,
#    scored inside deepbet's brain mask and the head mask (paired t-test over slices);
#  - unpaired (Table I): the five held-out real IXI LR scans (never read in training): NIQE / BRISQUE of
#    real LR, bicubic x2 and each model, on the whole slice and the head's box, and the data-consistency
#    figures (RMS z, % |z| > 3 in the LR's brain).
#   usage: scripts/evaluate_models.sh [SHARED_DATA_DIR] [OUT_DIR] [MODEL...]
#   default models: t1w-x2 ixi-t1w-x2-gan; add a path, e.g. the GAN recipe on bicubic pairs
#   (scripts/train_gan.sh ... bicubic), for the paper's ablation.
set -euo pipefail
data=${1:-../shared/data}
out=${2:-out/eval-models}
shift $(( $# > 2 ? 2 : $# ))
models=("$@")
(( ${#models[@]} )) || models=(t1w-x2 ixi-t1w-x2-gan)
eval_cmd=${DDASR_EVAL:-.venv/bin/ddasr-eval}
margs=()
for m in "${models[@]}"; do margs+=(--model "$m"); done
"$eval_cmd" --hr "$data/hr" --participant-label trio "${margs[@]}" \
  --degradation kspace-rician --degradation bicubic --degradation area --degradation realsr \
  --degradation realesrgan --brain-mask deepbet --out "$out/paired" --panels 3 --network-only
"$eval_cmd" --lr "$data/lr" "${margs[@]}" --out "$out/unpaired" --panels 2 --brain-mask deepbet \
  --metric niqe --metric brisque --metric niqe_head --metric brisque_head \
  --participant-label IXI546 --participant-label IXI565 --participant-label IXI577 \
  --participant-label IXI603 --participant-label IXI606
