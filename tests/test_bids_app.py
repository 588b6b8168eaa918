"""The ddasr BIDS App: argument checks, and one end-to-end run on real data with a tiny model."""

from __future__ import annotations

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
    config = parse_args(_args(bids_copy, tmp_path / "o", "--mem", "8000MB", model=tiny_bundle))
    assert config.plugin == "MultiProc" and config.plugin_args["memory_gb"] == pytest.approx(8.0)
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

    report = (deriv / "sub-IXI603.html").read_text()
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
