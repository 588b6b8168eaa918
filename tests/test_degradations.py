"""Baseline degradations: LR grid and scale, determinism, replay, validation messages."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from ddasr_nipype.degradations import (
    DEGRADATIONS,
    BicubicDegradation,
    RealESRGANDegradation,
    RealESRGANParams,
    RealSRDegradation,
    RicianNoise,
    anisotropic_gaussian_kernel,
    area_downsample,
    bicubic_downsample,
    bicubic_upsample,
    bicubic_upsample_volume,
    get_degradation,
    kspace_truncation,
    lr_shape,
    real_esrgan_degradation,
    realsr_degradation,
    rician_noise,
)


@pytest.fixture(scope="module")
def hr_slice(hr_files):
    """A real 1 mm sagittal slice (96 x 96) on [0, 1]."""
    data = nib.as_closest_canonical(nib.load(hr_files["trio"])).get_fdata()
    mid = data[data.shape[0] // 2]
    return np.clip(mid / np.percentile(data[data > 0], 99.5), 0, 1)


def _smooth_blob(n=64):
    t = np.arange(n)
    f = 0.2 + 0.6 * np.exp(-(((t - 30.3) / 7) ** 2))
    return np.outer(f, f), f


@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
@pytest.mark.parametrize("scale", [2, 3])
def test_output_on_lr_grid(name, scale, hr_slice):
    odd = hr_slice[:95, :94]
    out, _ = get_degradation(name, scale)(odd, 0)
    assert out.shape == lr_shape(odd.shape, scale) == (-(-95 // scale), -(-94 // scale))
    assert out.dtype == np.float64 and np.all(np.isfinite(out))
    assert out.min() >= 0  # a magnitude image; k-space truncation keeps its Gibbs overshoot
    assert out.max() <= (1.15 if name.startswith("kspace") or name == "mri" else 1.0)
    assert abs(out.mean() - odd.mean()) < 0.08  # intensities are kept


@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
def test_volumes_are_degraded_along_the_chosen_axes(name):
    vol = np.random.default_rng(0).uniform(size=(5, 24, 20))
    out, _ = get_degradation(name, 2, axes=(1, 2))(vol, 3)
    assert out.shape == (5, 12, 10)
    out, _ = get_degradation(name, 2, axes=(0, 2))(vol, 3)
    assert out.shape == (3, 24, 10)


def test_downsampling_lands_on_the_field_of_view_preserving_grid():
    x, f = _smooth_blob()
    lr_positions = (np.arange(32) + 0.5) * 2 - 0.5
    truth = np.outer(0.2 + 0.6 * np.exp(-(((lr_positions - 30.3) / 7) ** 2)),
                     0.2 + 0.6 * np.exp(-(((lr_positions - 30.3) / 7) ** 2)))
    assert np.abs(kspace_truncation(x, 2) - truth).max() < 1e-6
    assert np.abs(bicubic_downsample(x, 2) - truth).max() < 2e-3
    # and bicubic up-sampling goes back onto the HR grid
    assert np.abs(bicubic_upsample(truth, 2) - x).max() < 5e-3


def test_bicubic_upsample_volume_grid_and_crop():
    vol = np.random.default_rng(2).uniform(size=(6, 7, 8))
    up = bicubic_upsample_volume(vol, (1, 2, 2))
    assert up.shape == (6, 14, 16)
    np.testing.assert_allclose(up.mean(axis=(1, 2)), vol.mean(axis=(1, 2)), atol=0.05)
    assert bicubic_upsample(vol, 2, axes=(1, 2), out_shape=(13, 15)).shape == (6, 13, 15)
    with pytest.raises(ValueError, match="at most scale"):
        bicubic_upsample(vol, 2, axes=(1, 2), out_shape=(15, 15))


@pytest.mark.parametrize("factors", [(1, 2, 2), (2, 2, 2), (3, 1, 2)])
def test_bicubic_upsample_volume_region_is_the_same_box_of_the_whole(factors):
    rng = np.random.default_rng(3)
    vol = rng.uniform(size=(9, 11, 10))
    whole = bicubic_upsample_volume(vol, factors)
    boxes = [tuple(slice(0, n) for n in whole.shape),  # everything
             (slice(4, 5), slice(0, 3), slice(whole.shape[2] - 2, whole.shape[2])),  # one slice, both edges
             (slice(2, 9), slice(5, 17), slice(6, 13))]  # the interior, odd starts
    boxes += [tuple(slice(int(a), int(a) + int(rng.integers(1, n - a + 1))) for a, n in
                    zip((rng.integers(0, n) for n in whole.shape), whole.shape)) for _ in range(20)]
    for box in boxes:
        np.testing.assert_allclose(bicubic_upsample_volume(vol, factors, region=box), whole[box], atol=1e-12)
    with pytest.raises(ValueError, match="step 1"):
        bicubic_upsample_volume(vol, factors, region=(slice(0, 4, 2), slice(None), slice(None)))


def test_kspace_truncation_rings_and_blurs_an_edge():
    x = np.zeros((64, 64))
    x[:, 32:] = 1.0
    lr = kspace_truncation(x, 2)[0]
    # the edge (HR 31.5) sits halfway between LR samples 15 (HR 30.5) and 16 (HR 32.5)
    assert lr[15] + lr[16] == pytest.approx(1.0, abs=1e-9)
    assert 0.02 < lr[15] < 0.1
    assert lr[17] > 1.005 and lr[14] > 0.005  # Gibbs ringing on both sides


def test_area_averages_blocks_and_keeps_an_edge_sharper_than_bicubic():
    x = np.random.default_rng(4).uniform(size=(7, 9))
    lr = area_downsample(x, 2)
    assert lr.shape == (4, 5)
    assert lr[1, 2] == pytest.approx(x[2:4, 4:6].mean())
    assert lr[3, 4] == pytest.approx(x[6, 8])  # the trailing partial block repeats the edge sample
    assert lr[3, 1] == pytest.approx(x[6, 2:4].mean())
    # an edge between HR 31 and 32 falls between LR blocks 15 and 16: a step with no transition
    step = np.zeros((4, 64))
    step[:, 32:] = 1.0
    assert area_downsample(step, 2)[0, 14:18].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert 0.0 < bicubic_downsample(step, 2)[0, 16] < 1.0 or 0.0 < bicubic_downsample(step, 2)[0, 15] < 1.0
    assert np.array_equal(get_degradation("area", 2)(x, 0)[0], lr)


@pytest.mark.parametrize("degradation", [
    RealSRDegradation(2), RealESRGANDegradation(2), RealESRGANDegradation(2, jpeg_range=(30, 95)),
    RicianNoise((0.01, 0.05)), BicubicDegradation(2)])
def test_seeded_draws_are_deterministic_and_replayable(degradation, hr_slice):
    a, pa = degradation(hr_slice, 123)
    b, pb = degradation(hr_slice, 123)
    assert pa == pb
    np.testing.assert_array_equal(a, b)
    # replay from the JSON-serialized parameters
    params = json.loads(json.dumps(pa.to_dict()))
    if isinstance(degradation, RealESRGANDegradation):
        replayed = real_esrgan_degradation(hr_slice, RealESRGANParams.from_dict(params))
    else:
        replayed = degradation.apply(hr_slice, type(pa)(**{k: tuple(v) if isinstance(v, list) else v
                                                         for k, v in params.items()}))
    np.testing.assert_array_equal(replayed, a)


def test_different_seeds_give_different_degradations(hr_slice):
    a, pa = RealESRGANDegradation(2)(hr_slice, 1)
    b, pb = RealESRGANDegradation(2)(hr_slice, 2)
    assert pa != pb and not np.array_equal(a, b)


def test_jpeg_only_when_asked():
    rng = np.random.default_rng(0)
    assert all(r.jpeg_quality is None for r in RealESRGANDegradation(2).draw(rng).rounds)
    assert all(30 <= r.jpeg_quality <= 95 for r in RealESRGANDegradation(2, jpeg_range=(30, 95)).draw(rng).rounds)


def test_realsr_blur_and_noise(hr_slice):
    kernel = anisotropic_gaussian_kernel(2.0, 0.5, 0.3)
    assert kernel.shape == (21, 21) and kernel.sum() == pytest.approx(1.0)
    clean = realsr_degradation(hr_slice, kernel=kernel, scale=2)
    noisy = realsr_degradation(hr_slice, kernel=kernel, scale=2, noise_sigma=0.05, seed=4)
    sharp = bicubic_downsample(hr_slice, 2)
    grad = lambda im: np.abs(np.diff(im, axis=0)).mean() + np.abs(np.diff(im, axis=1)).mean()  # noqa: E731
    assert grad(clean) < grad(sharp)  # blurrier than plain bicubic
    assert 0.02 < np.std(noisy - clean) < 0.06


def test_rician_noise_statistics():
    x = np.zeros((200, 200))
    noisy = rician_noise(x, 0.1, seed=0)
    # magnitude of complex Gaussian noise on a zero signal: Rayleigh with mean sigma * sqrt(pi / 2)
    assert noisy.mean() == pytest.approx(0.1 * np.sqrt(np.pi / 2), rel=0.02)
    np.testing.assert_array_equal(noisy, rician_noise(x, 0.1, seed=0))
    np.testing.assert_array_equal(rician_noise(x, 0.0), x)


@pytest.mark.parametrize("call, message", [
    (lambda x: bicubic_downsample(x, 0), "scale must be an integer >= 1, got 0"),
    (lambda x: bicubic_downsample(x, 1.5), "scale must be an integer >= 1, got 1.5"),
    (lambda x: bicubic_downsample(x, True), "scale must be an integer >= 1, got True"),
    (lambda x: bicubic_downsample(x[0], 2), "image must be a 2D slice or a 3D volume, got 1 dimensions"),
    (lambda x: bicubic_downsample(np.full_like(x, np.nan), 2), "image holds NaN or infinite values"),
    (lambda x: bicubic_downsample(x, 2, axes=(0, 0)), r"axes \(0, 0\) are not distinct valid axes"),
    (lambda x: bicubic_downsample(x, 2, axes=(5,)), r"axes \(5,\) are not distinct valid axes of a 2D image"),
    (lambda x: realsr_degradation(x, kernel=np.ones((3, 3)) / 9, axes=(0,)), "needs exactly 2 axes"),
    (lambda x: realsr_degradation(x, kernel=np.ones((3, 3)) / 9, noise_sigma=-1), "noise_sigma must be a finite number >= 0"),
    (lambda x: rician_noise(x, float("inf")), "sigma must be a finite number >= 0"),
    (lambda x: anisotropic_gaussian_kernel(1, 1, size=4), "kernel size must be a positive odd integer, got 4"),
    (lambda x: anisotropic_gaussian_kernel(0, 1), "sigma_x must be > 0"),
    (lambda x: RealSRDegradation(2, sigma_range=(3, 1)), r"sigma_range must satisfy .* got \(3.0, 1.0\)"),
    (lambda x: RealSRDegradation(2, noise_range=(0, 2)), r"noise_range must satisfy 0.0 <= min <= max <= 1.0"),
    (lambda x: RicianNoise("a"), "sigma_range must be a \\(min, max\\) pair of numbers"),
    (lambda x: RealESRGANDegradation(2, jpeg_range=(0, 50)), "jpeg_range must satisfy 1 <= min"),
    (lambda x: get_degradation("nearest"), "unknown degradation 'nearest'; choose from"),
])
def test_validation_messages(call, message):
    x = np.random.default_rng(0).uniform(size=(16, 16))
    with pytest.raises(ValueError, match=message):
        call(x)


def test_kspace_rician_is_truncation_plus_replayable_noise(hr_slice):
    from ddasr_nipype.degradations import KSpaceRicianDegradation

    deg = KSpaceRicianDegradation(2, sigma_range=(0.02, 0.02))
    out, params = deg(hr_slice, 5)
    clean = kspace_truncation(hr_slice, 2)
    residual = out - clean
    # Rician noise on the bright tissue is close to Gaussian with the drawn sigma
    bright = clean > 0.5
    assert params.sigma == 0.02 and abs(residual[bright].std() - 0.02) < 0.005
    np.testing.assert_array_equal(deg.apply(hr_slice, params), out)
    with pytest.raises(ValueError, match="sigma_range"):
        KSpaceRicianDegradation(2, sigma_range=(0.05, 0.01))


def test_cli_lists_every_degradation():
    import re
    from pathlib import Path

    from ddasr_nipype.bids_app.evaluate import DEGRADATION_NAMES
    from ddasr_nipype.bids_app.train import main as train_cli
    from ddasr_nipype.training.synthesis import CLASSICAL_DEGRADATIONS

    assert sorted(DEGRADATION_NAMES) == sorted(DEGRADATIONS)
    choices = next(p.type.choices for p in train_cli.params if p.name == "degradation")
    assert sorted(choices) == sorted(CLASSICAL_DEGRADATIONS)
    assert set(CLASSICAL_DEGRADATIONS) <= set(DEGRADATIONS)
    # the held-out evaluation script asks only for degradations ddasr-eval knows
    script = (Path(__file__).resolve().parents[1] / "scripts" / "evaluate_starter.sh").read_text()
    asked = re.findall(r"--degradation (\S+)", script)
    assert {"kspace-rician", "area"} <= set(asked) <= set(DEGRADATION_NAMES)


def test_light_modules_list_every_no_reference_metric():
    from ddasr_nipype.bids_app import evaluate
    from ddasr_nipype.interfaces import metrics
    from ddasr_nipype.metrics.volume import NO_REFERENCE_METRICS

    assert evaluate.NO_REFERENCE_METRICS == metrics.NO_REFERENCE_METRICS == NO_REFERENCE_METRICS


def test_the_sinc_probe_restores_exactly_what_kspace_truncation_keeps():
    """scripts/probes/sinc_interpolation.py (a model-card figure): zero-filled k-space interpolation on the
    field-of-view preserving grid is the inverse of k-space truncation for the frequencies it keeps."""
    from _scripts import load_script

    zero_fill = load_script("probes/sinc_interpolation").zero_fill
    rng = np.random.default_rng(0)
    lr = (1.0 + rng.random((21, 25))).astype(np.float32)  # odd sizes: no Nyquist bin to split
    hr = zero_fill(lr)
    assert hr.shape == (42, 50)
    np.testing.assert_allclose(kspace_truncation(hr, 2), lr, atol=1e-5)
    assert hr.mean() == pytest.approx(lr.mean(), rel=1e-5)
    # a half-pixel error in the grid would move a smooth ramp: it must stay centred on the LR samples
    ramp = np.broadcast_to(np.cos(np.linspace(0, np.pi, 21, endpoint=False))[:, None], (21, 25)).astype(np.float32)
    up = zero_fill(ramp)
    np.testing.assert_allclose(up[::2].mean(axis=1)[1:-1] + up[1::2].mean(axis=1)[1:-1],
                               2 * ramp[1:-1, 0], atol=0.05)


def test_kspace_resample_is_the_coarser_acquisition_of_the_same_field_of_view():
    from ddasr_nipype.degradations import kspace_resample, kspace_truncation

    rng = np.random.default_rng(0)
    x = rng.random((20, 30)).astype(np.float32)
    # the integer case is kspace_truncation
    np.testing.assert_allclose(kspace_resample(x, (10, 15)), kspace_truncation(x, 2), rtol=1e-6, atol=1e-7)
    # a band-limited image survives a non-integer crop exactly (up to the magnitude): a cosine that
    # the coarser grid still holds is sampled at the coarser grid's FOV-preserving voxel centres
    n, m, k = 40, 32, 3
    pos = (np.arange(n) + 0.5) / n
    wave = 2.0 + np.cos(2 * np.pi * k * pos)
    out = kspace_resample(wave[None, :], (1, m))[0]
    np.testing.assert_allclose(out, 2.0 + np.cos(2 * np.pi * k * (np.arange(m) + 0.5) / m), atol=1e-6)
    with pytest.raises(ValueError, match="sizes"):
        kspace_resample(x, (25, 10))
    with pytest.raises(ValueError, match="sizes"):
        kspace_resample(x, (10,))


def test_mri_acquisitions_draw_every_mode_and_replay(hr_slice):
    from ddasr_nipype.degradations import MRIAcquisitionDegradation

    deg = MRIAcquisitionDegradation(2)
    rng = np.random.default_rng(0)
    draws = [deg.draw(rng) for _ in range(200)]
    modes = [d.mode for d in draws]
    assert {"kspace", "area", "blur", "bicubic"} == set(modes)
    assert 0.4 < modes.count("kspace") / 200 < 0.6
    kspace = [d for d in draws if d.mode == "kspace"]
    assert any(d.partial_fourier < 1 for d in kspace) and any(d.alpha > 0 for d in kspace)
    assert any(d.cutoff < 1 for d in kspace) and any(d.alpha == 0 and d.cutoff == 1 for d in kspace)
    for params in draws[:8]:  # replayed from its parameters alone
        again = deg.apply(hr_slice, type(params)(**params.to_dict()))
        np.testing.assert_array_equal(deg.apply(hr_slice, params), again)
    bright = hr_slice * 1.4  # not clipped at 1: a bright voxel stays bright
    assert max(deg.apply(bright, d).max() for d in draws[:8]) > 1.05
    with pytest.raises(ValueError, match="at most 1"):
        MRIAcquisitionDegradation(2, p_kspace=0.8, p_area=0.3)


def test_kspace_acquisition_windows_reduce_resolution_and_partial_fourier_blurs_one_axis(hr_slice):
    from ddasr_nipype.degradations import kspace_acquisition, tukey_window

    np.testing.assert_allclose(kspace_acquisition(hr_slice, 2), kspace_truncation(hr_slice, 2), atol=1e-12)
    w = tukey_window(16, 0.5)
    assert w[0] == 1 and w.max() == 1 and w.min() >= 0 and w[8] == 0  # DC kept, band edge zero
    np.testing.assert_array_equal(tukey_window(16, 0.0), np.ones(16))
    assert tukey_window(16, 0.0, cutoff=0.5)[5] == 0 and tukey_window(16, 0.0, cutoff=0.5)[4] == 1

    def detail(img, axis):
        return float(np.abs(np.diff(img, axis=axis)).mean())

    plain = kspace_acquisition(hr_slice, 2)
    windowed = kspace_acquisition(hr_slice, 2, alpha=0.8)
    coarse = kspace_acquisition(hr_slice, 2, cutoff=0.7)
    for axis in (0, 1):
        assert detail(windowed, axis) < 0.95 * detail(plain, axis)
        assert detail(coarse, axis) < 0.95 * detail(plain, axis)
    partial = kspace_acquisition(hr_slice, 2, partial_fourier=0.6, partial_axis=1)
    # zero-filled partial Fourier blurs most along its axis (the magnitude blurs the other a little too)
    loss = [1 - detail(partial, axis) / detail(plain, axis) for axis in (0, 1)]
    assert loss[1] > 0.05 and loss[1] > loss[0]
    other = kspace_acquisition(hr_slice, 2, partial_fourier=0.6, partial_axis=0)
    assert 1 - detail(other, 0) / detail(plain, 0) > 1 - detail(other, 1) / detail(plain, 1)
    assert abs(partial.mean() - plain.mean()) < 0.02
    with pytest.raises(ValueError, match="partial_fourier"):
        kspace_acquisition(hr_slice, 2, partial_fourier=0.3)


def test_consistency_projection_makes_the_output_agree_with_the_acquisition(hr_slice):
    from ddasr_nipype.degradations import area_downsample_unclipped, consistency_projection

    hr = hr_slice[:64, :60]
    up = bicubic_upsample
    lr_area = area_downsample_unclipped(hr, 2)
    guess = up(lr_area, 2) + 0.05 * np.random.default_rng(0).normal(size=hr.shape)
    projected = consistency_projection(guess, lr_area, 2, model="area")
    np.testing.assert_allclose(area_downsample_unclipped(projected, 2), lr_area, atol=1e-12)
    np.testing.assert_allclose(consistency_projection(hr, lr_area, 2, model="area"), hr, atol=1e-12)
    half = consistency_projection(guess, lr_area, 2, model="area", weight=0.5)
    np.testing.assert_allclose(half, (guess + projected) / 2, atol=1e-12)
    np.testing.assert_array_equal(consistency_projection(guess, lr_area, 2, weight=0), guess)
    # k-space: the truncation of the HR projects onto (almost exactly) the HR, and a projected
    # interpolation is closer to the HR than the interpolation was
    lr_k = kspace_truncation(hr, 2)
    assert np.abs(consistency_projection(hr, lr_k, 2) - hr).mean() < 0.01
    blurry = up(lr_k, 2)
    fixed = consistency_projection(blurry, lr_k, 2)
    assert np.abs(fixed - hr).mean() < np.abs(blurry - hr).mean()
    assert np.abs(kspace_truncation(fixed, 2) - lr_k).mean() < 0.003
    with pytest.raises(ValueError, match="up-sampled x2"):
        consistency_projection(hr[:, :58], lr_k, 2)
    with pytest.raises(ValueError, match="model must be one of"):
        consistency_projection(hr, lr_k, 2, model="sinc")
