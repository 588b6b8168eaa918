#!/usr/bin/env bash
# Install the way users do and smoke-test each command (issue 24).
#
#   scripts/plain-pip-smoke.sh
#
# A fresh venv in a temporary folder, `pip install torch==2.13.0`, then `pip install .` with no constraints
# file: pip resolves today's releases of every other dependency (numpy, scipy, nipype, ...), as it does for
# a user, a lab's environment or a downstream Dockerfile. Then, from outside the source tree (so that only
# the installed package is importable) and on the committed test data:
#   - pip check, the resolved versions, every module imported, the package data present, the bundled
#     model loaded (checksums verified) and run on a few slices;
#   - ddasr-train --preset smoke --allow-random-vgg19 (a tiny bundle, seconds);
#   - ddasr-eval --lr with its default metrics (NIQE, BRISQUE), bicubic and the tiny bundle;
#   - ddasr on the committed LR scan with --quality-metrics (deepbet brain mask, report), with the tiny
#     bundle: the bundled model takes minutes per scan on two cores, and was run above.
# The pinned test run (`make test`, constraints.txt) stays the reference for the test suite; this step
# catches the next dependency release that breaks the installed product.
#
# Environment: PYTHON (default python3), DDASR_SMOKE_KEEP=1 keeps the temporary folder (default: removed).
# Prints the time of each phase. Exit status 0 when every check passed.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ddasr-plain-pip.XXXXXX")
cleanup() {
    local start=$SECONDS
    if [[ ${DDASR_SMOKE_KEEP:-0} == 1 ]]; then echo "plain-pip: kept $TMP" >&2; return; fi
    rm -rf "$TMP"
    echo "plain-pip: removed the temporary folder in $((SECONDS - start)) s" >&2
}
trap cleanup EXIT

SECONDS=0
phase_start=0
phase_cpu=0
cpu_seconds() {  # user + system CPU seconds of this shell's finished children, from `times` (line 2)
    awk 'NR == 2 { for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); s += t[1] * 60 + t[2] } } END { printf "%.0f", s }' \
        "$TMP/times"
}
phase() {  # the wall and CPU time of the previous phase, and the name of the next
    local cpu
    times > "$TMP/times"  # here, not in a $(...) subshell, which has no children of its own
    cpu=$(cpu_seconds)
    echo "plain-pip: done in $((SECONDS - phase_start)) s (CPU $((cpu - phase_cpu)) s); total $SECONDS s (CPU $cpu s)" >&2
    phase_start=$SECONDS phase_cpu=$cpu
    echo "plain-pip: == $* ==" >&2
}
fail() { echo "plain-pip: FAILED: $*" >&2; exit 1; }

echo "plain-pip: == copy the source tree ==" >&2
# What a clean checkout holds (tracked and untracked, not ignored, files), so that no stale build/ or
# egg-info of the working tree reaches the wheel.
mkdir "$TMP/src"
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' file; do
        if [[ -e $file || -L $file ]]; then cp --parents -P "$file" "$TMP/src"; fi  # not files deleted locally
    done)
