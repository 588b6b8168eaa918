"""Whole-volume inference: batching, tiling, plane handling and world alignment."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from ddasr_nipype import inference
from ddasr_nipype.inference import _tiles, super_resolve_plane, super_resolve_volume


class NearestX2(torch.nn.Module):
    """A stand-in generator whose output is known exactly: nearest-neighbour x2."""

    scale = 2

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")


def _nearest(vol: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    for axis in axes:
        vol = np.repeat(vol, 2, axis=axis)
    return vol


@pytest.mark.parametrize("length,tile,overlap", [(10, 16, 4), (50, 16, 4), (33, 12, 2), (17, 16, 4)])
def test_tiles_cover_every_index(length, tile, overlap):
    spans = list(_tiles(length, tile, overlap))
    covered = np.zeros(length, bool)
    for start, stop in spans:
        assert 0 <= start < stop <= length
        assert stop - start == min(tile, length)
        covered[start:stop] = True
    assert covered.all()


@pytest.mark.parametrize("plane,axes", [("sagittal", (1, 2)), ("coronal", (0, 2)), ("axial", (0, 1))])
def test_plane_upsamples_the_in_plane_axes(plane, axes):
    rng = np.random.default_rng(0)
    vol = rng.random((5, 7, 9), dtype=np.float32)
    gen = NearestX2()
    out = super_resolve_plane(vol, gen, plane=plane, batch_size=3)
    np.testing.assert_array_equal(out, _nearest(vol, axes))
    # slices stream through in batches of at most 3
    assert max(call[0] for call in gen.calls) <= 3
    assert sum(call[0] for call in gen.calls) == vol.shape[("sagittal", "coronal", "axial").index(plane)]


def test_tiled_equals_untiled():
    rng = np.random.default_rng(1)
    vol = rng.random((3, 45, 38), dtype=np.float32)
    gen = NearestX2()
    whole = super_resolve_plane(vol, gen, plane="sagittal")
    gen.calls.clear()
    tiled = super_resolve_plane(vol, gen, plane="sagittal", tile_size=16, tile_overlap=4)
    np.testing.assert_array_equal(tiled, whole)
    assert max(max(call[2:]) for call in gen.calls) <= 16


class NoiseLevelNearestX2(NearestX2):
    """A stand-in generator with a noise-level input: records the level each call is given."""

    config = type("Config", (), {"noise_level_input": True})()

    def forward(self, x, noise_sigma):
        self.calls.append((tuple(x.shape), noise_sigma.tolist()))
        return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")


class NeighbourNearestX2(NearestX2):
    """A stand-in 2.5D generator (``context_slices = 1``): returns channel ``pick`` of its input (0 the slice
    itself, 1 the slice below, 2 the one above), nearest-neighbour up-sampled."""

    config = type("Config", (), {"noise_level_input": False, "context_slices": 1})()

    def __init__(self, pick: int):
        super().__init__()
        self.pick = pick

    def forward(self, x):
        assert x.shape[1] == 3
        return super().forward(x[:, self.pick:self.pick + 1])


@pytest.mark.parametrize("plane", ["sagittal", "axial"])
@pytest.mark.parametrize("batch_size,tile_size", [(1, None), (3, None), (2, 8)])
def test_a_2p5d_generator_gets_each_slices_neighbours_clamped_at_the_ends(plane, batch_size, tile_size):
    axis = inference.PLANE_AXES[plane]
    axes = tuple(a for a in range(3) if a != axis)
    vol = np.random.default_rng(0).uniform(size=(5, 12, 7)).astype(np.float32)
    n = vol.shape[axis]
    for pick, shift in ((0, 0), (1, -1), (2, 1)):
        out = super_resolve_plane(vol, NeighbourNearestX2(pick), plane=plane, batch_size=batch_size,
                                  tile_size=tile_size, tile_overlap=2)
        source = np.take(vol, np.clip(np.arange(n) + shift, 0, n - 1), axis=axis)
        np.testing.assert_array_equal(out, _nearest(source, axes))


def test_noise_level_is_estimated_once_per_whole_slice_and_shared_by_its_tiles():
    from ddasr_nipype.models import estimate_noise_sigma

    rng = np.random.default_rng(2)
    vol = (0.5 + rng.normal(0, 1, (3, 45, 38)) * np.array([0.0, 0.02, 0.05])[:, None, None]).astype(np.float32)
    gen = NoiseLevelNearestX2()
    tiled = super_resolve_plane(vol, gen, plane="sagittal", tile_size=16, tile_overlap=4, batch_size=3)
    np.testing.assert_array_equal(tiled, _nearest(vol, (1, 2)))
    expected = estimate_noise_sigma(torch.from_numpy(vol)[:, None]).tolist()
    assert len(gen.calls) > 4 and all(shape[-1] <= 16 for shape, _ in gen.calls)
    for _, sigma in gen.calls:  # every tile gets the levels of its whole slices
        assert sigma == pytest.approx(expected)
    assert expected[0] < 1e-6 and expected[1] == pytest.approx(0.02, rel=0.1)
    assert expected[2] == pytest.approx(0.05, rel=0.1)


def test_a_real_noise_level_generator_shows_no_tile_seams(lr_file):
    """Tiles of one slice share the whole slice's level: tiled output equals untiled output for a real
    noise-level generator whose receptive field fits in the overlap, where per-tile estimates would not."""
    from ddasr_nipype.data.normalize import fit_normalization
    from ddasr_nipype.models import GeneratorConfig, SRGenerator

    torch.manual_seed(0)
    gen = SRGenerator(GeneratorConfig(num_feat=8, num_grow_ch=4, num_down=0, num_bottleneck_blocks=1,
                                      global_residual=True, noise_level_input=True)).eval()
    with torch.no_grad():
        gen.conv_first.weight[:, 1:] *= 100  # let the level channel matter
    data = np.asarray(nib.load(lr_file).dataobj, np.float32)
    vol = fit_normalization(data).apply(data)[:2]  # two sagittal slices
    kwargs = dict(plane="sagittal", tile_size=100, tile_overlap=40)  # receptive field radius 35
    whole = super_resolve_plane(vol, gen, plane="sagittal")
    tiled = super_resolve_plane(vol, gen, **kwargs)
    np.testing.assert_allclose(tiled, whole, atol=1e-4)

    class PerTile(torch.nn.Module):  # what tiling would do if each tile estimated its own level
        config = type("Config", (), {"noise_level_input": False})()

        def forward(self, x):
            return gen(x)

    seams = super_resolve_plane(vol, PerTile(), **kwargs)
    assert np.abs(seams - whole).max() > 1e-2


def test_all_planes_fuse_to_isotropic_grid():
    # a ramp along x is reproduced exactly inside by nearest (in-plane) + linear (through-plane) fusion
    vol = np.broadcast_to(np.arange(6, dtype=np.float32)[:, None, None], (6, 4, 5)).copy()
    out = super_resolve_volume(vol, NearestX2(), plane="all")
    assert out.shape == (12, 8, 10)
    # along x: two passes repeat values, the sagittal pass interpolates linearly
    pos = np.clip((np.arange(12) + 0.5) / 2 - 0.5, 0, 5)
    expected_x = (2 * np.repeat(np.arange(6), 2) + pos) / 3
    np.testing.assert_allclose(out[:, 3, 4], expected_x, rtol=1e-6)
    # constant volumes stay constant
    const = super_resolve_volume(np.full((4, 4, 4), 0.5, np.float32), NearestX2(), plane="all")
    np.testing.assert_allclose(const, 0.5)


def test_bad_arguments_are_refused():
    vol = np.zeros((4, 4, 4), np.float32)
    with pytest.raises(ValueError, match="plane must be one of"):
        super_resolve_volume(vol, NearestX2(), plane="oblique")
    with pytest.raises(ValueError, match="batch_size"):
        super_resolve_plane(vol, NearestX2(), batch_size=0)
    with pytest.raises(ValueError, match="3D volume"):
        super_resolve_plane(vol[0], NearestX2())
    with pytest.raises(ValueError, match="device must be"):
        inference.resolve_device("tpu")


class _FakeBundle:
    """Just what super_resolve_image reads from a bundle."""

    name = "nearest-x2"
    sha256 = "0" * 64
    scale = 2
    normalization = {"percentiles": [0.5, 99.5]}

    def load_generator(self, device):
        return NearestX2()


def _world(affine, ijk):
    return nib.affines.apply_affine(affine, ijk)


@pytest.mark.parametrize("which", ["lr", "trio", "forrest"])
@pytest.mark.parametrize("planes", ["sagittal", "axial", "all"])
def test_image_stays_aligned_with_the_input(which, planes, lr_file, hr_files):
    path = lr_file if which == "lr" else hr_files[which]
    img = nib.load(path)
    out, info = inference.super_resolve_image(img, _FakeBundle(), planes=planes)
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(img.affine)
    ratio = np.array(img.shape) / np.array(out.shape)
    assert sorted(ratio.round(6).tolist()).count(0.5) == (3 if planes == "all" else 2)
    # the field of view is unchanged: the outer corners of the voxel grids coincide
    for corner in np.ndindex(2, 2, 2):
        old = _world(img.affine, np.array(corner) * np.array(img.shape) - 0.5)
        new = _world(out.affine, np.array(corner) * np.array(out.shape) - 0.5)
        np.testing.assert_allclose(new, old, atol=1e-3)
    # nearest x2 keeps intensities: each output voxel equals the input voxel that contains it
    data_in = np.asarray(img.dataobj, dtype=np.float32)
    data_out = np.asarray(out.dataobj)
    rng = np.random.default_rng(3)
    for _ in range(20):
        ijk_out = np.array([rng.integers(0, n) for n in out.shape])
        world = _world(out.affine, ijk_out)
        ijk_in = np.round(_world(np.linalg.inv(img.affine), world)).astype(int)
        ijk_in = np.clip(ijk_in, 0, np.array(img.shape) - 1)
        if planes != "all" and data_in[tuple(ijk_in)] < np.percentile(data_in, 99):
            np.testing.assert_allclose(data_out[tuple(ijk_out)], data_in[tuple(ijk_in)], rtol=1e-3, atol=1e-2)
    assert info["scale"] == 2 and info["planes"] == planes and info["model_sha256"] == "0" * 64


class ConstantX2(torch.nn.Module):
    """A stand-in generator that returns ``value`` everywhere on the x2 grid."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full((x.shape[0], 1, 2 * x.shape[2], 2 * x.shape[3]), self.value, dtype=x.dtype)


