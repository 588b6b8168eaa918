"""Training: presets, schedules, end-to-end smoke run, bit-for-bit resume, signals, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ddasr_nipype.errors import (  # noqa: E402
    CheckpointError,
    TrainingDataError,
    VGGWeightsNotFoundError,
)
from ddasr_nipype.training.config import DSNStageConfig, TrainingPreset, load_preset  # noqa: E402
from ddasr_nipype.training.datasets import SliceSet, SliceStack, find_t1w, prepare_datasets  # noqa: E402
from ddasr_nipype.training.dsn_trainer import DSNTrainer, dsn_learning_rate  # noqa: E402
from ddasr_nipype.training.engine import EXIT_INTERRUPTED  # noqa: E402
from ddasr_nipype.training.pipeline import (  # noqa: E402
    OutputNotWritableError,
    TrainingOptions,
    check_writable,
    load_backbone,
    run_training,
)
from ddasr_nipype.training.srn_trainer import SRNTrainer  # noqa: E402
from ddasr_nipype.training.synthesis import synthesize_pairs  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the 2-core test machine is shared, oversubscription makes torch 10x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def smoke():
    return load_preset("smoke")


@pytest.fixture(scope="module")
def slices(hr_bids, lr_bids, smoke):
    hr, lr, summary = prepare_datasets(find_t1w(hr_bids), find_t1w(lr_bids), smoke.data)
    return hr, lr, summary


@pytest.fixture(scope="module")
def vgg():
    from ddasr_nipype.models import load_vgg19

    return load_vgg19(allow_random=True, seed=0)


def _kwargs(vgg):
    return {"vgg": vgg[0], "backbone": vgg[1], "device": "cpu", "seed": 3, "tensorboard": False}


# -- presets ----------------------------------------------------------------------------------------
def test_presets_load_and_round_trip():
    for name in ("paper", "fast", "smoke"):
        preset = load_preset(name)
        assert isinstance(preset, TrainingPreset) and preset.name == name
        assert TrainingPreset.from_dict(preset.to_dict()) == preset
    paper = load_preset("paper")
    assert (paper.dsn.iterations, paper.dsn.batch_size, paper.dsn.model["d_model"]) == (300_000, 3, 512)
    assert paper.srn.iterations == 250_000 and paper.srn.eta_min == 1e-7 and paper.srn.betas == (0.9, 0.99)
    with pytest.raises(AttributeError):
        paper.dsn.iterations = 3  # frozen


def test_preset_validation_and_overrides(tmp_path, smoke):
    bad = tmp_path / "bad.yml"
    bad.write_text("dsn: {iterations: 10, patch_size: 36}\n")
    with pytest.raises(ValueError, match="multiple of scale x DSN patch embedding = 16"):
        load_preset(bad)
    bad.write_text("dsn: {iterations: 10, typo_key: 1}\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_preset(bad)
    with pytest.raises(ValueError, match="unknown preset"):
        load_preset("nope")
    over = smoke.with_overrides(iterations_dsn=7, iterations_srn=9, batch_size=5, patch_size=48)
    assert (over.dsn.iterations, over.srn.iterations, over.dsn.batch_size, over.srn.patch_size) == (7, 9, 5, 48)
    assert smoke.dsn.iterations == 4  # the original is untouched


def test_dsn_learning_rate_schedule():
    cfg = DSNStageConfig(iterations=100, warmup_iterations=10, lr=2e-4, warmup_lr=5e-5, decay=1e-5)
    assert dsn_learning_rate(0, cfg) == pytest.approx(5e-5)
    assert dsn_learning_rate(5, cfg) == pytest.approx(1.25e-4)
    assert dsn_learning_rate(10, cfg) == pytest.approx(2e-4)
    assert dsn_learning_rate(10 + 100_000, cfg) == pytest.approx(1e-4)


# -- data ---------------------------------------------------------------------------------------------
def test_prepared_slices_match_the_x2_target(slices, smoke, hr_files):
    hr, lr, summary = slices
    assert summary["lr_voxel_size"] == pytest.approx(2.0) and summary["hr_voxel_size"] == pytest.approx(1.0)
    # forrest (sub-mm, 80x112x112 LAS) is resampled to 1 mm; trio is already 1 mm
    import nibabel as nib

    forrest = nib.load(str(hr_files["forrest"]))
    expected = round(112 * float(forrest.header.get_zooms()[1]))
    shapes = {s.name: s.slices.shape[1:] for s in hr.stacks}
    assert shapes["sub-trio_T1w"] == (96, 96)
    assert shapes["sub-forrest_T1w"] == (expected, expected) and expected < 112
    for stack in hr.stacks + lr.stacks:  # background slices skipped, normalised to about [0, 1]
        fg = (stack.slices > smoke.data.foreground_threshold).mean(axis=(1, 2))
        assert fg.min() >= smoke.data.min_brain_fraction
        assert 0.9 < np.percentile(stack.slices, 99.9) < 1.6
    rng = np.random.default_rng(0)
    patches = hr.sample_patches(rng, 5, 32, min_fraction=0.1)
    assert patches.shape == (5, 1, 32, 32) and patches.dtype == np.float32


def test_hr_extra_planes_add_the_other_planes_of_the_same_resampled_volume(hr_files, smoke):
    from ddasr_nipype.data.io import load_volume, to_ras
    from ddasr_nipype.data.slicing import isotropic_resample
    from ddasr_nipype.training.datasets import prepare_hr_stacks, prepare_volume_slices

    cfg = smoke.data.replace(hr_extra_planes=["axial", "coronal"], min_brain_fraction=0.0)
    assert cfg.hr_extra_planes == ("axial", "coronal")
    assert TrainingPreset.from_dict(smoke.replace(data=cfg).to_dict()).data == cfg
    stacks = prepare_hr_stacks(hr_files["forrest"], cfg, voxel_size=1.0)
    assert [s.name for s in stacks] == ["sub-forrest_T1w", "sub-forrest_T1w_axial", "sub-forrest_T1w_coronal"]
    # the sagittal stack is what the single-plane path gives; the others slice the same normalised volume
    single = prepare_volume_slices(hr_files["forrest"], cfg, voxel_size=1.0)
    np.testing.assert_array_equal(stacks[0].slices, single.slices)
    ras = np.asarray(isotropic_resample(to_ras(load_volume(hr_files["forrest"]))[0], 1.0).dataobj, np.float32)
    vol = stacks[0].slices  # [x, y, z]: every sagittal slice kept (min_brain_fraction 0)
    assert vol.shape == ras.shape
    np.testing.assert_array_equal(stacks[1].slices, np.moveaxis(vol, 2, 0))  # axial: vol[:, :, k]
    np.testing.assert_array_equal(stacks[2].slices, np.moveaxis(vol, 1, 0))  # coronal: vol[:, j, :]
    assert all(s.voxel_size == 1.0 and s.normalization == stacks[0].normalization for s in stacks)
    for bad in (["sagittal"], ["axial", "axial"], ["oblique"]):
        with pytest.raises(ValueError, match="hr_extra_planes"):
            smoke.data.replace(hr_extra_planes=bad)


def test_the_three_plane_experiment_differs_from_its_control_only_in_the_hr_planes():
    """scripts/probes/3planes.yml and its control (a model-card experiment) stay a controlled pair."""
    exp = load_preset(REPO / "scripts" / "probes" / "3planes.yml")
    control = load_preset(REPO / "scripts" / "probes" / "3planes-control.yml")
    assert exp.data.hr_extra_planes == ("coronal", "axial") and control.data.hr_extra_planes == ()
    assert exp.data.replace(hr_extra_planes=()) == control.data
    assert (exp.srn, exp.synthesis) == (control.srn, control.synthesis)
    assert exp.srn.iterations == exp.srn.restart_period == 1500


def test_bids_queries_with_filters_and_labels(tmp_path, hr_bids):
    from ddasr_nipype.training.datasets import load_filters

    assert [f.name for f in find_t1w(hr_bids)] == ["sub-forrest_T1w.nii.gz", "sub-trio_T1w.nii.gz"]
    assert [f.name for f in find_t1w(hr_bids, participant_label=["sub-trio"])] == ["sub-trio_T1w.nii.gz"]
    flt = tmp_path / "filters.json"
    flt.write_text(json.dumps({"t1w": {"subject": "forrest"}}))
    assert [f.name for f in find_t1w(hr_bids, filters=load_filters(flt))] == ["sub-forrest_T1w.nii.gz"]
    flt.write_text("{not json")
    with pytest.raises(TrainingDataError, match="cannot read the BIDS filter file"):
        load_filters(flt)


def test_slice_set_archive_is_lossless(tmp_path, slices):
    hr = slices[0]
    path = hr.save(tmp_path / "hr.npz")
    back = SliceSet.load(path)
    assert [s.name for s in back.stacks] == [s.name for s in hr.stacks]
    for a, b in zip(hr.stacks, back.stacks):
        assert b.slices.dtype == np.float32 and np.array_equal(a.slices, b.slices)


# -- resume --------------------------------------------------------------------------------------------
def _assert_same_state(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_dsn_resume_is_bit_for_bit(tmp_path, slices, smoke, vgg):
    hr, lr, _ = slices
    straight = DSNTrainer(smoke, tmp_path / "a", hr, lr, **_kwargs(vgg))
    straight.run()
    first = DSNTrainer(smoke, tmp_path / "b", hr, lr, **_kwargs(vgg))
    first.run(until=2)
    assert first.iteration == 2 and first.checkpoint_path.is_file()
    resumed = DSNTrainer(smoke, tmp_path / "b", hr, lr, **_kwargs(vgg))
    assert resumed.resume() == 2
    resumed.run()
    assert resumed.iteration == straight.iteration == smoke.dsn.iterations
    _assert_same_state(straight.model_state(), resumed.model_state())
    # and the run really trained: the weights moved away from their initialisation
    fresh = DSNTrainer(smoke, tmp_path / "c", hr, lr, **_kwargs(vgg)).dsn.state_dict()
    trained = straight.dsn.state_dict()
    assert any(not torch.equal(fresh[k], trained[k]) for k in fresh)
    # the CSV log has each iteration once, even after the resume
    rows = (tmp_path / "b" / "logs" / "dsn.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4]


def test_srn_resume_is_bit_for_bit_with_ema_and_restarts(tmp_path, slices, smoke, vgg):
    hr, lr, _ = slices
    from ddasr_nipype.models import DSN
    from ddasr_nipype.training.dsn_trainer import build_dsn_config

    torch.manual_seed(0)
    dsn = DSN(build_dsn_config(smoke))
    pairs = synthesize_pairs(dsn, hr, lr, scale=2, rng=np.random.default_rng(0), batch_size=16)
    assert len(pairs) == len(hr)
    lr0, hr0 = pairs.pair(0)
    assert hr0.shape == (2 * lr0.shape[0], 2 * lr0.shape[1]) and lr0.dtype == np.float32
    straight = SRNTrainer(smoke, tmp_path / "a", pairs, **_kwargs(vgg))
    straight.run()
    first = SRNTrainer(smoke, tmp_path / "b", pairs, **_kwargs(vgg))
    first.run(until=3)  # past the pixel warm-up (1) and one warm restart (period 2)
    resumed = SRNTrainer(smoke, tmp_path / "b", pairs, **_kwargs(vgg))
    resumed.resume()
    resumed.run()
    _assert_same_state(straight.model_state(), resumed.model_state())
    g, e = straight.generator.state_dict(), straight.ema.state_dict()
    assert any(not torch.equal(g[k], e[k]) for k in g)  # the EMA is a distinct average


def test_corrupt_checkpoint_raises_checkpoint_error(tmp_path, slices, smoke, vgg):
    hr, lr, _ = slices
    trainer = DSNTrainer(smoke, tmp_path, hr, lr, **_kwargs(vgg))
    trainer.run(until=1)
    data = trainer.checkpoint_path.read_bytes()
    trainer.checkpoint_path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        DSNTrainer(smoke, tmp_path, hr, lr, **_kwargs(vgg)).resume()
    trainer.checkpoint_path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        DSNTrainer(smoke, tmp_path, hr, lr, **_kwargs(vgg)).resume()
    trainer.save()
    other = smoke.with_overrides(iterations_dsn=9)
    with pytest.raises(CheckpointError, match="other dsn/data settings"):
        DSNTrainer(other, tmp_path, hr, lr, **_kwargs(vgg)).resume()


# -- end to end -------------------------------------------------------------------------------------------
def _cli_args(hr_bids, lr_bids, out, *extra):
    return ["--hr", str(hr_bids), "--lr", str(lr_bids), "--out", str(out), "--preset", "smoke",
            "--num-threads", "1", *map(str, extra)]


def test_smoke_cli_writes_a_bundle_that_loads_and_runs(tmp_path, hr_bids, lr_bids, lr_file):
    from click.testing import CliRunner

    from ddasr_nipype.bids_app.train import main
    from ddasr_nipype.bundle import load_bundle

    out = tmp_path / "model"
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    result = CliRunner().invoke(main, _cli_args(hr_bids, lr_bids, out, "--allow-random-vgg19", "--seed", "1"))
    assert result.exit_code == 0, result.output
    # an in-process caller keeps its signals (a blocked mask would pass to its child processes)
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == mask
    bundle = load_bundle(out)
    assert (bundle.scale, bundle.plane, bundle.has_dsn) == (2, "sagittal", True)
    assert bundle.normalization["percentiles"] == [0.5, 99.5]
    assert bundle.preprocessing["hr_voxel_size"] == pytest.approx(1.0)
    assert bundle.backbone["source"] == "random" and bundle.backbone["allow_random_opt_in"] is True
    training = bundle.manifest["training"]
    assert training["preset"] == "smoke" and training["srn"]["iterations"] == 4
    assert training["dsn"]["iterations"] == 4 and np.isfinite(training["srn"]["final_losses"]["g_total"])
    card = (out / "MODEL_CARD.md").read_text()
    assert "random, untrained VGG19" in card and "sub-IXI603" in card
    with torch.no_grad():
        sr = bundle.load_generator("cpu")(torch.rand(1, 1, 20, 24))
        lr = bundle.load_dsn("cpu")(torch.rand(1, 1, 32, 48), torch.rand(1, 1, 16, 16))
    assert sr.shape == (1, 1, 40, 48) and lr.shape == (1, 1, 16, 24)
    work = tmp_path / "model.work"
    for rel in ("logs/dsn.csv", "logs/srn.csv", "logs/dsn_losses.png", "logs/srn_losses.png",
                "images/dsn_0000004.png", "images/srn_0000004.png", "pairs/pairs.npz",
                "checkpoints/dsn_last.pt", "checkpoints/srn_last.pt"):
        assert (work / rel).is_file(), rel
    assert list((work / "logs" / "tensorboard" / "srn").glob("events.out.tfevents.*"))

    # a second run into the same work dir needs --resume; with it, the finished run is not redone
    again = CliRunner().invoke(main, _cli_args(hr_bids, lr_bids, out, "--allow-random-vgg19", "--seed", "1"))
    assert again.exit_code == 1 and "--resume" in again.output
    resumed = CliRunner().invoke(main, _cli_args(hr_bids, lr_bids, out, "--allow-random-vgg19", "--seed", "1",
                                                 "--resume", "--no-tensorboard"))
    assert resumed.exit_code == 0, resumed.output
    assert load_bundle(out).sha256 == bundle.sha256  # same weights: nothing was retrained

    # the inference node runs the trained bundle
    from ddasr_nipype.interfaces import SuperResolve

    res = SuperResolve(in_file=str(lr_file), model=str(out), num_threads=1).run(cwd=str(tmp_path))
    import nibabel as nib

    in_shape = nib.load(str(lr_file)).shape
    out_shape = nib.load(res.outputs.out_file).shape
    assert sorted(out_shape) != sorted(in_shape) and np.prod(out_shape) == 4 * np.prod(in_shape)


def test_sigterm_writes_a_checkpoint_and_exits_75(tmp_path, hr_bids, lr_bids):
    out = tmp_path / "model"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ddasr_nipype.bids_app.train",
           *_cli_args(hr_bids, lr_bids, out, "--allow-random-vgg19", "--iterations-dsn", "5000",
                      "--no-tensorboard")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    log = tmp_path / "model.work" / "logs" / "dsn.csv"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "SIGTERM" in err and "--resume" in err
    from ddasr_nipype.training.checkpoint import load_checkpoint

    state = load_checkpoint(tmp_path / "model.work" / "checkpoints" / "dsn_last.pt", stage="dsn")
    assert 2 <= state["iteration"] < 5000 and state["finished"] is False
    assert not out.exists()  # no bundle from an interrupted run
    assert not list((tmp_path / "model.work" / "checkpoints").glob(".*tmp"))  # no temp file left


# -- errors -----------------------------------------------------------------------------------------------
def _options(hr, lr, out, **kw):
    base = {"hr_dir": Path(hr), "lr_dir": Path(lr), "out_dir": Path(out), "preset": load_preset("smoke"),
            "allow_random_vgg19": True, "tensorboard": False, "num_threads": 1}
    return TrainingOptions(**{**base, **kw})


def test_empty_dataset_raises(tmp_path, lr_bids):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.8.0"}))
    with pytest.raises(TrainingDataError, match="no T1w image found in the HR dataset"):
        run_training(_options(empty, lr_bids, tmp_path / "m"))
    with pytest.raises(TrainingDataError, match="no T1w image found"):
        find_t1w(lr_bids, participant_label=["nobody"])


def test_mismatched_resolutions_raise(tmp_path, hr_bids, lr_bids):
    # swapped datasets: the "HR" data (2 mm) are coarser than the "LR" data
    with pytest.raises(TrainingDataError, match="not finer than the LR data"):
        prepare_datasets(find_t1w(lr_bids), find_t1w(hr_bids, participant_label=["trio"]), load_preset("smoke").data)
    # two LR resolutions in one run
    with pytest.raises(TrainingDataError, match="mismatched sagittal in-plane voxel sizes"):
        prepare_datasets(find_t1w(hr_bids, participant_label=["trio"]),
                         find_t1w(lr_bids) + find_t1w(hr_bids, participant_label=["forrest"]),
                         load_preset("smoke").data)


def test_images_too_small_for_the_patch_size(tmp_path, hr_bids, lr_bids):
    opts = _options(hr_bids, lr_bids, tmp_path / "m", preset=load_preset("smoke").with_overrides(patch_size=128))
    with pytest.raises(TrainingDataError, match="too small for the patch size 128x128"):
        run_training(opts)


def test_missing_vgg_weights_need_the_explicit_opt_in(tmp_path, hr_bids, lr_bids, monkeypatch):
    monkeypatch.delenv("DDASR_VGG19_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(VGGWeightsNotFoundError, match="allow_random"):
        load_backbone(_options(hr_bids, lr_bids, tmp_path / "m", allow_random_vgg19=False))
    from click.testing import CliRunner

    from ddasr_nipype.bids_app.train import main

    result = CliRunner().invoke(main, _cli_args(hr_bids, lr_bids, tmp_path / "m"))
    assert result.exit_code == 1 and "No VGG19 weights found" in result.output
    assert not (tmp_path / "m").exists()


def test_unwritable_output_directory(tmp_path, hr_bids, lr_bids):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputNotWritableError, match="not writable"):
        check_writable(blocker / "model")
    with pytest.raises(OutputNotWritableError):
        run_training(_options(hr_bids, lr_bids, blocker / "sub" / "model"))
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OutputNotWritableError):
            check_writable(locked / "model")


def test_srn_only_with_a_classical_degradation(tmp_path, hr_bids):
    """No DSN, no LR data: pairs from the bicubic degradation, a bundle without dsn.pt."""
    pytest.importorskip("ddasr_nipype.degradations")
    preset = load_preset("smoke")
    preset = preset.replace(data=preset.data.replace(hr_voxel_size=1.0))
    bundle = run_training(_options(hr_bids, hr_bids, tmp_path / "m", degradation="bicubic", lr_dir=None,
                                   preset=preset, hr_participant_label=("trio",)))
    assert not bundle.has_dsn and bundle.manifest["training"]["degradation"] == "bicubic"
    from ddasr_nipype.training.datasets import PairSet

    pairs = PairSet.load(tmp_path / "m.work" / "pairs" / "pairs.npz")
    lr0, hr0 = pairs.pair(10)
    assert pairs.source == "bicubic" and hr0.shape == (96, 96) and lr0.shape == (48, 48)
    # bicubic down-sampling keeps the local mean: compare with a 2x2 box average
    box = hr0.reshape(48, 2, 48, 2).mean(axis=(1, 3))
    assert np.abs(lr0 - np.clip(box, 0, 1)).mean() < 0.05
    with pytest.raises(ValueError, match="unknown degradation"):
        from ddasr_nipype.training.synthesis import degrade_pairs

        degrade_pairs(SliceSet([SliceStack("x", hr0[None], 1.0)]), "nearest", scale=2,
                      rng=np.random.default_rng(0))


def test_srn_only_against_an_existing_dsn(tmp_path, hr_bids, lr_bids, slices, smoke, vgg):
    """--dsn-from a DSN checkpoint: stage 1 is skipped, the given DSN makes the pairs and joins the bundle."""
    hr, lr, _ = slices
    trainer = DSNTrainer(smoke, tmp_path / "dsn-run", hr, lr, **_kwargs(vgg))
    trainer.run(until=2)
    bundle = run_training(_options(hr_bids, lr_bids, tmp_path / "m", dsn_from=trainer.checkpoint_path,
                                   hr_participant_label=("trio",)))
    assert bundle.manifest["training"]["dsn"]["source"] == "checkpoint"
    assert bundle.manifest["training"]["dsn"]["iterations"] == 2
    assert not (tmp_path / "m.work" / "checkpoints" / "dsn_last.pt").exists()  # no DSN training
    dsn = bundle.load_dsn()
    for key, value in trainer.dsn.state_dict().items():
        assert torch.equal(dsn.state_dict()[key], value)


def test_synthesis_matches_intensities_and_mixes_classical_pairs(tmp_path, hr_bids, lr_bids, slices, smoke, vgg):
    from ddasr_nipype.degradations import area_downsample, bicubic_downsample
    from ddasr_nipype.training.config import SynthesisConfig
    from ddasr_nipype.training.datasets import PairSet
    from ddasr_nipype.training.pipeline import run_synthesis_stage

    hr, lr, _ = slices
    dsn = DSNTrainer(smoke, tmp_path / "dsn-run", hr, lr, **_kwargs(vgg)).dsn
    preset = smoke.replace(synthesis=SynthesisConfig(match_intensity=True, mix=["bicubic", "realsr"]))
    options = _options(hr_bids, lr_bids, tmp_path / "m", preset=preset)
    pairs = run_synthesis_stage(options, hr, lr, dsn)
    n = len(hr.stacks)
    assert pairs.source == "dsn+matched|bicubic|realsr" and len(pairs.lr) == 3 * n
    assert pairs.names[0].endswith("|dsn+matched") and pairs.names[n].endswith("|bicubic")
    assert PairSet.load(tmp_path / "m.work" / "pairs" / "pairs.npz").source == pairs.source
    for k in range(n):  # the DSN set has the HR contrast; the bicubic set is plain bicubic
        ref = bicubic_downsample(np.clip(pairs.hr[k][0].astype(np.float64), 0, 1), 2)
        assert np.percentile(pairs.lr[k][0], 90) == pytest.approx(np.percentile(ref, 90), abs=0.01)
        np.testing.assert_allclose(pairs.lr[n + k], np.stack([bicubic_downsample(np.clip(h, 0, 1), 2)
                                                               for h in pairs.hr[n + k]]), atol=1e-5)
    # classical pairs (--degradation, no DSN) take the mix too
    options = _options(hr_bids, lr_bids, tmp_path / "c", preset=smoke.replace(
        synthesis=SynthesisConfig(mix=["area", "kspace"])), degradation="bicubic")
    pairs = run_synthesis_stage(options, hr, None)
    assert pairs.source == "bicubic|area|kspace" and len(pairs.lr) == 3 * n
    np.testing.assert_allclose(pairs.lr[n], np.stack([area_downsample(np.clip(h, 0, 1), 2) for h in pairs.hr[n]]),
                               atol=1e-6)
    with pytest.raises(ValueError, match="mix"):
        SynthesisConfig(mix=("jpeg",))
    with pytest.raises(ValueError, match="mix"):
        SynthesisConfig(mix="bicubic")


def test_cli_usage_errors(tmp_path, hr_bids, lr_bids):
    from click.testing import CliRunner

    from ddasr_nipype.bids_app.train import main

    runner = CliRunner()
    res = runner.invoke(main, _cli_args(hr_bids, lr_bids, tmp_path / "m", "--dsn-from", str(tmp_path),
                                        "--degradation", "bicubic"))
    assert res.exit_code == 2 and "mutually exclusive" in res.output
    res = runner.invoke(main, ["--hr", str(hr_bids), "--out", str(tmp_path / "m")])
    assert res.exit_code == 2 and "--lr is required" in res.output
    res = runner.invoke(main, _cli_args(hr_bids, lr_bids, tmp_path / "m", "--preset", "nope"))
    assert res.exit_code == 2 and "unknown preset" in res.output
    # a learned-estimator preset whose estimator weights are not there: refused before any work
    shipped = (Path(__file__).resolve().parents[1] / "ddasr_nipype/training/presets/t1w-x2-ln-cpu.yml").read_text()
    (tmp_path / "ln.yml").write_text(shipped.replace("out/ln/noise-estimator.pt", str(tmp_path / "none.pt")))
    res = runner.invoke(main, _cli_args(hr_bids, lr_bids, tmp_path / "ln-out", "--preset", str(tmp_path / "ln.yml")))
    assert res.exit_code == 2 and "noise_estimator_weights" in res.output and "none.pt" in res.output
    assert not (tmp_path / "ln-out").exists()


def test_ema_decay_warms_up_so_short_runs_forget_the_random_init():
    from types import SimpleNamespace

    trainer = SimpleNamespace(preset=SimpleNamespace(srn=SimpleNamespace(ema_decay=0.999)))
    decay = [SRNTrainer.ema_decay_at(trainer, t) for t in range(1, 2001)]
    assert decay[0] == pytest.approx(2 / 11) and max(decay) <= 0.999
    assert all(a <= b for a, b in zip(decay, decay[1:]))
    # weight left on the initial (random) generator after 2000 updates: ~0.1 % with the warm-up,
    # versus 0.999 ** 2000 = 13.5 % with a constant decay
    assert np.prod(decay) < 0.002 < 0.135 < 0.999 ** 2000 + 1e-3


# -- LR noise, time limits, fine-tuning ----------------------------------------------------------------
def test_lr_noise_settings_are_validated():
    from ddasr_nipype.training.config import SRNStageConfig, lr_noise_settings

    assert lr_noise_settings({}) == (0.0, 0.0, 0.0, 0.0, 0.0, "gaussian", 1, 1)
    assert lr_noise_settings({"probability": 0.5, "sigma": [0.0, 0.03]}) == (0.5, 0.0, 0.03, 0.0, 0.0, "gaussian", 1, 1)
    assert lr_noise_settings({"sigma": [0.0, 0.03], "correlation": [0.2, 1.0]}).correlation_high == 1.0
    rician = lr_noise_settings({"kind": "rician", "sigma": [0.0, 0.03], "coils": [1, 4]})
    assert (rician.kind, rician.coils_low, rician.coils_high) == ("rician", 1, 4)
    for bad, match in (({"sigma": [0.03, 0.01]}, "low <= high"), ({"probability": 1.5, "sigma": [0, 0.1]}, r"\[0, 1\]"),
                       ({"sigma": 0.1}, r"\[low, high\]"), ({"kind": "poisson", "sigma": [0, 0.1]}, "kind must be"),
                       ({"kind": "rician", "sigma": [0, 0.1], "coils": [0, 2]}, "coils must satisfy"),
                       ({"sigma": [0, 0.1], "coils": [1, 2]}, "needs kind: rician"),
                       ({"kind": "rician", "sigma": [0, 0.1], "coils": [1.5, 2]}, "whole numbers"),
                       ({"sigma": [0, 0.1], "level": 1}, "unknown keys"),
                       ({"sigma": [0, 0.1], "correlation": [-1, 1]}, "correlation must satisfy")):
        with pytest.raises(ValueError, match=match):
            SRNStageConfig(lr_noise=bad)


def test_add_lr_noise_draws_per_patch_levels_from_the_rng():
    from ddasr_nipype.training.datasets import PairSet

    clean = np.full((64, 1, 16, 16), 0.5, dtype=np.float32)
    noisy = PairSet.add_lr_noise(clean.copy(), np.random.default_rng(1), 1.0, 0.02, 0.04)
    std = (noisy - clean).std(axis=(1, 2, 3))
    assert np.all((std > 0.015) & (std < 0.05)) and std.std() > 0.003  # one level per patch, in range
    again = PairSet.add_lr_noise(clean.copy(), np.random.default_rng(1), 1.0, 0.02, 0.04)
    assert np.array_equal(noisy, again)  # replayable from the trainer's RNG
    half = PairSet.add_lr_noise(clean.copy(), np.random.default_rng(2), 0.5, 0.05, 0.05)
    untouched = np.all(half == clean, axis=(1, 2, 3))
    assert 16 < untouched.sum() < 48  # about half the patches keep their values
    assert np.array_equal(PairSet.add_lr_noise(clean.copy(), np.random.default_rng(3), 0.0, 0.1, 0.1), clean)


def test_pair_sets_report_each_crops_slice_and_each_slices_noise_level():
    from ddasr_nipype.training.datasets import PairSet
    from ddasr_nipype.training.synthesis import noise_sigma

    rng = np.random.default_rng(0)
    hr = [rng.uniform(size=(n, 32, 32)).astype(np.float32) for n in (3, 4)]
    lr = [(h[:, ::2, ::2] + rng.normal(0, 0.03, (len(h), 16, 16))).astype(np.float32) for h in hr]
    pairs = PairSet(lr, hr, 2)
    lr_c, hr_c, index = pairs.sample_pairs(np.random.default_rng(1), 16, 8, return_index=True)
    lr_again, hr_again = pairs.sample_pairs(np.random.default_rng(1), 16, 8)
    assert np.array_equal(lr_c, lr_again) and np.array_equal(hr_c, hr_again)  # same draws either way
    assert len(set(index.tolist())) > 3
    for k, n in enumerate(index):  # each LR crop lies in the slice its index names
        whole = pairs.pair(int(n))[0]
        assert any(np.array_equal(whole[i:i + 4, j:j + 4], lr_c[k, 0]) for i in range(13) for j in range(13))
    levels = pairs.lr_noise_sigma()
    assert levels.shape == (7,)
    np.testing.assert_allclose(levels, [noise_sigma(pairs.pair(n)[0]) for n in range(7)], rtol=1e-5)
    # add_lr_noise can say what it added: the level of each patch's noise, 0 where it added none
    clean = np.full((64, 1, 16, 16), 0.5, dtype=np.float32)
    noisy = clean.copy()
    added = PairSet.add_lr_noise(noisy, np.random.default_rng(2), 0.5, 0.02, 0.06, return_sigma=True)
    std = (noisy - clean).std(axis=(1, 2, 3))
    assert np.array_equal(added == 0, std == 0) and 16 < (added == 0).sum() < 48
    np.testing.assert_allclose(std[added > 0], added[added > 0], rtol=0.25)


def test_srn_trainer_gives_a_noise_level_generator_each_crops_level(tmp_path, slices, smoke, vgg):
    hr, lr, _ = slices
    from ddasr_nipype.models import DSN
    from ddasr_nipype.training.dsn_trainer import build_dsn_config

    torch.manual_seed(0)
    pairs = synthesize_pairs(DSN(build_dsn_config(smoke)), hr, lr, scale=2, rng=np.random.default_rng(0))
    srn = smoke.srn.replace(generator={**smoke.srn.generator, "noise_level_input": True},
                            lr_noise={"probability": 0.5, "sigma": [0.1, 0.1]}, batch_size=16)
    trainer = SRNTrainer(smoke.replace(srn=srn), tmp_path / "nl", pairs, **_kwargs(vgg))
    assert trainer.generator.conv_first.in_channels == 2
    trainer.run(until=2)
    batch = trainer._last_batch
    (sigma,) = batch["extra"]
    assert sigma.shape == (len(batch["lr"]),)
    # clean crops get their slice's level (a few per cent at most), noisy ones about 0.1 on top of it
    clean = sigma.numpy() < 0.06
    assert clean.any() and (~clean).any()
    slice_levels = pairs.lr_noise_sigma()
    for value in sigma.numpy():  # sqrt(slice level ** 2 + added ** 2), added 0 or 0.1
        nearest = np.abs(np.sqrt(slice_levels**2 + (0.0 if value < 0.06 else 0.1) ** 2) - value).min()
        assert nearest < 1e-6
    assert "SR (EMA)" in trainer.image_columns()


def test_noise_level_jitter_tells_the_generator_each_crops_level_off_by_a_bounded_factor(tmp_path, slices, smoke,
                                                                                        vgg):
    hr, lr, _ = slices
    from ddasr_nipype.models import DSN
    from ddasr_nipype.training.dsn_trainer import build_dsn_config

    with pytest.raises(ValueError, match="noise_level_jitter"):
        smoke.srn.replace(noise_level_jitter=-0.1)
    torch.manual_seed(0)
    pairs = synthesize_pairs(DSN(build_dsn_config(smoke)), hr, lr, scale=2, rng=np.random.default_rng(0))
    srn = smoke.srn.replace(generator={**smoke.srn.generator, "noise_level_input": True},
                            lr_noise={"probability": 1.0, "sigma": [0.1, 0.1]}, batch_size=16,
                            noise_level_jitter=0.4)
    trainer = SRNTrainer(smoke.replace(srn=srn), tmp_path / "jitter", pairs, **_kwargs(vgg))
    trainer.run(until=2)
    (sigma,) = trainer._last_batch["extra"]
    # the slice's own noise scales with the intensity (here x2 on every crop, noise added after it)
    scaled = SRNTrainer(smoke.replace(srn=srn.replace(intensity_scale=[2.0, 2.0],
                                                      lr_noise={}, noise_level_jitter=0.0)),
                        tmp_path / "scaled", pairs, **_kwargs(vgg))
    scaled.run(until=1)
    (told,) = scaled._last_batch["extra"]
    assert np.isin(told.numpy().round(5), (2 * pairs.lr_noise_sigma()).astype(np.float32).round(5)).all()
    levels = np.sqrt(pairs.lr_noise_sigma() ** 2 + 0.1**2)  # every crop got 0.1 on its slice's level
    # each told level is some slice's level times a factor in [exp(-0.4), exp(0.4)], and not all the same one
    ratios = sigma.numpy()[:, None] / levels[None, :]
    assert ((ratios > np.exp(-0.4) - 1e-6) & (ratios < np.exp(0.4) + 1e-6)).any(axis=1).all()
    assert np.ptp(np.log(sigma.numpy())) > 0.2 > np.ptp(np.log(levels))


def test_a_learned_estimator_generator_is_told_the_added_level_and_keeps_its_estimator(tmp_path, slices, smoke, vgg):
    hr, lr, _ = slices
    from ddasr_nipype.bundle import load_bundle, save_bundle
    from ddasr_nipype.models import DSN, LearnedNoiseEstimator
    from ddasr_nipype.training.dsn_trainer import build_dsn_config

    torch.manual_seed(0)
    pairs = synthesize_pairs(DSN(build_dsn_config(smoke)), hr, lr, scale=2, rng=np.random.default_rng(0))
    generator = {**smoke.srn.generator, "noise_level_input": True, "noise_estimator": "learned"}
    srn = smoke.srn.replace(generator=generator, lr_noise={"probability": 0.5, "sigma": [0.1, 0.1]}, batch_size=16,
                            intensity_scale=[0.7, 1.4])
    with pytest.raises(ValueError, match="noise_estimator_weights"):
        SRNTrainer(smoke.replace(srn=srn), tmp_path / "none", pairs, **_kwargs(vgg))
    estimator = LearnedNoiseEstimator()
    with torch.no_grad():
        estimator.body[-1].bias.fill_(0.3)
    torch.save(estimator.state_dict(), tmp_path / "estimator.pt")
    srn = srn.replace(noise_estimator_weights=str(tmp_path / "estimator.pt"))
    trainer = SRNTrainer(smoke.replace(srn=srn), tmp_path / "learned", pairs, **_kwargs(vgg))
    trainer.run(until=2)
    (sigma,) = trainer._last_batch["extra"]
    # told the added level only: 0 or 0.1, whatever the slice's anatomy or the intensity scale
    assert set(np.round(sigma.numpy().astype(float), 6)) == {0.0, 0.1}
    # the estimator is frozen in the generator and its EMA copy, and goes into the bundle
    for module in (trainer.generator, trainer.ema):
        for key, value in estimator.state_dict().items():
            torch.testing.assert_close(module.noise_estimator.state_dict()[key], value)
    bundle = save_bundle(
        tmp_path / "bundle", name="learned-smoke", generator_state=trainer.ema.state_dict(),
        generator_config=trainer.generator_config, backbone={"source": "random", "seed": 0},
        preprocessing={"plane": "sagittal", "scale": 2, "normalization": {"method": "percentile",
                       "percentiles": [0.5, 99.5]}, "hr_voxel_size": 1.0, "lr_voxel_size": 2.0},
        training={"note": "smoke"})
    bundle = load_bundle(bundle.path)  # read back from disk
    assert bundle.generator_config.noise_estimator == "learned"
    x = torch.rand(2, 1, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(bundle.load_generator().estimate_noise(x), estimator(x))


def test_train_noise_estimator_script_learns_from_a_pair_set_and_writes_estimator_weights(tmp_path, slices, smoke):
    from _scripts import load_script

    from ddasr_nipype.models import DSN, LearnedNoiseEstimator
    from ddasr_nipype.training.dsn_trainer import build_dsn_config

    hr, lr, _ = slices
    torch.manual_seed(0)
    pairs = synthesize_pairs(DSN(build_dsn_config(smoke)), hr, lr, scale=2, rng=np.random.default_rng(0))
    pairs.save(tmp_path / "pairs.npz")
    script = load_script("train_noise_estimator")
    script.main([str(tmp_path / "pairs.npz"), str(tmp_path / "estimator.pt"), "--iterations", "3", "--crop", "16"])
    fresh, trained = LearnedNoiseEstimator().state_dict(), torch.load(tmp_path / "estimator.pt", weights_only=True)
    assert trained.keys() == fresh.keys()
    assert not torch.equal(trained["body.6.bias"], fresh["body.6.bias"])  # it learned from zero
    with pytest.raises(SystemExit, match="adds no LR noise"):
        script.main([str(tmp_path / "pairs.npz"), str(tmp_path / "x.pt"), "--preset", "smoke", "--iterations", "1"])


def test_add_lr_noise_can_correlate_the_noise_and_reports_the_level_the_estimator_sees():
    from ddasr_nipype.training.datasets import PairSet

    clean = np.full((32, 1, 48, 48), 0.5, dtype=np.float32)

    def lag1(noise):  # correlation of horizontally neighbouring pixels
        return np.corrcoef(noise[..., :-1].ravel(), noise[..., 1:].ravel())[0, 1]

    white, corr = clean.copy(), clean.copy()
    level_white = PairSet.add_lr_noise(white, np.random.default_rng(0), 1.0, 0.03, 0.03, return_sigma=True)
    level_corr = PairSet.add_lr_noise(corr, np.random.default_rng(0), 1.0, 0.03, 0.03, 1.0, 1.0, return_sigma=True)
    assert abs(lag1(white - clean)) < 0.03
    assert lag1(corr - clean) == pytest.approx(np.exp(-1 / 4), abs=0.05)  # a Gaussian blur of 1 pixel
    for noisy in (white, corr):  # the drawn deviation either way
        np.testing.assert_allclose((noisy - clean).std(axis=(1, 2, 3)), 0.03, rtol=0.1)
    # the level reported is what the estimator reads on such noise: the deviation for white noise,
    # far lower for blurred noise (as it would on a scan with such noise)
    from ddasr_nipype.training.synthesis import noise_sigma

    assert np.all(level_white == 0.03)
    assert np.all(level_corr < 0.5 * 0.03) and np.ptp(level_corr) < 1e-12
    for noisy, level in ((white, level_white), (corr, level_corr)):
        read = np.mean([noise_sigma(n[0] - 0.5) for n in noisy])
        assert read == pytest.approx(level[0], rel=0.05)
    # no correlation range: the same draws as before the option existed
    again = clean.copy()
    PairSet.add_lr_noise(again, np.random.default_rng(0), 1.0, 0.03, 0.03, 0.0, 0.0)
    assert np.array_equal(again, white)


def test_augment_applies_the_same_flip_or_transpose_to_lr_and_hr():
    from ddasr_nipype.degradations import bicubic_downsample
    from ddasr_nipype.training.config import SRNStageConfig
    from ddasr_nipype.training.datasets import PairSet

    rng = np.random.default_rng(0)
    hr = rng.uniform(size=(64, 1, 16, 16)).astype(np.float32)
    lr = np.stack([[bicubic_downsample(h[0], 2)] for h in hr]).astype(np.float32)
    lr_a, hr_a = PairSet.augment(lr.copy(), hr.copy(), np.random.default_rng(1))
    seen = set()
    for k in range(len(hr)):
        # each augmented HR patch is one of the eight symmetries of its original ...
        matches = [(fr, fc, t) for fr in (0, 1) for fc in (0, 1) for t in (0, 1)
                   if np.array_equal(_dihedral(hr[k, 0], fr, fc, t), hr_a[k, 0])]
        assert len(matches) == 1
        seen.add(matches[0])
        # ... and its LR is still the down-sampling of it (the pair stays aligned)
        np.testing.assert_allclose(lr_a[k, 0], bicubic_downsample(hr_a[k, 0], 2), atol=1e-6)
    assert len(seen) == 8  # all eight symmetries are drawn
    again = PairSet.augment(lr.copy(), hr.copy(), np.random.default_rng(1))
    assert np.array_equal(again[1], hr_a)  # replayable from the trainer's RNG
    assert SRNStageConfig().augment is False
    with pytest.raises(ValueError, match="augment"):
        SRNStageConfig(augment="yes")


def _dihedral(x, flip_rows, flip_cols, transpose):
    x = x[::-1] if flip_rows else x
    x = x[:, ::-1] if flip_cols else x
    return x.T if transpose else x


def test_srn_trainer_feeds_noisy_lr_crops(tmp_path, slices, smoke, vgg):
    hr, lr, _ = slices
    from ddasr_nipype.models import DSN
    from ddasr_nipype.training.dsn_trainer import build_dsn_config

    torch.manual_seed(0)
    pairs = synthesize_pairs(DSN(build_dsn_config(smoke)), hr, lr, scale=2, rng=np.random.default_rng(0))
    noisy = smoke.replace(srn=smoke.srn.replace(lr_noise={"probability": 1.0, "sigma": [0.2, 0.2]}))
    batches = {}
    for name, preset in (("clean", smoke), ("noisy", noisy)):
        trainer = SRNTrainer(preset, tmp_path / name, pairs, **_kwargs(vgg))
        trainer.run(until=1)
        batches[name] = trainer._last_batch["lr"]
    # same crops (the RNG draws the noise after the crop), 0.2 noise added on top
    assert 0.15 < (batches["noisy"] - batches["clean"]).std() < 0.25


def test_srn_trainer_augments_its_crops_when_asked(tmp_path, slices, smoke, vgg):
    hr, lr, _ = slices
    from ddasr_nipype.models import DSN
    from ddasr_nipype.training.dsn_trainer import build_dsn_config

    torch.manual_seed(0)
    pairs = synthesize_pairs(DSN(build_dsn_config(smoke)), hr, lr, scale=2, rng=np.random.default_rng(0))
    augmented = smoke.replace(srn=smoke.srn.replace(augment=True))
    batches = {}
    for name, preset in (("plain", smoke), ("augmented", augmented)):
        trainer = SRNTrainer(preset, tmp_path / name, pairs, **_kwargs(vgg))
        trainer.run(until=1)
        batches[name] = trainer._last_batch
    # same crops (drawn before the symmetries); each one is one of the eight symmetries of the plain crop
    for kind in ("lr", "hr"):
        plain, aug = batches["plain"][kind], batches["augmented"][kind]
        assert not np.array_equal(plain, aug)
        for k in range(len(plain)):
            assert any(np.array_equal(_dihedral(plain[k, 0], *t), aug[k, 0])
                       for t in np.ndindex(2, 2, 2))


def test_time_limits_end_stages_early_and_still_write_the_bundle(tmp_path, hr_bids, lr_bids):
    preset = load_preset("smoke").with_overrides(iterations_dsn=500, iterations_srn=500)
    bundle = run_training(_options(hr_bids, lr_bids, tmp_path / "m", preset=preset, dsn_time_limit=1e-6,
                                   srn_time_limit=1e-6, hr_participant_label=("trio",)))
    training = bundle.manifest["training"]
    assert training["dsn"]["iterations"] == 1 and training["dsn"]["stopped_early"] is True
    assert training["srn"]["iterations"] == 1 and training["srn"]["planned_iterations"] == 500
    assert training["srn"]["stopped_early"] is True
    assert "1 of 500 planned (stopped by the time limit)" in (bundle.path / "MODEL_CARD.md").read_text()
    from ddasr_nipype.training.checkpoint import load_checkpoint

    state = load_checkpoint(tmp_path / "m.work" / "checkpoints" / "srn_last.pt", stage="srn")
    assert state["iteration"] == 1 and state["finished"] is False  # --resume can continue it


def test_srn_stop_at_ends_the_stage_on_the_full_schedule(tmp_path, hr_bids, lr_bids):
    from ddasr_nipype.training.checkpoint import load_checkpoint

    preset = load_preset("smoke").with_overrides(iterations_srn=8)
    bundle = run_training(_options(hr_bids, lr_bids, tmp_path / "m", preset=preset, srn_stop_at=3,
                                   hr_participant_label=("trio",)))
    srn = bundle.manifest["training"]["srn"]
    assert srn["iterations"] == 3 and srn["planned_iterations"] == 8 and srn["stop_at"] == 3
    assert "3 of 8 planned (stopped there by --srn-stop-at)" in (bundle.path / "MODEL_CARD.md").read_text()
    state = load_checkpoint(tmp_path / "m.work" / "checkpoints" / "srn_last.pt", stage="srn")
    assert state["iteration"] == 3 and state["finished"] is False
    # a stop at or past the schedule's end is a full run, not a staged one
    full = run_training(_options(hr_bids, lr_bids, tmp_path / "f", preset=preset, srn_stop_at=8,
                                 hr_participant_label=("trio",)))
    assert full.manifest["training"]["srn"]["iterations"] == 8
    assert full.manifest["training"]["srn"]["stop_at"] is None


def test_fine_tuning_starts_from_the_bundle_generator(tmp_path, hr_bids, lr_bids, slices, smoke, vgg):
    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.errors import ModelBundleError
    from ddasr_nipype.training.datasets import PairSet

    base = run_training(_options(hr_bids, lr_bids, tmp_path / "base", hr_participant_label=("trio",)))
    pairs = PairSet.load(tmp_path / "base.work" / "pairs" / "pairs.npz")
    trainer = SRNTrainer(smoke, tmp_path / "ft", pairs, **_kwargs(vgg))
    info = trainer.init_generator_from(base.path)
    source = base.load_generator()
    for key, value in source.state_dict().items():
        assert torch.equal(trainer.generator.state_dict()[key], value)
        assert torch.equal(trainer.ema.state_dict()[key], value)
    assert info["sha256"] == base.sha256
    tuned = run_training(_options(hr_bids, lr_bids, tmp_path / "tuned", init_generator=base.path,
                                  hr_participant_label=("trio",)))
    assert tuned.manifest["training"]["srn"]["initialized_from"]["sha256"] == base.sha256
    assert "fine-tuned from" in (tuned.path / "MODEL_CARD.md").read_text()
    wider = smoke.replace(srn=smoke.srn.replace(generator={**smoke.srn.generator, "num_feat": 12}))
    with pytest.raises(ModelBundleError, match="differs from this preset"):
        SRNTrainer(wider, tmp_path / "bad", pairs, **_kwargs(vgg)).init_generator_from(base.path)
    # a generator without a noise-level input can start one with it: at first it computes the same
    with_level = smoke.replace(srn=smoke.srn.replace(generator={**smoke.srn.generator, "noise_level_input": True}))
    leveled = SRNTrainer(with_level, tmp_path / "nl", pairs, **_kwargs(vgg))
    leveled.init_generator_from(base.path)
    x = torch.rand(2, 1, 24, 20)
    with torch.no_grad():
        for sigma in (0.0, 0.05):
            torch.testing.assert_close(leveled.ema(x, torch.tensor([sigma, sigma])), source(x))
    from ddasr_nipype.bundle import save_bundle

    leveled_bundle = save_bundle(tmp_path / "leveled", name="leveled", generator_state=leveled.ema.state_dict(),
                                 generator_config=leveled.generator_config, preprocessing=base.preprocessing,
                                 backbone=base.backbone, training={})
    assert leveled_bundle.load_generator().config.noise_level_input is True
    with pytest.raises(ModelBundleError, match="differs from this preset"):  # but not the other way round
        SRNTrainer(smoke, tmp_path / "back", pairs, **_kwargs(vgg)).init_generator_from(leveled_bundle.path)
    assert load_bundle(base.path).sha256 == base.sha256  # the source bundle is untouched


def test_noise_sigma_estimates_gaussian_noise_and_ignores_smooth_structure():
    from ddasr_nipype.training.synthesis import noise_sigma

    yy, xx = np.mgrid[0:96, 0:96] / 96.0
    smooth = 0.2 + 0.5 * xx + 0.2 * yy ** 2
    assert noise_sigma(smooth) < 0.002
    noisy = smooth + np.random.default_rng(0).normal(0, 0.05, smooth.shape)
    assert noise_sigma(noisy) == pytest.approx(0.05, rel=0.1)
    with pytest.raises(ValueError, match="2D image"):
        noise_sigma(np.zeros((2, 5)))


def test_denoise_targets_cleans_hr_keeps_edges_and_lr():
    from ddasr_nipype.training.config import SynthesisConfig
    from ddasr_nipype.training.datasets import PairSet
    from ddasr_nipype.training.synthesis import denoise_targets

    rng = np.random.default_rng(0)
    clean = np.where(np.arange(64)[None, :] < 32, 0.2, 0.8) * np.ones((64, 64))
    hr = (clean + rng.normal(0, 0.05, (3, 64, 64))).astype(np.float32)
    lr = hr[:, ::2, ::2].copy()
    pairs = PairSet([lr], [hr], 2, ["s"], source="dsn")
    assert denoise_targets(pairs, 0.0) is pairs
    out = denoise_targets(pairs, 0.8)
    assert out.source == "dsn+nlmeans(0.8)" and np.array_equal(out.lr[0], lr)
    err_before = np.abs(hr - clean).mean()
    err_after = np.abs(out.hr[0] - clean).mean()
    assert err_after < 0.5 * err_before  # much closer to the clean image
    assert out.hr[0][:, :, 36:].mean() - out.hr[0][:, :, :28].mean() == pytest.approx(0.6, abs=0.03)  # the edge
    with pytest.raises(ValueError, match="denoise_targets"):
        SynthesisConfig(denoise_targets=-1)


def test_match_intensity_takes_the_hr_contrast_and_keeps_the_lr_structure():
    from scipy.ndimage import gaussian_filter, laplace

    from ddasr_nipype.degradations import bicubic_downsample
    from ddasr_nipype.training.datasets import PairSet
    from ddasr_nipype.training.synthesis import match_intensity

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    hr = np.stack([np.clip(0.1 + 0.6 * xx + 0.2 * np.sin(9 * yy + k) + rng.normal(0, 0.02, xx.shape), 0, 1)
                   for k in range(3)]).astype(np.float32)
    ref = np.stack([bicubic_downsample(h.astype(np.float64), 2) for h in hr])
    other_site = (0.3 + 0.5 * ref ** 0.5).astype(np.float32)  # another contrast, same structure
    out = match_intensity(PairSet([other_site], [hr], 2, ["s"], source="dsn"))
    assert out.source == "dsn+matched" and out.hr[0] is hr
    assert np.abs(other_site - ref).mean() > 0.15
    assert np.abs(out.lr[0] - ref).mean() < 0.01  # a monotone contrast change is undone
    for k in range(3):  # the map is monotone: the LR's pixel order is kept
        order = np.argsort(other_site[k].ravel(), kind="stable")
        assert np.all(np.diff(out.lr[0][k].ravel()[order]) >= -1e-6)
    blurred = gaussian_filter(ref, sigma=(0, 2, 2)).astype(np.float32)  # a blurrier site: the blur stays
    matched = match_intensity(PairSet([blurred], [hr], 2)).lr[0]
    detail = lambda x: np.mean([np.abs(laplace(s, mode="nearest")).mean() for s in x])  # noqa: E731
    assert detail(matched) < 0.5 * detail(ref)
    with pytest.raises(ValueError, match="levels"):
        match_intensity(PairSet([other_site], [hr], 2), levels=1)


def test_every_gpu_starter_variant_is_a_valid_recipe(tmp_path):
    """scripts/train_starter_gpu.py runs unattended on a lent GPU: a misspelt key in one of its
    variants would only show there, after the DSN stage."""
    import yaml
    from _scripts import load_script

    from ddasr_nipype.training.config import PRESETS_DIR, TrainingPreset

    script = load_script("train_starter_gpu")
    base = yaml.safe_load((PRESETS_DIR / "starter-gpu.yml").read_text())
    from ddasr_nipype.training.srn_trainer import build_generator_config

    for name in script.VARIANTS:
        preset = TrainingPreset.from_dict(script.variant_preset(name, base, noise_estimator=tmp_path / "e.pt"))
        noise_level = name.startswith(("nl-", "ln-"))
        assert preset.srn.generator.get("global_residual", False) == name.startswith(("res", "nl-", "ln-"))
        assert preset.srn.generator.get("noise_level_input", False) == noise_level
        assert preset.srn.augment == (name.endswith("-aug") or noise_level)
        assert preset.srn.restart_period == preset.srn.iterations  # one cosine, annealed by the end
        assert "--init-generator" not in script.VARIANT_ARGS.get(name, ())  # given with --init
    assert set(script.VARIANT_ARGS) <= set(script.VARIANTS) and set(script.NEEDS_INIT) <= set(script.VARIANTS)
    # the fine-tunes of the previous starter widen its generator (32 features, 2 stride-2 stages, 2 RRDBs,
    # the residual): the same architecture as variant `res`, plus the noise-level channel
    res = build_generator_config(TrainingPreset.from_dict(script.variant_preset("res", base))).to_dict()
    for name in ("nl-bic", "nl-mix"):
        config = build_generator_config(TrainingPreset.from_dict(script.variant_preset(name, base))).to_dict()
        assert {**config, "noise_level_input": False} == res and config["noise_level_input"]
    # the multi-degradation fine-tunes start from the shipped generator as it is: same architecture
    from ddasr_nipype.bundle import load_bundle

    from ddasr_nipype.models import GeneratorConfig

    # the manifest as written (before context_slices existed), read through the config class as loading does
    shipped = GeneratorConfig.from_dict(load_bundle("ixi-t1w-x2").manifest["files"]["srn.pt"]["config"]).to_dict()
    for name in script.MULTI_DEGRADATION:
        preset = TrainingPreset.from_dict(script.variant_preset(name, base))
        assert build_generator_config(preset).to_dict() == shipped and name in script.NEEDS_INIT
        assert script.classical(name) and set(preset.synthesis.mix) <= {"area", "kspace", "realsr"}
    # the ln- variants: the default model's recipe from scratch, told by the bundled t1w-x2's estimator,
    # on every HR training subject through physically grounded degradations
    default = load_bundle("t1w-x2")
    for name in script.LN_VARIANTS:
        preset = TrainingPreset.from_dict(script.variant_preset(name, base, noise_estimator=tmp_path / "e.pt"))
        config = build_generator_config(preset)
        assert config.noise_estimator == "learned" and preset.srn.noise_estimator_weights == str(tmp_path / "e.pt")
        assert script.VARIANT_ARGS[name] == ("--degradation", "mri") and script.classical(name)
        assert preset.srn.lr_noise == load_preset("t1w-x2-ln-cpu").srn.lr_noise and name not in script.NEEDS_INIT
        assert preset.srn.pixel_warmup_iterations == preset.srn.iterations  # L1 only, as t1w-x2
    assert (build_generator_config(TrainingPreset.from_dict(script.variant_preset("ln-d2b3", base))).to_dict()
            == default.generator_config.to_dict())  # the default's architecture
    weights = script.write_noise_estimator("t1w-x2", tmp_path / "est" / "noise-estimator.pt")
    from ddasr_nipype.models import LearnedNoiseEstimator

    estimator = LearnedNoiseEstimator()
    estimator.load_state_dict(torch.load(weights, weights_only=True))
    slices = torch.rand(2, 1, 40, 48) * 0.5 + 0.25
    generator = default.load_generator("cpu").float().eval()
    with torch.no_grad():  # the written estimator reads what the bundle's packed one reads
        torch.testing.assert_close(estimator(slices), generator.estimate_noise(slices))
    with pytest.raises(SystemExit, match="no learned noise estimator"):
        script.write_noise_estimator("ixi-t1w-x2", tmp_path / "none.pt")
    # and they refuse to start without the generator to widen
    with pytest.raises(SystemExit):
        script.main([str(tmp_path / "data"), str(tmp_path / "work"), "--pack", str(tmp_path / "pack"),
                     "--variant", "nl-bic", "--skip-eval"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["est"]  # refused before anything was written


# -- resume provenance, data selection, up-front checks, CLI messages ----------------------------------------
def test_resume_after_a_time_limited_dsn_synthesizes_the_pairs_again(tmp_path, hr_bids, lr_bids, caplog):
    """The DSN stage ends at 1 of 3 iterations (time limit), the run writes a bundle; the resumed run trains
    the DSN on to 3: its pairs come from the final DSN, and the SRN restarts on them."""
    from ddasr_nipype.training.datasets import PairSet
    from ddasr_nipype.training.pipeline import module_digest, prepare_data, run_synthesis_stage

    preset = load_preset("smoke").with_overrides(iterations_dsn=3, iterations_srn=3)
    first = run_training(_options(hr_bids, lr_bids, tmp_path / "m", preset=preset, dsn_time_limit=1e-6,
                                  srn_time_limit=1e-6, hr_participant_label=("trio",)))
    assert first.manifest["training"]["dsn"]["iterations"] == 1
    work = tmp_path / "m.work"
    early = PairSet.load(work / "pairs" / "pairs.npz")
    with caplog.at_level("WARNING", logger="ddasr_nipype.training.pipeline"):
        options = _options(hr_bids, lr_bids, tmp_path / "m", preset=preset, resume=True,
                           hr_participant_label=("trio",))
        bundle = run_training(options)
    training = bundle.manifest["training"]
    assert training["dsn"]["iterations"] == 3 and not training["dsn"]["stopped_early"]
    assert training["srn"]["iterations"] == 3 and not training["srn"]["stopped_early"]
    final_dsn = bundle.load_dsn()
    pairs = PairSet.load(work / "pairs" / "pairs.npz")
    assert pairs.provenance["key"]["dsn_sha256"] == module_digest(final_dsn)
    assert pairs.provenance["dsn_iterations"] == 3 and training["pairs"]["dsn_iterations"] == 3
    assert pairs.provenance["key"]["dsn_sha256"] != early.provenance["key"]["dsn_sha256"]
    # the same pairs as a fresh synthesis with the final DSN
    hr, lr, _ = prepare_data(options)
    fresh = run_synthesis_stage(_options(hr_bids, lr_bids, tmp_path / "fresh"), hr, lr, final_dsn)
    for a, b in zip(fresh.lr + fresh.hr, pairs.lr + pairs.hr):
        np.testing.assert_array_equal(a, b)
    # the SRN did not go on from its checkpoint on the stale pairs: restarted, the old one kept aside
    assert (work / "checkpoints" / "srn_stale.pt").is_file()
    assert "synthesizing the pairs again" in caplog.text and "starts again from iteration 0" in caplog.text
    assert json.loads((work / "checkpoints" / "srn_pairs.json").read_text())["pairs"] == pairs.fingerprint()


def test_resume_refuses_a_changed_data_selection(tmp_path, hr_bids, lr_bids):
    from click.testing import CliRunner

    from ddasr_nipype.bids_app.train import main
    from ddasr_nipype.bundle import load_bundle

    out = tmp_path / "model"
    args = _cli_args(hr_bids, lr_bids, out, "--allow-random-vgg19", "--no-tensorboard",
                     "--iterations-dsn", "1", "--iterations-srn", "1")
    # several labels after one option, as `ddasr --participant-label A B`
    first = CliRunner().invoke(main, [*args, "--hr-participant-label", "forrest", "sub-trio",
                                      "--lr-participant-label", "IXI603"])
    assert first.exit_code == 0, first.output
    files = load_bundle(out).manifest["training"]["data"]["hr_files"]
    assert files == ["sub-forrest_T1w.nii.gz", "sub-trio_T1w.nii.gz"]
    again = CliRunner().invoke(main, [*args, "--resume", "--hr-participant-label", "trio",
                                      "--lr-participant-label", "IXI603"])
    assert again.exit_code == 1, again.output
    assert "another data selection" in again.output and "HR files" in again.output
    assert "sub-forrest_T1w.nii.gz" in again.output and "--work-dir" in again.output
    assert load_bundle(out).manifest["training"]["data"]["hr_files"] == files  # nothing was rewritten
    # the same selection (labels as one comma-separated value) resumes
    same = CliRunner().invoke(main, [*args, "--resume", "--hr-participant-label", "trio,forrest",
                                     "--lr-participant-label", "IXI603"])
    assert same.exit_code == 0, same.output


def _random_bundle(path, preset, **kw):
    from ddasr_nipype.bundle import save_bundle
    from ddasr_nipype.models import SRGenerator
    from ddasr_nipype.training.srn_trainer import build_generator_config

    config = build_generator_config(preset)
    return save_bundle(path, name=path.name, generator_state=SRGenerator(config).state_dict(),
                       generator_config=config, preprocessing={"plane": "sagittal", "scale": 2},
                       backbone={"source": "random"}, training={}, **kw)


def test_init_generator_is_checked_before_any_training(tmp_path, hr_bids, lr_bids, smoke):
    from ddasr_nipype.errors import ChecksumMismatchError, ModelBundleError

    wider = smoke.replace(srn=smoke.srn.replace(generator={**smoke.srn.generator, "num_feat": 12}))
    other = _random_bundle(tmp_path / "wider", wider)
    with pytest.raises(ModelBundleError, match="differs from this preset's in num_feat"):
        run_training(_options(hr_bids, lr_bids, tmp_path / "m", init_generator=other.path))
    tampered = _random_bundle(tmp_path / "tampered", smoke)
    with open(tampered.path / "srn.pt", "ab") as stream:
        stream.write(b"\0")
    with pytest.raises(ChecksumMismatchError):
        run_training(_options(hr_bids, lr_bids, tmp_path / "m", init_generator=tampered.path))
    assert not (tmp_path / "m.work" / "checkpoints").exists()  # no DSN was trained
    assert not (tmp_path / "m.work" / "data").exists()


def test_bundled_model_names_and_inherited_output_settings(tmp_path, hr_bids, lr_bids, smoke):
    from click.testing import CliRunner

    from ddasr_nipype.bids_app.train import main
    from ddasr_nipype.bundle import list_bundled_models
    from ddasr_nipype.training.pipeline import load_dsn

    if "ixi-t1w-x2" in list_bundled_models():
        # resolved like `ddasr --model`: the starter's generator is not smoke's, refused before training
        res = CliRunner().invoke(main, _cli_args(hr_bids, lr_bids, tmp_path / "s", "--allow-random-vgg19",
                                                 "--init-generator", "ixi-t1w-x2"))
        assert res.exit_code == 1 and "differs from this preset" in res.output, res.output
        assert "does not exist" not in res.output and not (tmp_path / "s.work" / "checkpoints").exists()
        _, info = load_dsn("ixi-t1w-x2")
        assert info["source"] == "bundle"
    res = CliRunner().invoke(main, _cli_args(hr_bids, lr_bids, tmp_path / "s", "--dsn-from", "no-such-model"))
    assert res.exit_code == 2 and "unknown model 'no-such-model'" in res.output
    # a fine-tuned model inherits the output settings its source recommends, said so
    base = _random_bundle(tmp_path / "base", smoke, output={"strength": 0.4, "background": "input"})
    preset = smoke.with_overrides(iterations_dsn=1, iterations_srn=1)
    tuned = run_training(_options(hr_bids, lr_bids, tmp_path / "tuned", preset=preset, init_generator=base.path,
                                  hr_participant_label=("trio",)))
    assert tuned.output == {"strength": 0.4, "background": "input", "slice_denoise": 0.0, "projection": "none"}
    assert tuned.manifest["training"]["output"]["note"] == "inherited from base, not re-evaluated"
    assert "strength 0.4, background input, inherited from base, not re-evaluated" in (
        tuned.path / "MODEL_CARD.md").read_text()
    from ddasr_nipype.training.pipeline import _settings_text

    assert _settings_text({"strength": 1.0, "background": "input", "slice_denoise": 2.0,
                           "projection": "area"}) == "strength 1, background input, slice_denoise 2, projection area"


def test_output_directory_checks(tmp_path, hr_bids, lr_bids):
    from ddasr_nipype.training.pipeline import OutputExistsError, check_out_dir

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="not empty.*--overwrite"):
        check_out_dir(_options(hr_bids, lr_bids, full))
    assert check_out_dir(_options(hr_bids, lr_bids, full, overwrite=True)) == full
    (tmp_path / "empty").mkdir()
    check_out_dir(_options(hr_bids, lr_bids, tmp_path / "empty"))
    with pytest.raises(OutputExistsError, match="inside the --hr BIDS dataset"):
        check_out_dir(_options(hr_bids, lr_bids, hr_bids / "model"))
    with pytest.raises(OutputExistsError, match="inside the --lr BIDS dataset"):
        check_out_dir(_options(hr_bids, lr_bids, lr_bids / "sub-IXI603" / "model", overwrite=True))
    check_out_dir(_options(hr_bids, lr_bids, hr_bids / "derivatives" / "ddasr-model"))
    from click.testing import CliRunner

    from ddasr_nipype.bids_app.train import main

    res = CliRunner().invoke(main, _cli_args(hr_bids, lr_bids, full, "--allow-random-vgg19"))
    assert res.exit_code == 1 and "is not empty" in res.output and (full / "keep.txt").is_file()
    assert not (tmp_path / "full.work").exists()


def test_cli_patch_size_errors_name_the_option(tmp_path, hr_bids, lr_bids):
    from click.testing import CliRunner

    from ddasr_nipype.bids_app.train import main

    res = CliRunner().invoke(main, _cli_args(hr_bids, lr_bids, tmp_path / "m", "--patch-size", "20"))
    assert res.exit_code == 2 and "--patch-size 20 must be a positive multiple of 16" in res.output
    assert "dsn.patch_size" not in res.output


def test_sigterm_while_preparing_data_exits_75_and_keeps_no_half_written_cache(tmp_path, hr_bids, lr_bids,
                                                                               monkeypatch, capsys):
    from ddasr_nipype.bids_app.train import run
    from ddasr_nipype.training import pipeline

    real = pipeline.prepare_datasets

    def prepare_then_terminated(*args, **kwargs):
        result = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        return result

    monkeypatch.setattr(pipeline, "prepare_datasets", prepare_then_terminated)
    options = _options(hr_bids, lr_bids, tmp_path / "m", hr_participant_label=("trio",))
    before = signal.getsignal(signal.SIGTERM)
    assert run(options) == EXIT_INTERRUPTED
    assert signal.getsignal(signal.SIGTERM) is before
    err = capsys.readouterr().err
    assert "SIGTERM" in err and "--resume" in err
    data = tmp_path / "m.work" / "data"
    assert not (data / "data.json").exists()  # the cache is not marked complete
    assert not list(data.glob(".*")) and not (tmp_path / "m").exists()


def test_rician_lr_noise_is_magnitude_noise_of_the_drawn_level():
    from ddasr_nipype.training.datasets import PairSet

    sigma = 0.04
    air = np.zeros((32, 1, 24, 24), dtype=np.float32)
    bright = np.full((32, 1, 24, 24), 0.8, dtype=np.float32)
    for coils in (1, 3):
        noisy_air = air.copy()
        added = PairSet.add_lr_noise(noisy_air, np.random.default_rng(0), 1.0, sigma, sigma, 0.0, 0.0, "rician",
                                     coils, coils, return_sigma=True)
        np.testing.assert_allclose(added, sigma)
        # the air gets the chi noise floor (2 x coils degrees of freedom): Rayleigh's sigma*sqrt(pi/2)
        # for one coil, higher for more
        from scipy.stats import chi

        floor = float(noisy_air.mean())
        expected = sigma * chi.mean(2 * coils)
        assert abs(floor - expected) < 0.1 * expected and noisy_air.min() >= 0
    noisy = bright.copy()
    PairSet.add_lr_noise(noisy, np.random.default_rng(0), 1.0, sigma, sigma, 0.0, 0.0, "rician", 1, 1)
    assert abs(float((noisy - bright).std()) - sigma) < 0.1 * sigma  # Gaussian-like where the signal is high
    assert abs(float((noisy - bright).mean())) < 0.2 * sigma
    again = bright.copy()
    PairSet.add_lr_noise(again, np.random.default_rng(0), 1.0, sigma, sigma, 0.0, 0.0, "rician", 1, 1)
    assert np.array_equal(noisy, again)  # replayable


def test_intensity_scaling_and_brain_only_weights_in_the_srn_step(tmp_path, smoke, vgg):
    from ddasr_nipype.training.datasets import PairSet

    rng = np.random.default_rng(0)
    hr = np.zeros((4, 32, 32), dtype=np.float32)
    hr[:, 4:28, 4:28] = rng.uniform(0.3, 1.0, size=(4, 24, 24))  # a "brain" floating in black
    lr = hr.reshape(4, 16, 2, 16, 2).mean(axis=(2, 4))
    pairs = PairSet([lr, lr.copy()], [hr, hr.copy()], 2, ["brain", "head"], source="area", brain_only=[True, False])
    assert pairs.is_brain_only([0, 3, 4, 7]).tolist() == [True, True, False, False]
    preset = smoke.replace(data=smoke.data.replace(brain_margin=2),
                           srn=smoke.srn.replace(intensity_scale=(2.0, 3.0), patch_size=32))
    trainer = SRNTrainer(preset, tmp_path / "run", pairs, **_kwargs(vgg))
    trainer.run(until=1)
    batch = trainer._last_batch
    ratio = batch["hr"][:, 0, 4:28, 4:28].mean(axis=(1, 2)) / hr[0, 4:28, 4:28].mean()
    assert np.all((ratio > 1.6) & (ratio < 3.4))  # every crop scaled by a factor of the range
    hr_t = torch.from_numpy(batch["hr"])
    index = np.array([0, 5])  # a brain-only crop and a whole-head one
    weight = trainer._loss_weight(hr_t, index)
    assert weight[1].min() == 1  # whole heads count everywhere
    inside = weight[0, 0].numpy()
    assert inside[:6].sum() == 0 and inside[:, :6].sum() == 0  # the black and 2 pixels of the edge
    assert inside[6:26, 6:26].all()
    assert trainer._loss_weight(hr_t, np.array([4, 5])) is None
    with pytest.raises(ValueError, match="intensity_scale"):
        smoke.srn.replace(intensity_scale=(0.0, 1.0))


def test_the_loss_weight_leaves_the_output_outside_it_free():
    from ddasr_nipype.losses import SRNLoss, SRNLossConfig
    from ddasr_nipype.models.vgg_arch import VGG19Features

    torch.manual_seed(0)
    hr = torch.rand(2, 1, 16, 16)
    sr = hr.clone().requires_grad_(True)
    weight = torch.zeros_like(hr)
    weight[..., 4:12, 4:12] = 1
    with torch.no_grad():
        sr[..., :4, :] += 0.5  # wrong only where the weight is 0
    loss = SRNLoss(VGG19Features(), SRNLossConfig(layers=(2,), layer_weights=(1.0,)))
    terms = loss(sr, hr, weight=weight)
    assert terms["l1"].detach().item() == 0 and terms["perceptual"].detach().item() == 0
    terms["total"].backward()
    assert float(sr.grad.abs().sum()) == 0
    assert loss(sr, hr)["l1"].detach().item() > 0
    no_perceptual = SRNLoss(VGG19Features(), SRNLossConfig(eta_perceptual=0.0))
    assert no_perceptual(sr, hr)["perceptual"].detach().item() == 0  # the feature network is skipped


def test_skull_stripped_volumes_are_found_by_their_volume(tmp_path, hr_files, smoke):
    import nibabel as nib

    from ddasr_nipype.training.datasets import prepare_hr_stacks

    img = nib.load(str(hr_files["trio"]))
    data = np.asarray(img.dataobj, dtype=np.float32)
    # the committed crop of a head holds about 0.6 L; a 40 mm cube of it, 64 mL, stands for a brain
    cfg = smoke.data.replace(brain_only_below_ml=300)
    head = prepare_hr_stacks(hr_files["trio"], cfg, voxel_size=1.0)[0]
    stripped = np.zeros_like(data)
    c = [n // 2 for n in data.shape]
    stripped[c[0] - 20:c[0] + 20, c[1] - 20:c[1] + 20, c[2] - 20:c[2] + 20] = data[
        c[0] - 20:c[0] + 20, c[1] - 20:c[1] + 20, c[2] - 20:c[2] + 20]
    path = tmp_path / "sub-brain_T1w.nii.gz"
    nib.save(nib.Nifti1Image(stripped, img.affine), str(path))
    brain = prepare_hr_stacks(path, cfg, voxel_size=1.0)[0]
    assert not head.brain_only and brain.brain_only
    assert not prepare_hr_stacks(path, smoke.data, voxel_size=1.0)[0].brain_only  # off by default


def test_the_srn_can_take_its_perceptual_term_from_deepbet(tmp_path, smoke, vgg):
    from ddasr_nipype.losses import SRNLossConfig
    from ddasr_nipype.training.datasets import PairSet

    rng = np.random.default_rng(0)
    hr = rng.uniform(size=(2, 32, 32)).astype(np.float32)
    pairs = PairSet([hr[:, ::2, ::2].copy()], [hr], 2, ["s"], source="area")
    preset = smoke.replace(srn=smoke.srn.replace(patch_size=32, loss={"backbone": "deepbet", "layers": [0, 1],
                                                                      "layer_weights": [1.0, 1.0]}))
    trainer = SRNTrainer(preset, tmp_path / "run", pairs, **_kwargs(vgg))
    trainer.run(until=1)
    assert trainer.perceptual_backbone["name"] == "deepbet" and len(trainer.perceptual_backbone["sha256"]) == 64
    assert trainer.last_losses["g_perceptual"] > 0
    with pytest.raises(ValueError, match="layers 0, 1 and 2"):
        SRNLossConfig(backbone="deepbet")  # the VGG indices do not exist there


def test_a_sigterm_whose_exception_is_swallowed_still_stops_the_run(tmp_path, hr_bids, lr_bids, monkeypatch,
                                                                    capsys):
    """The lost SIGTERM: Python runs a signal handler wherever the main thread is; inside a ``__del__``
    (or under a bare ``except``) its exception is swallowed ("Exception ignored in ..."). The signal is
    also recorded, so the run stops at the next step: exit 75, the DSN checkpoint, no SRN, no bundle."""
    from ddasr_nipype.bids_app.train import run
    from ddasr_nipype.training import pipeline

    class SignalInDel:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs here, inside __del__
                pass

    real = pipeline.run_synthesis_stage

    def synthesis_then_swallowed_signal(*args, **kwargs):
        pairs = real(*args, **kwargs)
        SignalInDel()  # garbage at once: its __del__ runs here
        return pairs

    monkeypatch.setattr(pipeline, "run_synthesis_stage", synthesis_then_swallowed_signal)
    srn_runs = []
    real_srn = pipeline.run_srn_stage
    monkeypatch.setattr(pipeline, "run_srn_stage", lambda *a, **k: srn_runs.append(1) or real_srn(*a, **k))
    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", lambda event: swallowed.append(event.exc_type.__name__))
    options = _options(hr_bids, lr_bids, tmp_path / "m", hr_participant_label=("trio",))
    assert run(options) == EXIT_INTERRUPTED  # it trained the SRN and wrote the bundle (exit 0) before
    assert swallowed == ["StopRequested"]  # the handler's exception was lost in __del__
    assert "SIGTERM: stopped outside the training loops" in capsys.readouterr().err
    assert not srn_runs and not (tmp_path / "m").exists()
    assert (tmp_path / "m.work" / "checkpoints" / "dsn_last.pt").is_file()


_LATE_SIGNAL = """
import atexit, os, signal, sys, time
from types import SimpleNamespace
from ddasr_nipype.bids_app.train import main
from ddasr_nipype.training import pipeline
when = sys.argv[1]

