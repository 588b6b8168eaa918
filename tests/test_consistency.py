"""Data-consistency z-maps (ddasr_nipype.consistency, the DataConsistency node, its report), on real data."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest
from _bundles import make_tiny_bundle
from nibabel.affines import apply_affine

from ddasr_nipype.consistency import (
    THRESHOLD,
    dsn_consistency,
    estimate_noise,
    grid_factors,
    half_sample_mode,
    physics_consistency,
    redegrade,
    resummarize,
    summarize_zmap,
    upsample_nearest,
    zmap,
)
from ddasr_nipype.data.io import from_ras, new_image_like, to_ras
from ddasr_nipype.data.slicing import resampled_affine, upsampled_affine
from ddasr_nipype.degradations import bicubic_upsample_volume
from ddasr_nipype.errors import InvalidImageError, ModelBundleError

SAGITTAL = (1, 2, 2)  # the up-sampling factors of the default plane, RAS axes


@pytest.fixture(scope="module")
def forrest(data_dir):
    """The real studyforrest crop (0.7 x 0.67 x 0.67 mm, LAS) in RAS, area-averaged to a sagittal LR
    (0.7 x 1.33 x 1.33 mm), with its deepbet brain mask on both grids."""
    hr_ras, _ = to_ras(nib.load(data_dir / "hr" / "sub-forrest" / "anat" / "sub-forrest_T1w.nii.gz"))
    mask_ras, _ = to_ras(nib.load(data_dir / "masks" / "sub-forrest_desc-brain_mask.nii.gz"))
    hr = np.asarray(hr_ras.dataobj, dtype=np.float64)
    lr = redegrade(hr, SAGITTAL)
    lr_affine = resampled_affine(hr_ras.affine, SAGITTAL, [0.0, 0.5, 0.5])  # the grid hr's is the x2 of
    assert np.allclose(upsampled_affine(lr_affine, SAGITTAL), hr_ras.affine)
    brain_hr = np.asarray(mask_ras.dataobj) > 0
    return {"hr_ras": hr_ras, "hr": hr, "lr": lr, "lr_affine": lr_affine, "brain_hr": brain_hr,
            "brain": redegrade(brain_hr, SAGITTAL) >= 0.5, "noise": estimate_noise(lr)}


def _z(case, sr, model="area"):
    return zmap(case["lr"], redegrade(sr, SAGITTAL, model), case["noise"].sigma)


def test_bicubic_of_an_area_downsampled_real_volume_is_consistent(forrest):
    bicubic = bicubic_upsample_volume(forrest["lr"], SAGITTAL)
    summary = summarize_zmap(_z(forrest, bicubic), forrest["brain"], forrest["lr_affine"])
    assert summary.mask_voxels > 10000
    assert summary.fraction_above < 0.01  # measured: 0.09 %
    assert 0.3 < summary.rms_z < 1.0  # not a vacuous zero map: bicubic's smoothing leaves a residual
    assert abs(summary.median_z) < 0.1
    # k-space truncation as the re-degradation gives nearly the same figures
    kspace = summarize_zmap(_z(forrest, bicubic, "kspace"), forrest["brain"], forrest["lr_affine"])
    assert kspace.fraction_above < 0.01 and abs(kspace.rms_z - summary.rms_z) < 0.1


def test_a_one_voxel_shift_gives_high_values(forrest):
    bicubic = bicubic_upsample_volume(forrest["lr"], SAGITTAL)
    aligned = summarize_zmap(_z(forrest, bicubic), forrest["brain"], forrest["lr_affine"])
    shifted = summarize_zmap(_z(forrest, np.roll(bicubic, 1, axis=1)), forrest["brain"], forrest["lr_affine"])
    assert shifted.rms_z > 3 * aligned.rms_z and shifted.rms_z > 2.0  # measured: 2.31 vs 0.65
    assert shifted.fraction_above > 0.05 > 10 * aligned.fraction_above  # measured: 12 % vs 0.09 %


def test_a_fake_lesion_is_flagged_where_it_is(forrest):
    hr = forrest["hr"]
    centre = np.array([30, 50, 70])  # SR voxel inside the brain mask
    assert forrest["brain_hr"][tuple(centre)]
    distance = np.sqrt(((np.indices(hr.shape) - centre[:, None, None, None]) ** 2).sum(0))
    lesion = (distance <= 3) * 0.25 * np.median(hr[forrest["brain_hr"]])  # 2 mm radius, +25 % of the brain
    sr = bicubic_upsample_volume(forrest["lr"], SAGITTAL) + lesion
    summary = summarize_zmap(_z(forrest, sr), forrest["brain"], forrest["lr_affine"])
    cluster = summary.largest_cluster
    truth = apply_affine(forrest["hr_ras"].affine, centre)  # world mm
    assert np.linalg.norm(np.array(cluster.centre_mm) - truth) < 1.0  # measured: 0.2 mm
    assert np.linalg.norm(np.array(cluster.peak_mm) - truth) < 2.0
    assert cluster.peak_z > 5 and cluster.voxels >= 10  # brighter than the data allow
    # the map changes only where the lesion is: the area model is local
    difference = np.abs(_z(forrest, sr) - _z(forrest, sr - lesion)) > 1e-6
    lr_centre = apply_affine(np.linalg.inv(forrest["lr_affine"]), truth)
    far = np.sqrt(((np.indices(difference.shape) - lr_centre[:, None, None, None]) ** 2).sum(0)) > 4
    assert difference.any() and not (difference & far).any()


def test_noise_estimate_recovers_added_noise_and_ignores_anatomy(forrest, lr_file):
    clean = forrest["noise"].sigma
    rng = np.random.default_rng(0)
    for added in (3.0, 6.0, 12.0):
        noisy = forrest["lr"] + rng.normal(0.0, added, forrest["lr"].shape)
        assert estimate_noise(noisy).sigma == pytest.approx(np.hypot(added, clean), rel=0.1)
    # on a real 2 mm IXI scan (zeroed background) anatomy inflates a whole-head MAD, not the mode
    ixi, _ = to_ras(nib.load(lr_file))
    estimate = estimate_noise(np.asarray(ixi.dataobj, dtype=np.float64))
    assert estimate.mad_sigma > 1.3 * estimate.sigma > 0  # measured: 30.9 vs 19.5
    with pytest.raises(ValueError, match="no measurable noise"):
        estimate_noise(np.pad(np.ones((20, 20, 20)), 5))


def test_half_sample_mode():
    values = np.concatenate([np.full(60, 2.0), np.linspace(5, 50, 40)])
    assert half_sample_mode(values) == 2.0
    assert half_sample_mode(np.array([1.0, 1.1, 5.0])) == pytest.approx(1.05)
    with pytest.raises(ValueError, match="no values"):
        half_sample_mode(np.array([]))


def _psr_pair(lr_file, tmp_path, sr_fn=None, factors_ras=SAGITTAL):
    """A crop of the real PSR IXI scan and its bicubic 'SR' in the input's orientation, as files."""
    crop = nib.load(lr_file).slicer[30:90, 30:90, 20:70]
    lr_ras, ornt = to_ras(crop)
    sr = bicubic_upsample_volume(np.asarray(lr_ras.dataobj, dtype=np.float64), factors_ras)
    if sr_fn is not None:
        sr = sr_fn(sr)
    sr_img = from_ras(new_image_like(sr.astype(np.float32), upsampled_affine(lr_ras.affine, factors_ras), lr_ras),
                      ornt)
    in_file, sr_file = tmp_path / "sub-01_T1w.nii.gz", tmp_path / "sub-01_desc-ddasr_T1w.nii.gz"
    crop.to_filename(in_file)
    sr_img.to_filename(sr_file)
    return in_file, sr_file


