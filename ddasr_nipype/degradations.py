"""Explicit degradation models: the LR synthesis baselines the DSN is compared with (paper Table II).

Every degradation is a deterministic function of the image and explicit parameters, plus a
seeded random twin (TorchIO style): a :class:`Degradation` subclass whose ``draw(rng)`` returns a
frozen parameter dataclass and whose ``apply(x, params)`` calls the deterministic function, so any
degradation is replayed from its parameters (``params.to_dict()`` is JSON-serializable).

Conventions shared by all functions:

- ``x`` is a float numpy array with intensities in ``[0, 1]``: a 2D slice or a 3D volume.
- ``axes`` are the axes that are degraded (default ``(-2, -1)``: the image itself for a 2D slice,
  the in-plane axes of sagittal slices for a RAS volume). The blur-kernel degradations need
  exactly two axes (a 2D kernel is applied to every plane spanned by them).
- ``scale`` is an integer factor ``s >= 1``; the LR grid has ``ceil(n / s)`` samples along each
  degraded axis (the DSN's rule) and keeps the field of view: LR sample ``i`` sits at HR index
  ``(i + 0.5) * s - 0.5`` (``ddasr_nipype.data.slicing.upsampled_affine``'s convention seen from
  the other side). :func:`bicubic_upsample` maps back onto the same HR grid.
- Outputs are float64 and clipped to ``[0, 1]`` except where noted (k-space truncation and noise
  keep their values; a magnitude image is non-negative anyway).

Degradations (names for :func:`get_degradation`):

- ``bicubic``: MATLAB-style bicubic down-sampling with anti-aliasing (:func:`bicubic_downsample`).
- ``kspace``: central k-space crop, the ESRGAN row of the paper's Table II (:func:`kspace_truncation`).
- ``area``: the mean of each ``scale x scale`` block (:func:`area_downsample`): partial-volume
  averaging over a larger voxel, a sharper LR than bicubic's anti-aliased one, with aliasing.
- ``realsr``: blur kernel, bicubic sampling, noise injection in the RealSR style (Ji et al., CVPRW
  2020; an anisotropic Gaussian kernel stands in for the KernelGAN estimates) (:func:`realsr_degradation`).
- ``realesrgan``: the Real-ESRGAN high-order model (Wang et al., ICCVW 2021): two rounds of blur,
  random resize and noise, then a resize to the LR grid; JPEG compression only when asked
  (``jpeg_range``), never by default for MRI; the final sinc filter is not used
  (:func:`real_esrgan_degradation`).
- ``rician``: Rician (magnitude MR) noise on the same grid (:func:`rician_noise`).
- ``mri``: a random acquisition of the same field of view at a lower resolution
  (:class:`MRIAcquisitionDegradation`): k-space truncation with a random apodization window, a
  resolution a little below the grid's and partial Fourier, or block averaging, blur or bicubic
  down-sampling. No noise (training adds noise to each crop, ``srn.lr_noise``); not clipped at 1.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from .metrics.imresize import KERNELS, imresize

__all__ = [
    "DEGRADATIONS",
    "Degradation",
    "BicubicDegradation",
    "KSpaceDegradation",
    "AreaDegradation",
    "KSpaceRicianDegradation",
    "MRIAcquisitionDegradation",
    "MRIAcquisitionParams",
    "RealSRDegradation",
    "RealESRGANDegradation",
    "RicianNoise",
    "RealSRParams",
    "RealESRGANParams",
    "RoundParams",
    "bicubic_downsample",
    "area_downsample",
    "area_downsample_unclipped",
    "bicubic_upsample",
    "bicubic_upsample_volume",
    "kspace_truncation",
    "kspace_resample",
    "kspace_acquisition",
    "tukey_window",
    "consistency_projection",
    "kspace_band",
    "PROJECTIONS",
    "anisotropic_gaussian_kernel",
    "blur",
    "realsr_degradation",
    "real_esrgan_degradation",
    "rician_noise",
    "lr_shape",
    "get_degradation",
]


# --------------------------------------------------------------------------------------------
# Argument validation, in one place


def _check_image(x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim not in (2, 3):
        raise ValueError(f"image must be a 2D slice or a 3D volume, got {arr.ndim} dimensions")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"image must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("image holds NaN or infinite values")
    return arr


def _check_scale(scale: Any) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    return int(scale)


def _check_axes(x: np.ndarray, axes: Any, *, exactly: int | None = None) -> tuple[int, ...]:
    try:
        raw = [int(a) for a in axes]
    except (TypeError, ValueError):
        raise ValueError(f"axes must be a sequence of integers, got {axes!r}") from None
    if not raw or any(not -x.ndim <= a < x.ndim for a in raw) or len({a % x.ndim for a in raw}) != len(raw):
        raise ValueError(f"axes {tuple(axes)} are not distinct valid axes of a {x.ndim}D image")
    normalized = tuple(a % x.ndim for a in raw)
    if exactly is not None and len(normalized) != exactly:
        raise ValueError(f"this degradation needs exactly {exactly} axes, got {tuple(axes)}")
    return normalized


def _check_nonnegative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_positive(name: str, value: Any) -> float:
    value = _check_nonnegative(name, value)
    if value == 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def _check_range(name: str, bounds: Any, *, low: float = 0.0, high: float = math.inf) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (min, max) pair of numbers, got {bounds!r}") from None
    if not (low <= a <= b <= high):
        raise ValueError(f"{name} must satisfy {low} <= min <= max <= {high}, got ({a}, {b})")
    return a, b


def _check_probability(name: str, value: Any) -> float:
    value = _check_nonnegative(name, value)
    if value > 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return value


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Deterministic functions


def lr_shape(shape: tuple[int, ...], scale: int, axes: tuple[int, ...] = (-2, -1)) -> tuple[int, ...]:
    """The LR grid: ``ceil(n / scale)`` along the degraded ``axes``, unchanged elsewhere."""
    scale = _check_scale(scale)
    axes = tuple(a % len(shape) for a in axes)
    return tuple(math.ceil(n / scale) if i in axes else n for i, n in enumerate(shape))


def bicubic_downsample(x: np.ndarray, scale: int = 2, *, axes: tuple[int, ...] = (-2, -1)) -> np.ndarray:
    """MATLAB ``imresize(x, 1/scale)`` (bicubic, anti-aliased) along ``axes``, clipped to ``[0, 1]``."""
    x = _check_image(x)
    scale = _check_scale(scale)
    axes = _check_axes(x, axes)
    out = imresize(x, out_shape=[math.ceil(x.shape[a] / scale) for a in axes], axes=axes,
                   kernel="bicubic", antialias=True) if scale > 1 else x.copy()
    return np.clip(out, 0.0, 1.0)


def bicubic_upsample(x: np.ndarray, scale: int = 2, *, axes: tuple[int, ...] = (-2, -1),
                     out_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Bicubic up-sampling by ``scale`` along ``axes`` on the field-of-view preserving grid.

    New sample ``i'`` sits at old index ``(i' + 0.5) / scale - 0.5`` (Keys cubic, a = -0.5,
    symmetric edges). ``out_shape`` (one length per axis) crops the ``n * scale`` result, e.g. to
    an HR grid whose size is not a multiple of ``scale``. Not clipped (cubic overshoot is kept).
    """
    x = _check_image(x)
    scale = _check_scale(scale)
    axes = _check_axes(x, axes)
    out = imresize(x, out_shape=[x.shape[a] * scale for a in axes], axes=axes, kernel="bicubic",
                   antialias=False)
    if out_shape is not None:
        if len(out_shape) != len(axes) or any(o > x.shape[a] * scale for o, a in zip(out_shape, axes)):
            raise ValueError(f"out_shape {out_shape} must give, per axis, at most scale * the input length")
        index = [slice(None)] * out.ndim
        for o, a in zip(out_shape, axes):
            index[a] = slice(0, int(o))
        out = out[tuple(index)]
    return out


