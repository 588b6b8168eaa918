"""Planes, slice stacks, FOV-preserving grids and resampling (ddasr_nipype.data.slicing)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import apply_affine, voxel_sizes

from ddasr_nipype.data import io, slicing


@pytest.fixture
def vol():
    return np.random.default_rng(0).random((7, 9, 11), dtype=np.float32)


def test_planes_and_axes():
    assert slicing.PLANES == ("sagittal", "coronal", "axial")
    assert [slicing.plane_axis(p) for p in slicing.PLANES] == [0, 1, 2]
    assert slicing.inplane_axes("coronal") == (0, 2)
    with pytest.raises(ValueError, match="unknown plane 'oblique'"):
        slicing.plane_axis("oblique")


def test_extract_slices_convention(vol):
    sag = slicing.extract_slices(vol, "sagittal")
    cor = slicing.extract_slices(vol, "coronal")
    ax = slicing.extract_slices(vol, "axial")
    assert sag.shape == (7, 9, 11) and cor.shape == (9, 7, 11) and ax.shape == (11, 7, 9)
    np.testing.assert_array_equal(sag[3], vol[3, :, :])
    np.testing.assert_array_equal(cor[4], vol[:, 4, :])
    np.testing.assert_array_equal(ax[5], vol[:, :, 5])


@pytest.mark.parametrize("plane", slicing.PLANES)
def test_insert_is_inverse_of_extract(vol, plane):
    back = slicing.insert_slices(slicing.extract_slices(vol, plane), plane)
    np.testing.assert_array_equal(back, vol)


@pytest.mark.parametrize("plane", slicing.PLANES)
def test_insert_upsampled_slices(vol, plane):
    """x2 in-plane upsampled slices land on the in-plane axes, the slice axis keeps its length."""
    stack = slicing.extract_slices(vol, plane)
    up = stack.repeat(2, axis=1).repeat(2, axis=2)
    out = slicing.insert_slices(up, plane)
    factors = slicing.upsample_plane_factors(plane, 2)
    assert out.shape == slicing.upsampled_shape(vol.shape, factors)
    # nearest-neighbour upsampling commutes with slicing: compare with a 3D repeat
    expected = vol
    for axis, f in enumerate(factors):
        expected = expected.repeat(f, axis=axis)
    np.testing.assert_array_equal(out, expected)


def test_torch_tensors_are_accepted(vol):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(vol)
    cor = slicing.extract_slices(t, "coronal")
    assert tuple(cor.shape) == (9, 7, 11)
    assert torch.equal(slicing.insert_slices(cor, "coronal"), t)


@pytest.mark.parametrize("plane", slicing.PLANES)
@pytest.mark.parametrize("batch_size", [1, 4, 100])
def test_iter_batches_covers_every_slice_once(vol, plane, batch_size):
    axis = slicing.plane_axis(plane)
    seen = np.zeros(vol.shape[axis], dtype=int)
    out = np.zeros_like(vol)
    for start, batch in slicing.iter_batches(vol.astype(np.float64), plane, batch_size):
        assert batch.dtype == np.float32 and batch.ndim == 4 and batch.shape[1] == 1
        assert batch.shape[0] <= batch_size
        assert batch.flags["C_CONTIGUOUS"]
        seen[start : start + batch.shape[0]] += 1
        slicing.write_slices(out, plane, start, batch)
    np.testing.assert_array_equal(seen, 1)
    np.testing.assert_array_equal(out, vol)


def test_iter_batches_copies(vol):
    _, batch = next(slicing.iter_batches(vol, "sagittal", 2))
    batch[:] = -1
    assert vol.min() >= 0


def test_write_slices_checks_shapes(vol):
    with pytest.raises(ValueError, match="does not fit"):
        slicing.write_slices(vol, "axial", 10, np.zeros((2, 7, 9)))
    with pytest.raises(ValueError, match="does not fit"):
        slicing.write_slices(vol, "axial", 0, np.zeros((2, 9, 7)))


def test_factor_helpers():
    assert slicing.upsample_plane_factors("sagittal", 2) == (1, 2, 2)
    assert slicing.upsample_plane_factors("coronal", 3) == (3, 1, 3)
    assert slicing.upsample_plane_factors("axial", 2) == (2, 2, 1)
    assert slicing.upsampled_shape((10, 20, 30), (1, 2, 2)) == (10, 40, 60)
    with pytest.raises(ValueError, match="positive integer"):
        slicing.upsample_plane_factors("axial", 1.5)
    with pytest.raises(ValueError, match="positive integers"):
        slicing.upsampled_shape((10, 20, 30), (1, 0, 2))


def test_upsampled_affine_identity_and_formula():
    rng = np.random.default_rng(4)
    affine = np.eye(4)
    affine[:3, :3] = rng.normal(size=(3, 3))
    affine[:3, 3] = rng.normal(size=3) * 50
    np.testing.assert_allclose(slicing.upsampled_affine(affine, (1, 1, 1)), affine)
    factors = np.array([1, 2, 3])
    new = slicing.upsampled_affine(affine, factors)
    idx_new = rng.integers(0, 20, size=(10, 3))
    idx_old = (idx_new + 0.5) / factors - 0.5
    np.testing.assert_allclose(apply_affine(new, idx_new), apply_affine(affine, idx_old))
    with pytest.raises(ValueError, match="three finite factors"):
        slicing.upsampled_affine(affine, (1, 0, 2))


def _fov_points(shape):
    """Continuous indices of the FOV centre and of the corner (the -0.5 voxel edges)."""
    return (np.array(shape) - 1) / 2.0, np.full(3, -0.5), np.array(shape) - 0.5


@pytest.mark.parametrize("plane", slicing.PLANES)
@pytest.mark.parametrize("key,codes", [("forrest", "LAS"), ("trio", "RAS"), ("lr", "PSR")])
def test_world_coordinates_kept_through_ras_upsampling(hr_files, lr_file, key, codes, plane):
    """to_ras -> x2 in-plane upsampling with upsampled_affine -> from_ras keeps the FOV.

    The FOV centre and both FOV corners map to the same world points; every new voxel sits
    where the old affine puts the matching continuous index; and its (nearest-neighbour)
    value is that of the old voxel containing it.
    """
    img = io.load_volume(lr_file if key == "lr" else hr_files[key])
    assert "".join(nib.aff2axcodes(img.affine)) == codes
    ras, ornt = io.to_ras(img)
    factors_ras = slicing.upsample_plane_factors(plane, 2)
    data = ras.get_fdata(dtype=np.float32)
    for axis, f in enumerate(factors_ras):
        data = data.repeat(f, axis=axis)
    up_ras = io.new_image_like(data, slicing.upsampled_affine(ras.affine, factors_ras), ras)
    out = io.from_ras(up_ras, ornt)

    # Factors expressed on the input's own voxel axes.
    factors = np.array([factors_ras[int(ornt[a, 0])] for a in range(3)])
    assert out.shape == tuple(np.array(img.shape) * factors)
    for old_pt, new_pt in zip(_fov_points(img.shape), _fov_points(out.shape)):
        np.testing.assert_allclose(
            apply_affine(out.affine, new_pt), apply_affine(img.affine, old_pt), atol=1e-6
        )
    rng = np.random.default_rng(5)
    idx_new = np.stack([rng.integers(0, n, size=50) for n in out.shape], axis=1)
    idx_old = (idx_new + 0.5) / factors - 0.5
    np.testing.assert_allclose(
        apply_affine(out.affine, idx_new), apply_affine(img.affine, idx_old), atol=1e-6
    )
    old_vals = img.get_fdata()[tuple((idx_new // factors).T)]
    new_vals = out.get_fdata()[tuple(idx_new.T)]
    np.testing.assert_array_equal(new_vals, old_vals)
    np.testing.assert_allclose(voxel_sizes(out.affine), voxel_sizes(img.affine) / factors)


def test_resample_integer_zoom_matches_upsampled_affine():
    """zoom_volume on integer factors lands on the upsampled_affine grid: a linear ramp in
    world space is reproduced exactly by linear interpolation."""
    shape = (8, 10, 12)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-10, 5, 3]
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    weights = np.array([0.3, -0.2, 0.5])
    ramp = (apply_affine(affine, ijk) @ weights).astype(np.float32)
    factors = (2, 3, 1)
    up = slicing.zoom_volume(ramp, factors, order=1, anti_aliasing=False)
    assert up.shape == slicing.upsampled_shape(shape, factors)
    new_aff = slicing.upsampled_affine(affine, factors)
    ijk_new = np.stack(np.meshgrid(*[np.arange(n) for n in up.shape], indexing="ij"), -1)
    expected = apply_affine(new_aff, ijk_new) @ weights
    # inside (away from the clamped outer half voxel) the ramp is exact
    inner = tuple(slice(f, n - f) for f, n in zip(factors, up.shape))
    np.testing.assert_allclose(up[inner], expected[inner], atol=1e-4)


@pytest.mark.parametrize("keep_fov", [False, True])
def test_isotropic_resample_forrest(hr_files, keep_fov):
    img = io.load_volume(hr_files["forrest"])  # 0.7 x 0.667 x 0.667 mm, LAS
    out = slicing.isotropic_resample(img, 1.0, keep_fov=keep_fov)
    assert out.get_data_dtype() == np.float32
    sizes = voxel_sizes(out.affine)
    expected_shape = tuple(
        int(round(n * z)) for n, z in zip(img.shape, voxel_sizes(img.affine))
    )
    assert out.shape == expected_shape == (56, 75, 75)
    centre_old = apply_affine(img.affine, (np.array(img.shape) - 1) / 2)
    centre_new = apply_affine(out.affine, (np.array(out.shape) - 1) / 2)
    np.testing.assert_allclose(centre_new, centre_old, atol=1e-6)
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(img.affine)
    if keep_fov:
        corner_old = apply_affine(img.affine, [-0.5] * 3)
        np.testing.assert_allclose(apply_affine(out.affine, [-0.5] * 3), corner_old, atol=1e-6)
        assert np.all(np.abs(sizes - 1.0) < 0.01)
    else:
        np.testing.assert_allclose(sizes, 1.0, atol=1e-6)
    # Same anatomy at the same world point: compare a central voxel with the source
    # (smooth, so the local mean of the source must be close).
    src = img.get_fdata()
    res = out.get_fdata()
    ijk_new = np.array(out.shape) // 2
    ijk_old = np.round(
        np.linalg.solve(img.affine, apply_affine(out.affine, ijk_new).tolist() + [1])[:3]
    ).astype(int)
    local = src[tuple(slice(i - 1, i + 2) for i in ijk_old)]
    assert abs(res[tuple(ijk_new)] - local.mean()) < 0.25 * (src.max() - src.min())
    # Intensities stay in range (cubic overshoot is small) and the mean is preserved.
    assert abs(res.mean() - src.mean()) < 0.02 * src.mean()


def test_isotropic_resample_upsamples_lr(lr_file):
    img = io.load_volume(lr_file).slicer[30:70, 40:80, 30:60]  # 2 mm, a crop for speed
    out = slicing.isotropic_resample(img, 1.0, order=1)
    assert out.shape == tuple(2 * n for n in img.shape)
    # For an exact factor the grid equals the upsampled_affine one.
    np.testing.assert_allclose(out.affine, slicing.upsampled_affine(img.affine, (2, 2, 2)))
    # Same samples as scipy's own FOV-preserving zoom (grid_mode=True), an independent code path.
    from scipy import ndimage

    ref = ndimage.zoom(img.get_fdata(), 2, order=1, mode="nearest", grid_mode=True)
    np.testing.assert_allclose(out.get_fdata(), ref, rtol=1e-5, atol=1e-3)


def test_anti_aliasing_suppresses_checkerboard():
    """A 1-voxel checkerboard has no content at the coarse grid: it must average out."""
    idx = np.indices((16, 16, 16)).sum(0)
    board = (idx % 2).astype(np.float32)
    smooth = slicing.zoom_volume(board, (0.5, 0.5, 0.5), order=1, anti_aliasing=True)
    aliased = slicing.zoom_volume(board, (0.5, 0.5, 0.5), order=0, anti_aliasing=False)
    assert smooth.shape == (8, 8, 8)
    # Without the prefilter every sample hits the same colour: the board aliases to a
    # constant 0 or 1. With it the result is the true local mean, 0.5.
    assert abs(aliased.mean() - 0.5) > 0.4
    assert smooth.std() < 0.1
    np.testing.assert_allclose(smooth.mean(), 0.5, atol=0.05)