def test_maps_keep_each_files_grid_and_orientation(lr_file, tmp_path):
    in_file, sr_file = _psr_pair(lr_file, tmp_path, lambda sr: sr + 50.0)  # brighter everywhere
    lr_img, sr_img = nib.load(in_file), nib.load(sr_file)
    result = physics_consistency(lr_img, sr_img)
    assert result.factors == SAGITTAL
    z, z_sr = result.zmap_img, result.zmap_sr_img
    assert z.shape == lr_img.shape and np.allclose(z.affine, lr_img.affine)
    assert z_sr.shape == sr_img.shape and np.allclose(z_sr.affine, sr_img.affine)
    assert nib.aff2axcodes(z.affine) == ("P", "S", "R")
    assert int(z.header["intent_code"]) == 5  # NIFTI_INTENT_ZSCORE
    z_ras = np.asarray(to_ras(z)[0].dataobj)
    assert np.array_equal(np.asarray(to_ras(z_sr)[0].dataobj), upsample_nearest(z_ras, SAGITTAL))
    assert result.summary.mask == "head"  # no mask given: the input's Otsu head
    assert result.summary.median_z == pytest.approx(50.0 / result.noise.sigma, rel=0.05)  # z > 0: brighter


def test_grids_that_do_not_match_get_clear_messages(lr_file, tmp_path):
    from ddasr_nipype.interfaces.consistency import consistency_files

    lr_img = nib.load(_psr_pair(lr_file, tmp_path)[0])
    lr_ras, _ = to_ras(lr_img)
    with pytest.raises(ValueError, match="not an up-sampled grid of the input"):
        grid_factors(lr_ras.shape, lr_ras.affine, (50, 121, 120), lr_ras.affine)
    shifted = upsampled_affine(lr_ras.affine, SAGITTAL) @ np.array(
        [[1, 0, 0, 0], [0, 1, 0, 1.0], [0, 0, 1, 0], [0, 0, 0, 1]])
    with pytest.raises(ValueError, match="affine differs from the field-of-view-preserving one by up to 1 mm"):
        grid_factors(lr_ras.shape, lr_ras.affine, (50, 120, 120), shifted)
    # through the node's function: the message names the file
    other = tmp_path / "other"
    other.mkdir()
    bad_sr = nib.Nifti1Image(np.random.default_rng(0).random((50, 121, 33), np.float32), lr_img.affine)
    bad_sr.to_filename(other / "bad_sr.nii.gz")
    with pytest.raises(InvalidImageError, match="bad_sr.nii.gz: the super-resolved grid"):
        consistency_files(tmp_path / "sub-01_T1w.nii.gz", other / "bad_sr.nii.gz")
    mask = nib.Nifti1Image(np.ones((7, 7, 7), np.uint8), np.eye(4))
    with pytest.raises(ValueError, match="the mask's grid"):
        physics_consistency(lr_img, nib.load(tmp_path / "sub-01_desc-ddasr_T1w.nii.gz"), mask)