@pytest.mark.parametrize("strength", [0.0, 0.3, 1.0])
def test_strength_weighs_the_network_against_bicubic_interpolation(strength):
    from ddasr_nipype.degradations import bicubic_upsample

    rng = np.random.default_rng(3)
    vol = rng.random((4, 9, 11), dtype=np.float32)
    out = super_resolve_plane(vol, NearestX2(), plane="sagittal", strength=strength)
    expected = strength * _nearest(vol, (1, 2)) + (1 - strength) * bicubic_upsample(vol, 2, axes=(1, 2))
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # the same along another plane, through the volume entry point
    out = super_resolve_volume(vol, NearestX2(), plane="axial", strength=strength)
    expected = strength * _nearest(vol, (0, 1)) + (1 - strength) * bicubic_upsample(vol, 2, axes=(0, 1))
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_background_input_keeps_the_interpolated_input_in_the_air(lr_file):
    """Deep inside the head the network's output (weighted by strength), far outside it the bicubic
    interpolation of the input, a smooth transition between, on a real scan."""
    from scipy import ndimage

    from ddasr_nipype.data.normalize import fit_normalization
    from ddasr_nipype.degradations import bicubic_upsample

    data = np.asarray(nib.load(lr_file).dataobj, np.float32)
    vol = fit_normalization(data).apply(data)
    head = inference.head_mask(vol)
    assert 0.05 < head.mean() < 0.95
    axis = inference.PLANE_AXES["sagittal"]
    axes = tuple(a for a in range(3) if a != axis)
    out = super_resolve_volume(vol, ConstantX2(0.7), plane="sagittal", strength=0.8, background="input")
    bicubic = bicubic_upsample(vol, 2, axes=axes)

    def on_output_grid(mask):
        return bicubic_upsample(mask.astype(np.float32), 2, axes=axes) > 0.5

    inside = on_output_grid(ndimage.binary_erosion(head, iterations=3))
    outside = on_output_grid(~ndimage.binary_dilation(head, iterations=3))
    assert inside.sum() > 1000 and outside.sum() > 1000
    np.testing.assert_allclose(out[inside], 0.8 * 0.7 + 0.2 * bicubic[inside], atol=5e-3)  # < 1 % of the step
    np.testing.assert_allclose(out[outside], bicubic[outside], atol=5e-3)
    # the network's output everywhere with background="model"
    everywhere = super_resolve_volume(vol, ConstantX2(0.7), plane="sagittal", strength=0.8, background="model")
    np.testing.assert_allclose(everywhere, 0.8 * 0.7 + 0.2 * bicubic, atol=1e-5)
    # no step at the head's edge: neighbouring output voxels differ by a fraction of the full step
    weight = (out - bicubic) / (0.8 * (0.7 - bicubic) + 1e-12)
    steady = np.abs(0.7 - bicubic) > 0.2
    step = np.abs(np.diff(np.where(steady, weight, np.nan), axis=axes[0]))
    assert np.nanmax(step) < 0.6


