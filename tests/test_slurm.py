"""The BIDS App and the training workflow on a real SLURM cluster.

Needs a running cluster: ``scripts/slurm-localhost.sh start`` starts a single-node one on localhost
(``.ci/run`` does it before the tests) and prints the ``SLURM_CONF`` to export. Without one, every test
here is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
import yaml

from _bundles import make_tiny_bundle

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = Path(__file__).parent / "slurm"
DEFAULT_CONF = Path(os.environ.get("DDASR_SLURM_DIR", "/tmp/ddasr-slurm")) / "slurm.conf"
DDASR = Path(sys.executable).with_name("ddasr")
JOB_TIMEOUT = 600  # seconds; the jobs themselves take seconds


def _sh(args, env, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def slurm_env() -> dict[str, str]:
    """Environment for talking to the cluster; skips the module when none answers."""
    if shutil.which("sbatch") is None:
        pytest.skip("SLURM client tools not installed (scripts/slurm-localhost.sh start installs them)")
    env = dict(os.environ)
    if "SLURM_CONF" not in env:
        if not DEFAULT_CONF.exists():
            pytest.skip("no SLURM cluster: SLURM_CONF unset (start one: scripts/slurm-localhost.sh start)")
        env["SLURM_CONF"] = str(DEFAULT_CONF)
    if not Path(env["SLURM_CONF"]).is_file():  # sinfo would retry for a minute
        pytest.skip(f"no SLURM cluster: SLURM_CONF={env['SLURM_CONF']} does not exist")
    # nipype's SLURM plugin names jobs after $LOGNAME.
    env.setdefault("LOGNAME", env.get("USER") or "root")
    try:
        res = _sh(["sinfo", "-h", "-o", "%R %a"], env)
    except subprocess.TimeoutExpired:
        pytest.skip("no SLURM cluster answering (sinfo timed out)")
    if res.returncode != 0:
        pytest.skip(f"no SLURM cluster answering: {res.stderr.strip()}")
    partitions = dict(line.split() for line in res.stdout.splitlines())
    if partitions.get("cpu") != "up":
        pytest.skip(f"the cluster has no 'cpu' partition up (sinfo: {partitions})")
    return env


def _plugin_file(src: Path, dest: Path, tag: str) -> Path:
    """Copy a plugin file, tagging its jobs with ``--comment=<tag>`` so we can wait on exactly them."""
    plugin = yaml.safe_load(src.read_text())
    plugin["plugin_args"]["sbatch_args"] += f" --comment={tag}"
    dest.write_text(yaml.safe_dump(plugin))
    return dest


def _jobs(env, tag: str) -> list[str]:
    res = _sh(["squeue", "-h", "-o", "%i %k %T"], env)
    assert res.returncode == 0, res.stderr
    return [line for line in res.stdout.splitlines() if line.split()[1:2] == [tag]]


def _cancel_jobs(env, tag: str) -> None:
    ids = [line.split()[0] for line in _jobs(env, tag)]
    if ids:
        _sh(["scancel", "--quiet", *ids], env)


def _wait_for_jobs(env, tag: str, timeout: float = JOB_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while pending := _jobs(env, tag):
        if time.monotonic() > deadline:
            pytest.fail(f"SLURM jobs still queued after {timeout} s: {pending}")
        time.sleep(1)


@pytest.fixture
def job_tag(slurm_env):
    """A tag for this test's jobs (sbatch --comment); whatever is left of them is cancelled after it."""
    tag = f"ddasr-test-{uuid.uuid4().hex[:12]}"
    yield tag
    _cancel_jobs(slurm_env, tag)


@pytest.fixture(scope="module")
def two_subjects(tmp_path_factory) -> Path:
    """Two real 2 mm IXI T1w, sub-IXI603 (tests/data) and sub-IXI606 (the example), centre-cropped
    to 64x64x48 voxels (128x128x96 mm) to keep the many small jobs quick."""
    root = tmp_path_factory.mktemp("bids")
    shutil.copy(REPO / "tests" / "data" / "lr" / "dataset_description.json", root)
    sources = {
        "IXI603": REPO / "tests" / "data" / "lr" / "sub-IXI603" / "anat" / "sub-IXI603_T1w.nii.gz",
        "IXI606": REPO / "ddasr_nipype" / "resources" / "example" / "sub-IXI606" / "anat"
        / "sub-IXI606_T1w.nii.gz",
    }
    for label, src in sources.items():
        img = nb.load(src)
        start = [(n - c) // 2 for n, c in zip(img.shape, (64, 64, 48))]
        crop = img.slicer[start[0]:start[0] + 64, start[1]:start[1] + 64, start[2]:start[2] + 48]
        anat = root / f"sub-{label}" / "anat"
        anat.mkdir(parents=True)
        nb.Nifti1Image(np.asanyarray(crop.dataobj), crop.affine, crop.header).to_filename(
            anat / f"sub-{label}_T1w.nii.gz")
    (root / "participants.tsv").write_text("participant_id\nsub-IXI603\nsub-IXI606\n")
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("model") / "tiny-test")