def test_node_with_a_tiny_dsn(lr_file, tmp_path):
    from ddasr_nipype.interfaces import DataConsistency

    in_file, sr_file = _psr_pair(lr_file, tmp_path)
    bundle = make_tiny_bundle(tmp_path / "tiny-dsn", with_dsn=True)
    result = DataConsistency(in_file=str(in_file), sr_file=str(sr_file), model=str(bundle), device="cpu",
                             num_threads=1).run(cwd=str(tmp_path))
    out = result.outputs
    physics, dsn = nib.load(out.out_zmap), nib.load(out.out_dsn_zmap)
    assert dsn.shape == physics.shape and np.allclose(dsn.affine, physics.affine)
    assert nib.load(out.out_dsn_zmap_sr).shape == nib.load(sr_file).shape
    values = np.asarray(dsn.dataobj)
    assert np.all(np.isfinite(values)) and values.std() > 0
    meta = out.metadata
    assert meta["dsn"]["redegradation"] == "dsn" and meta["dsn_model"]["model_name"] == "tiny-test"
    # an untrained DSN does not reproduce the scan: the map says so, the physics one does not
    assert meta["dsn"]["rms_z"] > meta["physics"]["rms_z"]
    assert any("does not record the LR voxel size" in n for n in meta["dsn"]["notes"])
    assert json.dumps(meta)


