"""Nipype interfaces on small real data with a tiny random-weights test bundle."""

from __future__ import annotations

import doctest
import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _bundles import make_tiny_bundle

from ddasr_nipype.errors import ChecksumMismatchError, InvalidImageError


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny-test", with_dsn=True)


@pytest.fixture(scope="module")
def lr_crop(lr_file, tmp_path_factory) -> Path:
    """A 40x36x30 crop of the real IXI scan (PSR orientation kept), with a correct affine."""
    img = nib.load(lr_file)
    crop = img.slicer[40:80, 40:76, 30:60]
    out = tmp_path_factory.mktemp("crop") / "sub-01_T1w.nii.gz"
    crop.to_filename(out)
    return out


def _cwd(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _world(affine, ijk):
    return nib.affines.apply_affine(affine, np.asarray(ijk, dtype=float))


def test_conform_reorients_exactly_and_records(lr_crop, tmp_path):
    from ddasr_nipype.interfaces import Conform

    res = Conform(in_file=str(lr_crop)).run(cwd=str(tmp_path))
    out = nib.load(res.outputs.out_file)
    ref = nib.as_closest_canonical(nib.load(lr_crop))
    assert nib.aff2axcodes(out.affine) == ("R", "A", "S")
    assert np.allclose(out.affine, ref.affine)
    assert np.array_equal(out.get_fdata(dtype=np.float32), ref.get_fdata(dtype=np.float32))
    assert res.outputs.in_orientation == "PSR"
    assert res.outputs.info["reoriented"] and not res.outputs.info["resampled"]
    assert res.outputs.info["output"]["shape"] == list(ref.shape)
    assert Path(res.outputs.out_file).parent == tmp_path


def test_conform_round_trip_and_isotropic(lr_crop, tmp_path):
    from ddasr_nipype.interfaces import Conform

    ras = Conform(in_file=str(lr_crop)).run(cwd=_cwd(tmp_path / "a"))
    back = Conform(in_file=ras.outputs.out_file, orientation="PSR").run(cwd=_cwd(tmp_path / "b"))
    orig, restored = nib.load(lr_crop), nib.load(back.outputs.out_file)
    assert np.allclose(orig.affine, restored.affine)
    assert np.array_equal(orig.get_fdata(dtype=np.float32), restored.get_fdata(dtype=np.float32))

    iso = Conform(in_file=str(lr_crop), voxel_size=1.5).run(cwd=_cwd(tmp_path / "c"))
    out = nib.load(iso.outputs.out_file)
    assert np.allclose(out.header.get_zooms()[:3], 1.5, atol=1e-4)
    assert iso.outputs.info["resampled"]
    # the FOV centre stays in place
    c_in = _world(orig.affine, (np.array(orig.shape) - 1) / 2)
    c_out = _world(out.affine, (np.array(out.shape) - 1) / 2)
    assert np.allclose(c_in, c_out, atol=0.75)


@pytest.mark.parametrize("problem", ["4d", "nan", "empty", "anisotropic", "truncated"])
def test_conform_rejects_bad_input(problem, lr_crop, tmp_path):
    from ddasr_nipype.interfaces import Conform

    img = nib.load(lr_crop)
    data = img.get_fdata(dtype=np.float32)
    affine = img.affine.copy()
    bad = tmp_path / "bad_T1w.nii.gz"
    if problem == "truncated":
        raw = gzip.decompress(Path(lr_crop).read_bytes())
        bad.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    else:
        if problem == "4d":
            data = np.stack([data, data], axis=-1)
        elif problem == "nan":
            data[0, 0, 0] = np.nan
        elif problem == "empty":
            data[:] = 0
        elif problem == "anisotropic":
            affine[:3, 2] *= 6  # 2 x 2 x 12 mm: ratio 6 ... then thinner in-plane
            affine[:3, :2] *= 0.5
        nib.Nifti1Image(data, affine).to_filename(bad)
    expected = {"4d": "4D", "nan": "non-finite", "empty": "empty", "anisotropic": "anisotropic",
                "truncated": "truncated"}[problem]
    with pytest.raises(InvalidImageError, match=expected) as err:
        Conform(in_file=str(bad)).run(cwd=str(tmp_path))
    assert str(bad) in str(err.value)


def test_reslice_mask_keeps_world_position(lr_crop, tmp_path):
    from ddasr_nipype.data.slicing import upsampled_affine
    from ddasr_nipype.interfaces import Reslice

    img = nib.load(lr_crop)
    mask = np.zeros(img.shape, np.uint8)
    mask[10:30, 8:20, 5:25] = 1
    mask_file, ref_file = tmp_path / "mask.nii.gz", tmp_path / "ref.nii.gz"
    nib.Nifti1Image(mask, img.affine).to_filename(mask_file)
    ref_shape = tuple(n * 2 for n in img.shape)
    nib.Nifti1Image(np.zeros(ref_shape, np.float32), upsampled_affine(img.affine, (2, 2, 2))
                    ).to_filename(ref_file)
    res = Reslice(in_file=str(mask_file), reference_file=str(ref_file), threshold=0.5).run(
        cwd=str(tmp_path))
    out = nib.load(res.outputs.out_file)
    assert out.shape == ref_shape and out.get_data_dtype() == np.uint8
    centroid_in = _world(img.affine, np.argwhere(mask).mean(0))
    centroid_out = _world(out.affine, np.argwhere(np.asarray(out.dataobj)).mean(0))
    assert np.allclose(centroid_in, centroid_out, atol=0.5)
    assert abs(int(np.asarray(out.dataobj).sum()) - 8 * int(mask.sum())) < 0.1 * 8 * mask.sum()


def test_brain_extraction_user_mask_any_grid(lr_crop, tmp_path):
    from ddasr_nipype.interfaces import BrainExtraction, Conform

    img = nib.load(lr_crop)
    mask = np.zeros(img.shape, np.uint8)
    mask[5:35, 6:30, 4:26] = 1
    mask_file = tmp_path / "mask.nii.gz"  # in the input's PSR orientation
    nib.Nifti1Image(mask, img.affine).to_filename(mask_file)
    ras = Conform(in_file=str(lr_crop)).run(cwd=_cwd(tmp_path / "c"))
    res = BrainExtraction(in_file=ras.outputs.out_file, backend="mask",
                          mask_file=str(mask_file)).run(cwd=str(tmp_path))
    out_mask = nib.load(res.outputs.out_mask)
    expected = nib.as_closest_canonical(nib.Nifti1Image(mask, img.affine)).get_fdata() > 0
    assert np.array_equal(np.asarray(out_mask.dataobj) > 0, expected)
    brain = nib.load(res.outputs.out_file).get_fdata()
    assert np.all(brain[~expected] == 0) and brain[expected].max() > 0
    assert res.outputs.info["mask_voxels"] == int(mask.sum())


def test_brain_extraction_errors(lr_crop, tmp_path):
    from ddasr_nipype.interfaces import BrainExtraction
    from ddasr_nipype.interfaces.brain_extraction import extract_brain

    img = nib.load(lr_crop)
    with pytest.raises(ValueError, match="unknown brain-extraction backend 'ants'.*deepbet, mask"):
        extract_brain(img, backend="ants")
    with pytest.raises(ValueError, match="needs mask_file"):
        BrainExtraction(in_file=str(lr_crop), backend="mask").run(cwd=str(tmp_path))
    empty = tmp_path / "empty.nii.gz"
    nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine).to_filename(empty)
    with pytest.raises(RuntimeError, match="empty mask"):
        extract_brain(img, backend="mask", mask_img=nib.load(empty))