def _ddasr(bids: Path, out: Path, work: Path, model: Path, env, *extra: str) -> float:
    if not DDASR.exists():
        pytest.skip(f"the ddasr console script is not installed next to {sys.executable}")
    cmd = [str(DDASR), str(bids), str(out), "participant", "-w", str(work), "--model", str(model),
           "--skip-brain-extraction", "--omp-nthreads", "1", *extra]
    t0 = time.monotonic()
    res = subprocess.run(cmd, env=env, cwd=work.parent, capture_output=True, text=True,
                         timeout=JOB_TIMEOUT)
    elapsed = time.monotonic() - t0
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return elapsed


def _outputs(out: Path) -> dict[str, Path]:
    """The derivative files, by path relative to the output folder (logs left aside)."""
    return {
        str(p.relative_to(out)): p
        for p in sorted(out.rglob("*"))
        if p.is_file() and "logs" not in p.relative_to(out).parts
    }


def _assert_same_derivatives(reference: Path, other: Path) -> None:
    ref, got = _outputs(reference), _outputs(other)
    assert set(got) == set(ref), f"different files: {sorted(set(ref) ^ set(got))}"
    images = [name for name in ref if name.endswith((".nii", ".nii.gz"))]
    assert any(name.endswith("_T1w.nii.gz") for name in images), sorted(ref)
    assert {name.split("/")[0] for name in images} >= {"ddasr"}, images
    for subject in ("sub-IXI603", "sub-IXI606"):
        assert any(f"/{subject}/" in f"/{name}" for name in images), f"no image for {subject}"
    for name in images:
        a, b = nb.load(ref[name]), nb.load(got[name])
        assert a.shape == b.shape, name
        np.testing.assert_allclose(b.affine, a.affine, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(
            np.asanyarray(b.dataobj), np.asanyarray(a.dataobj), rtol=1e-4, atol=1e-4, err_msg=name
        )


@pytest.fixture(scope="module")
def multiproc_run(two_subjects, tiny_model, tmp_path_factory, slurm_env):
    """The reference: the same two subjects with nipype's MultiProc on this machine."""
    base = tmp_path_factory.mktemp("multiproc")
    out, work = base / "out", base / "work"
    work.mkdir()
    elapsed = _ddasr(two_subjects, out, work, tiny_model, slurm_env, "--nprocs", "2")
    print(f"\nMultiProc (2 procs): 2 subjects in {elapsed:.1f} s")
    return out


@pytest.mark.parametrize("plugin", ["slurmgraph", "slurm"])
def test_bids_app_on_slurm_matches_multiproc(plugin, two_subjects, tiny_model, multiproc_run,
                                             slurm_env, job_tag, tmp_path):
    tag = job_tag
    plugin_file = _plugin_file(PLUGIN_DIR / f"{plugin}.yml", tmp_path / f"{plugin}.yml", tag)
    out, work = tmp_path / "out", tmp_path / "work"
    work.mkdir()
    t0 = time.monotonic()
    _ddasr(two_subjects, out, work, tiny_model, slurm_env, "--use-plugin", str(plugin_file))
    # SLURM waits for its jobs; SLURMGraph returns once they are submitted, and ddasr waits for them.
    assert not _jobs(slurm_env, tag), "ddasr returned before its jobs left the queue"
    elapsed = time.monotonic() - t0
    print(f"\n{plugin}: 2 subjects in {elapsed:.1f} s")

    batch_logs = sorted(work.rglob("batch/*.e")) + sorted(work.rglob("batch/slurm-*.out"))
    errors = "\n".join(f"--- {p}\n{p.read_text()[-1500:]}" for p in batch_logs if p.read_text())
    assert (out / "ddasr" / "dataset_description.json").exists(), f"no derivatives; job logs:\n{errors}"
    _assert_same_derivatives(multiproc_run, out)
    description = json.loads((out / "ddasr" / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"


#: sbatch arguments of the GPU nodes and of everything else, as in docs/hpc.md.
GPU_SBATCH_ARGS = "--gres=gpu:1 -p gpu"
CPU_SBATCH_ARGS = "-p cpu --mem=1G"


def _summarize_bundle(bundle_dir):
    """A CPU-only step after training (stands for any post-processing node)."""
    import json
    from pathlib import Path

    return json.loads((Path(bundle_dir) / "manifest.json").read_text())["name"]


def _route_gpu_nodes(workflow, sbatch_args: str) -> list[str]:
    """Give every GPU node (``node.is_gpu_node()``) its own sbatch arguments; return their names."""
    routed = []
    for name in workflow.list_node_names():
        node = workflow.get_node(name)
        if node.is_gpu_node():
            node.plugin_args = {"sbatch_args": sbatch_args, "overwrite": True}
            routed.append(name)
    return routed


def _submitted(batch_dir: Path) -> dict[str, str]:
    """Job name -> the sbatch command line SLURMGraph wrote to submit_jobs.sh."""
    lines = (batch_dir / "submit_jobs.sh").read_text().splitlines()
    jobs = {}
    for line in lines:
        if "=$(sbatch " in line:
            job, command = line.split("=$(", 1)
            jobs[job] = command
    return jobs


def test_training_gpu_nodes_go_to_the_gpu_partition(slurm_env, job_tag, tmp_path, hr_bids, lr_bids,
                                                    monkeypatch):
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from ddasr_nipype.workflows.train import GPU_NODE_NAMES, init_train_wf

    for key, value in slurm_env.items():
        monkeypatch.setenv(key, value)
    wf = pe.Workflow(name="train_on_slurm", base_dir=str(tmp_path / "work"))
    train_wf = init_train_wf(hr_dir=str(hr_bids), lr_dir=str(lr_bids), output_dir=str(tmp_path / "model"),
                             preset="smoke", device="cuda")
    summarize = pe.Node(niu.Function(function=_summarize_bundle, input_names=["bundle_dir"],
                                     output_names=["name"]), name="summarize")
    wf.connect(train_wf, "outputnode.bundle_dir", summarize, "bundle_dir")

    # What this test adds to the documented arguments: a tag to find the jobs, and --hold so that
    # nothing runs (the cluster's GPU is a placeholder); the jobs are cancelled afterwards.
    test_args = f" --comment={job_tag} --hold"
    routed = _route_gpu_nodes(wf, GPU_SBATCH_ARGS + test_args)
    assert sorted(routed) == sorted(f"{train_wf.name}.{n}" for n in GPU_NODE_NAMES)
    wf.run(plugin="SLURMGraph", plugin_args={"sbatch_args": CPU_SBATCH_ARGS + test_args,
                                             "dont_resubmit_completed_jobs": True})

    batch_dir = tmp_path / "work" / "train_on_slurm" / "batch"
    submitted = _submitted(batch_dir)
    by_node = {}
    for job, command in submitted.items():
        node = next((n for n in (*GPU_NODE_NAMES, "summarize") if job.endswith("_" + n)), None)
        assert node is not None, f"unexpected job {job}: {command}"
        by_node[node] = command
    assert set(by_node) == {*GPU_NODE_NAMES, "summarize"}, submitted
    for node in GPU_NODE_NAMES:
        assert f" {GPU_SBATCH_ARGS} " in by_node[node], by_node[node]
        assert "-p cpu" not in by_node[node], by_node[node]  # overwrite: the CPU default is replaced
    assert f" {CPU_SBATCH_ARGS} " in by_node["summarize"]
    assert "--gres" not in by_node["summarize"]
    # The chain is kept: synthesis after DSN training, SRN training after both, summary last.
    assert "--dependency=afterok:" in by_node["train_srn"]
    assert "--dependency=afterok:" in by_node["summarize"]
    assert "--dependency" not in by_node["train_dsn"]
    # Each batch script runs the node's pickled pyscript with this Python.
    scripts = sorted(batch_dir.glob("batchscript_*.sh"))
    assert len(scripts) == 4
    for script in scripts:
        text = script.read_text()
        assert text.startswith("#!/bin/bash\n") and f"{sys.executable} " in text, text

    # And SLURM accepted them as asked: partition and GRES per job.
    res = _sh(["squeue", "-h", "-o", "%j|%P|%b|%k"], slurm_env)
    assert res.returncode == 0, res.stderr
    queued = {}
    for line in res.stdout.splitlines():
        job, partition, gres, comment = line.split("|")
        if comment == job_tag:
            queued[job] = (partition, gres)
    assert set(queued) == set(submitted), (queued, submitted)
    for job, (partition, gres) in queued.items():
        if job.endswith("_summarize"):
            assert (partition, gres) == ("cpu", "N/A"), (job, partition, gres)
        else:
            assert partition == "gpu" and "gpu:1" in gres, (job, partition, gres)


def test_sbatch_array_script_matches_multiproc(two_subjects, tiny_model, multiproc_run, slurm_env,
                                               job_tag, tmp_path):
    """scripts/ddasr-array.sbatch (the docs/hpc.md recipe) submitted as written, one task a subject."""
    if not DDASR.exists():
        pytest.skip(f"the ddasr console script is not installed next to {sys.executable}")
    out = tmp_path / "out"
    env = dict(slurm_env, BIDS_DIR=str(two_subjects), OUT_DIR=str(out), TMPDIR=str(tmp_path),
               DDASR_ARGS=f"--model {tiny_model} --skip-brain-extraction",
               PATH=f"{DDASR.parent}{os.pathsep}{slurm_env.get('PATH', '')}")
    n_subjects = len((two_subjects / "participants.tsv").read_text().splitlines()) - 1
    t0 = time.monotonic()
    res = _sh(["sbatch", f"--array=1-{n_subjects}", f"--comment={job_tag}",
               str(REPO / "scripts" / "ddasr-array.sbatch")], env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    _wait_for_jobs(env, job_tag)
    print(f"\nsbatch array: {n_subjects} subjects in {time.monotonic() - t0:.1f} s")
    logs = sorted(tmp_path.glob("ddasr-*_*.log"))
    assert len(logs) == n_subjects, logs
    for log in logs:
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    _assert_same_derivatives(multiproc_run, out)
    assert not list(tmp_path.glob("ddasr-work-*")), "work folders left behind"