def test_dsn_notes_when_the_input_is_far_from_its_training_lr(lr_file, tmp_path):
    in_file, sr_file = _psr_pair(lr_file, tmp_path, factors_ras=(2, 2, 2))  # isotropic (--planes all)
    bundle_dir = make_tiny_bundle(tmp_path / "tiny-1mm", with_dsn=True, preprocessing={"lr_voxel_size": 1.0})
    from ddasr_nipype.bundle import load_bundle

    result = dsn_consistency(nib.load(in_file), nib.load(sr_file), load_bundle(bundle_dir))
    assert result.factors == (2, 2, 2)  # the DSN's sagittal plane, then an area average across it
    assert result.zmap_img.shape == nib.load(in_file).shape
    assert any("far from the 1 mm LR" in note for note in result.summary.notes)


def test_bundle_without_a_dsn(lr_file, tmp_path):
    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.interfaces.consistency import consistency_files

    in_file, sr_file = _psr_pair(lr_file, tmp_path)
    bundle = make_tiny_bundle(tmp_path / "tiny")
    with pytest.raises(ModelBundleError, match="has no down-sampling network .* only the physics"):
        dsn_consistency(nib.load(in_file), nib.load(sr_file), load_bundle(bundle))
    results, meta = consistency_files(in_file, sr_file, model=str(bundle))
    assert set(results) == {"physics"} and meta["dsn"] is None
    assert meta["physics"]["fraction_above"] < 0.05
    assert any("has no down-sampling network" in note for note in meta["notes"])


def _psr_brain(in_file, tmp_path):
    """A 'brain' mask of the PSR crop (its voxels above the 60th percentile), as a file in the input's
    orientation, and a lesion added to the SR so that some of it is contradicted."""
    img = nib.load(in_file)
    data = np.asarray(img.dataobj, dtype=np.float32)
    mask = nib.Nifti1Image((data > np.percentile(data, 60)).astype(np.uint8), img.affine)
    mask.to_filename(tmp_path / "brain_mask.nii.gz")
    return tmp_path / "brain_mask.nii.gz"


