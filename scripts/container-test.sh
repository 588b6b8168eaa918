#!/usr/bin/env bash
# Build the BIDS-App image with podman and run the bundled example through its entrypoint.
#
# Usage: scripts/container-test.sh [--skip-build] [--save-oci FILE] [--out DIR] [--model DIR]
#
#   --skip-build      reuse the image already built under $DDASR_IMAGE
#   --save-oci FILE   also write the image as an OCI archive (for `apptainer build x.sif oci-archive://FILE`)
#   --out DIR         where the example's derivatives go (default: $DDASR_CONTAINER_WORK/example-out);
#                     it is emptied first
#   --model DIR       run the example with this model bundle (mounted read-only) instead of the bundled one
#
# Works on a machine without a Docker engine and without a reachable image registry: podman + buildah +
# runc (installed with apt when missing; needs root), a base image debootstrapped locally and tagged with
# the name the Dockerfile's FROM uses (scripts/debootstrap-base.sh), `podman build --pull=never`.
# The image is built with the CPU torch wheel. pip inside the build reaches its index the way the host's
# pip does: the host's CA bundle is passed as a build secret and a local wheel folder (pip's find-links)
# as a build context; neither is copied into the final image.
#
# Environment:
#   DDASR_IMAGE            image tag (default localhost/ddasr:test)
#   DDASR_CONTAINER_WORK   scratch folder: containers.conf, timings, default output (default /tmp/ddasr-container)
#   DDASR_TORCH_VARIANT    cpu (default) or cuda
#
# Prints "build_seconds=...", "image_size_bytes=..." and "example_seconds=..." lines and exits non-zero on
# the first failed check.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${DDASR_IMAGE:-localhost/ddasr:test}
WORK=${DDASR_CONTAINER_WORK:-/tmp/ddasr-container}
VARIANT=${DDASR_TORCH_VARIANT:-cpu}
SKIP_BUILD=0
SAVE_OCI=""
OUT=""
MODEL=""
while (($#)); do
    case $1 in
        --skip-build) SKIP_BUILD=1 ;;
        --save-oci) SAVE_OCI=$2; shift ;;
        --out) OUT=$2; shift ;;
        --model) MODEL=$(cd "$2" && pwd); shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
OUT=${OUT:-$WORK/example-out}
mkdir -p "$WORK"

log() { echo "[container-test] $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

# --- tools --------------------------------------------------------------------------------------
missing=()
for tool in podman buildah runc debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    [[ $(id -u) -eq 0 ]] || fail "missing ${missing[*]} (install them, or run as root)"
    log "installing ${missing[*]}"
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# runc (crun is not packaged everywhere), cgroupfs (no systemd here), sane default ulimits.
export CONTAINERS_CONF=$WORK/containers.conf
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF

# --- base image ---------------------------------------------------------------------------------
BASE=$(sed -n 's/^ARG BASE_IMAGE=//p' "$REPO/Dockerfile" | head -n1)
[[ -n $BASE ]] || fail "no 'ARG BASE_IMAGE=' in the Dockerfile"
"$REPO/scripts/debootstrap-base.sh" "$BASE"

# --- how the host's pip reaches its packages ------------------------------------------------------
host_pip() {
    local pip
    for pip in "$REPO/.venv/bin/pip" pip3 pip; do
        if command -v "$pip" >/dev/null; then "$pip" "$@" 2>/dev/null && return 0; fi
    done
    return 1
}
pip_setting() {  # the value of a pip option: environment first, then pip's config files
    local env=$1 key=$2 value
    value=${!env:-}
    [[ -n $value ]] || value=$(host_pip config get "global.$key" || host_pip config get ":env:.$key" || true)
    echo "$value"
}

build_args=(--build-arg "TORCH_VARIANT=$VARIANT")
cert=$(pip_setting PIP_CERT cert)
[[ -n $cert ]] || cert=${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-}}
if [[ -n $cert && -s $cert ]]; then
    log "pip CA bundle: $cert (build secret pip_cert)"
    build_args+=(--secret "id=pip_cert,src=$cert")
fi
index=$(pip_setting PIP_INDEX_URL index-url)
if [[ -n $index ]]; then
    log "pip index: $index"
    build_args+=(--build-arg "PIP_INDEX_URL=$index")
