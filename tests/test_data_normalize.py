"""Percentile intensity normalization (ddasr_nipype.data.normalize)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ddasr_nipype.data import io
from ddasr_nipype.data.normalize import IntensityNormalization, fit_normalization
from ddasr_nipype.errors import InvalidImageError


def test_fit_on_real_volume(hr_files):
    data = io.load_volume(hr_files["trio"]).get_fdata(dtype=np.float32)
    norm = fit_normalization(data)
    fg = data[data > 0]
    assert norm.low == pytest.approx(np.percentile(fg, 0.5))
    assert norm.high == pytest.approx(np.percentile(fg, 99.5))
    y = norm.apply(data)
    assert y.dtype == np.float32 and y.shape == data.shape
    # the background of zeros lands on the floor (the image of intensity 0) and comes back as 0
    assert y.min() == pytest.approx(norm.floor) and norm.floor < 0 and y.max() <= 1.5
    assert (norm.invert(y)[data == 0] == pytest.approx(0.0, abs=1e-3))
    # 99% of the foreground lies in [0, 1] by construction
    inside = ((y[data > 0] >= norm.floor) & (y[data > 0] <= 1)).mean()
    assert 0.985 <= inside <= 1.0


def test_invert_apply_round_trip():
    rng = np.random.default_rng(0)
    x = rng.gamma(4.0, 100.0, size=(20, 30, 40)).astype(np.float32)
    norm = fit_normalization(x)
    upper = norm.low + norm.clip_max * (norm.high - norm.low)
    inside = x <= upper  # gamma samples are > 0, above the floor (intensity 0)
    assert inside.mean() > 0.95
    back = norm.invert(norm.apply(x))
    np.testing.assert_allclose(back[inside], x[inside], rtol=1e-5, atol=1e-3)
    # voxels below the floor come back as 0, bright ones at the upper bound
    np.testing.assert_allclose(norm.invert(norm.apply(np.float32([-5.0]))), 0.0, atol=1e-3)
    np.testing.assert_allclose(back[x > upper], upper, rtol=1e-5)


def test_no_clipping_is_exactly_linear():
    x = np.linspace(-50, 500, 1000, dtype=np.float32)
    norm = fit_normalization(x, clip_max=None)
    y = norm.apply(x)
    assert y.min() < 0 and y.max() > 1
    np.testing.assert_allclose(norm.invert(y), x, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(norm.apply(np.array([norm.low, norm.high])), [0.0, 1.0], atol=1e-6)


def test_mask_selects_foreground():
    data = np.zeros((10, 10, 10), dtype=np.float32)
    data[:5] = 100.0
    data[5:] = np.linspace(200, 300, 500).reshape(5, 10, 10)
    mask = np.zeros_like(data)
    mask[5:] = 1
    norm = fit_normalization(data, mask=mask, percentiles=(0, 100))
    assert (norm.low, norm.high) == (200.0, 300.0)
    unmasked = fit_normalization(data, percentiles=(0, 100))
    assert unmasked.low == 100.0
    with pytest.raises(ValueError, match="mask shape"):
        fit_normalization(data, mask=mask[:5])


def test_torch_tensors():
    torch = pytest.importorskip("torch")
    x = torch.linspace(1, 100, 1000)
    norm = fit_normalization(x)
    y = norm.apply(x)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    np.testing.assert_allclose(y.numpy(), norm.apply(x.numpy()), atol=1e-6)
    assert torch.allclose(norm.invert(y)[10:-10], x[10:-10], atol=1e-3)
    assert norm.apply(torch.arange(5)).dtype == torch.float32


def test_dict_round_trip():
    norm = IntensityNormalization(low=3.5, high=812.25, percentiles=(1, 99), clip_max=None)
    d = json.loads(json.dumps(norm.to_dict()))
    assert IntensityNormalization.from_dict(d) == norm
    with pytest.raises(ValueError, match="unknown IntensityNormalization keys"):
        IntensityNormalization.from_dict({**d, "gamma": 2})


def test_frozen():
    norm = IntensityNormalization(low=0.0, high=1.0)
    with pytest.raises(AttributeError):
        norm.low = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "data,pattern",
    [
        (np.zeros((8, 8, 8)), r"no foreground voxel with value > 0"),
        (np.full((8, 8, 8), 5.0), r"percentiles of the 512 foreground voxels .* are equal \(5\)"),
    ],
)
def test_degenerate_raises(data, pattern):
    with pytest.raises(InvalidImageError, match=pattern) as ei:
        fit_normalization(data, path="sub-01_T1w.nii.gz")
    assert str(ei.value).startswith("sub-01_T1w.nii.gz: ")


def test_invalid_arguments():
    with pytest.raises(ValueError, match="p_low < p_high"):
        fit_normalization(np.arange(10.0), percentiles=(99, 1))
    with pytest.raises(ValueError, match="low < high"):
        IntensityNormalization(low=2.0, high=2.0)
    with pytest.raises(ValueError, match="clip_max"):
        IntensityNormalization(low=0.0, high=1.0, clip_max=0)


def test_head_normalization_probe_takes_the_percentiles_over_the_head(monkeypatch):
    """scripts/probes/head_normalization.py (a model-card figure): with a noisy background, the
    percentiles over the voxels above 0 read a lower 99.5th percentile than over the head alone."""
    from _scripts import load_script

    import ddasr_nipype.data.normalize as normalize

    rng = np.random.default_rng(0)
    vol = np.abs(rng.normal(0.0, 0.05, (40, 40, 40)))  # Rician-like background
    vol[10:30, 10:30, 10:30] += rng.uniform(0.3, 1.0, (20, 20, 20))  # the "head"
    before = normalize.fit_normalization(vol)
    before_patch = normalize.fit_normalization
    monkeypatch.setattr(normalize, "fit_normalization", before_patch)  # restored after the test
    load_script("probes/head_normalization").use_head_mask()
    after = normalize.fit_normalization(vol)
    head = np.zeros(vol.shape, bool)
    head[10:30, 10:30, 10:30] = True
    assert after.high == pytest.approx(np.percentile(vol[head], 99.5), rel=0.02)
    assert after.low > before.low and after.high > before.high
    with pytest.raises(Exception, match="foreground"):  # an explicit mask is still honoured
        normalize.fit_normalization(vol, mask=np.zeros(vol.shape))
    # zero_low: intensity 0 maps to 0, the head's 99.5th percentile to 1
    monkeypatch.setattr(normalize, "fit_normalization", before_patch)
    load_script("probes/head_normalization").use_head_mask(zero_low=True)
    zero = normalize.fit_normalization(vol)
    assert zero.low == 0.0 and zero.high == after.high