def bicubic_upsample_volume(data: np.ndarray, factors: tuple[int, int, int], *,
                            region: tuple[slice, slice, slice] | None = None) -> np.ndarray:
    """Bicubic up-sampling of a 3D volume by integer ``factors`` per axis (1 = unchanged).

    The output grid is the one of ``ddasr_nipype.data.slicing.upsampled_affine(affine, factors)``,
    so the bicubic baseline and an SR output live on identical grids. ``region`` (three slices with
    step 1 on the output grid) returns only that box of the output, the same values, computed from the
    input voxels it needs (the cubic kernel's reach and the mirrored edges included).
    """
    data = _check_image(data)
    if data.ndim != 3 or len(factors) != 3:
        raise ValueError(f"need a 3D volume and three factors, got {data.shape} and {factors}")
    if region is not None:
        return _bicubic_region(data, tuple(_check_scale(f) for f in factors), region)
    out = data
    for axis, factor in enumerate(factors):
        factor = _check_scale(factor)
        if factor > 1:
            out = bicubic_upsample(out, factor, axes=(axis,))
    return out


def _bicubic_region(data: np.ndarray, factors: tuple[int, ...], region) -> np.ndarray:
    """:func:`bicubic_upsample_volume` of ``data`` restricted to ``region`` on the output grid."""
    if len(region) != 3:
        raise ValueError(f"region needs one slice per axis, got {region!r}")
    source, keep = [], []
    for axis, (box, factor) in enumerate(zip(region, factors)):
        start, stop, step = box.indices(data.shape[axis] * factor)
        if step != 1 or stop <= start:
            raise ValueError(f"region {box!r} must be a non-empty slice with step 1 on axis {axis}")
        # output sample i sits at input index (i + 0.5) / f - 0.5; with 3 more input samples on each
        # side the kernel never reaches the sub-volume's mirrored edge (unless it is the volume's own)
        first = max(int(np.floor((start + 0.5) / factor - 0.5)) - 3, 0)
        last = min(int(np.ceil((stop - 0.5) / factor - 0.5)) + 4, data.shape[axis])
        source.append(slice(first, last))
        keep.append(slice(start - first * factor, stop - first * factor))
    out = data[tuple(source)]
    for axis, factor in enumerate(factors):
        if factor > 1:
            out = bicubic_upsample(out, factor, axes=(axis,))
    return out[tuple(keep)]


def area_downsample(x: np.ndarray, scale: int = 2, *, axes: tuple[int, ...] = (-2, -1)) -> np.ndarray:
    """The mean of each block of ``scale`` samples along every one of ``axes`` (box filter, then
    decimation): LR sample ``i`` averages HR samples ``i * scale ... (i + 1) * scale - 1``, so it sits
    at ``(i + 0.5) * scale - 0.5`` like the other degradations. A trailing partial block (a length
    that is not a multiple of ``scale``) is completed by repeating the edge sample; there, unlike
    ``bicubic`` and ``kspace`` (which spread ``ceil(n / scale)`` samples over the field of view), the
    LR grid is the padded one. Evaluations crop such lengths first
    (:func:`ddasr_nipype.evaluation.crop_to_scale`). Clipped to [0, 1].
    """
    return np.clip(area_downsample_unclipped(x, scale, axes=axes), 0.0, 1.0)