fi
wheel_dir=""
for link in $(pip_setting PIP_FIND_LINKS find-links); do
    link=${link#file://}
    if [[ -d $link ]] && compgen -G "$link/torch-*.whl" >/dev/null; then
        wheel_dir=$link
        break
    fi
done
if [[ -n $wheel_dir ]]; then
    log "local wheels: $wheel_dir (build context 'wheels')"
    build_args+=(--build-context "wheels=$wheel_dir")
    # A local torch wheel is there: do not wait on an index the machine may not reach.
    if [[ $VARIANT == cpu ]] && compgen -G "$wheel_dir/torch-*+cpu-*.whl" >/dev/null; then
        build_args+=(--build-arg "TORCH_CPU_INDEX_URL=")
    fi
fi

# --- build --------------------------------------------------------------------------------------
if ((!SKIP_BUILD)); then
    version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$REPO/ddasr_nipype/__init__.py")
    revision=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
    log "building $IMAGE (torch: $VARIANT)"
    t0=$(date +%s)
    podman build --pull=never --network host --layers -t "$IMAGE" -f "$REPO/Dockerfile" \
        "${build_args[@]}" \
        --build-arg "VERSION=$version" --build-arg "VCS_REF=$revision" \
        --build-arg "BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        "$REPO" >&2
    build_seconds=$(($(date +%s) - t0))
    echo "build_seconds=$build_seconds"
    echo "$build_seconds" >"$WORK/build-seconds"
fi
podman image exists "$IMAGE" || fail "image $IMAGE not found"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "image_size_bytes=$size"

# --- image checks -------------------------------------------------------------------------------
entrypoint=$(podman image inspect --format '{{json .Config.Entrypoint}}' "$IMAGE")
[[ $entrypoint == '["ddasr"]' ]] || fail "entrypoint is $entrypoint, not [\"ddasr\"]"
user=$(podman run --rm --network none --entrypoint id "$IMAGE" -u)
[[ $user != 0 ]] || fail "the image runs as root"
for label in title version revision licenses; do
    value=$(podman image inspect --format "{{index .Labels \"org.opencontainers.image.$label\"}}" "$IMAGE")
    [[ -n $value ]] || fail "OCI label org.opencontainers.image.$label missing"
done
omp=$(podman run --rm --network none --entrypoint printenv "$IMAGE" OMP_NUM_THREADS)
[[ $omp == 1 ]] || fail "OMP_NUM_THREADS=$omp"
podman run --rm --network none "$IMAGE" --version
# Read-only root and no writable home (Apptainer --no-home): the imports of a run, templateflow's cache
# and BRISQUE's model (package data) must all work.
podman run --rm --network none --read-only --entrypoint python "$IMAGE" -c \
    "import niworkflows.reports.core, templateflow.api; from ddasr_nipype.metrics.brisque import load_brisque_model; load_brisque_model()" \
    || fail "imports on a read-only image (templateflow cache, BRISQUE model)"
# No host configuration may reach the final image.
if podman run --rm --network none --entrypoint sh "$IMAGE" -c \
    'ls /run/secrets/pip_cert /wheels /etc/pip.conf /etc/xdg/pip 2>/dev/null | grep .'; then
    fail "host pip configuration leaked into the image"
fi

# --- the bundled example through the entrypoint (no network: nothing may download) ----------------
rm -rf "$OUT"
mkdir -p "$OUT"
chmod 0777 "$OUT"  # written by the image's non-root user
model_args=()
[[ -z $MODEL ]] || model_args=(-v "$MODEL:/model:ro")
t0=$(date +%s)
podman run --rm --network none \
    -v "$REPO/ddasr_nipype/resources/example:/data:ro" -v "$OUT:/out" "${model_args[@]}" \
    "$IMAGE" /data /out participant -w /tmp/work --nprocs 2 --omp-nthreads 2 \
    ${MODEL:+--model /model} >&2
example_seconds=$(($(date +%s) - t0))
echo "example_seconds=$example_seconds"

# Check the derivatives with the image's own Python (nibabel is there).
podman run --rm --network none -v "$REPO/ddasr_nipype/resources/example:/data:ro" -v "$OUT:/out:ro" \
    -i --entrypoint python "$IMAGE" - <<'EOF' || fail "derivatives check"
import json
from pathlib import Path

import nibabel as nb
import numpy as np

src = nb.load("/data/sub-IXI606/anat/sub-IXI606_T1w.nii.gz")
deriv = Path("/out/ddasr")
desc = json.loads((deriv / "dataset_description.json").read_text())
assert desc.get("DatasetType") == "derivative", desc
sr = [p for p in deriv.glob("sub-IXI606/**/*_T1w.nii.gz")]
assert len(sr) == 1, f"expected one super-resolved T1w, found {sr}"
img = nb.load(sr[0])
data = np.asanyarray(img.dataobj)
ratio = np.array(src.shape[:3]) / np.array(img.shape[:3])
zooms = np.array(src.header.get_zooms()[:3]) / np.array(img.header.get_zooms()[:3])
assert np.isfinite(data).all() and data.std() > 0, "empty or non-finite output"
assert sorted(np.round(zooms, 3))[-1] == 2.0 and np.allclose(ratio * zooms, 1), (ratio, zooms)
# Field of view kept: the centre of the volume stays where it was.
centre = lambda im: im.affine @ np.r_[(np.array(im.shape[:3]) - 1) / 2, 1]
assert np.allclose(centre(src), centre(img), atol=max(src.header.get_zooms()[:3])), "world position moved"
sidecar = sr[0].with_name(sr[0].name.replace(".nii.gz", ".json"))
assert sidecar.exists(), f"no sidecar {sidecar}"
reports = list(deriv.glob("sub-IXI606*.html"))
assert reports, "no HTML report"
print(f"ok: {sr[0].relative_to('/out')} {img.shape} zooms {np.round(img.header.get_zooms()[:3], 3)}")
EOF

if [[ -n $SAVE_OCI ]]; then
    rm -f "$SAVE_OCI"
    podman save --format oci-archive -o "$SAVE_OCI" "$IMAGE"
    log "saved $SAVE_OCI ($(du -h "$SAVE_OCI" | cut -f1))"
fi
log "all checks passed"