@pytest.mark.parametrize("planes", ["sagittal", "all"])
def test_super_resolve_grid_and_sidecar(planes, lr_crop, tiny_bundle, tmp_path):
    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.data.slicing import upsampled_affine
    from ddasr_nipype.interfaces import SuperResolve

    res = SuperResolve(in_file=str(lr_crop), model=str(tiny_bundle), planes=planes,
                       device="cpu", num_threads=1, batch_size=16).run(cwd=str(tmp_path))
    img, out = nib.load(lr_crop), nib.load(res.outputs.out_file)
    # input is PSR: RAS axis 0 (sagittal slices) is the file's axis 2
    factors = (2, 2, 1) if planes == "sagittal" else (2, 2, 2)
    assert out.shape == tuple(n * f for n, f in zip(img.shape, factors))
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(img.affine)
    assert np.allclose(out.affine, upsampled_affine(img.affine, factors), atol=1e-4)
    # the FOV corners coincide (world alignment well within half an output voxel)
    corner_in = _world(img.affine, [-0.5, -0.5, -0.5])
    corner_out = _world(out.affine, [-0.5, -0.5, -0.5])
    assert np.allclose(corner_in, corner_out, atol=1e-3)
    meta = json.loads(Path(res.outputs.out_json).read_text())
    assert meta == res.outputs.metadata
    assert meta["model_sha256"] == load_bundle(tiny_bundle).sha256 == res.outputs.model_sha256
    assert meta["planes"] == planes and meta["scale"] == 2 and meta["device"] == "cpu"
    assert meta["input_voxel_size_mm"] == [2.0, 2.0, 2.0]
    assert np.isfinite(out.get_fdata()).all() and out.get_fdata().max() > 0


