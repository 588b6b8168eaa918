"""The ddasr BIDS App: argument checks, and one end-to-end run on real data with a tiny model."""

from __future__ import annotations

import os
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _bundles import make_tiny_bundle

from ddasr_nipype.bids_app.parser import parse_args
from ddasr_nipype.bundle import DEFAULT_MODEL


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny-test")


@pytest.fixture
def bids_copy(lr_bids, tmp_path) -> Path:
    root = tmp_path / "bids"
    shutil.copytree(lr_bids, root)
    return root


def _args(bids, out, *extra, model=None):
    return [str(bids), str(out), "participant", *(["--model", str(model)] if model else []),
            *extra]


def _usage_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_help_is_light():
    code = ("import sys; from ddasr_nipype.bids_app.parser import _build_parser; "
            "_build_parser().format_help(); "
            "print(any(m in sys.modules for m in ('torch', 'nipype', 'niworkflows', 'bids')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_default_parse_imports_no_torch(bids_copy, tmp_path, tiny_bundle):
    """Only --device cuda imports torch at parse time (to check CUDA)."""
    argv = _args(bids_copy, tmp_path / "o", "--device", "cpu", model=tiny_bundle)
    code = ("import sys; from ddasr_nipype.bids_app.parser import parse_args; "
            f"parse_args({argv!r}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_consistency_map_in_the_scheduler_only_on_one_machine(bids_copy, tmp_path, tiny_bundle):
    from ddasr_nipype.workflows.base import init_ddasr_wf

    def workflow(*extra):
        config = parse_args(_args(bids_copy, tmp_path / "o", "--skip-bids-validation", *extra, model=tiny_bundle))
        return init_ddasr_wf(config=config)

    def consistency_node(*extra):
        wf = workflow(*extra)
        return wf.get_node(next(n for n in wf.list_node_names() if n.endswith("data_consistency")))

    node = consistency_node()  # MultiProc: beside the brain extraction, in the scheduler's process
    assert node.run_without_submitting and node.n_procs == 0
    # the bookkeeping nodes too, each taking no processor; the report sections keep their workers
    wf = workflow()
    names = {n.rsplit(".", 1)[-1]: n for n in wf.list_node_names()}
    for name in ("summary_0", "t1w_meta_0", "mask_meta_0", "zmap_meta_0", "ds_t1w_0", "ds_report_sr_0",
                 "merge_outputs", "commit_derivatives", "grid_metadata", "consistency_summary"):
        node = wf.get_node(names[name])
        assert node.run_without_submitting and node.n_procs == 0, name
    for name in ("sr_report_0", "crops_report_0", "consistency_report_0", "super_resolve", "brain_extraction"):
        assert not wf.get_node(names[name]).run_without_submitting, name
    plugin = tmp_path / "slurm.yml"
    plugin.write_text("plugin: SLURM\nplugin_args: {sbatch_args: '-p cpu'}\n")
    node = consistency_node("--use-plugin", str(plugin))  # on a cluster: a job of its own
    assert not node.run_without_submitting and node.n_procs == 1


def test_no_consistency_flag(bids_copy, tmp_path, tiny_bundle):
    from ddasr_nipype.workflows.base import init_ddasr_wf

    config = parse_args(_args(bids_copy, tmp_path / "o", "--skip-bids-validation", model=tiny_bundle))
    assert config.consistency is True
    names = init_ddasr_wf(config=config).list_node_names()
    assert any(n.endswith("data_consistency") for n in names) and any("ds_zmap_0" in n for n in names)
    config = parse_args(_args(bids_copy, tmp_path / "o", "--no-consistency", "--skip-bids-validation",
                              model=tiny_bundle))
    assert config.consistency is False
    names = init_ddasr_wf(config=config).list_node_names()
    assert not [n for n in names if "consistency" in n or "zmap" in n]
    assert any(n.endswith("crops_report_0") for n in names)  # the zoomed crops stay


def test_building_the_workflow_loads_nothing_it_does_not_use(bids_copy, tmp_path, tiny_bundle):
    """No TemplateFlow index (niworkflows' sink asks for the template names at import: 6-15 s of CPU),
    no torch in the main process, no version check of nipype over the network; OpenMP threads that
    wait without spinning."""
    argv = _args(bids_copy, tmp_path / "o", "--device", "cpu", model=tiny_bundle)
    code = ("import os, sys; from pathlib import Path; from ddasr_nipype.bids_app.parser import parse_args; "
            "from ddasr_nipype.bids_app.run import build_workflow; "
            f"build_workflow(parse_args({argv!r})); "
            "import templateflow.api as api, templateflow.conf as conf, niworkflows.interfaces.bids as nw; "
            "names = sorted(p.name[4:] for p in Path(conf.TF_HOME).glob('tpl-*')); "
            "print('layout' in conf._cache.__dict__, 'templates' in vars(api), nw.STANDARD_SPACES == names, "
            "bool(names), 'torch' in sys.modules, 'etelemetry' in sys.modules, os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k not in ("NIPYPE_NO_ET", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    # torch's threads wait passively in the nodes (forked after this): spinning wastes a shared machine
    assert out.stdout.strip().splitlines()[-1] == "False False True True False False PASSIVE"


def test_help_states_each_default_once():
    from ddasr_nipype.bids_app.parser import _build_parser

    parser = _build_parser()
    helps = {action.option_strings[0]: parser._get_formatter()._expand_help(action)
             for action in parser._actions if action.option_strings and action.help}
    for option, text in helps.items():
        assert text.count("default") <= 1 and "None" not in text, (option, text)
    assert "(default: 1 on the CPU" in helps["--batch-size"] and "default: sagittal)" in helps["--planes"]
    assert f"default: {DEFAULT_MODEL}" in helps["--model"] and "default: auto" in helps["--device"]
    assert "(default: all)" in helps["--participant-label"]


def test_device_cuda_without_cuda_is_a_usage_error(bids_copy, tmp_path, tiny_bundle, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = _usage_error(capsys, _args(bids_copy, tmp_path / "o", "--device", "cuda", model=tiny_bundle))
    assert f"--device cuda: CUDA is not available on this machine (torch {torch.__version__}" in err
    assert "Traceback" not in err
    assert parse_args(_args(bids_copy, tmp_path / "o", "--device", "auto", model=tiny_bundle)).device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert parse_args(_args(bids_copy, tmp_path / "o", "--device", "cuda", model=tiny_bundle)).device == "cuda"


def test_bids_filter_keys_are_checked(bids_copy, tmp_path, tiny_bundle, capsys):
    filters = tmp_path / "filters.json"

    def parse(query):
        filters.write_text(json.dumps({"t1w": query}))
        return parse_args(_args(bids_copy, tmp_path / "o", "--bids-filter-file", str(filters),
                                model=tiny_bundle))

    assert parse({"run": 2, "acquisition": "mprage", "extension": ".nii.gz", "scope": "raw"}).bids_filters
    filters.write_text(json.dumps({"t1w": {"runn": 2, "acq": "x"}}))
    err = _usage_error(capsys, _args(bids_copy, tmp_path / "o", "--bids-filter-file", str(filters),
                                     model=tiny_bundle))
    assert "unknown BIDS entities 'acq' (did you mean 'acquisition'?), 'runn' (did you mean 'run'?)" in err
    assert "valid keys: acquisition, " in err and " run, " in err and "Traceback" not in err
    filters.write_text(json.dumps({"t1w": {"subject": "IXI603"}}))
    assert "--participant-label" in _usage_error(
        capsys, _args(bids_copy, tmp_path / "o", "--bids-filter-file", str(filters), model=tiny_bundle))
    # the same query that pybids refuses (so the check above is not stricter than pybids)
    from bids.layout import BIDSLayout

    with pytest.raises(ValueError, match="'runn' is not a recognized entity"):
        BIDSLayout(str(bids_copy), validate=False).get(runn=2)


def test_version(capsys):
    from ddasr_nipype import __version__

    with pytest.raises(SystemExit) as exc:
        parse_args(["--version"])
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out


def test_participant_labels(bids_copy, tmp_path, tiny_bundle, capsys):
    out = tmp_path / "out"
    for label in ("sub-IXI603", "IXI603"):
        config = parse_args(_args(bids_copy, out, "--participant-label", label, model=tiny_bundle))
        assert config.participant_label == ("IXI603",)
    assert parse_args(_args(bids_copy, out, model=tiny_bundle)).participant_label == ("IXI603",)
    err = _usage_error(capsys, _args(bids_copy, out, "--participant-label", "../IXI603",
                                     model=tiny_bundle))
    assert "invalid label '../IXI603'" in err
    err = _usage_error(capsys, _args(bids_copy, out, "--participant_label", "IXI999",
                                     model=tiny_bundle))
    assert "sub-IXI999" in err and "available: IXI603" in err


def test_output_inside_input_is_refused(bids_copy, tiny_bundle, capsys):
    err = _usage_error(capsys, _args(bids_copy, bids_copy / "out", model=tiny_bundle))
    assert "inside the input dataset" in err
    err = _usage_error(capsys, _args(bids_copy, bids_copy, model=tiny_bundle))
    assert "never written to" in err
    config = parse_args(_args(bids_copy, bids_copy / "derivatives", "-w", str(bids_copy.parent / "w"),
                              model=tiny_bundle))
    assert config.output_dir == bids_copy / "derivatives"
    err = _usage_error(capsys, _args(bids_copy, bids_copy / "derivatives", "-w",
                                     str(bids_copy / "work"), model=tiny_bundle))
    assert "work directory" in err


def test_model_errors(bids_copy, tmp_path, capsys):
    from ddasr_nipype.bundle import list_bundled_models

    err = _usage_error(capsys, _args(bids_copy, tmp_path / "o", model=tmp_path / "nope"))
    assert "not found" in err
    if "ixi-t1w-x2" not in list_bundled_models():
        err = _usage_error(capsys, _args(bids_copy, tmp_path / "o"))
        assert "no model is bundled" in err and "--model PATH" in err


def test_plugin_mem_filters_and_validation(bids_copy, tmp_path, tiny_bundle, capsys):
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: SLURMGraph\nplugin_args:\n  dont_resubmit_completed_jobs: true\n"
                      "  sbatch_args: --partition=debug\n")
    config = parse_args(_args(bids_copy, tmp_path / "o", "--use-plugin", str(plugin),
                              "--mem", "8GB", "--nprocs", "2", "--omp-nthreads", "4",
                              "--stop-on-first-crash", model=tiny_bundle))
    assert config.plugin == "SLURMGraph"
    assert config.plugin_args == {"dont_resubmit_completed_jobs": True,
                                  "sbatch_args": "--partition=debug"}
    assert (config.mem_gb, config.nprocs, config.omp_nthreads) == (8.0, 2, 2)
    assert config.stop_on_first_crash
    # SLURM: each node is a job with its own CPUs, so torch threads do not follow this host's count
    config = parse_args(_args(bids_copy, tmp_path / "o", "--use-plugin", str(plugin), model=tiny_bundle))
    assert config.omp_nthreads == 1
    # a MultiProc plugin file: honoured alone, but the command line wins
    plugin.write_text("plugin: MultiProc\nplugin_args:\n  n_procs: 2\n  memory_gb: 3\n")
    config = parse_args(_args(bids_copy, tmp_path / "o", "--use-plugin", str(plugin), model=tiny_bundle))
    assert (config.plugin_args["n_procs"], config.plugin_args["memory_gb"], config.nprocs) == (2, 3, 2)
    config = parse_args(_args(bids_copy, tmp_path / "o", "--use-plugin", str(plugin), "--nprocs", "1",
                              "--mem", "8GB", model=tiny_bundle))
    assert (config.plugin_args["n_procs"], config.plugin_args["memory_gb"], config.omp_nthreads) == (1, 8.0, 1)
    config = parse_args(_args(bids_copy, tmp_path / "o", "--mem", "8000MB", model=tiny_bundle))
    assert config.plugin == "MultiProc" and config.plugin_args["memory_gb"] == pytest.approx(8.0)
    # LegacyMultiProc takes the same limits (and keeps its own start method)
    plugin.write_text("plugin: LegacyMultiProc\n")
    config = parse_args(_args(bids_copy, tmp_path / "o", "--use-plugin", str(plugin), "--mem", "6GB",
                              model=tiny_bundle))
    assert config.plugin_args["memory_gb"] == pytest.approx(6.0) and "mp_context" not in config.plugin_args
    assert "cannot read memory" in _usage_error(
        capsys, _args(bids_copy, tmp_path / "o", "--mem", "lots", model=tiny_bundle))

    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"t1w": {"acquisition": "mprage"}}))
    config = parse_args(_args(bids_copy, tmp_path / "o", "--bids-filter-file", str(filters),
                              model=tiny_bundle))
    assert config.bids_filters == {"t1w": {"acquisition": "mprage"}}
    filters.write_text(json.dumps({"bold": {"task": "rest"}}))
    assert "unknown query bold" in _usage_error(
        capsys, _args(bids_copy, tmp_path / "o", "--bids-filter-file", str(filters),
                      model=tiny_bundle))

    config = parse_args(_args(bids_copy, tmp_path / "o", model=tiny_bundle))
    assert config.strength is None and config.background is None  # the model's recommendation
    config = parse_args(_args(bids_copy, tmp_path / "o", "--strength", "0.25", "--background", "model",
                              model=tiny_bundle))
    assert (config.strength, config.background) == (0.25, "model")
    for bad in ("1.5", "-0.1", "half"):
        assert "between 0 and 1" in _usage_error(
            capsys, _args(bids_copy, tmp_path / "o", "--strength", bad, model=tiny_bundle))
    assert config.slice_denoise is None  # the model's recommendation
    assert parse_args(_args(bids_copy, tmp_path / "o", "--slice-denoise", "0", model=tiny_bundle)).slice_denoise == 0.0
    for bad in ("-1", "inf", "nan", "strong"):
        assert "finite number >= 0" in _usage_error(
            capsys, _args(bids_copy, tmp_path / "o", "--slice-denoise", bad, model=tiny_bundle))
    assert config.projection is None  # the model's recommendation
    assert parse_args(_args(bids_copy, tmp_path / "o", "--projection", "kspace", model=tiny_bundle)).projection == "kspace"
    assert "invalid choice" in _usage_error(
        capsys, _args(bids_copy, tmp_path / "o", "--projection", "sinc", model=tiny_bundle))
    from ddasr_nipype.inference import OUTPUT_PROJECTIONS

    from ddasr_nipype.bids_app.parser import OUTPUT_PROJECTIONS as choices  # the parser stays light
    assert choices == OUTPUT_PROJECTIONS

    (bids_copy / "dataset_description.json").unlink()
    assert "not a BIDS dataset" in _usage_error(capsys, _args(bids_copy, tmp_path / "o",
                                                              model=tiny_bundle))
    assert parse_args(_args(bids_copy, tmp_path / "o", "--skip-bids-validation",
                            model=tiny_bundle)).skip_bids_validation


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_app_end_to_end_with_a_bad_subject(lr_bids, lr_file, tmp_path, tiny_bundle):
    """One good subject (real IXI scan, deepbet mask) and one corrupt one, in one run."""
    from bids.layout import BIDSLayout

    from ddasr_nipype.bids_app.run import main

    bids = tmp_path / "bids"
    shutil.copytree(lr_bids, bids)
    bad = bids / "sub-bad" / "anat" / "sub-bad_T1w.nii.gz"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(Path(lr_file).read_bytes()[:20000])  # truncated gzip stream
    before = _snapshot(bids)
    out = tmp_path / "out"
    status = main(_args(bids, out, "-w", str(tmp_path / "work"), "--nprocs", "2",
                        model=tiny_bundle))
    assert status == 1  # one participant failed
    assert _snapshot(bids) == before  # the input dataset was not touched

    deriv = out / "ddasr"
    layout = BIDSLayout(str(bids), derivatives=str(deriv), validate=False)
    sr_files = layout.derivatives.get_pipeline("ddasr-nipype").get(
        subject="IXI603", desc="ddasr", suffix="T1w", extension=".nii.gz")
    mask_files = layout.get(subject="IXI603", desc="brain", suffix="mask", extension=".nii.gz",
                            scope="derivatives")
    assert len(sr_files) == 1 and len(mask_files) == 1

    src, sr = nib.load(lr_file), nib.load(sr_files[0].path)
    assert nib.aff2axcodes(sr.affine) == nib.aff2axcodes(src.affine)  # original orientation
    factors = np.array(src.header.get_zooms()[:3]) / np.array(sr.header.get_zooms()[:3])
    assert np.allclose(factors, (2, 2, 1))
    for ijk in ([0, 0, 0], [239, 239, 89], [100, 31, 45]):  # world alignment within half a voxel
        ijk_in = (np.array(ijk) + 0.5) / factors - 0.5
        err = nib.affines.apply_affine(sr.affine, ijk) - nib.affines.apply_affine(src.affine, ijk_in)
        assert np.abs(err).max() < 0.5 * min(sr.header.get_zooms()[:3])
    mask = nib.load(mask_files[0].path)
    assert mask.shape == sr.shape and np.allclose(mask.affine, sr.affine)
    assert 800 < json.loads(Path(mask_files[0].path.replace(".nii.gz", ".json")).read_text())[
        "VolumeMl"] < 2500  # deepbet found a brain-sized mask

    sidecar = json.loads(Path(sr_files[0].path.replace(".nii.gz", ".json")).read_text())
    from ddasr_nipype.bundle import load_bundle

    assert sidecar["Sources"] == ["bids:raw:sub-IXI603/anat/sub-IXI603_T1w.nii.gz"]
    assert sidecar["ModelSHA256"] == load_bundle(tiny_bundle).sha256
    assert sidecar["ModelName"] == "tiny-test" and sidecar["Scale"] == 2
    assert sidecar["Planes"] == "sagittal" and sidecar["Device"] == "cpu"
    assert sidecar["VoxelSize"] == [1.0, 1.0, 2.0] and sidecar["InputVoxelSize"] == [2.0] * 3
    assert sidecar["RuntimeSeconds"] > 0
    description = json.loads((deriv / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "ddasr-nipype"

    # the consistency z-maps: derivatives pybids indexes, on the input grid and (res-sr) on the output's
    zmaps = {f.entities.get("res"): f for f in layout.derivatives.get_pipeline("ddasr-nipype").get(
        subject="IXI603", desc="consistency", suffix="statmap", extension=".nii.gz")}
    assert set(zmaps) == {None, "sr"}
    assert nib.load(zmaps[None].path).shape == src.shape and np.allclose(nib.load(zmaps[None].path).affine,
                                                                         src.affine)
    assert nib.load(zmaps["sr"].path).shape == sr.shape
    zmeta = json.loads(Path(zmaps[None].path.replace(".nii.gz", ".json")).read_text())
    assert zmeta["Statistic"] == "z" and zmeta["Mask"] == "brain" and zmeta["Threshold"] == 3.0
    assert zmeta["Sources"] == ["bids:raw:sub-IXI603/anat/sub-IXI603_T1w.nii.gz",
                                "bids::sub-IXI603/anat/sub-IXI603_desc-ddasr_T1w.nii.gz"]
    assert zmeta["RMSZ"] > 0 and 0 <= zmeta["FractionAboveThreshold"] <= 1 and zmeta["NoiseSigma"] > 0
    assert zmeta["LargestCluster"] is None or len(zmeta["LargestCluster"]["PeakMm"]) == 3
    assert "sr" in json.loads(Path(zmaps["sr"].path.replace(".nii.gz", ".json")).read_text())["Resolution"]
    assert not layout.get(desc="consistencyDSN", scope="derivatives")  # the tiny bundle has no DSN

    report = (deriv / "sub-IXI603.html").read_text()
    assert "Where the output disagrees with the data" in report and "RMS z in the brain" in report
    assert "has no down-sampling network" in report and "Zoomed crops at native scale" in report
    assert "sub-IXI603_desc-sr_T1w.svg" in report and "tiny-test" in report
    assert "super-resolved" in report  # the methods boilerplate
    assert (deriv / "sub-IXI603" / "figures" / "sub-IXI603_desc-sr_T1w.svg").is_file()

    # the bad subject: a crash file with a clear message, no outputs, a report listing the error
    crash = list((deriv / "sub-bad" / "log").rglob("crash-*.txt"))
    assert crash and "corrupt or truncated" in crash[0].read_text()
    assert not (deriv / "sub-bad" / "anat").exists()
    assert not layout.get(subject="bad", scope="derivatives", extension=".nii.gz")
    assert "corrupt or truncated" in (deriv / "sub-bad.html").read_text()
    assert not list(out.glob(".ddasr-staging*"))  # staging cleaned up

    # reports can be regenerated alone
    (deriv / "sub-IXI603.html").unlink()
    assert main(_args(bids, out, "--reports-only", "--participant-label", "IXI603",
                      model=tiny_bundle)) == 0
    assert (deriv / "sub-IXI603.html").is_file()
    # ... and still list the errors of the failed participant's latest run
    (deriv / "sub-bad.html").unlink()
    assert main(_args(bids, out, "--reports-only", model=tiny_bundle)) == 1
    assert "corrupt or truncated" in (deriv / "sub-bad.html").read_text()


def test_output_warnings_of_this_run_are_logged(tmp_path):
    import logging
    from types import SimpleNamespace

    from ddasr_nipype.bids_app.run import LOGGER, log_output_warnings

    deriv = tmp_path / "ddasr"
    for label, sidecar in (("01", {"Warnings": ["sagittal voxels of 3 x 3 mm"]}), ("02", {"Warnings": ["x"]}),
                           ("03", {"ModelName": "m"})):
        anat = deriv / f"sub-{label}" / "anat"
        anat.mkdir(parents=True)
        (anat / f"sub-{label}_desc-ddasr_T1w.json").write_text(json.dumps(sidecar))
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    LOGGER.addHandler(handler)
    try:  # sub-02 is not part of this run; sub-03 has nothing to say
        count = log_output_warnings(SimpleNamespace(participant_label=["01", "03"], derivatives_dir=deriv))
    finally:
        LOGGER.removeHandler(handler)
    assert count == 1
    assert [r.getMessage() for r in records] == ["sub-01_desc-ddasr_T1w.nii.gz: sagittal voxels of 3 x 3 mm"]


def _crash_file(log_dir: Path, message: str) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "crash-20240101-000000-user-super_resolve-0.txt").write_text(
        "Traceback (most recent call last):\n  File \"x.py\", line 1\n"
        f"ddasr_nipype.errors.InvalidImageError: {message}\n")


def test_reports_only_reports_each_participants_latest_run(bids_copy, tmp_path, capsys):
    """Reports of an earlier run: the latest run of each participant, its errors, exit status 1."""
    from ddasr_nipype.bids_app.run import main

    (bids_copy / "sub-two" / "anat").mkdir(parents=True)
    deriv = tmp_path / "out" / "ddasr"
    # IXI603: failed in its latest run; two: failed once, then finished in a later run
    _crash_file(deriv / "sub-IXI603" / "log" / "20240102-090000_b", "corrupt or truncated gzip")
    (deriv / "sub-IXI603" / "log" / "20240101-090000_a").mkdir()
    _crash_file(deriv / "sub-two" / "log" / "20240101-090000_a", "an old failure")
    (deriv / "sub-two" / "log" / "20240103-090000_c").mkdir()
    status = main(_args(bids_copy, tmp_path / "out", "--reports-only"))
    out = capsys.readouterr().out
    assert status == 1
    assert "the latest run of sub-IXI603 failed" in out and "20240102-090000_b" in out
    assert "sub-two" not in out.split("failed")[0].split("\n")[-1]
    assert "corrupt or truncated gzip" in (deriv / "sub-IXI603.html").read_text()
    report = (deriv / "sub-two.html").read_text()
    assert "an old failure" not in report and "No errors to report" in report

    assert main(_args(bids_copy, tmp_path / "out", "--reports-only", "--participant-label", "two")) == 0


def test_reports_only_without_outputs_is_a_usage_error(bids_copy, tmp_path, capsys):
    (bids_copy / "sub-two" / "anat").mkdir(parents=True)
    out = tmp_path / "out"
    err = _usage_error(capsys, _args(bids_copy, out, "--reports-only", "--participant-label", "IXI603"))
    assert f"--reports-only: no outputs in {out / 'ddasr'} for sub-IXI603" in err and "Traceback" not in err
    err = _usage_error(capsys, _args(bids_copy, out, "--reports-only"))
    assert "for sub-IXI603, sub-two (run the participant first)" in err
    (out / "ddasr" / "sub-two").mkdir(parents=True)
    assert parse_args(_args(bids_copy, out, "--reports-only")).participant_label == ("two",)
    err = _usage_error(capsys, _args(bids_copy, out, "--reports-only", "--participant-label", "IXI603", "two"))
    assert "for sub-IXI603 (" in err


def test_ctrl_c_cleans_up_and_exits_130(lr_bids, tmp_path, monkeypatch):
    import logging
    from types import SimpleNamespace

    from ddasr_nipype.bids_app import run as run_module
    from ddasr_nipype.bids_app.config import Config
    from ddasr_nipype.workflows.base import staging_dir_for

    def interrupted(**_):
        raise KeyboardInterrupt

    workflow = SimpleNamespace(run=interrupted, visit_desc=lambda: "methods", base_dir=str(tmp_path), name="wf")
    monkeypatch.setattr(run_module, "build_workflow", lambda config: workflow)
    config = Config(bids_dir=lr_bids, output_dir=tmp_path / "out", participant_label=("IXI603",),
                    run_uuid="20240101-000000_test")
    staging = staging_dir_for(config)
    staging.mkdir(parents=True)
    (staging / "half-written.nii.gz").write_bytes(b"x")
    records = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append
    run_module.LOGGER.addHandler(handler)
    try:
        statuses = [run_module.run(config)]
        monkeypatch.setattr("ddasr_nipype.bids_app.parser.parse_args", lambda argv: interrupted())
        statuses.append(run_module.main([]))  # interrupted outside the workflow run
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped from the app")
    finally:
        run_module.LOGGER.removeHandler(handler)
    assert statuses == [130, 130]
    assert not staging.exists() and not staging.parent.exists()
    assert [r.getMessage().split(":")[0] for r in records] == ["interrupted", "interrupted"]
    assert (config.derivatives_dir / "sub-IXI603" / "log" / config.run_uuid).is_dir()  # the run is recorded


def test_participants_without_a_matching_t1w_are_skipped_and_reported(lr_bids, tmp_path, monkeypatch):
    """A session or filter that some participants do not match: they are named in a warning and get
    neither a log folder nor a report; the run goes on with the others."""
    import logging
    from types import SimpleNamespace

    from ddasr_nipype.bids_app import run as run_module
    from ddasr_nipype.bids_app.config import Config

    workflow = SimpleNamespace(run=lambda **_: None, visit_desc=lambda: "methods", base_dir=str(tmp_path),
                               name="wf", skipped_participants=["IXI606"])
    monkeypatch.setattr(run_module, "build_workflow", lambda config: workflow)
    reported = []
    monkeypatch.setattr(run_module, "write_reports", lambda config: reported.append(config.participant_label))
    config = Config(bids_dir=lr_bids, output_dir=tmp_path / "out", participant_label=("IXI603", "IXI606"),
                    session_label=("01",), run_uuid="20240101-000000_test")
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    run_module.LOGGER.addHandler(handler)
    try:
        status = run_module.run(config)
    finally:
        run_module.LOGGER.removeHandler(handler)
    assert status == 0 and reported == [("IXI603",)]
    assert [r.getMessage() for r in records] == [
        "no T1w image matching the session/filters for sub-IXI606: skipped"]
    assert (config.derivatives_dir / "sub-IXI603" / "log").is_dir()
    assert not (config.derivatives_dir / "sub-IXI606").exists()


def test_slurm_graph_wait_tells_this_runs_jobs_from_others(tmp_path, monkeypatch):
    """Job names (j0_conform...) repeat in every run: only jobs whose batch script is in this run's
    batch folder are waited for or cancelled."""
    from ddasr_nipype.bids_app.run import wait_for_slurm_graph

    batch = tmp_path / "work" / "ddasr_wf" / "batch"
    batch.mkdir(parents=True)
    (batch / "submit_jobs.sh").write_text("j0_conform=$(sbatch -J j0_conform ...)\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "squeue").write_text(f"""#!/bin/sh
n=$(cat {calls} 2>/dev/null || echo 0); echo $((n + 1)) > {calls}
echo "900|DependencyNeverSatisfied|/elsewhere/batch/batchscript_j0_conform.sh"
echo "901|Resources|/elsewhere/batch/batchscript_j1_conform.sh"
if [ "$n" -lt 2 ]; then echo "42|DependencyNeverSatisfied|{batch}/batchscript_j0_conform.sh"; fi
if [ "$n" -lt 1 ]; then echo "43|Resources|{batch}/batchscript_j1_super_resolve.sh"; fi
""")
    (bin_dir / "scancel").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'cancelled'}\n")
    for tool in ("squeue", "scancel"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert wait_for_slurm_graph(batch, poll_s=0.01) == ["42", "42"]  # cancelled, seen twice
    assert (tmp_path / "cancelled").read_text().split() == ["42", "42"]  # never 900 or 901
    assert int(calls.read_text()) == 3


def test_a_participant_a_scheduler_ended_gets_a_crash_note(tmp_path):
    """A SLURM job killed at its time limit leaves no crash file: the participant without fresh
    outputs gets one saying so (its report and the exit status then show the failure)."""
    import time

    from ddasr_nipype.bids_app.config import Config
    from ddasr_nipype.bids_app.run import failed_subjects, note_scheduler_failures

    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", participant_label=("a", "b", "c"),
                    run_uuid="20240101-000000_x", plugin="SLURMGraph")
    deriv = config.derivatives_dir
    started = time.time() - 1
    done = deriv / "sub-a" / "anat" / "sub-a_desc-ddasr_T1w.nii.gz"
    done.parent.mkdir(parents=True)
    done.write_bytes(b"x")  # written by this run
    crashed = deriv / "sub-b" / "log" / config.run_uuid / "crash-1-node.txt"
    crashed.parent.mkdir(parents=True)
    crashed.write_text("Node: x")
    assert note_scheduler_failures(config, since=started, batch_dir=tmp_path / "batch") == ["c"]
    note = (deriv / "sub-c" / "log" / config.run_uuid / "crash-scheduler.txt").read_text()
    assert "ended by the scheduler" in note and str(tmp_path / "batch") in note
    assert failed_subjects(config) == ["b", "c"]


def test_concurrent_array_tasks_write_the_dataset_description_safely(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from ddasr_nipype.bids_app.dataset import write_derivative_description

    deriv = tmp_path / "out" / "ddasr"
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: write_derivative_description(tmp_path, deriv), range(200)))
    assert json.loads((deriv / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    assert [p.name for p in deriv.iterdir()] == ["dataset_description.json"]  # no temporary left


def test_only_the_staging_folders_of_dead_runs_on_this_host_are_removed(tmp_path):
    """A killed run leaves its staging folder; the next run removes it, but never the folder of a run
    still alive (SLURM array tasks share the output folder) or of another host."""
    import socket

    from ddasr_nipype.bids_app.dataset import STAGING_OWNER, claim_staging, remove_stale_staging

    root = tmp_path / ".ddasr-staging"
    ours, alive, dead, remote, unknown = (root / name for name in ("ours", "alive", "dead", "remote", "unknown"))
    claim_staging(ours)
    claim_staging(alive)  # this process: alive
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead.mkdir()
    (dead / STAGING_OWNER).write_text(json.dumps({"host": socket.gethostname(), "pid": int(finished.stdout),
                                                  "start": "1"}))
    remote.mkdir()
    (remote / STAGING_OWNER).write_text(json.dumps({"host": "another-node", "pid": 1, "start": "1"}))
    unknown.mkdir()  # no owner record
    assert remove_stale_staging(ours) == [dead]
    assert sorted(p.name for p in root.iterdir()) == ["alive", "ours", "remote", "unknown"]


def test_the_command_freezes_the_heap_for_the_exit(monkeypatch):
    """``ddasr`` (the console script, ``run.cli``) returns main's status with everything frozen out of the
    garbage collector, so that the interpreter's exit does not scan it; main itself does not freeze."""
    import gc

    from ddasr_nipype.bids_app import run as run_module

    monkeypatch.setattr(run_module, "main", lambda: 3)
    gc.unfreeze()
    try:
        assert run_module.cli() == 3
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    import importlib.metadata

    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts["ddasr"] == "ddasr_nipype.bids_app.run:cli"
