"""Loading, validation and RAS round trips of ddasr_nipype.data.io on real and broken files."""

from __future__ import annotations

import gzip
import itertools

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import aff2axcodes, axcodes2ornt, inv_ornt_aff, apply_orientation

from ddasr_nipype.data import io
from ddasr_nipype.errors import InvalidImageError

AFFINE_TOL = 1e-9


@pytest.fixture
def good_array():
    rng = np.random.default_rng(0)
    data = rng.random((16, 12, 10), dtype=np.float32) * 100
    return data


def _save(tmp_path, data, name="img.nii.gz", zooms=(1.0, 1.0, 1.0)):
    affine = np.diag([*zooms, 1.0])
    path = tmp_path / name
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


# ---------------------------------------------------------------- good inputs


@pytest.mark.parametrize("key,codes", [("trio", "RAS"), ("forrest", "LAS")])
def test_load_real_hr(hr_files, key, codes):
    img = io.load_volume(hr_files[key])
    assert img.get_data_dtype() == np.float32
    assert img.dataobj.dtype == np.float32
    assert "".join(aff2axcodes(img.affine)) == codes
    raw = nib.load(str(hr_files[key]))
    np.testing.assert_array_equal(img.get_fdata(), raw.get_fdata())
    np.testing.assert_array_equal(img.affine, raw.affine)


def test_load_real_lr(lr_file):
    img = io.load_volume(lr_file)
    assert img.shape == (120, 120, 90)
    assert "".join(aff2axcodes(img.affine)) == "PSR"
    assert img.header.get_zooms()[:3] == (2.0, 2.0, 2.0)


def test_mgz_round_trip(tmp_path, hr_files):
    img = io.load_volume(hr_files["forrest"])
    out = io.save_volume(img, tmp_path / "forrest.mgz")
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"
    back = io.load_volume(out)
    assert isinstance(back, nib.MGHImage)
    np.testing.assert_array_equal(back.get_fdata(), img.get_fdata())
    # MGH stores its geometry as float32
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-4)
    np.testing.assert_allclose(back.header.get_zooms()[:3], img.header.get_zooms()[:3], rtol=1e-6)


def test_scaled_integer_data_are_rescaled(tmp_path, good_array):
    img = nib.Nifti1Image(np.round(good_array).astype(np.int16), np.eye(4))
    img.header.set_slope_inter(0.5, 10.0)
    path = tmp_path / "scaled.nii"
    nib.save(img, str(path))
    loaded = io.load_volume(path)
    np.testing.assert_allclose(loaded.get_fdata(), np.round(good_array) * 0.5 + 10.0)


def test_singleton_4d_is_squeezed(tmp_path, good_array):
    path = _save(tmp_path, good_array[..., None])
    img = io.load_volume(path)
    assert img.shape == good_array.shape
    np.testing.assert_allclose(img.get_fdata(), good_array)


def test_singleton_4d_rejected_when_configured(tmp_path, good_array):
    path = _save(tmp_path, good_array[..., None])
    checks = io.ImageChecks(squeeze_singleton_4d=False)
    with pytest.raises(InvalidImageError, match="4D image"):
        io.load_volume(path, checks=checks)


# ---------------------------------------------------------------- bad inputs