def test_super_resolve_output_settings_reach_the_image_and_the_sidecar(lr_crop, tiny_bundle, tmp_path):
    from ddasr_nipype.interfaces import SuperResolve
    from ddasr_nipype.interfaces.bids import t1w_sidecar

    runs = {}
    for label, settings in (("default", {}), ("bicubic", {"strength": 0.0}),
                            ("air", {"strength": 1.0, "background": "input"}), ("slices", {"slice_denoise": 2.0}),
                            ("projected", {"projection": "area"})):
        (tmp_path / label).mkdir()
        res = SuperResolve(in_file=str(lr_crop), model=str(tiny_bundle), device="cpu", num_threads=1,
                           **settings).run(cwd=str(tmp_path / label))
        runs[label] = (nib.load(res.outputs.out_file).get_fdata(), res.outputs.metadata)
    # the tiny bundle recommends nothing: its network alone
    plain = {"strength": 1.0, "background": "model", "slice_denoise": 0.0, "projection": "none"}
    assert runs["default"][1]["output"] == plain
    assert runs["bicubic"][1]["output"] == {**plain, "strength": 0.0}
    assert runs["air"][1]["output"] == {**plain, "background": "input"}
    assert runs["slices"][1]["output"] == {**plain, "slice_denoise": 2.0}
    assert runs["projected"][1]["output"] == {**plain, "projection": "area"}
    # the projected output's 2 x 2 block means in each sagittal slice are the input's (in its units;
    # the crop is PSR: in RAS order, which the sagittal slices are cut in, both are permuted alike)
    from ddasr_nipype.data.io import to_ras
    from ddasr_nipype.degradations import area_downsample_unclipped

    lr = np.asarray(to_ras(nib.load(lr_crop))[0].dataobj, dtype=np.float64)
    out_img = nib.Nifti1Image(runs["projected"][0], nib.load(res.outputs.out_file).affine)
    projected = np.asarray(to_ras(out_img)[0].dataobj, dtype=np.float64)
    assert projected.shape == (lr.shape[0], 2 * lr.shape[1], 2 * lr.shape[2])
    assert not np.allclose(runs["projected"][0], runs["default"][0])
    inside = lr < np.percentile(lr, 99)  # above, the normalization clipped the network's input
    np.testing.assert_allclose(area_downsample_unclipped(projected, 2, axes=(1, 2))[inside], lr[inside],
                               rtol=1e-3, atol=1e-2 * lr.max())
    assert not np.allclose(runs["slices"][0], runs["default"][0])  # the network saw denoised slices
    default, bicubic, air = (runs[k][0] for k in ("default", "bicubic", "air"))
    assert not np.allclose(default, bicubic)
    changed = ~np.isclose(air, default)  # only the air around the head changes, and there to bicubic
    assert 0 < changed.mean() < 0.9
    assert np.corrcoef(air[changed], bicubic[changed])[0, 1] > np.corrcoef(default[changed], bicubic[changed])[0, 1]
    sidecar = t1w_sidecar(runs["air"][1], str(lr_crop), str(tmp_path))
    assert sidecar["ModelStrength"] == 1.0 and sidecar["Background"] == "input" and sidecar["SliceDenoise"] == 0.0
    assert t1w_sidecar(runs["slices"][1], str(lr_crop), str(tmp_path))["SliceDenoise"] == 2.0
    assert sidecar["Projection"] == "none"
    assert t1w_sidecar(runs["projected"][1], str(lr_crop), str(tmp_path))["Projection"] == "area"
    with pytest.raises(Exception, match="strength"):
        SuperResolve(in_file=str(lr_crop), model=str(tiny_bundle), strength=1.5)
    with pytest.raises(Exception, match="slice_denoise"):
        SuperResolve(in_file=str(lr_crop), model=str(tiny_bundle), slice_denoise=-1.0)
    with pytest.raises(Exception, match="projection"):
        SuperResolve(in_file=str(lr_crop), model=str(tiny_bundle), projection="sinc")