def test_a_qform_that_differs_from_the_sform_stays_aligned_with_the_inputs_qform(lr_file):
    """A registration written to the sform only (qform 10 mm away): the output keeps both affines,
    each aligned with the input's same one, and their codes."""
    img = nib.load(lr_file).slicer[30:60, 30:60, 20:40]
    img = nib.Nifti1Image(np.asarray(img.dataobj, np.float32), img.affine)
    shifted = img.affine.copy()
    shifted[:3, 3] += (10.0, 0.0, 0.0)
    img.set_sform(img.affine, code=2)
    img.set_qform(shifted, code=1)
    out, _ = inference.super_resolve_image(img, _FakeBundle(), planes="sagittal")
    assert (int(out.header["sform_code"]), int(out.header["qform_code"])) == (2, 1)
    offset = out.header.get_qform() @ np.linalg.inv(out.header.get_sform())
    np.testing.assert_allclose(offset, shifted @ np.linalg.inv(img.affine), atol=1e-4)  # 10 mm in x
    plain, _ = inference.super_resolve_image(nib.Nifti1Image(np.asarray(img.dataobj), img.affine),
                                             _FakeBundle(), planes="sagittal")
    np.testing.assert_allclose(plain.header.get_qform(), plain.header.get_sform(), atol=1e-4)