def area_downsample_unclipped(x: np.ndarray, scale: int = 2, *, axes: tuple[int, ...] = (-2, -1)) -> np.ndarray:
    """:func:`area_downsample` without the clipping to [0, 1]."""
    x = _check_image(x)
    scale = _check_scale(scale)
    axes = _check_axes(x, axes)
    out = x
    for axis in axes:
        n = out.shape[axis]
        m = math.ceil(n / scale)
        if m * scale != n:
            pad = [(0, 0)] * out.ndim
            pad[axis] = (0, m * scale - n)
            out = np.pad(out, pad, mode="edge")
        shape = out.shape[:axis] + (m, scale) + out.shape[axis + 1:]
        out = out.reshape(shape).mean(axis=axis + 1)
    return out


def kspace_truncation(x: np.ndarray, scale: int = 2, *, axes: tuple[int, ...] = (-2, -1)) -> np.ndarray:
    """Keep the central ``ceil(n / scale)`` frequencies along ``axes``; return the magnitude image.

    This is how an MR scanner acquires a lower resolution (ESRGAN-style k-space down-sampling).
    Before cropping, the spectrum is phase-shifted by ``(n / m - 1) / 2`` samples so that the LR
    samples land on the field-of-view preserving grid; the result is scaled by ``m / n`` per axis
    to keep the intensities. Gibbs ringing is the expected artefact.
    """
    x = _check_image(x)
    scale = _check_scale(scale)
    axes = _check_axes(x, axes)
    if scale == 1:
        return x.copy()
    return kspace_resample(x, [math.ceil(x.shape[a] / scale) for a in axes], axes=axes)


def kspace_resample(x: np.ndarray, sizes, *, axes: tuple[int, ...] = (-2, -1)) -> np.ndarray:
    """Keep the central ``m`` frequencies along each of ``axes`` (``sizes``: one ``m <= n`` per axis).

    The magnitude image of a scan of the same field of view with ``m`` samples (voxels ``n / m``
    times larger), on the field-of-view preserving grid; :func:`kspace_truncation` is the integer
    case ``m = ceil(n / scale)``.
    """
    x = _check_image(x)
    axes = _check_axes(x, axes)
    sizes = [int(m) for m in sizes]
    if len(sizes) != len(axes) or any(not 1 <= m <= x.shape[a] for m, a in zip(sizes, axes)):
        raise ValueError(f"sizes {sizes} must give one size in 1..n for each of the axes {axes} of {x.shape}")
    return np.abs(np.fft.ifftn(_cropped_spectrum(x, sizes, axes), axes=axes))


def _cropped_spectrum(x: np.ndarray, sizes, axes: tuple[int, ...]) -> np.ndarray:
    """The central ``m`` frequencies of ``x`` along each of ``axes`` (FFT order), phase-shifted onto the
    field-of-view preserving grid and scaled by ``m / n`` to keep the intensities."""
    spectrum = np.fft.fftn(x, axes=axes)
    for axis, m in zip(axes, sizes):
        n = x.shape[axis]
        shift = 0.5 * n / m - 0.5
        freqs = np.fft.fftfreq(n)  # cycles per sample
        ramp = np.exp(2j * np.pi * freqs * shift).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
        spectrum = spectrum * ramp
        centred = np.fft.fftshift(spectrum, axes=axis)
        start = n // 2 - m // 2
        centred = np.take(centred, np.arange(start, start + m), axis=axis)
        spectrum = np.fft.ifftshift(centred, axes=axis) * (m / n)
    return spectrum


def tukey_window(m: int, alpha: float, cutoff: float = 1.0) -> np.ndarray:
    """Apodization of ``m`` k-space samples in FFT order (DC first), as MR reconstructions filter.

    ``u = |k| / (m / 2)`` is the frequency relative to the band edge; samples with ``u > cutoff`` are
    zero (a resolution ``1 / cutoff`` times coarser than the grid, zero-filled as scanners interpolate);
    within the cutoff, the window is 1 up to ``(1 - alpha) * cutoff`` and falls as a raised cosine to 0
    at the cutoff (``alpha = 0``: rectangular, a plain truncation; ``alpha = 1``: Hann).
    """
    alpha = float(alpha)
    cutoff = float(cutoff)
    if not 0.0 <= alpha <= 1.0 or not 0.0 < cutoff <= 1.0:
        raise ValueError(f"need 0 <= alpha <= 1 and 0 < cutoff <= 1, got alpha={alpha}, cutoff={cutoff}")
    u = np.abs(np.fft.fftfreq(m) * m) / (m / 2.0)
    w = (u <= cutoff + 1e-9).astype(np.float64)
    if alpha > 0:
        start = (1.0 - alpha) * cutoff
        taper = (u > start) & (u <= cutoff + 1e-9)
        w[taper] = 0.5 * (1.0 + np.cos(np.pi * (u[taper] - start) / (alpha * cutoff)))
    return w


def kspace_acquisition(x: np.ndarray, scale: int = 2, *, axes: tuple[int, ...] = (-2, -1),
                       alpha: float = 0.0, cutoff: float = 1.0, partial_fourier: float = 1.0,
                       partial_axis: int = 0) -> np.ndarray:
    """A lower-resolution MR acquisition of the field of view: :func:`kspace_truncation` to the LR grid,
    then the apodization :func:`tukey_window` ``(alpha, cutoff)`` along every axis, and partial Fourier
    along ``axes[partial_axis]``: only ``partial_fourier`` (0.5-1) of the LR k-space lines are acquired,
    the missing ones on one side of the centre zero-filled. Returns the magnitude image (zero-filled
    partial Fourier blurs along that axis; nothing is clipped).
    """
    x = _check_image(x)
    scale = _check_scale(scale)
    axes = _check_axes(x, axes)
    if not 0.5 <= float(partial_fourier) <= 1.0:
        raise ValueError(f"partial_fourier must be in [0.5, 1], got {partial_fourier!r}")
    if not 0 <= int(partial_axis) < len(axes):
        raise ValueError(f"partial_axis must index one of the {len(axes)} axes, got {partial_axis!r}")
    sizes = [math.ceil(x.shape[a] / scale) for a in axes]
    spectrum = _cropped_spectrum(x, sizes, axes)
    for axis, m in zip(axes, sizes):
        spectrum = spectrum * tukey_window(m, alpha, cutoff).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    if partial_fourier < 1.0:
        axis, m = axes[int(partial_axis)], sizes[int(partial_axis)]
        k = np.fft.fftfreq(m) * m  # signed line index, DC = 0
        keep = (k >= -(float(partial_fourier) - 0.5) * m - 1e-9).astype(np.float64)
        spectrum = spectrum * keep.reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return np.abs(np.fft.ifftn(spectrum, axes=axes))


