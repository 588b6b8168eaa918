"""Workflow factories: graphs are built without running tools; one small sr_wf run on a crop."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _bundles import make_tiny_bundle

from ddasr_nipype.bids_app.config import EXAMPLE_DIR, Config
from ddasr_nipype.errors import InputDatasetError
from ddasr_nipype.workflows import init_ddasr_wf, init_single_subject_wf, init_sr_wf


def _touch_nifti(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)).to_filename(path)


@pytest.fixture
def multi_bids(tmp_path) -> Path:
    """sub-01: two sessions, two runs in ses-a (one acq-fast); sub-02: one T1w; sub-03: none."""
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    for rel in ("sub-01/ses-a/anat/sub-01_ses-a_run-1_T1w.nii.gz",
                "sub-01/ses-a/anat/sub-01_ses-a_acq-fast_run-2_T1w.nii.gz",
                "sub-01/ses-b/anat/sub-01_ses-b_T1w.nii.gz",
                "sub-02/anat/sub-02_T1w.nii.gz",
                "sub-03/anat/sub-03_T2w.nii.gz"):
        _touch_nifti(root / rel)
    return root


def _config(bids_dir, tmp_path, **kwargs) -> Config:
    return Config(bids_dir=Path(bids_dir), output_dir=tmp_path / "out", work_dir=tmp_path / "work",
                  model="ixi-t1w-x2", run_uuid="test", **kwargs)


def _sr_nodes(wf) -> list[str]:
    return sorted(n for n in wf.list_node_names() if n.endswith(".super_resolve"))


def test_sr_wf_graph():
    wf = init_sr_wf(model="/models/m", planes="all", device="cuda", omp_nthreads=3, tile_size=64)
    names = set(wf.list_node_names())
    assert {"conform", "brain_extraction", "super_resolve", "reslice_mask", "inputnode", "outputnode"} <= names
    assert "restore_orientation" not in names  # the SR node writes the input's orientation itself
    sr = wf.get_node("super_resolve")
    assert (sr.inputs.planes, sr.inputs.device, sr.inputs.tile_size) == ("all", "cuda", 64)
    assert sr.inputs.use_gpu is True and sr.n_procs == 3
    # the physics consistency map is one thread of numpy; a bundle's DSN map gets the node's threads
    assert wf.get_node("data_consistency").n_procs == 1  # /models/m cannot be read here: no DSN
    with_dsn = init_sr_wf(model="ixi-t1w-x2-gan", omp_nthreads=3).get_node("data_consistency")
    assert with_dsn.n_procs == 3 and with_dsn.inputs.num_threads == 3
    # the maps do not wait for the brain mask: their figures are computed in it afterwards
    edges = {(u.name, v.name): d["connect"] for u, v, d in wf._graph.edges(data=True)}
    assert ("brain_extraction", "data_consistency") not in edges
    assert ("out_mask", "mask_file") in edges[("brain_extraction", "consistency_summary")]
    assert ("metadata", "consistency") in edges[("consistency_summary", "outputnode")]
    assert ("metadata", "consistency") not in edges[("data_consistency", "outputnode")]
    # on one machine the physics map runs in the scheduler's process, taking no worker slot, beside the
    # brain extraction; a DSN map (torch) keeps its worker and threads
    assert not wf.get_node("data_consistency").run_without_submitting
    local = init_sr_wf(model="/models/m", consistency_in_scheduler=True)
    assert local.get_node("data_consistency").run_without_submitting
    assert local.get_node("data_consistency").n_procs == 0
    for node in ("grid_metadata", "consistency_summary"):
        assert local.get_node(node).run_without_submitting and local.get_node(node).n_procs == 0
    dsn_node = init_sr_wf(model="ixi-t1w-x2-gan", omp_nthreads=3, consistency_in_scheduler=True)
    assert not dsn_node.get_node("data_consistency").run_without_submitting
    assert dsn_node.get_node("data_consistency").n_procs == 3
    assert ("out_dsn_zmap", "dsn_zmap_file") in {
        c for (u, v), conns in {(u.name, v.name): d["connect"] for u, v, d in dsn_node._graph.edges(data=True)}.items()
        if (u, v) == ("data_consistency", "consistency_summary") for c in conns}
    # without brain extraction the maps' own figures (the input's head mask) go out
    skipped = init_sr_wf(model="/models/m", skip_brain_extraction=True)
    assert "consistency_summary" not in skipped.list_node_names()
    assert ("metadata", "consistency") in {
        c for u, v, d in skipped._graph.edges(data=True) if (u.name, v.name) == ("data_consistency", "outputnode")
        for c in d["connect"]}
    assert "all three" not in wf.__desc__ and "averaged into an isotropic volume" in wf.__desc__
    # the SR node is told the input's orientation, and the mask is resliced onto its output's grid
    assert ("in_orientation", "out_orientation") in edges[("conform", "super_resolve")]
    assert ("out_file", "reference_file") in edges[("super_resolve", "reslice_mask")]
    assert ("conform", "brain_extraction") in edges and ("conform", "super_resolve") in edges


def test_sr_wf_methods_text_states_the_output_settings():
    shipped = init_sr_wf(model="ixi-t1w-x2")  # the bundle recommends strength 0.4, the air from the input
    assert "network weight 0.4" in shipped.__desc__ and "interpolation of the input was kept" in shipped.__desc__
    alone = init_sr_wf(model="ixi-t1w-x2", strength=1.0, background="model")
    assert "blended" not in alone.__desc__ and "was kept" not in alone.__desc__
    node = alone.get_node("super_resolve")
    assert (node.inputs.strength, node.inputs.background) == (1.0, "model")
    assert "blended" not in init_sr_wf(model="/models/m").__desc__  # unreadable here: checked at run time
    assert "non-local means across slices" not in shipped.__desc__
    default = init_sr_wf(model="t1w-x2")  # recommends denoising across slices, h = 2 x the noise level
    assert "neighbouring slices" in default.__desc__ and "h = 2 x the noise level" in default.__desc__
    assert "neighbouring slices" not in init_sr_wf(model="t1w-x2", slice_denoise=0).__desc__
    assert init_sr_wf(model="t1w-x2", slice_denoise=1.5).get_node("super_resolve").inputs.slice_denoise == 1.5
    assert "k-space" not in default.__desc__  # no projection recommended
    projected = init_sr_wf(model="t1w-x2", projection="kspace")
    assert "central k-space" in projected.__desc__ and "denoised input slice" in projected.__desc__
    assert projected.get_node("super_resolve").inputs.projection == "kspace"
    assert "block of output voxels" in init_sr_wf(model="t1w-x2", slice_denoise=0, projection="area").__desc__


def test_sr_wf_without_brain_extraction():
    wf = init_sr_wf(model="m", skip_brain_extraction=True)
    assert "brain_extraction" not in wf.list_node_names()
    assert "deepbet" not in wf.__desc__
    assert wf.get_node("super_resolve").inputs.use_gpu is False


def test_ddasr_wf_sessions_runs_and_filters(multi_bids, tmp_path):
    wf = init_ddasr_wf(config=_config(multi_bids, tmp_path, participant_label=("01", "02")))
    assert _sr_nodes(wf) == [
        "sub_01_wf.t1w_0_wf.super_resolve", "sub_01_wf.t1w_1_wf.super_resolve",
        "sub_01_wf.t1w_2_wf.super_resolve", "sub_02_wf.t1w_0_wf.super_resolve",
    ]
    wf = init_ddasr_wf(config=_config(multi_bids, tmp_path, participant_label=("01",),
                                      session_label=("b",)))
    assert _sr_nodes(wf) == ["sub_01_wf.t1w_0_wf.super_resolve"]
    t1w = wf.get_node("sub_01_wf.t1w_0_wf.inputnode").inputs.t1w
    assert t1w.endswith("sub-01_ses-b_T1w.nii.gz")
    wf = init_ddasr_wf(config=_config(multi_bids, tmp_path, participant_label=("01",),
                                      bids_filters={"t1w": {"acquisition": "fast"}}))
    assert _sr_nodes(wf) == ["sub_01_wf.t1w_0_wf.super_resolve"]
    with pytest.raises(InputDatasetError, match="no T1w image found .* for sub-03"):
        init_ddasr_wf(config=_config(multi_bids, tmp_path, participant_label=("03",)))


def test_ddasr_wf_skips_participants_without_a_matching_t1w(multi_bids, tmp_path):
    """A session or filter that only some participants match skips the others, not the run."""
    wf = init_ddasr_wf(config=_config(multi_bids, tmp_path, participant_label=("01", "02", "03"),
                                      session_label=("b",)))
    assert _sr_nodes(wf) == ["sub_01_wf.t1w_0_wf.super_resolve"]
    assert wf.skipped_participants == ["02", "03"]
    wf = init_ddasr_wf(config=_config(multi_bids, tmp_path, participant_label=("01", "02", "03")))
    assert wf.skipped_participants == ["03"]  # a T2w only
    with pytest.raises(InputDatasetError, match="sub-02, sub-03 with the given session/filters"):
        init_ddasr_wf(config=_config(multi_bids, tmp_path, participant_label=("02", "03"),
                                     session_label=("b",)))


def test_ddasr_wf_methods_text_counts_every_participant(multi_bids, tmp_path):
    text = init_ddasr_wf(config=_config(multi_bids, tmp_path, participant_label=("01", "02"))).visit_desc()
    assert "4 T1-weighted images of 2 participants were found" in text
    assert text.count("### Super-resolution of anatomical data") == 1
    assert text.count("Each T1-weighted (T1w) image was validated") == 1
    one = init_ddasr_wf(config=_config(multi_bids, tmp_path, participant_label=("02",))).visit_desc()
    assert "1 T1-weighted image of 1 participant was found" in one


def test_inputs_that_would_share_an_output_name_are_refused(tmp_path):
    """Entities niworkflows' anat patterns drop (echo, part) keep outputs apart; true clashes
    (the same name as .nii and .nii.gz) are refused before anything runs."""
    root = tmp_path / "bids"
    for rel in ("sub-01/anat/sub-01_echo-1_T1w.nii.gz", "sub-01/anat/sub-01_echo-2_T1w.nii.gz",
                "sub-02/anat/sub-02_T1w.nii", "sub-02/anat/sub-02_T1w.nii.gz"):
        _touch_nifti(root / rel)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    wf = init_ddasr_wf(config=_config(root, tmp_path, participant_label=("01",)))
    assert _sr_nodes(wf) == ["sub_01_wf.t1w_0_wf.super_resolve", "sub_01_wf.t1w_1_wf.super_resolve"]
    with pytest.raises(InputDatasetError, match="sub-02_T1w.nii and sub-02_T1w.nii.gz"):
        init_ddasr_wf(config=_config(root, tmp_path, participant_label=("02",)))


def test_ddasr_wf_crash_dir_sinks_and_commit(multi_bids, tmp_path):
    config = _config(multi_bids, tmp_path, participant_label=("01", "02"),
                     skip_brain_extraction=True)
    wf = init_ddasr_wf(config=config)
    sub = wf.get_node("sub_01_wf")
    assert sub.config["execution"]["crashdump_dir"] == str(
        tmp_path / "out" / "ddasr" / "sub-01" / "log" / "test")
    assert sub.config["execution"]["crashfile_format"] == "txt"
    assert sub.config["execution"]["stop_on_first_crash"] is False
    ds = wf.get_node("sub_01_wf.ds_t1w_0")
    assert ds.inputs.desc == "ddasr" and ds.inputs.suffix == "T1w"
    assert ds.inputs.base_directory == str(tmp_path / "out" / ".ddasr-staging" / "test")
    assert ds.interface.out_path_base == "ddasr"
    commit = wf.get_node("sub_01_wf.commit_derivatives")
    assert commit.inputs.output_dir == str(tmp_path / "out")
    # every data sink of the subject feeds the single commit node (all or nothing)
    sub_wf = init_single_subject_wf(subject_id="01", t1w_files=[str(multi_bids / "a_T1w.nii.gz")],
                                    config=config)
    sinks = {n for n in sub_wf.list_node_names() if n.startswith("ds_")}
    merged = {u.name for u, v in sub_wf._graph.edges() if v.name == "merge_outputs"}
    assert sinks and sinks == merged


def test_ddasr_wf_quality_metrics_feed_the_summary(multi_bids, tmp_path):
    config = _config(multi_bids, tmp_path, participant_label=("02",), quality_metrics=True)
    sub = init_ddasr_wf(config=config).get_node("sub_02_wf")
    edges = {(u.name, v.name) for u, v in sub._graph.edges()}
    assert {("metrics_input_0", "summary_0"), ("metrics_output_0", "summary_0")} <= edges
    plain = init_ddasr_wf(config=_config(multi_bids, tmp_path, participant_label=("02",)))
    assert not [n for n in plain.list_node_names() if "metrics_" in n]


def test_sr_wf_runs_and_keeps_world_alignment(lr_file, tmp_path):
    """Run on a crop of the real PSR scan: output in the input's orientation, FOV aligned."""
    bundle = make_tiny_bundle(tmp_path / "tiny-test")
    crop = nib.load(lr_file).slicer[40:72, 40:72, 30:54]
    in_file = tmp_path / "sub-01_T1w.nii.gz"
    crop.to_filename(in_file)
    wf = init_sr_wf(model=str(bundle), device="cpu", skip_brain_extraction=True)
    wf.base_dir = str(tmp_path / "work")
    wf.inputs.inputnode.t1w = str(in_file)
    graph = wf.run(plugin="Linear")
    results = {n.name: n.result for n in graph.nodes()}
    out = nib.load(results["super_resolve"].outputs.out_file)
    assert nib.aff2axcodes(out.affine) == ("P", "S", "R")
    assert out.shape == (64, 64, 24)  # sagittal SR: x2 on the file's P and S axes
    zooms_in, zooms_out = crop.header.get_zooms(), out.header.get_zooms()
    assert np.allclose(np.array(zooms_in) / np.array(zooms_out), (2, 2, 1))
    # every output voxel centre sits where the FOV-preserving grid puts it: within half a voxel
    ijk_out = np.array([[0, 0, 0], [63, 63, 23], [10, 50, 7]], dtype=float)
    ijk_in = (ijk_out + 0.5) / np.array([2, 2, 1]) - 0.5
    err = np.abs(nib.affines.apply_affine(out.affine, ijk_out)
                 - nib.affines.apply_affine(crop.affine, ijk_in))
    assert err.max() < 0.5 * min(zooms_out)
    meta = results["super_resolve"].outputs.metadata
    assert meta["model_name"] == "tiny-test" and json.dumps(meta)
    # the SR node's own metadata describes the file it wrote (the input's orientation), not the RAS copy
    assert meta["output_orientation"] == "PSR" and meta["output_shape"] == [64, 64, 24]
    assert meta["upsampling_factors"] == [2, 2, 1] and meta["input_shape"] == [32, 32, 24]
    # what the sidecar and report get: grids along the axes of the files, not of the RAS copy
    meta = results["grid_metadata"].outputs.metadata
    assert meta["upsampling_factors"] == [2, 2, 1] and meta["upsampling_factors_ras"] == [1, 2, 2]
    assert (meta["input_shape"], meta["output_shape"]) == ([32, 32, 24], [64, 64, 24])
    assert np.allclose(meta["output_voxel_size_mm"], zooms_out)


@pytest.mark.parametrize("module", ["ddasr_nipype.workflows.sr", "ddasr_nipype.workflows.base"])
def test_docstring_examples(module):
    import importlib

    assert EXAMPLE_DIR.is_dir()
    result = doctest.testmod(importlib.import_module(module),
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
