"""init_train_wf: graph, SLURM-routable node settings, and a smoke run of the three nodes."""

from __future__ import annotations

import json

import pytest

from ddasr_nipype.workflows.train import GPU_NODE_NAMES, TRAIN_NODE_NAMES, init_train_wf


def test_graph_and_node_resources(tmp_path):
    wf = init_train_wf(hr_dir=str(tmp_path), lr_dir=str(tmp_path), output_dir=str(tmp_path / "m"),
                       preset="paper", device="cuda", omp_nthreads=4, mem_gb=24, iterations_srn=10)
    assert set(TRAIN_NODE_NAMES) <= set(wf.list_node_names())
    for name in GPU_NODE_NAMES:
        node = wf.get_node(name)
        assert node.inputs.use_gpu is True and node.n_procs == 4 and node.mem_gb == 24
        assert node.is_gpu_node()
        assert node.inputs.preset == "paper" and node.inputs.iterations_srn == 10
        node.plugin_args = {"sbatch_args": "--gres=gpu:1 -p gpu", "overwrite": True}
    edges = {(u.name, v.name) for u, v in wf._graph.edges()}
    assert {("train_dsn", "synthesize_pairs"), ("synthesize_pairs", "train_srn"), ("train_dsn", "train_srn")} <= edges
    limited = init_train_wf(hr_dir=".", lr_dir=".", output_dir="m", dsn_time_limit=60, srn_time_limit=120,
                            init_generator=str(tmp_path))
    assert limited.get_node("train_dsn").inputs.time_limit == 60
    srn = limited.get_node("train_srn").inputs
    assert (srn.time_limit, srn.init_generator) == (120, str(tmp_path))
    cpu = init_train_wf(hr_dir=".", lr_dir=".", output_dir="m", device="cpu")
    assert cpu.get_node("train_dsn").inputs.use_gpu is False
    assert "down-sampling network" in cpu.__desc__


def test_smoke_workflow_run_writes_a_bundle(tmp_path, hr_bids, lr_bids):
    torch = pytest.importorskip("torch")
    from ddasr_nipype.bundle import load_bundle

    out = tmp_path / "bundle"
    wf = init_train_wf(hr_dir=str(hr_bids), lr_dir=str(lr_bids), output_dir=str(out), preset="smoke",
                       device="cpu", allow_random_vgg19=True, hr_participant_label=["trio"],
                       model_name="wf-smoke")
    for name in TRAIN_NODE_NAMES:
        wf.get_node(name).inputs.tensorboard = False
    wf.base_dir = str(tmp_path / "work")
    wf.run(plugin="Linear")
    bundle = load_bundle(out)
    assert bundle.name == "wf-smoke" and bundle.has_dsn
    assert bundle.manifest["training"]["data"]["hr_files"] == ["sub-trio_T1w.nii.gz"]
    assert bundle.manifest["training"]["dsn"]["iterations"] == 4
    summary = json.loads((tmp_path / "work" / "train_wf" / "train_dsn" / "data_summary.json").read_text())
    assert summary["hr_voxel_size"] == pytest.approx(1.0)
    with torch.no_grad():
        assert bundle.load_generator()(torch.rand(1, 1, 16, 16)).shape == (1, 1, 32, 32)

    # the SRN node alone: fine-tune that bundle's generator within a wall-time limit
    from ddasr_nipype.interfaces.training import TrainSRN

    work = tmp_path / "work" / "train_wf"
    node = TrainSRN(pairs_file=str(work / "synthesize_pairs" / "train" / "pairs" / "pairs.npz"),
                    data_summary=str(work / "train_dsn" / "data_summary.json"), preset="smoke",
                    iterations_srn=500, device="cpu", allow_random_vgg19=True, tensorboard=False,
                    init_generator=str(out), time_limit=1e-6, out_dir=str(tmp_path / "tuned"))
    (tmp_path / "tune").mkdir()
    result = node.run(cwd=str(tmp_path / "tune"))
    tuned = load_bundle(result.outputs.bundle_dir)
    srn = tuned.manifest["training"]["srn"]
    assert srn["initialized_from"]["sha256"] == bundle.sha256
    assert srn["iterations"] == 1 and srn["stopped_early"] is True and srn["planned_iterations"] == 500


def test_a_rerun_after_sigterm_resumes_the_stage(tmp_path, hr_bids, lr_bids, monkeypatch):
    """SLURM preemption: SIGTERM mid-stage checkpoints and fails the node; rerunning the workflow
    trains only the remaining iterations (nipype empties a failed node's folder, so the checkpoints
    must live outside it) and ends where an uninterrupted run ends."""
    import os
    import signal

    torch = pytest.importorskip("torch")
    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.training.dsn_trainer import DSNTrainer

    steps = []
    original = DSNTrainer.train_step

    def counted(self, kill_at=None):
        steps.append(self.iteration + 1)
        if kill_at is not None and self.iteration + 1 == kill_at:
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer's handler checkpoints and stops
        return original(self)

    def build(out):
        wf = init_train_wf(hr_dir=str(hr_bids), lr_dir=str(lr_bids), output_dir=str(out), preset="smoke",
                           device="cpu", allow_random_vgg19=True, hr_participant_label=["trio"],
                           iterations_dsn=6)
        for name in TRAIN_NODE_NAMES:
            wf.get_node(name).inputs.tensorboard = False
        wf.base_dir = str(tmp_path / "work")
        wf.config["execution"]["crashdump_dir"] = str(tmp_path / "crash")  # not the current folder
        return wf

    monkeypatch.setattr(DSNTrainer, "train_step", lambda self: counted(self, kill_at=3))
    with pytest.raises(RuntimeError):
        build(tmp_path / "model").run(plugin="Linear")
    assert steps == [1, 2, 3] and not (tmp_path / "model").exists()
    steps.clear()
    monkeypatch.setattr(DSNTrainer, "train_step", lambda self: counted(self))
    build(tmp_path / "model").run(plugin="Linear")
    assert steps == [4, 5, 6]  # resumed after the checkpoint at 3, not started over
    resumed = load_bundle(tmp_path / "model")
    assert resumed.manifest["training"]["dsn"]["iterations"] == 6

    steps.clear()
    wf = build(tmp_path / "straight")
    wf.base_dir = str(tmp_path / "work-straight")
    wf.run(plugin="Linear")
    assert steps == [1, 2, 3, 4, 5, 6]
    with torch.no_grad():
        x = torch.rand(1, 1, 16, 16)
        torch.testing.assert_close(resumed.load_generator()(x), load_bundle(tmp_path / "straight").load_generator()(x))