def test_super_resolve_refuses_tampered_model(lr_crop, tiny_bundle, tmp_path):
    import shutil

    from ddasr_nipype.interfaces import SuperResolve

    bad = tmp_path / "tampered"
    shutil.copytree(tiny_bundle, bad)
    weights = bad / "srn.pt"
    raw = bytearray(weights.read_bytes())
    raw[-100] ^= 0xFF  # flip one byte
    weights.write_bytes(bytes(raw))
    with pytest.raises(ChecksumMismatchError, match="sha256"):
        SuperResolve(in_file=str(lr_crop), model=str(bad), device="cpu").run(cwd=str(tmp_path))


def test_dsn_degrade(hr_files, lr_crop, tiny_bundle, tmp_path, monkeypatch):
    import torch

    import ddasr_nipype.inference as inference
    from ddasr_nipype.interfaces import DSNDegrade

    hr = nib.load(hr_files["trio"]).slicer[:, 30:62, 30:62]  # RAS, 72x32x32, 1 mm
    hr_file = tmp_path / "hr_T1w.nii.gz"
    hr.to_filename(hr_file)
    seen = []
    degrade_image = inference.degrade_image

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())  # in the node's work thread
        return degrade_image(*args, **kwargs)

    monkeypatch.setattr(inference, "degrade_image", spy)
    threads = torch.get_num_threads()
    try:
        res = DSNDegrade(in_file=str(hr_file), reference_lr=str(lr_crop), model=str(tiny_bundle),
                         plane="sagittal", device="cpu", num_threads=1).run(cwd=str(tmp_path))
    finally:
        torch.set_num_threads(threads)
    assert seen == [1]  # the DSN ran on the one thread asked for
    out = nib.load(res.outputs.out_file)
    assert out.shape == (72, 16, 16)
    assert np.allclose(out.header.get_zooms()[:3], (1.0, 2.0, 2.0), atol=1e-3)
    assert res.outputs.metadata["plane"] == "sagittal"
    assert json.loads(Path(res.outputs.out_json).read_text())["dsn_sha256"]
    assert res.outputs.metadata["warnings"] == [] and res.outputs.metadata["hr_cropped"] == []

    # odd in-plane axes lose their last HR voxel: the LR grid covers the (cropped) HR's FOV exactly
    odd = nib.load(hr_files["trio"]).slicer[:, 30:61, 30:61]  # 72x31x31
    odd.to_filename(tmp_path / "odd_T1w.nii.gz")
    res = DSNDegrade(in_file=str(tmp_path / "odd_T1w.nii.gz"), reference_lr=str(lr_crop), model=str(tiny_bundle),
                     plane="sagittal", device="cpu").run(cwd=str(tmp_path))
    out = nib.load(res.outputs.out_file)
    assert out.shape == (72, 15, 15) and res.outputs.metadata["hr_cropped"] == ["A-P", "S-I"]
    far_lr = nib.affines.apply_affine(out.affine, np.array(out.shape) - 0.5)
    far_hr = nib.affines.apply_affine(odd.affine, np.array([72, 30, 30]) - 0.5)
    np.testing.assert_allclose(far_lr, far_hr, atol=1e-4)  # the outer edge of the last kept HR voxel

    # HR finer than the site's voxel size / scale: the synthetic LR is finer than the site's, and says so
    fine = nib.Nifti1Image(np.asarray(hr.dataobj), hr.affine @ np.diag([0.7, 0.7, 0.7, 1]))
    fine.to_filename(tmp_path / "fine_T1w.nii.gz")
    res = DSNDegrade(in_file=str(tmp_path / "fine_T1w.nii.gz"), reference_lr=str(lr_crop),
                     model=str(tiny_bundle), plane="sagittal", device="cpu").run(cwd=str(tmp_path))
    (message,) = res.outputs.metadata["warnings"]
    assert "synthetic LR voxels of 1.4 x 1.4 mm" in message and "the site's are 2 x 2 mm" in message


