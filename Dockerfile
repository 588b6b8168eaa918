# ddasr-nipype BIDS App image.
#
#   podman build -t ddasr:latest .                                   # CUDA-capable torch (PyPI wheel)
#   podman build -t ddasr:cpu --build-arg TORCH_VARIANT=cpu .        # CPU-only torch (much smaller)
#   podman run --rm -v $PWD/bids:/data:ro -v $PWD/out:/out ddasr:latest /data /out participant
#
# Build arguments (all optional):
#   TORCH_VARIANT         cuda (default: the PyPI wheel, which bundles CUDA) or cpu (the +cpu wheel)
#   TORCH_VERSION         torch release (default 2.13.0, as in constraints.txt)
#   TORCH_CPU_INDEX_URL   where the +cpu wheel comes from (default: the PyTorch CPU index); set it empty
#                         to take the wheel from the optional `wheels` build context only
#   PIP_INDEX_URL         a PyPI mirror for the builder stage (default: PyPI)
#   FETCH_VGG19           1 downloads the ImageNet VGG19 weights (perceptual loss, training only) into the
#                         torch hub cache; the default 0 leaves them out: inference never needs them
#   VERSION, VCS_REF, BUILD_DATE   recorded in the OCI labels
# Optional build inputs for offline or proxied builds (used by the builder stage only, never copied
# into the final image):
#   --build-context wheels=DIR          local wheels pip may install from (e.g. the torch wheel)
#   --secret id=pip_cert,src=CA.pem     CA bundle pip must trust (a TLS-intercepting proxy)
# scripts/container-test.sh builds this file with podman from a locally debootstrapped base image.

ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

# Empty unless replaced by `--build-context wheels=DIR`.
FROM scratch AS wheels

# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates g++ gcc python3 python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
ARG PIP_INDEX_URL=https://pypi.org/simple

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# 1. torch first: the largest layer, and the one that changes least.
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cuda
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
# DL3013: torch is pinned, through "$spec" (torch==$TORCH_VERSION or torch==$TORCH_VERSION+cpu).
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=secret,id=pip_cert,target=/run/secrets/pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir "pip==24.3.1" "setuptools==75.6.0" "wheel==0.45.1" \
    && case "$TORCH_VARIANT" in \
        cuda) spec="torch==${TORCH_VERSION}"; set -- ;; \
        cpu) spec="torch==${TORCH_VERSION}+cpu"; \
             set -- ${TORCH_CPU_INDEX_URL:+--extra-index-url "$TORCH_CPU_INDEX_URL"} ;; \
        *) echo "TORCH_VARIANT must be cuda or cpu, not '$TORCH_VARIANT'" >&2; exit 1 ;; \
       esac \
    && pip install --no-cache-dir --find-links /wheels "$@" "$spec" \
    && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# 2. The other dependencies, read from setup.py alone (README or source edits keep this layer cached).
WORKDIR /tmp/ddasr-src
COPY setup.py constraints.txt ./
RUN --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=secret,id=pip_cert,target=/run/secrets/pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python -c "import ast; tree = ast.parse(open('setup.py').read()); \
kw = {k.arg: k.value for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, 'id', '') == 'setup' for k in n.keywords}; \
print('\n'.join(ast.literal_eval(kw['install_requires'])))" > requirements.txt \
    && pip install --no-cache-dir --find-links /wheels -c constraints.txt -r requirements.txt \
    && python -c "import torch; assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__"

# 3. The package itself (a regular, non-editable install).
COPY . ./
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && ddasr --help > /dev/null

# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG BASE_IMAGE

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libgomp1 python3 \
    && rm -rf /var/lib/apt/lists/*

# A non-root user whose home any UID can use (podman --user, Apptainer, Singularity).
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash ddasr \
    && chmod 0777 /home/ddasr

# Unless told otherwise, each process uses one thread: nipype runs nodes in parallel (--nprocs)
# and the torch nodes take their threads from --omp-nthreads.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/ddasr \
    TORCH_HOME=/opt/torch \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    MPLCONFIGDIR=/tmp/matplotlib \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Optional: ImageNet VGG19 weights (training's perceptual loss) in the torch hub cache, checked against
# the sha256 prefix torchvision encodes in the file name.
ARG FETCH_VGG19=0
ARG VGG19_URL=https://download.pytorch.org/models/vgg19-dcbb9e9d.pth
RUN --mount=type=secret,id=pip_cert,target=/run/secrets/pip_cert \
    mkdir -p "$TORCH_HOME/hub/checkpoints" \
    && if [ "$FETCH_VGG19" = "1" ]; then \
        cert=/etc/ssl/certs/ca-certificates.crt; \
        if [ -s /run/secrets/pip_cert ]; then cert=/run/secrets/pip_cert; fi; \
        SSL_CERT_FILE="$cert" python3 -c "import hashlib, sys, urllib.request; \
dest = '$TORCH_HOME/hub/checkpoints/' + '$VGG19_URL'.rsplit('/', 1)[1]; \
urllib.request.urlretrieve('$VGG19_URL', dest); \
digest = hashlib.sha256(open(dest, 'rb').read()).hexdigest(); \
sys.exit(0 if digest.startswith(dest.rsplit('-', 1)[1][:8]) else 'VGG19 checksum mismatch: ' + digest)"; \
    fi \
    && chmod -R a+rX "$TORCH_HOME"

# Last, so that a source edit rebuilds only this and what follows (not the VGG19 download above).
COPY --from=builder /opt/venv /opt/venv

# templateflow's offline skeleton in the image: importing niworkflows must not need a writable $HOME
# (podman --read-only, Apptainer --no-home). The BRISQUE model is package data: check that it loads.
RUN mkdir -p "$TEMPLATEFLOW_HOME" \
    && python3 -c "import templateflow.api; from ddasr_nipype.metrics.brisque import load_brisque_model; load_brisque_model()" \
    && chmod -R a+rX "$TEMPLATEFLOW_HOME"

ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
LABEL org.opencontainers.image.title="ddasr-nipype" \
      org.opencontainers.image.description="DDASR super-resolution of T1w brain MRI: nipype workflows and a BIDS App" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["ddasr"]
CMD ["--help"]
