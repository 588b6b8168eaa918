"""NIQE, the Natural Image Quality Evaluator, as in the original MATLAB release.

Mittal, Soundararajan and Bovik, "Making a 'Completely Blind' Image Quality Analyzer",
IEEE Signal Processing Letters 20(3), 2013. The pristine multivariate Gaussian model
(``resources/niqe/niqe_pris_params.npz``) is the MATLAB model's parameters as distributed with
BasicSR 1.4.2 (Apache-2.0, see the NOTICE file beside it).

Steps, as in ``niqe.m`` / ``computequality.m``: crop the image to whole 96x96 blocks; at two
scales (the second one made by MATLAB's bicubic ``imresize(im, 0.5)`` with anti-aliasing)
compute mean-subtracted contrast-normalized coefficients with a 7x7 Gaussian window and
replicate padding; per block, fit an asymmetric generalized Gaussian to the coefficients and to
their products with the four neighbours (18 features per scale); fit a Gaussian to the block
features and return its distance to the pristine model. Lower is better.

The input is a grayscale image on the 8-bit scale ``[0, 255]`` (float). Use
:func:`rgb2gray_matlab` for colour images and :func:`to_8bit` for MR slices in ``[0, 1]``.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
from scipy.ndimage import correlate, maximum_filter, minimum_filter
from scipy.special import gamma

from .imresize import imresize

__all__ = ["niqe", "niqe_features", "load_pristine_params", "rgb2gray_matlab", "to_8bit"]

#: MATLAB ``rgb2gray`` weights (from ``rgb2ntsc``).
RGB2GRAY_WEIGHTS = (0.298936021293775, 0.587043074451121, 0.114020904255103)

_GAM = np.arange(0.2, 10.001, 0.001)
_R_GAM = gamma(2 / _GAM) ** 2 / (gamma(1 / _GAM) * gamma(3 / _GAM))


def rgb2gray_matlab(rgb: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2gray`` of an 8-bit RGB image: weighted sum rounded half away from zero."""
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {rgb.shape}")
    gray = rgb[..., :3] @ np.asarray(RGB2GRAY_WEIGHTS)
    return np.floor(gray + 0.5)


def to_8bit(image01: np.ndarray) -> np.ndarray:
    """Map an MR slice with intensities in ``[0, 1]`` to the 8-bit scale the NIQE/BRISQUE models expect.

    Values are clipped to ``[0, 1]``, multiplied by 255 and rounded to integers (as a ``uint8``
    image would be), returned as float64.
    """
    return np.floor(np.clip(np.asarray(image01, dtype=np.float64), 0.0, 1.0) * 255.0 + 0.5)


@lru_cache(maxsize=1)
def load_pristine_params() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(mu_pris (36,), cov_pris (36, 36), gaussian_window (7, 7))`` shipped with the package."""
    ref = resources.files("ddasr_nipype") / "resources" / "niqe" / "niqe_pris_params.npz"
    with resources.as_file(ref) as path, np.load(path) as params:
        mu = np.asarray(params["mu_pris_param"], dtype=np.float64).ravel()
        cov = np.asarray(params["cov_pris_param"], dtype=np.float64)
        window = np.asarray(params["gaussian_window"], dtype=np.float64)
    return mu, cov, window


def estimate_aggd(values: np.ndarray) -> tuple[float, float, float]:
    """Fit an asymmetric generalized Gaussian: ``(alpha, left_std, right_std)`` by MATLAB's grid search.

    Returns NaNs when one side of the distribution is empty (e.g. a constant block).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    neg, pos = v[v < 0], v[v > 0]
    if neg.size == 0 or pos.size == 0:
        return np.nan, np.nan, np.nan
    left_std = np.sqrt(np.mean(neg**2))
    right_std = np.sqrt(np.mean(pos**2))
    gamma_hat = left_std / right_std
    r_hat = np.mean(np.abs(v)) ** 2 / np.mean(v**2)
    r_hat_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    alpha = _GAM[np.argmin((_R_GAM - r_hat_norm) ** 2)]
    return float(alpha), float(left_std), float(right_std)


def _aggd_betas(alpha: float, left_std: float, right_std: float) -> tuple[float, float]:
    factor = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
    return left_std * factor, right_std * factor


