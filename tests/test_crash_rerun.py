"""``ddasr`` killed with SIGKILL mid-run, then the same command again (a node crash, an OOM kill, a
scheduler that ends the job): the rerun finishes every good participant, reuses the nodes that had
finished from the work folder, and no half-written output remains.

Cost: a full run of this dataset is about 34 s of CPU (the app, its forkserver and two workers), the
rerun of a finished one 16 s; the test kills the first run once a participant is super-resolved.
On the shared development machine (load 7-8 on 2 cores) the test takes 4-5 minutes of wall time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import pytest
from _bundles import make_tiny_bundle

pytest.importorskip("torch")

GOOD = ("a", "b", "c", "d", "e")
# the ddasr command, in a process of its own (the test signals it)
COMMAND = [sys.executable, "-c", "import sys; from ddasr_nipype.bids_app.run import main; sys.exit(main(sys.argv[1:]))"]


def _dataset(root: Path, lr_file: Path) -> Path:
    """Five small crops of a real 2 mm scan and one truncated file."""
    (root / "dataset_description.json").parent.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "crash", "BIDSVersion": "1.9.0"}))
    img = nib.load(lr_file)
    for number, label in enumerate(GOOD):
        anat = root / f"sub-{label}" / "anat"
        anat.mkdir(parents=True)
        crop = img.slicer[30 + 8 * number: 70 + 8 * number, 40:80, 30:54]
        nib.save(nib.Nifti1Image(crop.get_fdata(dtype="float32"), crop.affine), anat / f"sub-{label}_T1w.nii.gz")
    bad = root / "sub-bad" / "anat" / "sub-bad_T1w.nii.gz"
    bad.parent.mkdir(parents=True)
    good = (root / "sub-a" / "anat" / "sub-a_T1w.nii.gz").read_bytes()
    bad.write_bytes(good[: len(good) // 2])
    return root


def _committed(deriv: Path) -> list[str]:
    """Participants whose super-resolved T1w sidecar is in the output folder."""
    return sorted(p.name.split("_")[0][4:] for p in deriv.glob("sub-*/anat/*_desc-ddasr_T1w.json"))


def _super_resolved(work: Path) -> dict[str, float]:
    """Participants whose super_resolve node finished, with its result file's modification time."""
    return {p.parts[-4][4:-3]: p.stat().st_mtime
            for p in work.glob("ddasr_wf/sub_*_wf/t1w_0_wf/super_resolve/result_super_resolve.pklz")}


@pytest.mark.slow
def test_a_killed_run_is_finished_by_the_same_command(tmp_path, lr_file):
    bids = _dataset(tmp_path / "bids", lr_file)
    out, work = tmp_path / "out", tmp_path / "work"
    deriv = out / "ddasr"
    argv = [str(bids), str(out), "participant", "--model", str(make_tiny_bundle(tmp_path / "tiny")),
            "--skip-brain-extraction", "-w", str(work), "--nprocs", "2", "--omp-nthreads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.monotonic()

    first = subprocess.Popen([*COMMAND, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)  # its own process group: the app, forkserver, workers
    try:
        while first.poll() is None and not _super_resolved(work) and time.monotonic() - started < 600:
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL, "the first run ended before it could be killed"
    finished_nodes = _super_resolved(work)
    assert 1 <= len(finished_nodes) < len(GOOD), finished_nodes
    assert list(out.glob(".ddasr-staging/*")), "a killed run leaves its staging folder (removed by the rerun)"

    second = subprocess.run([*COMMAND, *argv], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 1, second.stdout[-3000:]  # sub-bad failed; every other participant finished
    assert _committed(deriv) == sorted(GOOD)
    outputs = {}
    for label in GOOD:
        files = sorted(p.name for p in (deriv / f"sub-{label}").rglob("*") if p.is_file())
        assert {f"sub-{label}_desc-ddasr_T1w.json", f"sub-{label}_desc-ddasr_T1w.nii.gz",
                f"sub-{label}_desc-sr_T1w.svg", f"sub-{label}_desc-summary_T1w.html",
                f"sub-{label}_desc-consistency_statmap.nii.gz"} <= set(files), files
        outputs[label] = [name.replace(f"sub-{label}_", "sub-X_") for name in files]
        assert nib.load(deriv / f"sub-{label}" / "anat" / f"sub-{label}_desc-ddasr_T1w.nii.gz").get_fdata().size
    # every participant has the same complete set: none was left half-committed by the kill
    assert all(names == outputs[GOOD[0]] for names in outputs.values()), outputs
    assert not (deriv / "sub-bad" / "anat").exists()
    crash = list((deriv / "sub-bad" / "log").rglob("crash-*.txt"))
    assert crash and "sub-bad_T1w.nii.gz: corrupt or truncated" in crash[0].read_text()
    # the nodes that had finished were reused, not run again
    reused = {label: mtime for label, mtime in _super_resolved(work).items() if label in finished_nodes}
    assert finished_nodes and reused == finished_nodes
    # no half outputs: no staging folder (the killed run's included), no temporary file
    assert not (out / ".ddasr-staging").exists()
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]
    assert "removed the staged files of a run that was killed" in second.stdout