else
    cp -a "$REPO"/. "$TMP/src"
    rm -rf "$TMP/src/.venv" "$TMP/src/build" "$TMP"/src/*.egg-info
fi

phase "fresh venv, pip install torch==2.13.0, then pip install . (no constraints)"
unset PYTHONPATH PIP_CONSTRAINT PIP_REQUIRE_VIRTUALENV
"$PYTHON" -m venv "$TMP/venv"
BIN=$TMP/venv/bin
"$BIN/pip" install --quiet --disable-pip-version-check "torch==2.13.0"
"$BIN/pip" install --quiet --disable-pip-version-check "$TMP/src"

phase "pip check, versions, imports, package data, bundled model"
cd "$TMP"  # not the source tree: `python -c` must import the installed package
"$BIN/pip" check --disable-pip-version-check || fail "pip check: broken requirements"
"$BIN/python" - <<'EOF' || fail "imports or package data"
import importlib
import pkgutil
from importlib import metadata, resources
from pathlib import Path

import ddasr_nipype

print("plain-pip: python", __import__("sys").version.split()[0], "|", ", ".join(
    f"{name} {metadata.version(name)}" for name in
    ("numpy", "torch", "scipy", "scikit-image", "opencv-python-headless", "nibabel", "nipype", "pybids",
     "niworkflows", "deepbet", "tensorboard")))
print(f"plain-pip: resolved numpy {metadata.version('numpy')}")
assert "site-packages" in Path(ddasr_nipype.__file__).parts, ddasr_nipype.__file__  # not the source tree
for dist in ("brisque", "libsvm-official", "pytest"):  # not dependencies: must not be needed
    try:
        print(f"plain-pip: note: {dist} {metadata.version(dist)} is installed")
    except metadata.PackageNotFoundError:
        pass
names = [m.name for m in pkgutil.walk_packages(ddasr_nipype.__path__, "ddasr_nipype.")]
for name in names:
    importlib.import_module(name)
print(f"plain-pip: imported {len(names) + 1} modules")
root = resources.files("ddasr_nipype")
needed = [
    "resources/models/ixi-t1w-x2/manifest.json", "resources/models/ixi-t1w-x2/srn.pt",
    "resources/models/ixi-t1w-x2/dsn.pt", "resources/models/ixi-t1w-x2/SHA256SUMS",
    "resources/models/t1w-x2/manifest.json", "resources/models/t1w-x2/srn.pt",
    "resources/models/t1w-x2/SHA256SUMS", "resources/models/ixi-t1w-x2-gan/manifest.json",
    "resources/models/ixi-t1w-x2-gan/srn.pt", "resources/models/ixi-t1w-x2-gan/dsn.pt",
    "resources/niqe/niqe_pris_params.npz", "resources/brisque/svm.txt",
    "resources/brisque/feature_range.json", "resources/reports-spec.yml", "resources/boilerplate.bib",
    "resources/example/sub-IXI606/anat/sub-IXI606_T1w.nii.gz", "training/presets/smoke.yml",
    "training/presets/fast.yml", "training/presets/paper.yml",
]
missing = [path for path in needed if not (root / path).is_file()]
assert not missing, f"package data missing from the installed package: {missing}"
print(f"plain-pip: {len(needed)} package data files present")

import numpy as np
from ddasr_nipype.bundle import list_bundled_models, load_bundle
from ddasr_nipype.inference import super_resolve_plane

slices = np.random.default_rng(0).uniform(0, 1, (3, 40, 36)).astype(np.float32)
for name in list_bundled_models():
    bundle = load_bundle(name)  # checksums verified
    out = super_resolve_plane(slices, bundle.load_generator("cpu"), plane="sagittal", scale=bundle.scale)
    assert out.shape == (3, 80, 72) and np.isfinite(out).all(), (name, out.shape, out.dtype)
    print(f"plain-pip: bundled model {bundle.name} ({bundle.sha256[:12]}) loads and runs")
EOF

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MKL_NUM_THREADS=${MKL_NUM_THREADS:-2}
DATA=$REPO/tests/data

phase "ddasr-train --preset smoke --allow-random-vgg19"
"$BIN/ddasr-train" --hr "$DATA/hr" --lr "$DATA/lr" --out "$TMP/tiny" --preset smoke --allow-random-vgg19 \
    --device cpu --num-threads 2 > "$TMP/train.log" 2>&1 || { tail -30 "$TMP/train.log"; fail "ddasr-train"; }
for file in manifest.json srn.pt dsn.pt SHA256SUMS; do
    [[ -s $TMP/tiny/$file ]] || fail "ddasr-train wrote no $file"
done
ls "$TMP"/tiny.work/logs/tensorboard/*/events.* >/dev/null 2>&1 || fail "ddasr-train wrote no TensorBoard log"

phase "ddasr-eval --lr (default metrics: NIQE, BRISQUE)"
"$BIN/ddasr-eval" --lr "$DATA/lr" --model "$TMP/tiny" --out "$TMP/eval" --num-threads 2 --panels 1 \
    > "$TMP/eval.log" 2>&1 || { tail -30 "$TMP/eval.log"; fail "ddasr-eval"; }
"$BIN/python" - "$TMP/eval/table1.csv" <<'EOF' || fail "ddasr-eval: Table I"
import csv, math, sys

rows = list(csv.DictReader(open(sys.argv[1])))
scores = {(r["method"], r["metric"]): float(r["mean"]) for r in rows if int(r["n"]) > 0}
for method in ("real LR", "bicubic", "tiny"):
    for metric in ("niqe", "brisque"):
        value = scores.get((method, metric), math.nan)
        assert math.isfinite(value), f"{metric} of {method}: {value} (rows: {rows})"
print("plain-pip: Table I", {f"{m}/{k}": round(v, 2) for (m, k), v in scores.items()})
EOF

phase "ddasr on the committed LR scan, --quality-metrics"
"$BIN/ddasr" "$DATA/lr" "$TMP/out" participant --model "$TMP/tiny" --quality-metrics -w "$TMP/work" \
    --nprocs 2 --omp-nthreads 2 > "$TMP/ddasr.log" 2>&1 || { tail -40 "$TMP/ddasr.log"; fail "ddasr"; }
[[ -s $TMP/out/ddasr/sub-IXI603/anat/sub-IXI603_desc-ddasr_T1w.nii.gz ]] || fail "ddasr wrote no SR image"
[[ -s $TMP/out/ddasr/sub-IXI603/anat/sub-IXI603_desc-brain_mask.nii.gz ]] || fail "ddasr wrote no brain mask"
sed 's/<[^>]*>//g; s/&rarr;/->/g' "$TMP/out/ddasr/sub-IXI603.html" > "$TMP/report.txt"
for metric in NIQE BRISQUE; do
    line=$(grep -o "$metric (lower is better): input [0-9.-]* -> super-resolved [0-9.-]*" "$TMP/report.txt") \
        || { grep -i "lower is better" "$TMP/report.txt" >&2; fail "ddasr: no $metric of the input and output in the report"; }
    echo "plain-pip: report: $line" >&2
done

phase "end"
echo "plain-pip: passed in $SECONDS s (CPU $phase_cpu s)" >&2