def _block_features(block: np.ndarray) -> list[float]:
    """The 18 NIQE features of one block of MSCN coefficients (``computefeature.m``)."""
    alpha, lstd, rstd = estimate_aggd(block)
    if np.isnan(alpha):
        return [np.nan] * 18
    beta_l, beta_r = _aggd_betas(alpha, lstd, rstd)
    feats = [alpha, (beta_l + beta_r) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        pair = block * np.roll(block, shift, axis=(0, 1))
        alpha, lstd, rstd = estimate_aggd(pair)
        if np.isnan(alpha):
            return [np.nan] * 18
        beta_l, beta_r = _aggd_betas(alpha, lstd, rstd)
        mean = (beta_r - beta_l) * gamma(2 / alpha) / gamma(1 / alpha)
        feats.extend([alpha, mean, beta_l, beta_r])
    return feats


def mscn(image: np.ndarray, window: np.ndarray, *, mode: str = "nearest", c: float = 1.0) -> np.ndarray:
    """Mean-subtracted contrast-normalized coefficients ``(I - mu) / (sigma + c)``.

    Where the window covers a constant neighbourhood the local mean and variance are set to their
    exact values (the pixel value and 0). Floating-point filtering otherwise leaves round-off
    noise of about 1e-14 there, whose signs drive the AGGD fits of flat blocks and can move NIQE
    by several tenths (0.4 on the calibration image I19); MATLAB's result is the exact one.
    """
    image = np.asarray(image, dtype=np.float64)
    mu = correlate(image, window, mode=mode, cval=0.0)
    var = correlate(image * image, window, mode=mode, cval=0.0) - mu * mu
    pad = [(k // 2, k - 1 - k // 2) for k in window.shape]
    padded = np.pad(image, pad, mode={"nearest": "edge", "constant": "constant"}[mode])
    inner = tuple(slice(lo, lo + n) for (lo, _), n in zip(pad, image.shape))
    spread = (maximum_filter(padded, size=window.shape) - minimum_filter(padded, size=window.shape))[inner]
    flat = spread <= 1e-9 * max(1.0, float(np.max(np.abs(image), initial=0.0)))
    mu[flat] = image[flat]
    var[flat] = 0.0
    return (image - mu) / (np.sqrt(np.abs(var)) + c)


def niqe_features(image: np.ndarray, *, block_size: int = 96) -> np.ndarray:
    """Per-block features ``(n_blocks, 36)`` of a grayscale ``[0, 255]`` image at two scales."""
    _, _, window = load_pristine_params()
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"NIQE needs a 2D grayscale image, got shape {img.shape}")
    n_h, n_w = img.shape[0] // block_size, img.shape[1] // block_size
    if n_h == 0 or n_w == 0:
        raise ValueError(
            f"image of shape {img.shape} holds no whole {block_size}x{block_size} block"
        )
    img = img[: n_h * block_size, : n_w * block_size]
    per_scale = []
    for scale in (1, 2):
        coeffs = mscn(img, window)
        size = block_size // scale
        feats = [
            _block_features(coeffs[i * size : (i + 1) * size, j * size : (j + 1) * size])
            for j in range(n_w)
            for i in range(n_h)
        ]
        per_scale.append(np.asarray(feats, dtype=np.float64))
        if scale == 1:
            img = imresize(img / 255.0, 0.5, kernel="bicubic", antialias=True) * 255.0
    return np.concatenate(per_scale, axis=1)


def niqe(image: np.ndarray, *, block_size: int = 96, crop_border: int = 0) -> float:
    """NIQE of a 2D grayscale image on the 8-bit scale ``[0, 255]`` (lower is better).

    ``crop_border`` pixels are removed at each edge first. Blocks whose coefficients cannot be
    fitted (constant blocks, e.g. pure background) are left out, as MATLAB's ``nanmean``/``nancov``
    do; with fewer than two usable blocks the distorted covariance is taken as zero (the distance
    then uses the pristine covariance alone). Returns NaN if no block is usable.
    """
    img = np.asarray(image, dtype=np.float64)
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
    feats = niqe_features(img, block_size=block_size)
    complete = feats[~np.isnan(feats).any(axis=1)]
    if complete.shape[0] == 0:
        return float("nan")
    mu_pris, cov_pris, _ = load_pristine_params()
    mu_dist = np.nanmean(feats, axis=0)
    cov_dist = np.cov(complete, rowvar=False) if complete.shape[0] > 1 else np.zeros_like(cov_pris)
    diff = mu_pris - mu_dist
    quality = diff @ np.linalg.pinv((cov_pris + cov_dist) / 2) @ diff
    return float(np.sqrt(quality))