class _Blends(_FakeBundle):
    output = {"strength": 0.5, "background": "input"}


def test_the_blend_keeps_input_values_the_normalization_clips(lr_file):
    """An input with its air at -100 and a few very bright voxels: the interpolated input in the
    blend keeps them (the network alone would see them clipped)."""
    from ddasr_nipype.degradations import bicubic_upsample

    img = nib.load(lr_file).slicer[30:70, 30:70, 20:50]
    data = np.asarray(img.dataobj, np.float32)
    head = inference.head_mask(data / np.percentile(data, 99))
    shifted = np.where(head, data, -100.0).astype(np.float32)
    bright = tuple(np.argwhere(head)[len(np.argwhere(head)) // 2])
    shifted[bright] = 20 * np.percentile(data, 99.5)  # far above the 1.5 clipping bound
    out, _ = inference.super_resolve_image(nib.Nifti1Image(shifted, img.affine), _Blends())
    out = np.asarray(out.dataobj)
    axes = (0, 1) if nib.aff2axcodes(img.affine)[2] in "LR" else (1, 2)
    reference = bicubic_upsample(shifted, 2, axes=axes)
    far = bicubic_upsample((~ndi_dilate(head, 4)).astype(np.float32), 2, axes=axes) > 0.99
    assert far.sum() > 1000
    np.testing.assert_allclose(out[far], -100.0, atol=0.5)  # was 0 before the fix
    assert out.max() > 0.5 * reference.max()  # the bright voxel is not squashed to the clip bound


def ndi_dilate(mask, iterations):
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=iterations)


class _Trained2mm(_FakeBundle):
    preprocessing = {"lr_voxel_size": 2.0}


def test_resolution_warnings_flag_input_far_from_the_training_resolution():
    warn = inference.resolution_warnings
    assert warn((2, 2, 2), _Trained2mm()) == []
    assert warn((4, 1.4, 1.4), _Trained2mm()) == warn((4, 3, 3), _Trained2mm()) == []  # within 1.5 times
    (message,) = warn((3.5, 3.5, 3.5), _Trained2mm())
    assert "sagittal voxels of 3.5 x 3.5 mm" in message and "trained on 2 mm input" in message
    assert len(warn((2, 1.4, 2), _Trained2mm())) == 0  # within 1.5 times, 1.43:1
    # finer than trained on one in-plane axis, and far from square: both are said
    finer, not_square = warn((2, 1, 3), _Trained2mm())
    assert "1 x 3 mm" in finer and "trained on 2 mm input" in finer and "are not square" in not_square
    # thick sagittal slices do not matter to the sagittal network (its in-plane axes are A-P, S-I) ...
    assert warn((5, 2, 2), _Trained2mm()) == []
    # ... but do to the coronal and axial passes of planes="all"
    assert [m.split(" voxels")[0] for m in warn((5, 2, 2), _Trained2mm(), "all")] == [
        "coronal", "coronal", "axial", "axial"]  # too coarse, and 2.5:1
    # a bundle that does not record its input resolution: only non-square in-plane voxels warn
    assert warn((3, 3, 3), _FakeBundle()) == []
    (message,) = warn((1, 1, 3), _FakeBundle())
    assert "1 x 3 mm are not square" in message
    assert warn((2, 2, 2.9), _FakeBundle()) == []  # 1.45:1
    with pytest.raises(ValueError, match="plane must be one of"):
        warn((2, 2, 2), _Trained2mm(), "oblique")


def test_a_run_off_the_training_resolution_is_flagged_in_its_info_and_log(lr_file, caplog):
    img = nib.load(lr_file)
    _, info = inference.super_resolve_image(img, _Trained2mm())
    assert info["warnings"] == []
    coarse = nib.Nifti1Image(np.asarray(img.dataobj), nib.affines.rescale_affine(
        img.affine, img.shape, (4, 4, 4)))
    with caplog.at_level("WARNING", logger="ddasr_nipype"):
        _, info = inference.super_resolve_image(coarse, _Trained2mm())
    assert info["warnings"] == inference.resolution_warnings((4, 4, 4), _Trained2mm()) != []
    assert info["warnings"][0] in caplog.text


def test_output_settings_come_from_the_bundle_unless_given(lr_file):
    assert inference.output_settings() == inference.DEFAULT_OUTPUT == {"strength": 1.0, "background": "model",
                                                                       "slice_denoise": 0.0, "projection": "none"}

    class Recommends(_FakeBundle):
        output = {"strength": 0.5, "background": "input"}  # a manifest from before slice_denoise

    expected = {"strength": 0.5, "background": "input", "slice_denoise": 0.0, "projection": "none"}
    assert inference.output_settings(_FakeBundle()) == inference.DEFAULT_OUTPUT
    assert inference.output_settings(Recommends()) == expected
    assert inference.output_settings(Recommends(), strength=1.0) == {**expected, "strength": 1.0}
    assert inference.output_settings(Recommends(), background="model")["background"] == "model"
    assert inference.output_settings(Recommends(), slice_denoise=2)["slice_denoise"] == 2.0
    with pytest.raises(ValueError, match="strength must be between 0 and 1"):
        inference.output_settings(strength=1.5)
    with pytest.raises(ValueError, match="background must be one of"):
        inference.output_settings(background="air")
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="slice_denoise must be a finite number >= 0"):
            inference.output_settings(slice_denoise=bad)
    assert inference.output_settings(Recommends(), projection="kspace")["projection"] == "kspace"
    with pytest.raises(ValueError, match="projection must be one of"):
        inference.output_settings(projection="fourier")

    img = nib.load(lr_file)
    recommended, info = inference.super_resolve_image(img, Recommends())
    assert info["output"] == expected
    plain, info = inference.super_resolve_image(img, Recommends(), strength=1.0, background="model")
    assert info["output"] == inference.DEFAULT_OUTPUT
    assert not np.allclose(recommended.get_fdata(), plain.get_fdata())