def _assert_names_file(excinfo, path):
    assert str(path) in str(excinfo.value)
    assert excinfo.value.path == str(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(InvalidImageError, match="file not found") as ei:
        io.load_volume(path)
    _assert_names_file(ei, path)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "img.png"
    path.write_bytes(b"\x89PNG")
    with pytest.raises(InvalidImageError, match="unsupported file type") as ei:
        io.load_volume(path)
    _assert_names_file(ei, path)


def test_not_gzip(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(b"this is not a gzip stream at all" * 20)
    with pytest.raises(InvalidImageError, match=r"not a gzip-compressed file \(it starts with b'th'\), so not "
                                                r"a \.nii\.gz image") as ei:
        io.load_volume(path)
    _assert_names_file(ei, path)


def test_garbage_header(tmp_path):
    path = tmp_path / "garbage.nii"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InvalidImageError, match="not a NIfTI or MGH image: no valid header") as ei:
        io.load_volume(path)
    _assert_names_file(ei, path)


def test_corrupt_gzip_body(tmp_path, hr_files):
    """A valid gzip header with a damaged deflate stream (a bit flip in the middle)."""
    blob = bytearray(hr_files["trio"].read_bytes())
    for k in range(len(blob) // 2, len(blob) // 2 + 64):
        blob[k] ^= 0xFF
    path = tmp_path / "flipped.nii.gz"
    path.write_bytes(bytes(blob))
    with pytest.raises(InvalidImageError, match="corrupt") as ei:
        io.load_volume(path)
    _assert_names_file(ei, path)


def test_truncated_gzip(tmp_path, hr_files):
    blob = hr_files["trio"].read_bytes()
    path = tmp_path / "truncated.nii.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InvalidImageError, match="truncated") as ei:
        io.load_volume(path)
    _assert_names_file(ei, path)


def test_truncated_uncompressed(tmp_path, good_array):
    full = _save(tmp_path, good_array, name="full.nii")
    path = tmp_path / "short.nii"
    path.write_bytes(full.read_bytes()[:-500])
    with pytest.raises(InvalidImageError, match="truncated") as ei:
        io.load_volume(path)
    _assert_names_file(ei, path)


def test_truncated_mgz(tmp_path, good_array):
    img = nib.MGHImage(good_array, np.eye(4))
    full = tmp_path / "full.mgz"
    nib.save(img, str(full))
    # An MGZ is gzip: decompress, cut the data block, recompress (a short but valid stream).
    raw = gzip.decompress(full.read_bytes())
    path = tmp_path / "short.mgz"
    path.write_bytes(gzip.compress(raw[: 284 + 100]))
    with pytest.raises(InvalidImageError, match="truncated") as ei:
        io.load_volume(path)
    _assert_names_file(ei, path)


def test_2d_image(tmp_path, good_array):
    path = _save(tmp_path, good_array[:, :, 0])
    with pytest.raises(InvalidImageError, match=r"2D image .* 3D volume is required") as ei:
        io.load_volume(path)
    _assert_names_file(ei, path)


def test_4d_image(tmp_path, good_array):
    path = _save(tmp_path, np.stack([good_array, good_array], axis=-1))
    with pytest.raises(InvalidImageError, match=r"4D image .*2 volumes") as ei:
        io.load_volume(path)
    _assert_names_file(ei, path)


@pytest.mark.parametrize("bad,label", [(np.nan, r"1 NaN, 0 Inf"), (np.inf, r"0 NaN, 1 Inf")])
def test_non_finite(tmp_path, good_array, bad, label):
    good_array[3, 4, 5] = bad
    path = _save(tmp_path, good_array)
    with pytest.raises(InvalidImageError, match=f"non-finite voxels \\({label}\\)") as ei:
        io.load_volume(path)
    _assert_names_file(ei, path)


def test_all_zero(tmp_path, good_array):
    path = _save(tmp_path, np.zeros_like(good_array))
    with pytest.raises(InvalidImageError, match="empty: all zeros") as ei:
        io.load_volume(path)
    _assert_names_file(ei, path)


def test_constant(tmp_path, good_array):
    path = _save(tmp_path, np.full_like(good_array, 7.0))
    with pytest.raises(InvalidImageError, match=r"empty: constant \(every voxel = 7\)"):
        io.load_volume(path)


@pytest.mark.parametrize(
    "zooms,pattern",
    [
        ((1.0, 1.0, 0.01), r"absurd voxel size \(1, 1, 0\.01\) mm"),
        ((25.0, 25.0, 25.0), r"absurd voxel size \(25, 25, 25\) mm"),
        ((1.0, 1.0, 12.0), r"too anisotropic \(ratio 12"),
    ],
)
def test_bad_voxel_sizes(tmp_path, good_array, zooms, pattern):
    path = _save(tmp_path, good_array, zooms=zooms)
    with pytest.raises(InvalidImageError, match=pattern) as ei:
        io.load_volume(path)
    _assert_names_file(ei, path)


@pytest.mark.parametrize(
    "value,pattern",
    [(0.0, r"invalid voxel size \(0, 1, 1\)"), (np.nan, r"invalid voxel size \(nan, 1, 1\)")],
)
def test_broken_sform(tmp_path, good_array, value, pattern):
    """A header whose sform gives the first voxel axis a length of 0 (or NaN) mm."""
    path = _save(tmp_path, good_array, name="img.nii")
    blob = bytearray(path.read_bytes())
    blob[280:284] = np.float32(value).tobytes()  # srow_x[0], little endian as nibabel writes
    path.write_bytes(bytes(blob))
    assert not nib.load(str(path)).affine[0, 0] == 1.0
    with pytest.raises(InvalidImageError, match=pattern) as ei:
        io.load_volume(path)
    _assert_names_file(ei, path)


def test_zero_pixdim_with_good_sform_loads(tmp_path, good_array):
    """nibabel reads a zero pixdim as 1 and the sform carries the geometry: usable."""
    path = _save(tmp_path, good_array, name="img.nii", zooms=(1.5, 1.5, 1.5))
    blob = bytearray(path.read_bytes())
    blob[80:84] = np.float32(0.0).tobytes()  # pixdim[1]
    path.write_bytes(bytes(blob))
    img = io.load_volume(path)
    np.testing.assert_allclose(nib.affines.voxel_sizes(img.affine), 1.5)


def test_anisotropy_threshold_configurable(tmp_path, good_array):
    path = _save(tmp_path, good_array, zooms=(1.0, 1.0, 12.0))
    img = io.load_volume(path, checks=io.ImageChecks(max_anisotropy=15))
    assert img.header.get_zooms()[2] == pytest.approx(12.0)


def test_tiny_image(tmp_path):
    data = np.random.default_rng(1).random((32, 32, 5), dtype=np.float32)
    path = _save(tmp_path, data)
    with pytest.raises(InvalidImageError, match=r"too small: every axis needs at least 8") as ei:
        io.load_volume(path)
    _assert_names_file(ei, path)


def test_validate_array_in_memory(good_array):
    out = io.validate_array(good_array.astype(np.int16), (1, 1, 1))
    assert out.dtype == np.float32
    with pytest.raises(InvalidImageError, match=r"^<in-memory image>: .*non-finite"):
        bad = good_array.copy()
        bad[0, 0, 0] = np.nan
        io.validate_array(bad, (1, 1, 1))
    with pytest.raises(InvalidImageError, match=r"^scan\.nii: invalid voxel size"):
        io.validate_array(good_array, (1, np.nan, 1), "scan.nii")


def test_checks_dict_round_trip():
    checks = io.ImageChecks(max_anisotropy=4.0, min_axis_voxels=16)
    assert io.ImageChecks.from_dict(checks.to_dict()) == checks


# ---------------------------------------------------------------- RAS round trips


@pytest.mark.parametrize("key", ["trio", "forrest", "lr"])
def test_to_ras_round_trip_real(hr_files, lr_file, key):
    path = lr_file if key == "lr" else hr_files[key]
    img = io.load_volume(path)
    ras, ornt = io.to_ras(img)
    assert aff2axcodes(ras.affine) == ("R", "A", "S")
    # Same voxel, same world position: the reorientation moves no data in space.
    rng = np.random.default_rng(2)
    for _ in range(5):
        ijk = [int(rng.integers(n)) for n in img.shape]
        world = img.affine @ [*ijk, 1]
        ras_ijk = np.round(np.linalg.solve(ras.affine, world)[:3]).astype(int)
        assert img.get_fdata()[tuple(ijk)] == ras.get_fdata()[tuple(ras_ijk)]
    back = io.from_ras(ras, ornt)
    np.testing.assert_array_equal(back.get_fdata(), img.get_fdata())
    np.testing.assert_allclose(back.affine, img.affine, rtol=0, atol=AFFINE_TOL)
    assert back.shape == img.shape


def test_to_ras_round_trip_every_orientation():
    """All 48 axis permutations and flips, with a non-trivial affine and shape."""
    rng = np.random.default_rng(3)
    data = rng.random((9, 10, 11), dtype=np.float32)
    base = np.array(
        [[0.9, 0.0, 0.0, -40.3], [0.0, 1.1, 0.0, 12.7], [0.0, 0.0, 1.3, -7.1], [0, 0, 0, 1]]
    )
    ras_img = nib.Nifti1Image(data, base)
    seen = set()
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product((1, -1), repeat=3):
            ornt = np.array([[p, f] for p, f in zip(perm, flips)], dtype=float)
            img = nib.Nifti1Image(
                apply_orientation(data, ornt), base @ inv_ornt_aff(ornt, data.shape)
            )
            seen.add(aff2axcodes(img.affine))
            ras, orig_ornt = io.to_ras(img)
            np.testing.assert_array_equal(ras.get_fdata(), data)
            np.testing.assert_allclose(ras.affine, base, atol=AFFINE_TOL)
            back = io.from_ras(ras, orig_ornt)
            np.testing.assert_array_equal(back.get_fdata(), img.get_fdata())
            np.testing.assert_allclose(back.affine, img.affine, atol=AFFINE_TOL)
    assert len(seen) == 48
    assert ras_img.shape == data.shape


def test_from_ras_keeps_header_codes(lr_file, tmp_path):
    img = io.load_volume(lr_file)
    ras, ornt = io.to_ras(img)
    back = io.from_ras(ras, ornt)
    out = io.save_volume(back, tmp_path / "back.nii.gz")
    reread = nib.load(str(out))
    assert int(reread.header["sform_code"]) == int(nib.load(str(lr_file)).header["sform_code"])
    assert int(reread.header["qform_code"]) == int(nib.load(str(lr_file)).header["qform_code"])
    np.testing.assert_allclose(reread.affine, nib.load(str(lr_file)).affine, atol=1e-5)


def test_reorientation_keeps_a_distinct_qform_aligned(lr_file):
    img = io.load_volume(lr_file)
    shifted = img.affine.copy()
    shifted[:3, 3] += (0.0, -7.5, 3.0)
    img.set_sform(img.affine, code=2)
    img.set_qform(shifted, code=1)
    ras, ornt = io.to_ras(img)
    for out in (ras, io.from_ras(ras, ornt)):
        offset = out.header.get_qform() @ np.linalg.inv(out.header.get_sform())
        np.testing.assert_allclose(offset, shifted @ np.linalg.inv(img.affine), atol=1e-4)
        assert (int(out.header["sform_code"]), int(out.header["qform_code"])) == (2, 1)


def test_ras_codes_constant():
    np.testing.assert_array_equal(io.RAS_ORNT, axcodes2ornt("RAS"))


def test_shared_data_all_load_and_round_trip(shared_data):
    """Every development volume (3 HR, 30 IXI LR) passes validation; the LR ones (PSR)
    round-trip exactly (the HR round trip is covered on their crops above, and is slow)."""
    files = sorted(shared_data.glob("*/sub-*/anat/*_T1w.nii*"))
    assert len(files) >= 4
    for path in files:
        img = io.load_volume(path)
        assert img.ndim == 3 and img.dataobj.dtype == np.float32
        ras, ornt = io.to_ras(img)
        assert aff2axcodes(ras.affine) == ("R", "A", "S")
        if "/hr/" in path.as_posix():
            continue
        back = io.from_ras(ras, ornt)
        np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(img.dataobj))
        np.testing.assert_allclose(back.affine, img.affine, atol=AFFINE_TOL)


def test_oblique_round_trip():
    """A 20 degree oblique acquisition: to_ras picks the closest axes, from_ras undoes it."""
    theta = np.deg2rad(20)
    rot = np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.2, -0.9, 1.0])[:, [2, 0, 1]]
    affine[:3, 3] = [30.0, -20.0, 10.0]
    data = np.random.default_rng(6).random((10, 12, 14), dtype=np.float32)
    img = nib.Nifti1Image(data, affine)
    ras, ornt = io.to_ras(img)
    assert aff2axcodes(ras.affine) == ("R", "A", "S")
    # the voxel -> world map is unchanged, only the voxel order differs
    centre = ras.affine @ np.r_[(np.array(ras.shape) - 1) / 2, 1]
    np.testing.assert_allclose(centre, img.affine @ np.r_[(np.array(img.shape) - 1) / 2, 1])
    back = io.from_ras(ras, ornt)
    np.testing.assert_array_equal(np.asarray(back.dataobj), data)
    np.testing.assert_allclose(back.affine, affine, atol=AFFINE_TOL)