def test_summary_and_sidecars(tmp_path):
    from ddasr_nipype.interfaces import SRSummary
    from ddasr_nipype.interfaces.bids import bids_uri, mask_sidecar, t1w_sidecar

    meta = {"model_name": "tiny-test", "model_sha256": "ab" * 32, "scale": 2, "planes": "all",
            "device": "cpu", "runtime_s": 1.25, "input_shape": [4, 4, 4],
            "input_voxel_size_mm": [2, 2, 2], "output_shape": [8, 8, 8],
            "output_voxel_size_mm": [1, 1, 1]}
    res = SRSummary(metadata=meta, source_file="sub-01/anat/sub-01_T1w.nii.gz",
                    mask_info={"backend": "deepbet", "mask_volume_ml": 1234.5},
                    metrics_before={"niqe_mean": 8.5}, metrics_after={"niqe_mean": 6.25}
                    ).run(cwd=str(tmp_path))
    html = Path(res.outputs.out_report).read_text()
    for text in ("tiny-test", "abababab", "x2 / all", "1234.5 ml", "sub-01_T1w.nii.gz",
                 "NIQE (lower is better)", "input 8.50 &rarr; super-resolved 6.25"):
        assert text in html
    assert "Warning" not in html and "Warnings" not in t1w_sidecar(meta, "/d/x.nii.gz", "/d")
    meta["warnings"] = ["sagittal voxels of 3 x 3 mm: model 'tiny-test' was trained on 2 mm input"]
    html = SRSummary(metadata=meta).run(cwd=str(tmp_path)).outputs.out_report
    assert "Warning" in Path(html).read_text() and "model &#x27;tiny-test&#x27; was trained" in Path(html).read_text()
    assert t1w_sidecar(meta, "/d/x.nii.gz", "/d")["Warnings"] == meta["warnings"]
    assert bids_uri("/data/ds/sub-01/anat/x.nii.gz", "/data/ds") == "bids:raw:sub-01/anat/x.nii.gz"
    assert mask_sidecar({"backend": "mask"}, "/d/sub-01/anat/x.nii.gz", "/d")["Type"] == "Brain"


def test_commit_is_all_or_nothing(tmp_path):
    from ddasr_nipype.interfaces.bids import CommitDerivatives

    staging, out = tmp_path / "staging", tmp_path / "out"
    files = [staging / "ddasr" / "sub-01" / "anat" / f"f{i}.txt" for i in range(2)]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f.name)
    with pytest.raises(FileNotFoundError, match="nothing was committed"):
        CommitDerivatives(in_files=[str(f) for f in files] + [str(staging / "missing")],
                          staging_dir=str(staging), output_dir=str(out)).run(cwd=str(tmp_path))
    assert not out.exists() and all(f.exists() for f in files)
    res = CommitDerivatives(in_files=[str(f) for f in files], staging_dir=str(staging),
                            output_dir=str(out)).run(cwd=str(tmp_path))
    assert sorted(Path(p).read_text() for p in res.outputs.out_files) == ["f0.txt", "f1.txt"]
    assert not any(f.exists() for f in files)
    # two derivatives staged under one name (inputs that map to one output): nothing moves
    files[0].write_text("again")
    with pytest.raises(ValueError, match="same output name; nothing was committed"):
        CommitDerivatives(in_files=[str(files[0]), str(files[0])], staging_dir=str(staging),
                          output_dir=str(tmp_path / "out2")).run(cwd=str(tmp_path))
    assert files[0].exists() and not (tmp_path / "out2").exists()


