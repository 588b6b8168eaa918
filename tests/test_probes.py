"""The probes behind model-card figures of the denoising across slices (``scripts/probes/``)."""

from __future__ import annotations

import numpy as np
import pytest
from _scripts import load_script


def _smooth_volume(shape=(12, 32, 36), seed=0):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    return (0.5 + 4.0 * gaussian_filter(rng.normal(size=shape), 2.0)).astype(np.float64)


def test_the_oracle_wiener_filter_takes_off_noise_and_nothing_else():
    """denoising_bound.py: the oracle Wiener filter (S / (S + N) per coefficient) is the identity without
    noise and, with noise, keeps less of it than the input had; over more axes it knows more."""
    oracle_wiener = load_script("probes/denoising_bound").oracle_wiener
    clean = _smooth_volume()
    np.testing.assert_allclose(oracle_wiener(clean, clean, (1, 2)), clean, atol=1e-9)
    noisy = clean + np.random.default_rng(1).normal(0, 0.3, clean.shape)
    before = np.mean((noisy - clean) ** 2)
    in_plane = np.mean((oracle_wiener(noisy, clean, (1, 2)) - clean) ** 2)
    in_3d = np.mean((oracle_wiener(noisy, clean, (0, 1, 2)) - clean) ** 2)
    assert in_3d < in_plane < 0.7 * before


def test_thick_slices_fold_the_reference_and_its_masks_along_the_slice_axis():
    """paired_variants.py --thick-slices K: the HR k-space truncated K-fold across the slices, its grid
    K times coarser there with the same field of view, and its masks folded with it."""
    import nibabel as nib

    thick_slices = load_script("probes/paired_variants")._thick_slices
    hr = _smooth_volume((13, 20, 22))
    img = nib.Nifti1Image(hr.astype(np.float32), np.diag([1.0, 1.0, 1.0, 1.0]))
    head = np.zeros(hr.shape, bool)
    head[2:11] = True  # slices 2-10: thick slices 1-4 hold at least one of them, 1 and 5 only half
    out_img, thick, out_head, out_brain = thick_slices(img, hr, head, head, 2, 0)
    assert thick.shape == (7, 20, 22) == out_img.shape == out_head.shape
    assert out_img.header.get_zooms()[:3] == pytest.approx((2.0, 1.0, 1.0))
    # the field of view is kept: the first thick voxel's centre lies half an HR voxel past the first HR centre
    assert out_img.affine[0, 3] == pytest.approx(0.5)
    assert out_head[:, 0, 0].tolist() == [False, True, True, True, True, False, False]
    assert np.array_equal(out_head, out_brain)
    assert thick.mean() == pytest.approx(hr.mean(), rel=0.05)  # intensities kept (odd size: not exactly)


def test_slice_denoise_shape_knobs_reach_the_app_path_and_are_undone():
    """paired_variants.py nlmwidth=MM / nlmradius=R: the app's denoising across slices runs with that Gaussian
    width and radius (more averaging the wider), and a variant without them gets the shipped filter back."""
    import ddasr_nipype.inference as inference

    shape = load_script("probes/paired_variants")._slice_denoise_shape
    original, width = inference.denoise_across_slices, inference.SLICE_DENOISE_WIDTH_MM
    stack = _smooth_volume((9, 16, 16)).astype(np.float32)
    stack += np.random.default_rng(2).normal(0, 0.2, stack.shape).astype(np.float32)
    try:
        shipped = inference.denoise_across_slices(stack, 0.2, 2.0)
        shape(2.5, 4)
        assert inference.SLICE_DENOISE_WIDTH_MM == 2.5
        wider = inference.denoise_across_slices(stack, 0.2, 2.0, spacing=1 / 2.5)
        assert np.std(np.diff(wider, axis=0)) < np.std(np.diff(shipped, axis=0))
        assert np.array_equal(wider, original(stack, 0.2, 2.0, spacing=1 / 2.5, radius=4))
        shape(None, None)
        assert inference.denoise_across_slices is original and inference.SLICE_DENOISE_WIDTH_MM == width
    finally:
        inference.denoise_across_slices, inference.SLICE_DENOISE_WIDTH_MM = original, width


def test_the_noise_weighted_kspace_projection_is_the_hard_one_without_noise_and_keeps_noise_out():
    """paired_variants.py wiener=: told no noise it is the k-space projection; onto a noisy LR, told its
    noise, it keeps most of that noise out of an estimate already close to the truth, and still corrects one
    that is far off."""
    from ddasr_nipype.degradations import consistency_projection, kspace_truncation

    soft = load_script("probes/paired_variants")._soft_kspace_projection
    rng = np.random.default_rng(3)
    hr = _smooth_volume((4, 48, 48)) + 5.0
    lr = kspace_truncation(hr, 2, axes=(1, 2))
    close = hr + rng.normal(0, 0.02, hr.shape)
    np.testing.assert_allclose(soft(close, lr, 2, 0.0, (1, 2)), consistency_projection(close, lr, 2, axes=(1, 2)),
                               atol=1e-9)
    noisy = lr + rng.normal(0, 0.1, lr.shape)
    hard_error = np.mean((consistency_projection(close, noisy, 2, axes=(1, 2)) - hr) ** 2)
    assert np.mean((soft(close, noisy, 2, 0.1, (1, 2)) - hr) ** 2) < 0.2 * hard_error
    far = hr + 0.5 * (_smooth_volume((4, 48, 48), seed=4) - 0.5)
    assert np.mean((soft(far, noisy, 2, 0.1, (1, 2)) - hr) ** 2) < 0.5 * np.mean((far - hr) ** 2)