def test_summary_in_a_later_mask_is_the_summary_computed_with_it(lr_file, tmp_path):
    from ddasr_nipype.interfaces import ConsistencySummary, DataConsistency

    def lesion(sr):  # a bright blob the scan does not have: a cluster above threshold
        sr = sr.copy()
        sr[20:30, 40:60, 40:60] += 400.0
        return sr

    in_file, sr_file = _psr_pair(lr_file, tmp_path, lesion)
    mask_file = _psr_brain(in_file, tmp_path)
    lr_img, sr_img, mask_img = nib.load(in_file), nib.load(sr_file), nib.load(mask_file)
    with_mask = physics_consistency(lr_img, sr_img, mask_img)
    without = physics_consistency(lr_img, sr_img)
    assert without.summary.mask == "head" and with_mask.summary.mask == "brain"
    assert without.summary.mask_voxels != with_mask.summary.mask_voxels  # a different mask, other figures
    again = resummarize(without.zmap_img, mask_img, without.summary)
    expected, got = with_mask.summary.to_dict(), again.to_dict()
    assert got["largest_cluster"] == expected["largest_cluster"] and expected["largest_cluster"]["voxels"] > 10
    for key in ("rms_z", "median_z", "fraction_above"):  # the stored map is float32
        assert got.pop(key) == pytest.approx(expected.pop(key), rel=1e-4, abs=1e-4)
    assert got == expected
    # the mask in another orientation (RAS) gives the same; another grid is refused
    assert resummarize(without.zmap_img, to_ras(mask_img)[0], without.summary) == again
    with pytest.raises(ValueError, match="is not the z-map's"):
        resummarize(without.zmap_img, nib.Nifti1Image(np.ones((7, 7, 7), np.uint8), np.eye(4)), without.summary)

    # the nodes: DataConsistency without the mask, then ConsistencySummary in it, as the app chains them
    node = DataConsistency(in_file=str(in_file), sr_file=str(sr_file)).run(cwd=str(tmp_path))
    (tmp_path / "masked").mkdir()
    with_node = DataConsistency(in_file=str(in_file), sr_file=str(sr_file), mask_file=str(mask_file)).run(
        cwd=str(tmp_path / "masked")).outputs.metadata
    summary = ConsistencySummary(zmap_file=node.outputs.out_zmap, mask_file=str(mask_file),
                                 metadata=node.outputs.metadata).run(cwd=str(tmp_path)).outputs.metadata
    assert set(summary) == set(with_node) and summary["noise"] == with_node["noise"]
    assert summary["physics"]["mask"] == "brain"
    assert summary["physics"]["mask_voxels"] == with_node["physics"]["mask_voxels"]
    assert summary["physics"]["largest_cluster"] == with_node["physics"]["largest_cluster"]
    with pytest.raises(ValueError, match="has a dsn summary but no dsn z-map"):
        ConsistencySummary(zmap_file=node.outputs.out_zmap, mask_file=str(mask_file),
                           metadata={**node.outputs.metadata, "dsn": node.outputs.metadata["physics"]}).run(
            cwd=str(tmp_path))

    # an output projected onto its input: the map is satisfied by construction, and the metadata says so
    assert not any("by construction" in note for note in node.outputs.metadata["physics"]["notes"])
    (tmp_path / "projected").mkdir()
    projected = DataConsistency(in_file=str(in_file), sr_file=str(sr_file), projection="area").run(
        cwd=str(tmp_path / "projected")).outputs.metadata
    notes = projected["physics"]["notes"]  # the physics map's own: its sidecar's Notes and report row
    assert any("block means" in note and "by construction" in note for note in notes)
    assert {**projected["physics"], "notes": []} == {**node.outputs.metadata["physics"], "notes": []}  # same map
    masked = ConsistencySummary(zmap_file=node.outputs.out_zmap, mask_file=str(mask_file),
                                metadata=projected).run(cwd=str(tmp_path / "projected")).outputs.metadata
    assert masked["physics"]["notes"] == notes  # kept when summarized in the brain mask
    from ddasr_nipype.interfaces.bids import zmap_sidecar

    assert zmap_sidecar(masked, str(in_file), str(tmp_path), sr_name="sr.nii.gz")["Notes"] == notes
    with pytest.raises(Exception, match="projection"):
        DataConsistency(in_file=str(in_file), sr_file=str(sr_file), projection="sinc")


def test_the_app_tells_the_consistency_map_the_projection_it_ran_with():
    from ddasr_nipype.interfaces.consistency import projection_notes, projection_of
    from ddasr_nipype.workflows.sr import init_sr_wf

    assert projection_of({"output": {"strength": 1.0, "projection": "kspace"}}) == "kspace"
    assert projection_of({"output": {"strength": 1.0}}) == projection_of({}) == "none"  # older metadata
    assert projection_notes("none") == () and all(projection_notes(p) for p in ("area", "kspace"))
    wf = init_sr_wf(model="ixi-t1w-x2-gan")  # recommends the area projection
    edge = wf._graph.get_edge_data(wf.get_node("super_resolve"), wf.get_node("data_consistency"))
    assert any(dest == "projection" for (_src, dest) in edge["connect"])


