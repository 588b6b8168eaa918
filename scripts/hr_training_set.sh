#!/usr/bin/env bash
# Join the HR training subjects of SHARED_DATA_DIR/hr and SHARED_DATA_DIR/hr-brain into one BIDS dataset of
# links, OUT_DIR, and print its path. Left out:
#  - sub-trio (held out for the paired evaluation), and
#  - sub-vxm (its voxel size is only assumed: a 2.0 L brain at "1 mm" is a brain on a finer grid, so
#    its anatomy would teach the wrong scale).
#   usage: scripts/hr_training_set.sh SHARED_DATA_DIR OUT_DIR
set -euo pipefail
data=$(cd "$1" && pwd)
mkdir -p "$2"
hr=$(cd "$2" && pwd)
cp "$data/hr/dataset_description.json" "$hr/"
for dir in "$data/hr" "$data/hr-brain"; do
  for sub in "$dir"/sub-*; do
    label=$(basename "$sub")
    case "$label" in sub-trio|sub-vxm) continue ;; esac
    mkdir -p "$hr/$label/anat"
    ln -sf "$sub/anat/${label}_T1w.nii.gz" "$hr/$label/anat/"
  done
done
echo "$hr"