def late_signal():  # as SIGTERM arriving while Python shuts down (seconds after torch ran)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.5)

def fake_training(options):
    if when == "exit":
        atexit.register(late_signal)
        return SimpleNamespace(path=options.out_dir, sha256="0" * 64)
    os.kill(os.getpid(), signal.SIGTERM)  # outside a loop: StopRequested
    time.sleep(5)

def options_then_signal(**kw):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)

pipeline.run_training = fake_training
if when == "start":
    import ddasr_nipype.bids_app.train as train
    train.build_options = options_then_signal
main.main(sys.argv[2:])
"""


@pytest.mark.parametrize("when, status, message", [
    ("exit", 0, "model bundle written"),  # 143 (killed, no message) before: handlers reset at exit
    ("run", EXIT_INTERRUPTED, "SIGTERM: stopped outside the training loops"),
    ("start", EXIT_INTERRUPTED, "SIGTERM: stopped before training started"),
])
def test_ddasr_train_exits_with_its_outcome_whenever_sigterm_arrives(tmp_path, hr_bids, lr_bids, when, status,
                                                                     message):
    script = tmp_path / "late.py"
    script.write_text(_LATE_SIGNAL)
    out = subprocess.run([sys.executable, str(script), when, *_cli_args(hr_bids, lr_bids, tmp_path / "m")],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == status, out.stderr
    assert message in out.stderr


def test_2p5d_pairs_hold_each_slices_neighbours_degraded_by_the_same_acquisition(tmp_path):
    from ddasr_nipype.degradations import area_downsample
    from ddasr_nipype.training.datasets import PairSet
    from ddasr_nipype.training.synthesis import combine_pairs, degrade_pairs

    rng = np.random.default_rng(0)
    hr = SliceSet([SliceStack("a", rng.uniform(0.2, 0.8, (5, 16, 16)).astype(np.float32), 1.0, {}),
                   SliceStack("b", rng.uniform(0.2, 0.8, (3, 16, 16)).astype(np.float32), 1.0, {})])
    pairs = degrade_pairs(hr, "area", scale=2, rng=np.random.default_rng(1), context_slices=1, context_strides=(2,))
    assert pairs.context_slices == 1 and [c.shape for c in pairs.context] == [(5, 2, 8, 8), (3, 2, 8, 8)]
    for k, stack in enumerate(hr.stacks):
        n_slices = len(stack.slices)
        for n in range(n_slices):  # offsets -2 and +2 (stride 2), clamped at the stack's ends
            below, above = stack.slices[max(n - 2, 0)], stack.slices[min(n + 2, n_slices - 1)]
            np.testing.assert_allclose(pairs.context[k][n, 0], area_downsample(below, 2), atol=1e-6)
            np.testing.assert_allclose(pairs.context[k][n, 1], area_downsample(above, 2), atol=1e-6)
            np.testing.assert_allclose(pairs.lr[k][n], area_downsample(stack.slices[n], 2), atol=1e-6)
    # a random acquisition ("mri": k-space windows, blur, ...) is drawn once per slice and its neighbours:
    # on a stack of equal slices, the neighbours' LR is the slice's own
    same = SliceSet([SliceStack("c", np.repeat(hr.stacks[0].slices[:1], 4, axis=0), 1.0, {})])
    mri = degrade_pairs(same, "mri", scale=2, rng=np.random.default_rng(2), context_slices=1)
    for n in range(4):
        np.testing.assert_allclose(mri.context[0][n], np.stack([mri.lr[0][n]] * 2), atol=1e-6)
    # crops: the slice's LR, then the same crop of its neighbours, aligned with the HR crop
    lr_c, hr_c, index = pairs.sample_pairs(np.random.default_rng(3), 12, 8, return_index=True)
    assert lr_c.shape == (12, 3, 4, 4) and hr_c.shape == (12, 1, 8, 8)
    for b, n in enumerate(index):
        k = int(pairs.stack_of(int(n)))
        m = int(n) - (0 if k == 0 else 5)
        hit = [(i, j) for i in range(5) for j in range(5) if np.array_equal(pairs.lr[k][m, i:i + 4, j:j + 4], lr_c[b, 0])]
        assert hit
        i, j = hit[0]
        np.testing.assert_array_equal(lr_c[b, 1:], pairs.context[k][m, :, i:i + 4, j:j + 4])
    # augmentation: the same flip for every channel and the HR; the slice direction reversed half the time
    lr_a, hr_a = PairSet.augment(lr_c.copy(), hr_c.copy(), np.random.default_rng(4))
    swapped = 0
    for b in range(12):
        for variant in range(8):
            f = (lambda x, v=variant: np.rot90(x, v % 4, axes=(-2, -1)) if v < 4
                 else np.rot90(x, v % 4, axes=(-2, -1))[..., ::-1])
            if np.array_equal(f(hr_c[b]), hr_a[b]) and np.array_equal(f(lr_c[b, :1]), lr_a[b, :1]):
                kept = np.array_equal(f(lr_c[b, 1:]), lr_a[b, 1:])
                assert kept or np.array_equal(f(lr_c[b, 1:])[::-1], lr_a[b, 1:])
                swapped += not kept
                break
        else:
            raise AssertionError(f"crop {b}: not one dihedral transform of its input")
    assert 0 < swapped < 12
    # noise: one level per crop, fields independent from slice to slice
    flat = np.full((16, 3, 32, 32), 0.5, dtype=np.float32)
    added = PairSet.add_lr_noise(flat, np.random.default_rng(5), 1.0, 0.03, 0.03, kind="rician", return_sigma=True)
    noise = flat - 0.5
    np.testing.assert_allclose(noise.std(axis=(2, 3)), 0.03, rtol=0.15)
    assert abs(np.corrcoef(noise[:, 0].ravel(), noise[:, 1].ravel())[0, 1]) < 0.05
    assert np.all(added == pytest.approx(0.03))
    # saved and loaded, combined with another 2.5D set; 2D and 2.5D sets do not mix
    again = PairSet.load(pairs.save(tmp_path / "pairs.npz"))
    assert again.context_slices == 1
    for a, b in zip(again.context, pairs.context):
        np.testing.assert_array_equal(a, b)
    assert len(combine_pairs(pairs, mri).context) == 3
    with pytest.raises(ValueError, match="context slices"):
        combine_pairs(pairs, degrade_pairs(same, "area", scale=2, rng=np.random.default_rng(6)))
    assert PairSet.load(degrade_pairs(same, "area", scale=2, rng=rng).save(tmp_path / "flat.npz")).context is None


def test_srn_trainer_refuses_pairs_without_the_neighbours_its_generator_takes(tmp_path, smoke, vgg):
    from ddasr_nipype.training.synthesis import degrade_pairs

    rng = np.random.default_rng(0)
    hr = SliceSet([SliceStack("a", rng.uniform(0.2, 0.8, (6, 64, 64)).astype(np.float32), 1.0, {})])
    flat = degrade_pairs(hr, "area", scale=2, rng=rng)
    srn = smoke.srn.replace(generator={**smoke.srn.generator, "context_slices": 1})
    with pytest.raises(ValueError, match="context slice"):
        SRNTrainer(smoke.replace(srn=srn), tmp_path / "x", flat, **_kwargs(vgg))
    wide = degrade_pairs(hr, "area", scale=2, rng=rng, context_slices=1)
    trainer = SRNTrainer(smoke.replace(srn=srn), tmp_path / "ok", wide, **_kwargs(vgg))
    assert trainer.generator.conv_first.in_channels == 3
    trainer.run(until=1)
    assert trainer._last_batch["lr"].shape[1] == 3 and "SR (EMA)" in trainer.image_columns()


def test_slice_denoise_trains_a_2d_generator_on_the_slice_denoised_as_inference_denoises_it(tmp_path, smoke, vgg):
    from ddasr_nipype.inference import denoise_across_slices
    from ddasr_nipype.training.datasets import PairSet
    from ddasr_nipype.training.pipeline import context_slices
    from ddasr_nipype.training.synthesis import combine_pairs, degrade_pairs

    rng = np.random.default_rng(0)
    hr = SliceSet([SliceStack("a", rng.uniform(0.2, 0.8, (6, 64, 64)).astype(np.float32), 1.0, {})])
    pairs = degrade_pairs(hr, "area", scale=2, rng=rng, context_slices=2, context_strides=(1, 2))
    strides = pairs.neighbour_spacing(np.arange(len(pairs)))
    assert set(strides) == {1, 2}  # drawn per slice, recorded with the pairs
    again = PairSet.load(pairs.save(tmp_path / "pairs.npz"))
    np.testing.assert_array_equal(again.neighbour_spacing(np.arange(6)), strides)
    np.testing.assert_array_equal(combine_pairs(pairs, again).neighbour_spacing(np.arange(12)), np.tile(strides, 2))
    preset = smoke.replace(data=smoke.data.replace(hr_voxel_size=1.0), srn=smoke.srn.replace(slice_denoise=2.0))
    assert context_slices(preset) == 2 and context_slices(smoke) == 0  # the pairs carry the filter's neighbours
    card_run = load_preset(REPO / "scripts" / "probes" / "slice-denoise-finetune-cpu.yml")  # the card's experiment
    assert card_run.srn.slice_denoise == 2.0 and context_slices(card_run) == 2
    assert not card_run.srn.generator.get("context_slices") and card_run.data.hr_voxel_size == 1.0
    with pytest.raises(ValueError, match="slice_denoise"):
        preset.srn.replace(slice_denoise=-1.0)
    with pytest.raises(ValueError, match="2 context slices"):
        SRNTrainer(preset, tmp_path / "flat", degrade_pairs(hr, "area", scale=2, rng=rng, context_slices=1),
                   **_kwargs(vgg))
    with pytest.raises(ValueError, match="2D generator"):
        SRNTrainer(preset.replace(srn=preset.srn.replace(generator={**smoke.srn.generator, "context_slices": 2})),
                   tmp_path / "wide", pairs, **_kwargs(vgg))
    with pytest.raises(ValueError, match="hr_voxel_size"):
        SRNTrainer(smoke.replace(srn=preset.srn), tmp_path / "mm", pairs, **_kwargs(vgg))
    trainer = SRNTrainer(preset, tmp_path / "ok", pairs, **_kwargs(vgg))
    # a crop's channels come centre first, then the neighbours at -1, +1, -2, +2: the filter takes them in
    # slice order, as far apart in mm as the pair's HR slices, and returns the centre
    clean = rng.uniform(0.3, 0.7, (16, 16)).astype(np.float32)
    stack = clean + rng.normal(0.0, 0.05, (1, 5, 16, 16)).astype(np.float32)
    crop = stack[:, [2, 1, 3, 0, 4]]
    for n in (int(np.flatnonzero(strides == 1)[0]), int(np.flatnonzero(strides == 2)[0])):
        out = trainer._denoised_across_slices(crop, np.array([0.05]), np.array([n]))
        assert out.shape == (1, 1, 16, 16)
        np.testing.assert_allclose(out[0, 0], denoise_across_slices(stack[0], 0.05, 2.0, spacing=float(strides[n]))[2],
                                   rtol=1e-6)
    # equal slices with independent noise: averaged, the noise falls; the closer the neighbours the more
    near = trainer._denoised_across_slices(crop, np.array([0.05]), np.array([int(np.flatnonzero(strides == 1)[0])]))
    far = trainer._denoised_across_slices(crop, np.array([0.05]), np.array([int(np.flatnonzero(strides == 2)[0])]))
    assert np.std(near[0, 0] - clean) < np.std(far[0, 0] - clean) < np.std(stack[0, 2] - clean)
    trainer.run(until=1)
    assert trainer._last_batch["lr"].shape[1] == 1  # the generator sees the filtered slice only


def test_the_2p5d_preset_starts_from_the_default_generator_as_it_is(tmp_path, vgg):
    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.training.srn_trainer import check_generator_fits
    from ddasr_nipype.training.synthesis import degrade_pairs

    preset = load_preset("t1w-x2-ctx-cpu")
    assert preset.srn.generator["context_slices"] == 1 and preset.synthesis.context_strides == (1, 2)
    assert preset.srn.context_share == 0.0  # starts as t1w-x2 itself
    for bad in (0.5, -0.1):
        with pytest.raises(ValueError, match="context_share"):
            preset.srn.replace(context_share=bad)
    for bad in ([], [0], [1.5], 2):
        with pytest.raises(ValueError, match="context_strides"):
            preset.synthesis.replace(context_strides=bad)
    preset = preset.replace(srn=preset.srn.replace(batch_size=2, patch_size=32))
    rng = np.random.default_rng(0)
    hr = SliceSet([SliceStack("a", rng.uniform(0.2, 0.8, (4, 32, 32)).astype(np.float32), 1.0, {})])
    trainer = SRNTrainer(preset, tmp_path / "ctx", degrade_pairs(hr, "area", scale=2, rng=rng, context_slices=1),
                         **_kwargs(vgg))
    bundle = load_bundle("t1w-x2")
    assert check_generator_fits(bundle, trainer.generator_config)  # widened: neighbours and nothing else
    trainer.init_generator_from("t1w-x2")
    base = bundle.load_generator("cpu").eval()
    x = torch.rand(2, 3, 20, 24)
    with torch.no_grad():
        torch.testing.assert_close(trainer.ema(x), base(x[:, :1]), rtol=1e-4, atol=1e-5)
    # the default's learned noise estimator comes along (the preset does not name one), frozen, and a
    # checkpoint of such a run loads into a trainer built from the same preset (--resume)
    assert trainer.generator_config.noise_estimator == bundle.generator_config.noise_estimator == "learned"
    assert not any(p.requires_grad for p in trainer.generator.noise_estimator.parameters())
    resumed = SRNTrainer(preset, tmp_path / "ctx2", trainer.pairs, **_kwargs(vgg))
    resumed.load_model_state(trainer.model_state())
    with torch.no_grad():
        torch.testing.assert_close(resumed.ema(x), trainer.ema(x))


def test_a_deeper_generator_starts_from_the_default_one_as_it_is_and_grows_its_new_blocks(tmp_path, vgg):
    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.errors import ModelBundleError
    from ddasr_nipype.training.srn_trainer import check_generator_fits
    from ddasr_nipype.training.synthesis import degrade_pairs

    preset = load_preset("t1w-x2-nl-cpu")
    deeper = {**preset.srn.generator, "num_bottleneck_blocks": 5}
    preset = preset.replace(srn=preset.srn.replace(batch_size=2, patch_size=32, generator=deeper))
    rng = np.random.default_rng(0)
    hr = SliceSet([SliceStack("a", rng.uniform(0.2, 0.8, (4, 32, 32)).astype(np.float32), 1.0, {})])
    trainer = SRNTrainer(preset, tmp_path / "deep", degrade_pairs(hr, "area", scale=2, rng=rng), **_kwargs(vgg))
    bundle = load_bundle("t1w-x2")
    assert check_generator_fits(bundle, trainer.generator_config)
    trainer.init_generator_from("t1w-x2")
    base = bundle.load_generator("cpu").eval()
    x, sigma = torch.rand(2, 1, 20, 24), torch.tensor([0.0, 0.03])
    with torch.no_grad():
        torch.testing.assert_close(trainer.ema(x, sigma), base(x, sigma), rtol=1e-4, atol=1e-5)
    new = trainer.generator.bottleneck[4]
    assert float(new.rdb2.conv5.weight.detach().abs().sum()) == 0
    assert float(new.rdb2.conv1.weight.detach().abs().sum()) > 0
    trainer.run(until=2)
    assert float(new.rdb2.conv5.weight.detach().abs().sum()) > 0  # the new blocks learn
    assert "sha256" in trainer.initialized_from
    # a shallower preset cannot start from it
    shallow = preset.replace(srn=preset.srn.replace(generator={**deeper, "num_bottleneck_blocks": 2}))
    other = SRNTrainer(shallow, tmp_path / "shallow", degrade_pairs(hr, "area", scale=2, rng=rng), **_kwargs(vgg))
    with pytest.raises(ModelBundleError, match="num_bottleneck_blocks"):
        other.init_generator_from("t1w-x2")


def test_bf16_on_the_cpu_only_when_asked_for_with_fp32_weights(tmp_path, smoke, vgg):
    from ddasr_nipype.training.engine import precision_dtype
    from ddasr_nipype.training.synthesis import degrade_pairs

    cpu = torch.device("cpu")
    assert precision_dtype("auto", cpu) is None and precision_dtype("fp32", cpu) is None
    assert precision_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        precision_dtype("fp16", cpu)
    rng = np.random.default_rng(0)
    hr = SliceSet([SliceStack("a", rng.uniform(0.2, 0.8, (4, 64, 64)).astype(np.float32), 1.0, {})])
    trainer = SRNTrainer(smoke, tmp_path / "bf16", degrade_pairs(hr, "area", scale=2, rng=rng),
                         **{**_kwargs(vgg), "precision": "bf16"})
    before = trainer.generator.conv_last.weight.detach().clone()
    with trainer.autocast():
        assert trainer.generator.conv_first(torch.rand(1, trainer.generator.conv_first.in_channels, 8, 8)).dtype \
            == torch.bfloat16
    trainer.run(until=2)
    assert all(p.dtype == torch.float32 for p in trainer.generator.parameters())
    assert np.isfinite(trainer.last_losses["g_total"])
    assert not torch.equal(before, trainer.generator.conv_last.weight)


def test_a_checkpoint_written_before_context_slices_existed_still_resumes(tmp_path, smoke, vgg):
    from ddasr_nipype.training.synthesis import degrade_pairs

    rng = np.random.default_rng(0)
    hr = SliceSet([SliceStack("a", rng.uniform(0.2, 0.8, (4, 64, 64)).astype(np.float32), 1.0, {})])
    trainer = SRNTrainer(smoke, tmp_path / "old", degrade_pairs(hr, "area", scale=2, rng=rng), **_kwargs(vgg))
    state = trainer.model_state()
    del state["generator_config"]["context_slices"]  # as saved by earlier versions
    trainer.load_model_state(state)
    state["generator_config"]["num_feat"] += 1
    with pytest.raises(ValueError, match="generator config differs"):
        trainer.load_model_state(state)


def test_a_2p5d_preset_with_the_dsn_is_refused_before_the_dsn_trains(tmp_path, hr_bids, lr_bids):
    smoke = load_preset("smoke")
    preset = smoke.replace(srn=smoke.srn.replace(generator={**smoke.srn.generator, "context_slices": 1}))
    with pytest.raises(ValueError, match="classical degradations"):
        run_training(_options(hr_bids, lr_bids, tmp_path / "model", preset=preset))
    assert not (tmp_path / "model.work" / "checkpoints").exists()  # no DSN stage ran


def test_srn_projection_trains_through_inferences_area_projection(tmp_path, smoke, vgg, monkeypatch):
    """``srn.projection: area``: every generated crop agrees with its LR crop by block means before the losses,
    as inference's output setting makes it agree; gradients flow through it to the generator."""
    from ddasr_nipype.degradations import consistency_projection
    from ddasr_nipype.training.srn_trainer import area_projection
    from ddasr_nipype.training.synthesis import degrade_pairs

    rng = np.random.default_rng(0)
    lr = torch.from_numpy(rng.uniform(0.2, 0.8, (2, 1, 6, 7)).astype(np.float32))
    sr = torch.from_numpy(rng.uniform(0.0, 1.0, (2, 1, 12, 14)).astype(np.float32)).requires_grad_(True)
    projected = area_projection(sr, lr)
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(projected, 2), lr)  # block means: the LR's
    np.testing.assert_allclose(projected.detach().numpy()[:, 0], consistency_projection(
        sr.detach().numpy()[:, 0], lr.numpy()[:, 0], 2, axes=(1, 2), model="area"), atol=1e-6)  # inference's
    (projected ** 2).sum().backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="projection must be one of"):
        smoke.srn.replace(projection="kspace")  # not (yet) trained through
    assert load_preset("t1w-x2-gan-cpu").srn.projection == "area"  # the GAN model's recipe trains through it
    hr = SliceSet([SliceStack("a", rng.uniform(0.2, 0.8, (4, 64, 64)).astype(np.float32), 1.0, {})])
    preset = smoke.replace(srn=smoke.srn.replace(projection="area"))
    trainer = SRNTrainer(preset, tmp_path / "p", degrade_pairs(hr, "area", scale=2, rng=rng), **_kwargs(vgg))
    import ddasr_nipype.training.srn_trainer as srn_trainer

    seen = []  # the training step projects the generator's output against its LR crop
    monkeypatch.setattr(srn_trainer, "area_projection", lambda s, low: seen.append(low.shape) or area_projection(s, low))
    trainer.run(until=1)
    assert seen and seen[0][1] == 1  # the crop itself, not its neighbours
    columns = trainer.image_columns()  # what the logged images show is the projected output too
    sr_img, lr_img = columns["SR (EMA)"], columns["LR (synthetic)"][:4]
    blocks = sr_img.reshape(*sr_img.shape[:2], sr_img.shape[2] // 2, 2, sr_img.shape[3] // 2, 2)
    unclipped = ((blocks > 0) & (blocks < 1)).all(axis=(3, 5))  # clipped to [0, 1] for display
    assert unclipped.mean() > 0.5
    np.testing.assert_allclose(blocks.mean(axis=(3, 5))[unclipped], lr_img[unclipped], atol=1e-4)