def _noisy_stack(seed: int = 0, n: int = 12, sigma: float = 0.05):
    """A smooth image repeated over ``n`` slices with independent Gaussian noise: (noisy, clean)."""
    yy, xx = np.mgrid[0:40, 0:48] / 40.0
    clean = np.repeat((0.5 + 0.3 * np.sin(3 * yy) * np.cos(2 * xx))[None], n, axis=0).astype(np.float32)
    noisy = clean + np.random.default_rng(seed).normal(0, sigma, clean.shape).astype(np.float32)
    return noisy, clean


def test_denoise_across_slices_averages_alike_slices_and_leaves_different_ones():
    noisy, clean = _noisy_stack()
    assert np.array_equal(inference.denoise_across_slices(noisy, 0.05, 0.0), noisy)  # off: a copy
    out = inference.denoise_across_slices(noisy, 0.05, 2.0)
    assert out.shape == noisy.shape and out.dtype == np.float32 and np.isfinite(out).all()
    before, after = np.mean((noisy - clean) ** 2), np.mean((out - clean) ** 2)
    assert after < 0.5 * before  # alike slices: the noise of up to five averaged
    assert np.mean((out[0] - clean[0]) ** 2) < 0.8 * np.mean((noisy[0] - clean[0]) ** 2)  # the ends too

    # slices twice as far apart (2 mm against the Gaussian's 1 mm) weigh less: less of the noise goes
    far = inference.denoise_across_slices(noisy, 0.05, 2.0, spacing=2.0)
    assert after < np.mean((far - clean) ** 2) < before
    assert np.abs(far - noisy).mean() < np.abs(out - noisy).mean()

    # every other slice brighter by far more than the noise: nothing of the even slices is mixed in
    striped = noisy.copy()
    striped[1::2] += 0.5
    out = inference.denoise_across_slices(striped, 0.05, 2.0)
    assert np.abs(out - striped).max() < 0.15  # a pull towards the other slices would be ~0.5 x its weight
    # the odd slices still lose noise, from the odd slices two away (weight exp(-2) each)
    assert np.mean((out[1::2] - clean[1::2] - 0.5) ** 2) < 0.9 * np.mean((noisy[1::2] - clean[1::2]) ** 2)