#: physics models of :func:`consistency_projection`
PROJECTIONS = ("kspace", "area")


def consistency_projection(x: np.ndarray, lr: np.ndarray, scale: int = 2, *, axes: tuple[int, ...] = (-2, -1),
                           model: str = "kspace", weight: float = 1.0) -> np.ndarray:
    """Make an up-sampled image ``x`` agree with the acquired ``lr`` under a physics model of the
    down-sampling: ``x + weight * U(lr - D(x))`` with ``D(U(r)) = r``, so ``weight = 1`` gives
    ``D(x') = lr`` exactly (a projection onto the images the acquisition allows) and changes nothing
    that the acquisition cannot see.

    ``model="kspace"``: ``D`` keeps the central ``m`` frequencies (:func:`kspace_truncation` without the
    magnitude), ``U`` zero-fills: ``x``'s low frequencies become ``lr``'s, its high ones stay.
    ``model="area"``: ``D`` is the block mean (:func:`area_downsample`), ``U`` repeats each LR sample
    over its block. ``x`` must be on the ``scale`` times finer field-of-view preserving grid of ``lr``
    along ``axes`` (``x.shape[a] == scale * lr.shape[a]``). Not clipped.
    """
    x = _check_image(x)
    lr = _check_image(lr)
    scale = _check_scale(scale)
    axes = _check_axes(x, axes)
    model = _check_choice("model", model, PROJECTIONS)
    weight = _check_nonnegative("weight", weight)
    if lr.ndim != x.ndim or any(x.shape[a] != scale * lr.shape[a] if a in axes else x.shape[a] != lr.shape[a]
                                for a in range(x.ndim)):
        raise ValueError(f"x {x.shape} must be lr {lr.shape} up-sampled x{scale} along the axes {axes}")
    if weight == 0:
        return x
    if model == "area":
        residual = lr - area_downsample_unclipped(x, scale, axes=axes)
        for a in axes:
            residual = np.repeat(residual, scale, axis=a)
        return x + weight * residual
    spectrum, low, band, back = kspace_band(x, lr, axes)
    spectrum[band] += weight * (low - spectrum[band])
    return back(spectrum)