def test_the_guided_denoising_across_slices_reaches_the_app_path_takes_noise_off_and_is_undone():
    """paired_variants.py nlmguide=G: the app's denoising across slices, its second pass weighted by the
    first pass's output, averages the noise of alike slices away, leaves a clean stack alone, and is gone
    again without the knob."""
    import ddasr_nipype.inference as inference

    guided = load_script("probes/paired_variants")._guided_slice_denoise
    original = inference.denoise_across_slices
    clean = np.repeat(_smooth_volume((1, 24, 24)), 7, axis=0).astype(np.float32)  # seven alike slices
    noisy = clean + np.random.default_rng(5).normal(0, 0.1, clean.shape).astype(np.float32)
    try:
        guided(1.0)
        assert inference.denoise_across_slices is not original
        out = inference.denoise_across_slices(noisy, 0.1, 2.0)
        assert np.mean((out - clean) ** 2) < 0.6 * np.mean((noisy - clean) ** 2)
        assert np.array_equal(inference.denoise_across_slices(noisy, 0.0, 2.0), noisy)  # no noise: unchanged
        guided(None)
        assert inference.denoise_across_slices is original
    finally:
        inference.denoise_across_slices = original


def test_the_wiener_app_projection_is_the_hard_one_told_no_noise_and_is_undone():
    """paired_variants.py projection=kspace,wproj=F: the app's projection made noise-weighted, the level F x
    what the bundle's generator reads on the slices it projects onto; F = 0 is the hard projection, a large F
    leaves the output alone, area passes through, and without the knob the hard projection is back."""
    import torch

    import ddasr_nipype.degradations as degradations

    wiener = load_script("probes/paired_variants")._wiener_app_projection
    hard = degradations.consistency_projection

    class Bundle:  # a generator without a noise-level input: Immerkaer's estimate reads the level
        @staticmethod
        def load_generator():
            return torch.nn.Identity()

    rng = np.random.default_rng(6)
    hr = (_smooth_volume((3, 32, 32)) + 5.0).astype(np.float32)
    lr = degradations.kspace_truncation(hr, 2, axes=(1, 2)) + rng.normal(0, 0.1, (3, 16, 16)).astype(np.float32)
    x = hr + rng.normal(0, 0.05, hr.shape).astype(np.float32)
    try:
        wiener(Bundle, 0.0)
        np.testing.assert_allclose(degradations.consistency_projection(x, lr, 2, axes=(1, 2)),
                                   hard(x, lr, 2, axes=(1, 2)), atol=1e-4)
        wiener(Bundle, 1e3)
        np.testing.assert_allclose(degradations.consistency_projection(x, lr, 2, axes=(1, 2)), x, atol=1e-4)
        np.testing.assert_allclose(degradations.consistency_projection(x, lr, 2, axes=(1, 2), model="area"),
                                   hard(x, lr, 2, axes=(1, 2), model="area"))
        wiener(Bundle, None)
        assert degradations.consistency_projection is hard
    finally:
        degradations.consistency_projection = hard


def test_no_reference_scores_of_the_reference_and_outputs_are_set_against_bicubic(capsys):
    """paired_variants.py --no-reference: NIQE / BRISQUE of the reference and each output on the chosen
    slices, as a change from bicubic: an output equal to bicubic scores +0.0 %, a noisier one does not."""
    print_no_reference = load_script("probes/paired_variants")._print_no_reference
    hr = np.clip(_smooth_volume((6, 100, 104), seed=2) / 8.0, 0.0, 1.0)
    bicubic = hr.copy()
    bicubic[:, 1:-1] = (hr[:, :-2] + 2 * hr[:, 1:-1] + hr[:, 2:]) / 4.0  # a little blur
    noisy = hr + np.random.default_rng(3).normal(0, 0.05, hr.shape)
    head = np.ones(hr.shape, bool)
    print_no_reference(hr, {"bicubic": bicubic, "same": bicubic.copy(), "noisy": noisy}, head, np.array([2, 3]),
                       "sagittal")
    rows = {line[:60].strip(): line[60:].split() for line in capsys.readouterr().out.splitlines()}
    assert "no-reference (2 slices)" in rows
    assert rows["same"][1] == "+0.0%" and rows["same"][3] == "+0.0%"
    assert rows["HR reference"][0] != rows["bicubic"][0]
    assert float(rows["noisy"][2]) != pytest.approx(float(rows["bicubic"][2]))