def test_volume_noise_level_reads_the_noise_of_the_slices():
    noisy, _ = _noisy_stack(sigma=0.04)
    flat = 0.6 + np.random.default_rng(1).normal(0, 0.04, noisy.shape).astype(np.float32)
    # a generator without a noise-level input: Immerkaer's estimate (exact on a flat image)
    assert inference.volume_noise_level(NearestX2(), flat) == pytest.approx(0.04, rel=0.1)
    assert inference.volume_noise_level(NearestX2(), np.zeros_like(flat)) == 0.0  # nothing to read
    assert inference.volume_noise_level(NearestX2(), noisy, max_slices=3) > 0


def test_slice_denoise_feeds_the_network_denoised_slices_and_blends_with_the_input(lr_file):
    """``slice_denoise`` changes what the network sees, not the input that the blend keeps."""
    noisy, _ = _noisy_stack()
    seen = []

    class Recording(NearestX2):
        def forward(self, x):
            seen.append(x.detach().clone())
            return super().forward(x)

    # one batch of all the slices: the network sees them in order
    on = inference.super_resolve_volume(noisy, Recording(), plane="sagittal", slice_denoise=2.0, batch_size=12)
    denoised_input = torch.cat(seen)[:, 0].numpy()
    seen.clear()
    off = inference.super_resolve_volume(noisy, Recording(), plane="sagittal", batch_size=12)
    assert np.allclose(torch.cat(seen)[:, 0].numpy(), noisy)  # off: the input itself
    assert not np.allclose(on, off)
    level = inference.volume_noise_level(NearestX2(), noisy)
    assert np.allclose(denoised_input, inference.denoise_across_slices(noisy, level, 2.0), atol=1e-6)
    # the slice spacing in mm, from the voxel size along the slice axis (sagittal: R-L)
    thick = inference.super_resolve_volume(noisy, NearestX2(), plane="sagittal", slice_denoise=2.0,
                                           voxel_size_mm=(2.0, 1.0, 1.0))
    thin = inference.super_resolve_volume(noisy, NearestX2(), plane="sagittal", slice_denoise=2.0,
                                          voxel_size_mm=(1.0, 2.0, 2.0))
    assert np.allclose(thin, on) and not np.allclose(thick, on)
    # strength 0: only the blend's bicubic interpolation, of the input as it is
    bicubic_only = inference.super_resolve_volume(noisy, NearestX2(), plane="sagittal", strength=0.0,
                                                  slice_denoise=2.0)
    assert np.allclose(bicubic_only, inference.super_resolve_volume(noisy, NearestX2(), plane="sagittal",
                                                                     strength=0.0), atol=1e-6)
    img = nib.load(lr_file)
    _, info = inference.super_resolve_image(img, _FakeBundle(), slice_denoise=1.5)
    assert info["output"]["slice_denoise"] == 1.5 and "slice_denoise" in info["timings_s"]