def kspace_band(x: np.ndarray, lr: np.ndarray, axes: tuple[int, ...]):
    """The k-space of ``x`` and of ``lr`` (``x`` on the field-of-view preserving grid ``x.shape[a] / lr.shape[a]``
    times finer along ``axes``, non-negative indices) in one frame: ``(spectrum, low, band, back)``, ``spectrum``
    ``x``'s centred spectrum phase-shifted onto ``lr``'s grid, ``low`` ``lr``'s centred spectrum on ``x``'s
    scale, ``spectrum[band]`` the frequencies ``lr`` holds, and ``back(spectrum)`` the real image of a
    spectrum in that frame (``back(spectrum) == x`` up to rounding)."""
    spectrum = np.fft.fftn(x, axes=axes)
    low = np.fft.fftn(lr, axes=axes)
    ramps, band = {}, [slice(None)] * x.ndim
    for axis in axes:
        n, m = x.shape[axis], lr.shape[axis]
        shape = [-1 if a == axis else 1 for a in range(x.ndim)]
        ramps[axis] = np.exp(2j * np.pi * np.fft.fftfreq(n) * (0.5 * n / m - 0.5)).reshape(shape)
        spectrum = np.fft.fftshift(spectrum * ramps[axis], axes=axis)
        low = np.fft.fftshift(low, axes=axis) * (n / m)
        band[axis] = slice(n // 2 - m // 2, n // 2 - m // 2 + m)

    def back(centred: np.ndarray) -> np.ndarray:
        for axis in axes:
            centred = np.fft.ifftshift(centred, axes=axis) / ramps[axis]
        return np.real(np.fft.ifftn(centred, axes=axes))

    return spectrum, low, tuple(band), back


def anisotropic_gaussian_kernel(sigma_x: float, sigma_y: float, theta: float = 0.0, *,
                                size: int = 21, beta: float = 2.0) -> np.ndarray:
    """A normalized 2D (generalized) Gaussian kernel, ``exp(-0.5 (d^T C^-1 d)^(beta/2))``.

    ``sigma_x``/``sigma_y`` are the standard deviations (in pixels) along the kernel's principal
    axes, ``theta`` the rotation (radians), ``beta`` the shape (2 = Gaussian, as in Real-ESRGAN's
    generalized kernels). ``size`` must be odd.
    """
    sigma_x = _check_positive("sigma_x", sigma_x)
    sigma_y = _check_positive("sigma_y", sigma_y)
    beta = _check_positive("beta", beta)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer, got {size!r}")
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    cov = rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T
    half = size // 2
    grid = np.stack(np.meshgrid(np.arange(-half, half + 1), np.arange(-half, half + 1), indexing="ij"), -1)
    quad = np.einsum("...i,ij,...j->...", grid, np.linalg.inv(cov), grid)
    kernel = np.exp(-0.5 * quad ** (beta / 2))
    return kernel / kernel.sum()


def blur(x: np.ndarray, kernel: np.ndarray, *, axes: tuple[int, ...] = (-2, -1)) -> np.ndarray:
    """Convolve every plane spanned by the two ``axes`` with the 2D ``kernel`` (reflected edges)."""
    x = _check_image(x)
    axes = _check_axes(x, axes, exactly=2)
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 2 or not np.all(np.isfinite(kernel)):
        raise ValueError(f"kernel must be a finite 2D array, got shape {kernel.shape}")
    # FFT convolution of the reflect-padded image: what scipy.ndimage.convolve(mode="reflect")
    # gives for odd kernels, much faster for the 21 x 21 kernels of the RealSR/Real-ESRGAN models
    from scipy.signal import fftconvolve

    shape = [1] * x.ndim
    shape[axes[0]], shape[axes[1]] = kernel.shape
    pad = [(0, 0)] * x.ndim
    for axis, k in zip(axes, kernel.shape):
        pad[axis] = (k // 2, k - 1 - k // 2)
    padded = np.pad(x, pad, mode="symmetric")
    return fftconvolve(padded, kernel.reshape(shape), mode="valid", axes=axes)


def _noise(x: np.ndarray, kind: str, level: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        return x + rng.normal(0.0, level, size=x.shape)
    if kind == "poisson":  # Real-ESRGAN's Poisson noise on an 8-bit count scale, scaled by `level`
        counts = rng.poisson(np.clip(x, 0.0, None) * 255.0) / 255.0
        return x + level * (counts - x)
    if kind == "rician":
        return np.sqrt((x + rng.normal(0.0, level, size=x.shape)) ** 2 + rng.normal(0.0, level, size=x.shape) ** 2)
    raise ValueError(f"noise kind must be 'gaussian', 'poisson' or 'rician', got {kind!r}")


def rician_noise(x: np.ndarray, sigma: float, *, seed: int = 0) -> np.ndarray:
    """Rician noise ``sqrt((x + n1)^2 + n2^2)`` with ``n1, n2 ~ N(0, sigma)`` from ``seed``; not clipped."""
    x = _check_image(x)
    sigma = _check_nonnegative("sigma", sigma)
    return _noise(x, "rician", sigma, int(seed))


def _jpeg(x: np.ndarray, quality: int, axes: tuple[int, int]) -> np.ndarray:
    import cv2

    moved = np.moveaxis(x, axes, (-2, -1))
    flat = moved.reshape((-1,) + moved.shape[-2:])
    out = np.empty_like(flat)
    for i, plane in enumerate(flat):
        ok, buf = cv2.imencode(".jpg", np.round(np.clip(plane, 0, 1) * 255).astype(np.uint8),
                               [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
        if not ok:  # pragma: no cover - OpenCV failure
            raise RuntimeError("JPEG encoding failed")
        out[i] = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) / 255.0
    return np.moveaxis(out.reshape(moved.shape), (-2, -1), axes)


def realsr_degradation(x: np.ndarray, *, kernel: np.ndarray, scale: int = 2, noise_sigma: float = 0.0,
                       seed: int = 0, axes: tuple[int, ...] = (-2, -1)) -> np.ndarray:
    """RealSR-style degradation: blur with ``kernel``, bicubic sampling to the LR grid, Gaussian noise.

    The blur replaces the anti-aliasing filter, so the sampling is bicubic interpolation at the LR
    sample positions (no extra low-pass). Noise ``N(0, noise_sigma)`` from ``seed``; clipped to [0, 1].
    """
    x = _check_image(x)
    scale = _check_scale(scale)
    axes = _check_axes(x, axes, exactly=2)
    noise_sigma = _check_nonnegative("noise_sigma", noise_sigma)
    out = blur(x, kernel, axes=axes)
    if scale > 1:
        out = imresize(out, out_shape=[math.ceil(x.shape[a] / scale) for a in axes], axes=axes,
                       kernel="bicubic", antialias=False)
    if noise_sigma > 0:
        out = _noise(out, "gaussian", noise_sigma, int(seed))
    return np.clip(out, 0.0, 1.0)


@dataclass(frozen=True)
class RoundParams:
    """One Real-ESRGAN degradation round (blur -> resize -> noise -> optional JPEG)."""

    blur_sigma: tuple[float, float] | None  # None: no blur in this round
    blur_theta: float
    blur_beta: float
    resize_factor: float
    resize_kernel: str
    noise_kind: str  # "gaussian" | "poisson" | "none"
    noise_level: float
    jpeg_quality: int | None
    seed: int


@dataclass(frozen=True)
class RealESRGANParams:
    """Parameters of :func:`real_esrgan_degradation`: two rounds and the final resize kernel."""

    scale: int
    rounds: tuple[RoundParams, RoundParams]
    final_kernel: str
    kernel_size: int = 21

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RealESRGANParams":
        rounds = tuple(
            RoundParams(**{**r, "blur_sigma": None if r["blur_sigma"] is None else tuple(r["blur_sigma"])})
            for r in data["rounds"]
        )
        return cls(scale=data["scale"], rounds=rounds, final_kernel=data["final_kernel"],
                   kernel_size=data.get("kernel_size", 21))


def real_esrgan_degradation(x: np.ndarray, params: RealESRGANParams, *,
                            axes: tuple[int, ...] = (-2, -1)) -> np.ndarray:
    """The Real-ESRGAN second-order degradation with explicit ``params``; output on the LR grid."""
    x = _check_image(x)
    axes = _check_axes(x, axes, exactly=2)
    scale = _check_scale(params.scale)
    target = [math.ceil(x.shape[a] / scale) for a in axes]
    out = x
    for rnd in params.rounds:
        _check_choice("resize_kernel", rnd.resize_kernel, tuple(KERNELS))
        _check_choice("noise_kind", rnd.noise_kind, ("gaussian", "poisson", "none"))
        if rnd.blur_sigma is not None:
            kernel = anisotropic_gaussian_kernel(*rnd.blur_sigma, rnd.blur_theta, size=params.kernel_size,
                                                 beta=rnd.blur_beta)
            out = blur(out, kernel, axes=axes)
        factor = _check_positive("resize_factor", rnd.resize_factor)
        if factor != 1.0:
            new = [max(1, round(out.shape[a] * factor)) for a in axes]
            out = imresize(out, out_shape=new, axes=axes, kernel=rnd.resize_kernel, antialias=True)
        if rnd.noise_kind != "none" and rnd.noise_level > 0:
            out = _noise(out, rnd.noise_kind, _check_nonnegative("noise_level", rnd.noise_level), rnd.seed)
        out = np.clip(out, 0.0, 1.0)
        if rnd.jpeg_quality is not None:
            out = _jpeg(out, rnd.jpeg_quality, axes)
    _check_choice("final_kernel", params.final_kernel, tuple(KERNELS))
    out = imresize(out, out_shape=target, axes=axes, kernel=params.final_kernel, antialias=True)
    return np.clip(out, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Random twins


@dataclass(frozen=True)
class NoParams:
    """A degradation without random parameters (``bicubic``, ``kspace``)."""

    scale: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RealSRParams:
    """Parameters of :func:`realsr_degradation` (the kernel given by its Gaussian parameters)."""

    scale: int
    sigma: tuple[float, float]
    theta: float
    noise_sigma: float
    seed: int
    kernel_size: int = 21

    def kernel(self) -> np.ndarray:
        return anisotropic_gaussian_kernel(*self.sigma, self.theta, size=self.kernel_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RicianParams:
    sigma: float
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Degradation(ABC):
    """A random degradation: ``draw(rng) -> params``, ``apply(x, params)``; ``__call__`` does both."""

    name: ClassVar[str]
    #: whether training pairs clip the HR slice to [0, 1] before degrading it (the classical
    #: degradations assume [0, 1] images)
    clips_input: ClassVar[bool] = True

    def __init__(self, *, axes: tuple[int, ...] = (-2, -1)):
        self.axes = tuple(axes)

    @abstractmethod
    def draw(self, rng: np.random.Generator):
        """Draw the parameters of one degradation."""

    @abstractmethod
    def apply(self, x: np.ndarray, params) -> np.ndarray:
        """Apply the degradation with explicit ``params`` (deterministic)."""

    def __call__(self, x: np.ndarray, rng: np.random.Generator | int | None = None):
        """Draw parameters from ``rng`` (a Generator or a seed) and apply them: ``(y, params)``."""
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        params = self.draw(rng)
        return self.apply(x, params), params


class BicubicDegradation(Degradation):
    name = "bicubic"

    def __init__(self, scale: int = 2, *, axes: tuple[int, ...] = (-2, -1)):
        super().__init__(axes=axes)
        self.scale = _check_scale(scale)

    def draw(self, rng: np.random.Generator) -> NoParams:
        return NoParams(scale=self.scale)

    def apply(self, x: np.ndarray, params: NoParams) -> np.ndarray:
        return bicubic_downsample(x, params.scale, axes=self.axes)


class KSpaceDegradation(BicubicDegradation):
    name = "kspace"

    def apply(self, x: np.ndarray, params: NoParams) -> np.ndarray:
        return kspace_truncation(x, params.scale, axes=self.axes)


class AreaDegradation(BicubicDegradation):
    name = "area"

    def apply(self, x: np.ndarray, params: NoParams) -> np.ndarray:
        return area_downsample(x, params.scale, axes=self.axes)


class RealSRDegradation(Degradation):
    """Random RealSR-style degradation: anisotropic Gaussian blur, bicubic sampling, Gaussian noise."""

    name = "realsr"

    def __init__(self, scale: int = 2, *, sigma_range: tuple[float, float] = (0.2, 2.0),
                 noise_range: tuple[float, float] = (0.0, 0.02), kernel_size: int = 21,
                 axes: tuple[int, ...] = (-2, -1)):
        super().__init__(axes=axes)
        self.scale = _check_scale(scale)
        self.sigma_range = _check_range("sigma_range", sigma_range, low=1e-3)
        self.noise_range = _check_range("noise_range", noise_range, high=1.0)
        anisotropic_gaussian_kernel(1.0, 1.0, size=kernel_size)  # validates kernel_size
        self.kernel_size = int(kernel_size)

    def draw(self, rng: np.random.Generator) -> RealSRParams:
        sigma = tuple(float(v) for v in rng.uniform(*self.sigma_range, size=2))
        return RealSRParams(scale=self.scale, sigma=sigma, theta=float(rng.uniform(0, np.pi)),
                            noise_sigma=float(rng.uniform(*self.noise_range)),
                            seed=int(rng.integers(2**31 - 1)), kernel_size=self.kernel_size)

    def apply(self, x: np.ndarray, params: RealSRParams) -> np.ndarray:
        return realsr_degradation(x, kernel=params.kernel(), scale=params.scale,
                                  noise_sigma=params.noise_sigma, seed=params.seed, axes=self.axes)


@dataclass(frozen=True)
class RoundRanges:
    """Sampling ranges of one Real-ESRGAN round (Real-ESRGAN's defaults, noise on the [0, 1] scale)."""

    blur_prob: float = 1.0
    sigma_range: tuple[float, float] = (0.2, 3.0)
    beta_range: tuple[float, float] = (0.5, 4.0)
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1 / 255, 30 / 255)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)


ROUND1 = RoundRanges()
ROUND2 = RoundRanges(blur_prob=0.8, sigma_range=(0.2, 1.5), resize_range=(0.3, 1.2),
                     noise_range=(1 / 255, 25 / 255), poisson_scale_range=(0.05, 2.5))


class RealESRGANDegradation(Degradation):
    """Random Real-ESRGAN high-order degradation (two rounds); ``jpeg_range=None`` disables JPEG."""

    name = "realesrgan"

    def __init__(self, scale: int = 2, *, rounds: tuple[RoundRanges, RoundRanges] = (ROUND1, ROUND2),
                 jpeg_range: tuple[int, int] | None = None, kernel_size: int = 21,
                 axes: tuple[int, ...] = (-2, -1)):
        super().__init__(axes=axes)
        self.scale = _check_scale(scale)
        for r in rounds:
            _check_probability("blur_prob", r.blur_prob)
            _check_probability("gaussian_noise_prob", r.gaussian_noise_prob)
            _check_range("sigma_range", r.sigma_range, low=1e-3)
            _check_range("beta_range", r.beta_range, low=1e-3)
            _check_range("resize_range", r.resize_range, low=1e-3)
            _check_range("noise_range", r.noise_range, high=1.0)
            _check_range("poisson_scale_range", r.poisson_scale_range)
            if len(r.resize_probs) != 3 or abs(sum(r.resize_probs) - 1) > 1e-6 or min(r.resize_probs) < 0:
                raise ValueError(f"resize_probs must be three probabilities summing to 1, got {r.resize_probs}")
        self.rounds = tuple(rounds)
        self.jpeg_range = None if jpeg_range is None else tuple(int(v) for v in
                                                                _check_range("jpeg_range", jpeg_range, low=1, high=100))
        anisotropic_gaussian_kernel(1.0, 1.0, size=kernel_size)
        self.kernel_size = int(kernel_size)

    def _draw_round(self, rng: np.random.Generator, ranges: RoundRanges) -> RoundParams:
        blurred = rng.uniform() < ranges.blur_prob
        sigma = tuple(float(v) for v in rng.uniform(*ranges.sigma_range, size=2))
        theta = float(rng.uniform(0, np.pi))
        beta = float(rng.uniform(*ranges.beta_range))
        mode = rng.choice(3, p=np.asarray(ranges.resize_probs))
        lo, hi = ranges.resize_range
        factor = float(rng.uniform(1.0, max(hi, 1.0))) if mode == 0 else (
            float(rng.uniform(lo, min(1.0, hi))) if mode == 1 else 1.0)
        kernel = str(rng.choice(sorted(KERNELS)))
        gaussian = rng.uniform() < ranges.gaussian_noise_prob
        level = float(rng.uniform(*(ranges.noise_range if gaussian else ranges.poisson_scale_range)))
        jpeg = None if self.jpeg_range is None else int(rng.integers(self.jpeg_range[0], self.jpeg_range[1] + 1))
        return RoundParams(blur_sigma=sigma if blurred else None, blur_theta=theta, blur_beta=beta,
                           resize_factor=factor, resize_kernel=kernel,
                           noise_kind="gaussian" if gaussian else "poisson", noise_level=level,
                           jpeg_quality=jpeg, seed=int(rng.integers(2**31 - 1)))

    def draw(self, rng: np.random.Generator) -> RealESRGANParams:
        rounds = (self._draw_round(rng, self.rounds[0]), self._draw_round(rng, self.rounds[1]))
        return RealESRGANParams(scale=self.scale, rounds=rounds, final_kernel=str(rng.choice(sorted(KERNELS))),
                                kernel_size=self.kernel_size)

    def apply(self, x: np.ndarray, params: RealESRGANParams) -> np.ndarray:
        return real_esrgan_degradation(x, params, axes=self.axes)


class RicianNoise(Degradation):
    """Random Rician noise with ``sigma`` drawn uniformly from ``sigma_range`` (same grid)."""

    name = "rician"

    def __init__(self, sigma_range: tuple[float, float] = (0.0, 0.03), *, axes: tuple[int, ...] = (-2, -1)):
        super().__init__(axes=axes)
        self.sigma_range = _check_range("sigma_range", sigma_range, high=1.0)

    def draw(self, rng: np.random.Generator) -> RicianParams:
        return RicianParams(sigma=float(rng.uniform(*self.sigma_range)), seed=int(rng.integers(2**31 - 1)))

    def apply(self, x: np.ndarray, params: RicianParams) -> np.ndarray:
        return rician_noise(x, params.sigma, seed=params.seed)


@dataclass(frozen=True)
class KSpaceRicianParams:
    scale: int
    sigma: float
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class KSpaceRicianDegradation(Degradation):
    """k-space truncation, then Rician noise: what a shorter, lower-resolution acquisition of the same
    scanner gives (sinc-limited resolution, magnitude noise). Noise ``sigma`` is drawn uniformly from
    ``sigma_range`` on the [0, 1] intensity scale."""

    name = "kspace-rician"

    def __init__(self, scale: int = 2, *, sigma_range: tuple[float, float] = (0.01, 0.03),
                 axes: tuple[int, ...] = (-2, -1)):
        super().__init__(axes=axes)
        self.scale = _check_scale(scale)
        self.sigma_range = _check_range("sigma_range", sigma_range, high=1.0)

    def draw(self, rng: np.random.Generator) -> KSpaceRicianParams:
        return KSpaceRicianParams(scale=self.scale, sigma=float(rng.uniform(*self.sigma_range)),
                                  seed=int(rng.integers(2**31 - 1)))

    def apply(self, x: np.ndarray, params: KSpaceRicianParams) -> np.ndarray:
        return rician_noise(kspace_truncation(x, params.scale, axes=self.axes), params.sigma, seed=params.seed)


@dataclass(frozen=True)
class MRIAcquisitionParams:
    """Parameters of :class:`MRIAcquisitionDegradation`: ``mode`` and what it uses."""

    scale: int
    mode: str  # "kspace" | "bicubic" | "area" | "blur"
    alpha: float = 0.0
    cutoff: float = 1.0
    partial_fourier: float = 1.0
    partial_axis: int = 0
    blur_sigma: tuple[float, float] = (0.0, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MRIAcquisitionDegradation(Degradation):
    """A random lower-resolution acquisition of the same field of view, the physics of how a 2 mm scan
    differs from a 1 mm one (no noise: training draws that per crop, ``srn.lr_noise``):

    - ``kspace`` (probability ``p_kspace``): :func:`kspace_acquisition` with a Tukey apodization
      ``alpha`` from ``alpha_range`` (0 with probability 0.4: a plain truncation), a resolution cutoff
      from ``cutoff_range`` (1 with probability 0.6), and partial Fourier with a fraction from
      ``partial_fourier_range`` along a random in-plane axis with probability ``p_partial_fourier``;
    - ``area`` (``p_area``): the mean of each block (partial-volume averaging);
    - ``blur`` (``p_blur``): a Gaussian blur of ``blur_range`` HR pixels per axis (slice profile,
      reconstruction filters) followed by block averaging;
    - ``bicubic`` (the rest): MATLAB's anti-aliased bicubic down-sampling.

    Outputs are non-negative and not clipped at 1 (a bright voxel stays bright).
    """

    name = "mri"
    clips_input = False

    def __init__(self, scale: int = 2, *, p_kspace: float = 0.5, p_area: float = 0.15, p_blur: float = 0.15,
                 alpha_range: tuple[float, float] = (0.0, 0.6), cutoff_range: tuple[float, float] = (0.8, 1.0),
                 p_partial_fourier: float = 0.3, partial_fourier_range: tuple[float, float] = (0.6, 0.85),
                 blur_range: tuple[float, float] = (0.4, 1.2), axes: tuple[int, ...] = (-2, -1)):
        super().__init__(axes=axes)
        self.scale = _check_scale(scale)
        self.p = tuple(_check_probability(n, v) for n, v in
                       (("p_kspace", p_kspace), ("p_area", p_area), ("p_blur", p_blur)))
        if sum(self.p) > 1 + 1e-9:
            raise ValueError(f"p_kspace + p_area + p_blur must be at most 1, got {sum(self.p)}")
        self.alpha_range = _check_range("alpha_range", alpha_range, high=1.0)
        self.cutoff_range = _check_range("cutoff_range", cutoff_range, low=1e-3, high=1.0)
        self.p_partial_fourier = _check_probability("p_partial_fourier", p_partial_fourier)
        self.partial_fourier_range = _check_range("partial_fourier_range", partial_fourier_range, low=0.5, high=1.0)
        self.blur_range = _check_range("blur_range", blur_range, low=1e-3)

    def draw(self, rng: np.random.Generator) -> MRIAcquisitionParams:
        u = float(rng.uniform())
        p_kspace, p_area, p_blur = self.p
        if u < p_kspace:
            alpha = 0.0 if rng.uniform() < 0.4 else float(rng.uniform(*self.alpha_range))
            cutoff = 1.0 if rng.uniform() < 0.6 else float(rng.uniform(*self.cutoff_range))
            partial = (float(rng.uniform(*self.partial_fourier_range)) if rng.uniform() < self.p_partial_fourier
                       else 1.0)
            return MRIAcquisitionParams(self.scale, "kspace", alpha=alpha, cutoff=cutoff, partial_fourier=partial,
                                        partial_axis=int(rng.integers(2)))
        if u < p_kspace + p_area:
            return MRIAcquisitionParams(self.scale, "area")
        if u < p_kspace + p_area + p_blur:
            sigma = tuple(float(v) for v in rng.uniform(*self.blur_range, size=2))
            return MRIAcquisitionParams(self.scale, "blur", blur_sigma=sigma)
        return MRIAcquisitionParams(self.scale, "bicubic")

    def apply(self, x: np.ndarray, params: MRIAcquisitionParams) -> np.ndarray:
        x = _check_image(x)
        axes = _check_axes(x, self.axes, exactly=2)
        mode = _check_choice("mode", params.mode, ("kspace", "bicubic", "area", "blur"))
        top = max(float(x.max()), 1.0)
        if mode == "kspace":
            return kspace_acquisition(x, params.scale, axes=axes, alpha=params.alpha, cutoff=params.cutoff,
                                      partial_fourier=params.partial_fourier, partial_axis=params.partial_axis)
        if mode == "blur":
            from scipy.ndimage import gaussian_filter

            sigma = [0.0] * x.ndim
            sigma[axes[0]], sigma[axes[1]] = params.blur_sigma
            x = gaussian_filter(x, sigma, mode="reflect")
            mode = "area"
        # bicubic and area clip to [0, 1]; scale into that range and back so bright voxels stay
        out = (bicubic_downsample if mode == "bicubic" else area_downsample)(x / top, params.scale, axes=axes)
        return out * top


#: Down-sampling degradations by name (``rician`` keeps the grid and is not listed here).
DEGRADATIONS: dict[str, type[Degradation]] = {
    cls.name: cls for cls in (BicubicDegradation, KSpaceDegradation, AreaDegradation, RealSRDegradation,
                              RealESRGANDegradation, KSpaceRicianDegradation, MRIAcquisitionDegradation)
}


def get_degradation(name: str, scale: int = 2, *, axes: tuple[int, ...] = (-2, -1), **kwargs) -> Degradation:
    """Build the down-sampling degradation ``name`` (``bicubic``, ``kspace``, ``area``, ``kspace-rician``,
    ``realsr``, ``realesrgan``, ``mri``)."""
    if name not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {name!r}; choose from {sorted(DEGRADATIONS)}")
    return DEGRADATIONS[name](scale, axes=axes, **kwargs)