def test_the_affine_fit_takes_off_a_change_of_contrast_and_nothing_else():
    """intensity_shift.py: an output that is the reference brightened and stretched fits back exactly; one
    with noise keeps the noise's error."""
    affine_fit_error = load_script("probes/intensity_shift").affine_fit_error
    reference = np.random.default_rng(0).uniform(0.2, 0.8, 5000)
    a, c, mse = affine_fit_error(1.1 * reference + 0.03, reference)
    assert a == pytest.approx(1 / 1.1) and c == pytest.approx(-0.03 / 1.1) and mse == pytest.approx(0, abs=1e-20)
    noise = np.random.default_rng(1).normal(0, 0.02, reference.shape)
    assert affine_fit_error(reference + noise, reference)[2] == pytest.approx(np.mean(noise**2), rel=0.05)


def test_perturbations_of_the_no_reference_probe_change_only_in_plane_as_named():
    """unpaired_variants.py --perturb: smoothing and sharpening act within each sagittal slice (a volume
    constant in-plane stays as it is, whatever its profile across slices), smoothing lowers the in-plane
    variation and sharpening raises it, the noise is seeded with the standard deviation asked for."""
    perturbed = load_script("probes/unpaired_variants")._perturbed
    volume = _smooth_volume()
    assert perturbed(volume, "") is volume
    across = np.broadcast_to(np.linspace(0.0, 1.0, 12)[:, None, None], volume.shape).copy()
    for spec in ("smooth=0.8", "sharpen=0.5"):
        np.testing.assert_allclose(perturbed(across, spec), across, atol=1e-12)
    textured = volume + np.random.default_rng(2).normal(0, 0.1, volume.shape)
    grad = lambda v: np.mean(np.abs(np.diff(v, axis=2)))  # noqa: E731
    assert grad(perturbed(textured, "smooth=0.8")) < 0.8 * grad(textured)
    assert grad(perturbed(textured, "sharpen=0.5")) > 1.1 * grad(textured)
    noise = perturbed(volume, "noise=0.01") - volume
    assert abs(noise.std() - 0.01) < 5e-4
    np.testing.assert_array_equal(perturbed(volume, "noise=0.01"), perturbed(volume, "noise=0.01"))
    with pytest.raises(SystemExit, match="--perturb"):
        perturbed(volume, "blur=1")


def test_error_spectrum_bands_put_each_frequency_in_its_band_and_keep_all_the_power():
    """error_spectrum.py: a slow cosine lands in the lowest band, a checkerboard in the highest, a white
    image's power is split over all bands, and the bands hold the whole spectrum (Parseval)."""
    spectrum = load_script("probes/error_spectrum")
    n = 32
    y, x = np.mgrid[:n, :n]
    slow = np.cos(2 * np.pi * 2 * x / n)  # 1/16 cycles per pixel
    checker = (-1.0) ** (x + y)  # the corner of the spectrum, sqrt(2) / 2 cycles per pixel radially
    for image, band in ((slow, 0), (checker, len(spectrum.EDGES) - 2)):
        powers = spectrum.band_powers(image)
        assert powers[band] == pytest.approx(powers.sum()) and powers.sum() > 0
    white = np.random.default_rng(7).normal(size=(n, n))
    powers = spectrum.band_powers(white)
    assert powers.sum() == pytest.approx(n * n * np.sum(white ** 2))  # nothing dropped
    assert (powers > 0).all()


def test_the_rolloff_ratio_sees_an_apodized_acquisition_and_its_cross_spectrum_ignores_noise():
    """acquisition_rolloff.py: on the same anatomy a Tukey-apodized acquisition keeps less of the LR band's
    top than a plain k-space truncation; noise raises the slices' own ratio but hardly the cross-spectrum's
    (noise does not repeat from one slice to the next); too few slices with head are refused."""
    from ddasr_nipype.degradations import kspace_acquisition, rician_noise

    rolloff = load_script("probes/acquisition_rolloff").rolloff_ratios
    hr = _smooth_volume((8, 64, 64), seed=3)
    hr += 0.3 * _smooth_volume((8, 64, 64), seed=4) * (np.random.default_rng(5).random(hr.shape) > 0.5)
    hr = np.clip(hr / hr.max(), 0, 1)
    head = np.ones((8, 32, 32), bool)
    plain = kspace_acquisition(hr, 2, axes=(1, 2))
    apodized = kspace_acquisition(hr, 2, axes=(1, 2), alpha=0.6)
    assert rolloff(apodized, head)[1] < 0.5 * rolloff(plain, head)[1]
    noisy = rician_noise(plain, 0.05, seed=1)
    (auto, cross), (auto_noisy, cross_noisy) = rolloff(plain, head), rolloff(noisy, head)
    assert auto_noisy > 2 * auto
    assert cross_noisy == pytest.approx(cross, rel=0.3)
    head[1:] = False
    with pytest.raises(ValueError, match="two slices"):
        rolloff(plain, head)