@pytest.mark.parametrize("model", ["kspace", "area"])
def test_projection_makes_each_output_slice_agree_with_its_input_slice(model):
    """Re-degraded under its model, the projected output gives the network's input back (the denoised
    input where ``slice_denoise`` is on); what the acquisition cannot see stays the network's."""
    from ddasr_nipype.degradations import area_downsample_unclipped, bicubic_upsample, kspace_truncation

    def degrade(x):
        return (area_downsample_unclipped(x, 2, axes=(1, 2)) if model == "area"
                else kspace_truncation(x, 2, axes=(1, 2)))

    noisy, _ = _noisy_stack()
    vol = noisy[:, :39, :47]  # odd sizes: the k-space centre of an odd grid
    # the network alone, everywhere, a smooth shift of brightness that the projection must take out
    off = inference.super_resolve_volume(vol, ConstantX2(0.3), plane="sagittal")
    on = inference.super_resolve_volume(vol, ConstantX2(0.3), plane="sagittal", projection=model)
    assert np.allclose(off, 0.3)
    np.testing.assert_allclose(degrade(on), vol, atol=1e-4)
    # nothing the input holds is left of the network's constant: the projection of bicubic's output is
    # bicubic plus what it lacks at the input's frequencies, the same for any constant
    other = inference.super_resolve_volume(vol, ConstantX2(0.7), plane="sagittal", projection=model)
    np.testing.assert_allclose(on, other, atol=1e-4)
    # high frequencies the network adds survive it
    detail = inference.super_resolve_volume(vol, NearestX2(), plane="sagittal", projection=model)
    np.testing.assert_allclose(degrade(detail), vol, atol=1e-4)
    assert np.abs(detail - bicubic_upsample(vol, 2, axes=(1, 2))).mean() > 1e-3
    # with slice_denoise the network's input is the denoised stack, and that is what the output agrees with
    denoised = inference.super_resolve_volume(vol, NearestX2(), plane="sagittal", slice_denoise=2.0,
                                              projection=model)
    level = inference.volume_noise_level(NearestX2(), vol)
    np.testing.assert_allclose(degrade(denoised), inference.denoise_across_slices(vol, level, 2.0), atol=1e-4)
    # before the blend: strength 0 is bicubic whatever the projection
    np.testing.assert_allclose(
        inference.super_resolve_volume(vol, NearestX2(), plane="sagittal", strength=0.0, projection=model),
        bicubic_upsample(vol, 2, axes=(1, 2)), atol=1e-6)


def test_cpu_runs_one_slice_per_forward_pass_unless_told_otherwise():
    """On the CPU one slice at a time is fastest (the feature maps stay in the cache); GPUs get 8."""
    assert inference.default_batch_size("cpu") == 1
    assert inference.default_batch_size(torch.device("cpu")) == 1
    assert inference.default_batch_size("cuda:1") == 8
    vol = np.random.default_rng(4).random((5, 6, 7), dtype=np.float32)
    gen = NearestX2()
    super_resolve_plane(vol, gen, plane="sagittal")
    assert [call[0] for call in gen.calls] == [1] * 5
    gen.calls.clear()
    super_resolve_plane(vol, gen, plane="sagittal", batch_size=4)
    assert sorted(call[0] for call in gen.calls) == [1, 4]  # side by side on two threads: either order


def test_prepared_generator_is_channels_last_with_the_same_output():
    from ddasr_nipype.models import GeneratorConfig, SRGenerator

    torch.manual_seed(0)
    config = GeneratorConfig(num_feat=8, num_grow_ch=4, num_down=1, num_bottleneck_blocks=1,
                             global_residual=True, noise_level_input=True)
    plain = SRGenerator(config).eval()
    prepared = SRGenerator(config)
    prepared.load_state_dict(plain.state_dict())
    assert inference.prepare_generator(prepared, "cpu") is prepared and not prepared.training
    assert prepared.conv_first.weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain.conv_first.weight.is_contiguous(memory_format=torch.channels_last)
    vol = np.random.default_rng(5).random((3, 21, 18), dtype=np.float32)
    np.testing.assert_allclose(super_resolve_plane(vol, prepared), super_resolve_plane(vol, plain), atol=1e-5)