@pytest.mark.parametrize("name, expected", [
    ("sub-01_echo-2_T1w.nii.gz", "sub-01_echo-2_desc-ddasr_T1w.nii.gz"),
    ("sub-01_acq-mp_run-2_part-mag_T1w.nii", "sub-01_acq-mp_run-2_part-mag_desc-ddasr_T1w.nii.gz"),
    ("sub-01_inv-2_chunk-3_T1w.nii.gz", "sub-01_inv-2_chunk-3_desc-ddasr_T1w.nii.gz"),
    ("sub-01_T1w.nii.gz", "sub-01_desc-ddasr_T1w.nii.gz"),
])
def test_data_sink_keeps_every_entity_of_the_t1w(name, expected, tmp_path):
    """niworkflows' anat patterns drop echo/part/inv: two echoes would overwrite each other."""
    from ddasr_nipype.interfaces.bids import DerivativesDataSink, derivative_path

    source = tmp_path / "bids" / "sub-01" / "anat" / name
    source.parent.mkdir(parents=True)
    nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)).to_filename(source)
    res = DerivativesDataSink(base_directory=str(tmp_path / "out"), source_file=str(source),
                              in_file=str(source), desc="ddasr", suffix="T1w", compress=True
                              ).run(cwd=str(tmp_path))
    assert Path(res.outputs.out_file) == tmp_path / "out" / "ddasr" / "sub-01" / "anat" / expected
    assert derivative_path(source, desc="ddasr", suffix="T1w") == f"sub-01/anat/{expected}"
    mask = DerivativesDataSink(base_directory=str(tmp_path / "out"), source_file=str(source),
                               in_file=str(source), desc="brain", suffix="mask", compress=True
                               ).run(cwd=str(tmp_path))
    assert Path(mask.outputs.out_file).name == expected.replace("desc-ddasr_T1w", "desc-brain_mask")
    # the consistency z-maps: the same entities, desc-consistency[DSN]_statmap, res-sr on the output grid
    zmap = DerivativesDataSink(base_directory=str(tmp_path / "out"), source_file=str(source),
                               in_file=str(source), desc="consistency", suffix="statmap", resolution="sr",
                               compress=True, meta_dict={"Resolution": {"sr": "the output grid"}}
                               ).run(cwd=str(tmp_path))
    assert Path(zmap.outputs.out_file).name == expected.replace("desc-ddasr_T1w", "res-sr_desc-consistency_statmap")
    assert json.loads(Path(zmap.outputs.out_meta).read_text())["Resolution"] == {"sr": "the output grid"}
    assert derivative_path(source, desc="consistencyDSN", suffix="statmap") == (
        f"sub-01/anat/{expected.replace('desc-ddasr_T1w', 'desc-consistencyDSN_statmap')}")


@pytest.mark.parametrize("module", ["conform", "brain_extraction", "super_resolve", "dsn",
                                    "reports", "bids", "consistency"])
def test_docstring_examples(module):
    import importlib

    mod = importlib.import_module(f"ddasr_nipype.interfaces.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_data_sink_copies_a_nibabel_gzip_byte_for_byte_and_normalizes_any_other(tmp_path):
    """niworkflows re-compresses every .nii.gz at level 9 (1.5 s for the example's output) to drop the gzip
    file name and time stamp; nibabel writes neither, so those files are copied as they are."""
    import gzip

    import niworkflows.interfaces.bids as nw_bids

    from ddasr_nipype.interfaces.bids import DerivativesDataSink

    source = tmp_path / "bids" / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    source.parent.mkdir(parents=True)
    img = nib.Nifti1Image(np.random.default_rng(0).random((6, 5, 4), dtype=np.float32), np.diag([2.0, 1, 1, 1]))
    img.set_qform(img.affine, 1)
    img.set_sform(img.affine, 1)
    img.header.set_xyzt_units("mm")
    img.to_filename(source)
    # the same image, gzipped by Python's gzip module: file name and time stamp in the header
    stamped = tmp_path / "sub-01_T1w.nii.gz"
    stamped.write_bytes(gzip.compress(gzip.decompress(source.read_bytes()), mtime=1234567))
    with gzip.open(tmp_path / "named.nii.gz", "wb") as f:
        f.write(gzip.decompress(source.read_bytes()))
    copy_any = nw_bids._copy_any
    for in_file, desc in ((source, "plain"), (stamped, "stamped"), (tmp_path / "named.nii.gz", "named")):
        out = Path(DerivativesDataSink(base_directory=str(tmp_path / "out"), source_file=str(source),
                                       in_file=str(in_file), desc=desc, suffix="T1w", compress=True
                                       ).run(cwd=str(tmp_path)).outputs.out_file)
        assert gzip.decompress(out.read_bytes()) == gzip.decompress(source.read_bytes())
        head = out.read_bytes()[:10]
        assert head[3] == 0 and head[4:8] == b"\0\0\0\0"  # no name, no time stamp, whatever came in
        assert (out.read_bytes() == in_file.read_bytes()) == (desc == "plain")
        assert nw_bids._copy_any is copy_any  # niworkflows' own copy is back after each run
