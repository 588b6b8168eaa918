"""Random training patches (ddasr_nipype.data.patches): determinism, foreground rule, pairing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ddasr_nipype.data import io, patches, slicing
from ddasr_nipype.data.normalize import fit_normalization
from ddasr_nipype.errors import TrainingDataError


@pytest.fixture(scope="module")
def trio_norm(hr_files):
    """The real 1 mm trio crop, RAS, normalized to about [0, 1]."""
    ras, _ = io.to_ras(io.load_volume(hr_files["trio"]))
    data = ras.get_fdata(dtype=np.float32)
    return fit_normalization(data).apply(data)


@pytest.fixture
def half_empty():
    """A stack whose left half is background (0) and right half foreground (1)."""
    stack = np.zeros((6, 40, 40), dtype=np.float32)
    stack[:, :, 20:] = 1.0
    return stack


def test_same_seed_same_patches(trio_norm):
    a = patches.sample_patches(trio_norm, 32, 16, np.random.default_rng(7), plane="coronal")
    b = patches.sample_patches(trio_norm, 32, 16, np.random.default_rng(7), plane="coronal")
    c = patches.sample_patches(trio_norm, 32, 16, np.random.default_rng(8), plane="coronal")
    assert a.shape == (16, 1, 32, 32) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_locations_replay_and_match_plane(trio_norm):
    rng = np.random.default_rng(1)
    got, locs = patches.sample_patches(
        trio_norm, (24, 16), 10, rng, plane="axial", return_locations=True
    )
    assert len(locs) == 10
    # the deterministic twin reproduces the draw from the (serialized) locations alone
    locs2 = patches.PatchLocations.from_dict(json.loads(json.dumps(locs.to_dict())))
    stack = slicing.extract_slices(trio_norm, "axial")
    np.testing.assert_array_equal(patches.extract_patches(stack, locs2, (24, 16)), got)
    # each patch really is vol[r:r+24, c:c+16, k] (axial: axes 0, 1)
    for p, k, r, c in zip(got, locs.index, locs.row, locs.col):
        np.testing.assert_array_equal(p[0], trio_norm[r : r + 24, c : c + 16, k])


def test_foreground_rule(half_empty):
    rng = np.random.default_rng(0)
    p, locs = patches.sample_patches(
        half_empty, 10, 200, rng, plane=None, min_foreground=0.6, return_locations=True
    )
    # A 10-wide patch at column c covers max(0, c + 10 - 20) foreground columns.
    fraction = np.clip(locs.col + 10 - 20, 0, 10) / 10
    assert np.all(fraction >= 0.6)
    assert np.all((p > patches.DEFAULT_FOREGROUND_THRESHOLD).mean(axis=(1, 2, 3)) >= 0.6)
    # without the rule, (almost surely) some background-only patches are drawn
    q = patches.sample_patches(half_empty, 10, 200, rng, plane=None, min_foreground=0.0)
    assert (q.reshape(200, -1).max(axis=1) == 0).any()


def test_foreground_threshold_is_used(half_empty):
    dim = half_empty * 0.04  # foreground below the default 0.05 threshold
    with pytest.raises(TrainingDataError, match=r"only 0 of 5 patches .* at least 50% foreground"):
        patches.sample_patches(dim, 10, 5, np.random.default_rng(0), plane=None,
                               min_foreground=0.5, max_draws_per_patch=20)
    out = patches.sample_patches(dim, 10, 5, np.random.default_rng(0), plane=None,
                                 min_foreground=0.5, foreground_threshold=0.01)
    assert out.shape == (5, 1, 10, 10)


def test_empty_volume_raises():
    with pytest.raises(TrainingDataError, match="foreground"):
        patches.sample_patches(np.zeros((4, 16, 16)), 8, 3, np.random.default_rng(0), plane=None)


@pytest.mark.parametrize("size", [100, (8, 200)])
def test_patch_larger_than_slices(trio_norm, size):
    with pytest.raises(TrainingDataError, match=r"smaller than the patch size"):
        patches.sample_patches(trio_norm, size, 2, np.random.default_rng(0), plane="sagittal")


def test_patch_equal_to_slice_size(half_empty):
    p = patches.sample_patches(half_empty, 40, 3, np.random.default_rng(0), plane=None)
    assert p.shape == (3, 1, 40, 40)
    np.testing.assert_array_equal(p[:, 0], np.broadcast_to(half_empty[0], (3, 40, 40)))


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"patch_size": 0}, "patch_size must be a positive int"),
        ({"patch_size": (8, 8, 8)}, "patch_size must be a positive int"),
        ({"n": 0}, "n must be a positive integer"),
        ({"rng": 3}, "numpy.random.Generator"),
        ({"min_foreground": 1.5}, r"min_foreground must be within \[0, 1\]"),
    ],
)
def test_argument_validation(half_empty, kwargs, pattern):
    args = {"patch_size": 8, "n": 2, "rng": np.random.default_rng(0), **kwargs}
    with pytest.raises(ValueError, match=pattern):
        patches.sample_patches(half_empty, args.pop("patch_size"), args.pop("n"),
                               args.pop("rng"), plane=None, **args)


@pytest.mark.parametrize("hr_size", [(48, 64), (47, 63)])
def test_paired_patches_align(hr_size):
    """LR = 2x2 block mean of HR (odd HR sizes padded): each LR patch at (i, j) must be the
    block mean of the HR patch at (2i, 2j)."""
    rng = np.random.default_rng(3)
    hr = rng.random((5, *hr_size), dtype=np.float32) + 0.1
    pad = [(0, 0)] + [(0, (-n) % 2) for n in hr_size]
    padded = np.pad(hr, pad, mode="edge")
    lr = padded.reshape(5, padded.shape[1] // 2, 2, padded.shape[2] // 2, 2).mean(axis=(2, 4))
    lr_p, hr_p, locs = patches.sample_paired_patches(
        lr, hr, 8, 2, 50, np.random.default_rng(9), return_locations=True
    )
    assert lr_p.shape == (50, 1, 8, 8) and hr_p.shape == (50, 1, 16, 16)
    assert np.all(2 * locs.row + 16 <= hr_size[0]) and np.all(2 * locs.col + 16 <= hr_size[1])
    block_mean = hr_p.reshape(50, 1, 8, 2, 8, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(lr_p, block_mean, rtol=1e-6)
    # replay
    again = patches.sample_paired_patches(lr, hr, 8, 2, 50, np.random.default_rng(9))
    np.testing.assert_array_equal(again[0], lr_p)
    np.testing.assert_array_equal(again[1], hr_p)


def test_paired_from_volumes_along_plane(trio_norm):
    hr = trio_norm
    lr = hr[:, ::2, ::2]  # sagittal in-plane axes 1, 2 decimated by 2
    lr_p, hr_p = patches.sample_paired_patches(
        lr, hr, 12, 2, 8, np.random.default_rng(0), plane="sagittal"
    )
    np.testing.assert_array_equal(lr_p, hr_p[:, :, ::2, ::2])


def test_paired_shape_mismatch():
    hr = np.ones((4, 32, 32), dtype=np.float32)
    with pytest.raises(TrainingDataError, match=r"do not match HR slices of 32x32 at scale 2"):
        patches.sample_paired_patches(np.ones((4, 15, 16)), hr, 8, 2, 2, np.random.default_rng(0))
    with pytest.raises(TrainingDataError, match=r"different numbers of slices \(3 vs 4\)"):
        patches.sample_paired_patches(np.ones((3, 16, 16)), hr, 8, 2, 2, np.random.default_rng(0))
    with pytest.raises(TrainingDataError, match=r"smaller than the LR patch size 20x20"):
        patches.sample_paired_patches(np.ones((4, 16, 16)), hr, 20, 2, 2, np.random.default_rng(0))


def test_locations_are_read_only():
    locs = patches.PatchLocations([0, 1], [2, 3], [4, 5])
    with pytest.raises(ValueError):
        locs.row[0] = 9
    with pytest.raises(ValueError, match="same length"):
        patches.PatchLocations([0], [1, 2], [3])