def test_a_dsn_maps_offset_note_follows_the_new_mask(lr_file, tmp_path):
    from dataclasses import replace

    in_file, sr_file = _psr_pair(lr_file, tmp_path)
    mask_img = nib.load(_psr_brain(in_file, tmp_path))
    lr_img = nib.load(in_file)
    head = physics_consistency(lr_img, nib.load(sr_file)).summary
    dsn_like = replace(head, redegradation="dsn", notes=("trained on other voxels",
                                                         "the DSN's re-degradation is offset from this scan by 5"))
    z = np.zeros(lr_img.shape, np.float32)
    brain = np.asarray(mask_img.dataobj) > 0
    z[brain] = 2.5  # offset in the brain only
    offset = resummarize(nib.Nifti1Image(z, lr_img.affine), mask_img, dsn_like)
    assert offset.median_z == 2.5
    assert offset.notes[0] == "trained on other voxels" and len(offset.notes) == 2
    assert "offset from this scan by a median of +2.50 noise levels in the brain" in offset.notes[1]
    z[brain] = 0.0
    centred = resummarize(nib.Nifti1Image(z, lr_img.affine), mask_img, dsn_like)
    assert centred.notes == ("trained on other voxels",)
    physics = resummarize(nib.Nifti1Image(z + 2.5, lr_img.affine), mask_img, head)
    assert physics.notes == ()  # the physics map has no such note


def _images(html_text: str) -> list[bytes]:
    import base64

    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html_text)]


def _pixels(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)))


def test_report_section_and_native_scale_crops(lr_file, tmp_path):
    from ddasr_nipype.interfaces.consistency import consistency_files
    from ddasr_nipype.interfaces.reports import consistency_html, crops_html

    def _lesion(sr):
        sr = sr.copy()
        sr[20:34, 56:72, 46:62] += 400.0  # 14 x 8 x 8 input voxels: the largest cluster
        return sr

    in_file, sr_file = _psr_pair(lr_file, tmp_path, _lesion)
    results, meta = consistency_files(in_file, sr_file)
    zmap_sr = tmp_path / "zmap_sr.nii.gz"
    results["physics"].zmap_sr_img.to_filename(zmap_sr)
    section = consistency_html(sr_file, zmap_sr, meta)
    panels = [_pixels(png) for png in _images(section)]
    assert len(panels) == 3 * 6 + 3 + 1  # three views x 6 slices, the cluster's three views, the z scale
    for rgb in panels[18:21]:  # the cluster's panels: red (output brighter than the data) inside a green ring
        red = (rgb[..., 0] > 150) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100)
        ring = np.all(rgb == (0, 255, 102), axis=-1)
        assert red.sum() > 10 and ring.any()
        ring_rows, ring_cols = np.nonzero(ring)
        red_rows, red_cols = np.nonzero(red)
        assert red_rows.min() <= ring_rows.mean() <= red_rows.max()  # the ring is centred on the cluster
        assert red_cols.min() <= ring_cols.mean() <= red_cols.max()
    scale = panels[-1]
    assert scale[0, 0, 2] > scale[0, 0, 0] and scale[0, -1, 0] > scale[0, -1, 2]  # blue (z < 0) to red
    assert "RMS z in the head" in section and "largest cluster" in section
    cluster = meta["physics"]["largest_cluster"]
    assert cluster["peak_z"] > THRESHOLD
    assert f"{cluster['peak_mm'][0]:.1f}" in section  # the location, in mm
    crops = crops_html(in_file, sr_file, metadata=meta, size=32, zoom=3)
    images = _images(crops)
    assert len(images) == 6  # input, bicubic, SR; at the hemisphere and at the cluster
    assert "largest inconsistency cluster" in crops
    for png in images:  # every voxel drawn as 3 x 3 pixels
        pixels = _pixels(png)
        assert pixels.shape == (96, 96)
        assert np.array_equal(pixels[0::3], pixels[1::3]) and np.array_equal(pixels[:, 0::3], pixels[:, 2::3])
    # the crop at the cluster shows the lesion in the SR panel, not in the input's
    nearest, bicubic, sr = (_pixels(p) for p in images[3:])
    assert sr.max() >= bicubic.max() and not np.array_equal(sr, bicubic)