def test_nifti2_loads(tmp_path, good_array):
    path = tmp_path / "img.nii"
    nib.save(nib.Nifti2Image(good_array, np.diag([0.8, 0.8, 0.8, 1.0])), str(path))
    img = io.load_volume(path)
    assert isinstance(img, nib.Nifti2Image)
    np.testing.assert_allclose(img.get_fdata(), good_array)


def test_ras_voxel_sizes_without_loading(hr_files, lr_file):
    """Voxel sizes in RAS order from the header alone equal those of the reoriented image."""
    for path in (lr_file, hr_files["forrest"]):
        lazy = nib.load(str(path))
        got = io.ras_voxel_sizes(lazy)
        assert not lazy.in_memory
        ras, _ = io.to_ras(io.load_volume(path))
        np.testing.assert_allclose(got, nib.affines.voxel_sizes(ras.affine))
    # PSR with anisotropic sizes: (P: 1, S: 2, R: 3) -> (R: 3, A: 1, S: 2)
    aff = np.array([[0, 0, 3.0, 0], [-1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 1]])
    assert io.ras_voxel_sizes(aff) == (3.0, 1.0, 2.0)


def test_fileio_docstring_examples():
    import doctest

    from ddasr_nipype import fileio

    result = doctest.testmod(fileio)
    assert result.attempted > 0 and result.failed == 0


def test_a_save_that_fails_half_way_leaves_nothing(tmp_path, monkeypatch):
    """A full disk while writing: no file under the final name, no temporary file left."""
    img = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4))
    real_save = nib.save

    def half_then_full(image, filename):
        real_save(image, filename)
        with open(filename, "r+b") as stream:
            stream.truncate(100)
        raise OSError(28, "No space left on device", filename)

    monkeypatch.setattr(nib, "save", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_volume(img, tmp_path / "out.nii.gz")
    assert list(tmp_path.iterdir()) == []