def _blas_threads() -> set[int]:
    from threadpoolctl import threadpool_info

    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


class ThreadRecorder(torch.nn.Module):
    """Wraps a generator; records the thread, torch's thread count and numpy's BLAS thread counts of every
    call."""

    def __init__(self, generator):
        super().__init__()
        self.generator = generator
        self.config = generator.config
        self.seen: list[tuple[str, int]] = []
        self.blas: set[int] = set()

    def forward(self, *args):
        import threading

        self.seen.append((threading.current_thread().name, torch.get_num_threads()))
        self.blas |= _blas_threads()
        return self.generator(*args)


def test_cpu_slices_run_side_by_side_on_one_thread_each_with_the_same_output(monkeypatch):
    from ddasr_nipype.models import GeneratorConfig, SRGenerator

    torch.manual_seed(0)
    config = GeneratorConfig(num_feat=8, num_grow_ch=4, num_down=1, num_bottleneck_blocks=1,
                             global_residual=True, noise_level_input=True)
    generator = inference.prepare_generator(SRGenerator(config), "cpu")
    vol = np.random.default_rng(6).random((9, 24, 20), dtype=np.float32)
    mask = np.zeros(vol.shape, dtype=bool)
    mask[2:7, 4:20, 3:17] = True
    threads = torch.get_num_threads()
    from threadpoolctl import threadpool_limits

    try:
        torch.set_num_threads(2)
        recorder = ThreadRecorder(generator)
        timings: dict[str, float] = {}
        with threadpool_limits(limits=2, user_api="blas"):
            together = super_resolve_plane(vol, recorder, mask=mask, strength=0.8, timings=timings)
            assert _blas_threads() == {2}  # the caller's BLAS setting is back
        # numpy's BLAS runs on one thread while slices run (its threads would spin beside torch's)
        assert recorder.blas == {1}
        assert torch.get_num_threads() == 2  # the caller's setting is back
        assert {name.startswith("ddasr-slices") for name, _ in recorder.seen} == {True}
        assert {count for _, count in recorder.seen} == {1}
        assert len({name for name, _ in recorder.seen}) <= 2 and len(recorder.seen) == 9
        assert timings["network"] > 0 and timings["blend"] > 0
        monkeypatch.setattr(inference, "slice_workers", lambda device, n_chunks: 1)
        alone = ThreadRecorder(generator)
        one_by_one = super_resolve_plane(vol, alone, mask=mask, strength=0.8)
    finally:
        torch.set_num_threads(threads)
    assert {name for name, _ in alone.seen} == {"MainThread"} and alone.blas == {1}
    np.testing.assert_allclose(together, one_by_one, atol=1e-6)
    assert inference.slice_workers("cpu", 1) == 1


def test_image_info_splits_the_runtime(lr_file):
    img = nib.load(lr_file)
    _, info = inference.super_resolve_image(img, _FakeBundle(), strength=0.5, background="input")
    steps = info["timings_s"]
    assert set(steps) == {"load_model", "normalize", "head_mask", "network", "blend", "restore"}
    assert all(seconds >= 0 for seconds in steps.values()) and steps["blend"] > 0
    assert sum(steps.values()) <= info["runtime_s"] + 0.01
    assert info["batch_size"] == 1
    _, info = inference.super_resolve_image(img, _FakeBundle(), planes="all", batch_size=16)
    assert "fuse" in info["timings_s"] and info["batch_size"] == 16


def test_an_error_in_one_slice_stops_the_others_and_restores_the_threads():
    """A failing slice raises in the caller; slices not started yet are not run (an interrupt does not
    wait for the whole volume) and the caller's torch thread count is back."""

    class FailsOnThird(NearestX2):
        def forward(self, x):
            if len(self.calls) == 2:
                self.calls.append(tuple(x.shape))
                raise RuntimeError("slice failed")
            return super().forward(x)

    vol = np.random.default_rng(7).random((200, 8, 8), dtype=np.float32)
    gen = FailsOnThird()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(RuntimeError, match="slice failed"):
            super_resolve_plane(vol, gen, plane="sagittal")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert len(gen.calls) < 200
