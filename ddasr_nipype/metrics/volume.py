"""Volume-level metrics: 2D metrics over the slices of a chosen plane, plus 3D PSNR/SSIM.

Protocol (the paper's: 2D slices, mean ± std over slices):

- Volumes are arrays in RAS+ voxel order; ``plane`` picks the slices as everywhere in the package:
  ``sagittal`` = ``vol[i, :, :]``, ``coronal`` = ``vol[:, j, :]``, ``axial`` = ``vol[:, :, k]``.
- **Intensity normalization**: a volume is divided by its *robust maximum*, the 99.5th percentile
  of its voxels inside the brain mask (or of its non-zero voxels without a mask), and clipped to
  ``[0, 1]``. For full-reference metrics both images are divided by the *reference's* robust
  maximum, so a global intensity error still counts.
- **Slice selection**: a slice is used when the brain mask covers at least ``min_fraction``
  (default 10 %) of its area. Without a brain mask the mask is the Otsu foreground of the volume
  (:func:`foreground_mask`).
- **No-reference metrics** (NIQE, BRISQUE) see each selected slice mapped to the 8-bit scale
  (:func:`ddasr_nipype.metrics.niqe.to_8bit`: ``round(255 * clip(x, 0, 1))``), the whole slice
  (background included, as the models were built for whole images). NIQE needs at least one whole
  ``niqe_block_size`` block; smaller slices score NaN and are left out of the mean.
- ``niqe_head`` and ``brisque_head`` are the same metrics on the slice cropped to the bounding box
  of its mask (plus a 4-pixel margin): the air around the head, where a denoising method leaves a
  flat black field that NIQE scores as unnatural, weighs far less (a slice whose crop is smaller
  than a NIQE block, or than BRISQUE's 16 pixels, scores NaN).
- **Full-reference metrics** (PSNR, SSIM) are computed per slice over the whole slice and inside
  the mask, and on the whole 3D volume (whole and masked).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .brisque import MIN_SIZE as BRISQUE_MIN_SIZE
from .brisque import brisque
from .niqe import niqe, to_8bit
from .reference import psnr, ssim_whole_and_masked

__all__ = [
    "PLANES",
    "foreground_mask",
    "robust_max",
    "normalize_volume",
    "normalize_pair",
    "select_slices",
    "take_slice",
    "no_reference_scores",
    "reference_scores",
    "summarize",
]

PLANES = {"sagittal": 0, "coronal": 1, "axial": 2}
NO_REFERENCE_METRICS = ("niqe", "brisque", "niqe_head", "brisque_head")
HEAD_MARGIN = 4


def _plane_axis(plane: str) -> int:
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {sorted(PLANES)}, got {plane!r}")
    return PLANES[plane]


def otsu_threshold(data: np.ndarray, nbins: int = 256) -> float:
    """Otsu's threshold of ``data`` (as float64) over ``nbins`` bins of its range: the value of
    ``skimage.filters.threshold_otsu`` (the same histogram and between-class variance), without
    importing scikit-image (0.4 s), which the app's inference path does not otherwise need."""
    values = np.asarray(data, dtype=np.float64).ravel()
    low, high = float(values.min()), float(values.max())
    if low == high:
        return low
    counts, edges = np.histogram(values, bins=nbins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight1 = np.cumsum(counts)
    weight2 = np.cumsum(counts[::-1])[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean1 = np.cumsum(counts * centres) / weight1
        mean2 = (np.cumsum((counts * centres)[::-1]) / weight2[::-1])[::-1]
    variance = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centres[int(np.nanargmax(variance))])


def foreground_mask(data: np.ndarray) -> np.ndarray:
    """Head foreground: Otsu threshold, largest connected component, closing, holes filled."""
    data = np.asarray(data)
    if np.ptp(data) == 0:
        return np.zeros(data.shape, dtype=bool)
    mask = data > otsu_threshold(data)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    inner = tuple(slice(2, -2) for _ in range(mask.ndim))  # pad: do not erode the edge slices
    mask = ndimage.binary_closing(np.pad(mask, 2), iterations=2)[inner]
    return ndimage.binary_fill_holes(mask)


def robust_max(data: np.ndarray, mask: np.ndarray | None = None, percentile: float = 99.5) -> float:
    """The ``percentile`` of the voxels inside ``mask`` (of the non-zero voxels without one)."""
    data = np.asarray(data, dtype=np.float64)
    values = data[mask.astype(bool)] if mask is not None else data[data > 0]
    if values.size == 0:
        raise ValueError("no voxel to compute a robust maximum from (empty mask or all-zero image)")
    value = float(np.percentile(values, percentile))
    if value <= 0:
        raise ValueError(f"robust maximum is {value}: the image has no positive intensities")
    return value


def normalize_volume(data: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``clip(data / robust_max(data, mask), 0, 1)``."""
    return np.clip(np.asarray(data, dtype=np.float64) / robust_max(data, mask), 0.0, 1.0)


def normalize_pair(reference: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Scale both images by the reference's robust maximum and clip them to ``[0, 1]``."""
    scale = robust_max(reference, mask)
    return (np.clip(np.asarray(reference, dtype=np.float64) / scale, 0.0, 1.0),
            np.clip(np.asarray(test, dtype=np.float64) / scale, 0.0, 1.0))


def take_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """The 2D slice ``index`` of ``plane`` (first in-plane axis first, no transpose or flip); a view."""
    return volume[(slice(None),) * _plane_axis(plane) + (int(index),)]


def select_slices(mask: np.ndarray, plane: str, min_fraction: float = 0.1) -> np.ndarray:
    """Indices of the slices of ``plane`` whose mask covers at least ``min_fraction`` of the area."""
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    axis = _plane_axis(plane)
    other = tuple(a for a in range(3) if a != axis)
    fraction = np.asarray(mask, dtype=bool).mean(axis=other)
    return np.flatnonzero(fraction >= min_fraction) if min_fraction > 0 else np.flatnonzero(fraction > 0)


def _slice_mask(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != tuple(shape):
        raise ValueError(f"mask shape {mask.shape} differs from image shape {tuple(shape)}")
    return mask


def _head_crop(image: np.ndarray, mask2d: np.ndarray) -> np.ndarray:
    """``image`` cropped to the bounding box of ``mask2d`` plus :data:`HEAD_MARGIN` pixels."""
    rows, cols = np.flatnonzero(mask2d.any(axis=1)), np.flatnonzero(mask2d.any(axis=0))
    if rows.size == 0:
        return image
    r0, r1 = max(rows[0] - HEAD_MARGIN, 0), min(rows[-1] + HEAD_MARGIN + 1, image.shape[0])
    c0, c1 = max(cols[0] - HEAD_MARGIN, 0), min(cols[-1] + HEAD_MARGIN + 1, image.shape[1])
    return image[r0:r1, c0:c1]


def no_reference_scores(
    volume01: np.ndarray,
    *,
    plane: str = "sagittal",
    mask: np.ndarray | None = None,
    metrics: Sequence[str] = NO_REFERENCE_METRICS,
    min_fraction: float = 0.1,
    niqe_block_size: int = 96,
) -> dict[str, np.ndarray]:
    """Per-slice NIQE/BRISQUE of a volume normalized to ``[0, 1]`` (see the module's protocol).

    Returns ``{"slice": indices, metric: scores}`` with one score per selected slice.
    """
    unknown = set(metrics) - set(NO_REFERENCE_METRICS)
    if unknown:
        raise ValueError(f"unknown no-reference metric(s) {sorted(unknown)}; use {NO_REFERENCE_METRICS}")
    volume01 = np.asarray(volume01, dtype=np.float64)
    if volume01.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {volume01.shape}")
    mask = foreground_mask(volume01) if mask is None else _slice_mask(mask, volume01.shape)
    indices = select_slices(mask, plane, min_fraction)
    out: dict[str, np.ndarray] = {"slice": indices}
    scores: dict[str, list[float]] = {m: [] for m in metrics}
    for index in indices:
        whole = to_8bit(take_slice(volume01, plane, int(index)))
        for metric in scores:
            img = _head_crop(whole, take_slice(mask, plane, int(index))) if metric.endswith("_head") else whole
            if metric.startswith("niqe"):
                fits = min(img.shape) >= niqe_block_size
                scores[metric].append(niqe(img, block_size=niqe_block_size) if fits else np.nan)
            else:
                scores[metric].append(brisque(img) if min(img.shape) >= BRISQUE_MIN_SIZE else np.nan)
    out.update({m: np.asarray(v, dtype=np.float64) for m, v in scores.items()})
    return out


def reference_scores(
    reference: np.ndarray,
    test: np.ndarray,
    *,
    plane: str = "sagittal",
    mask: np.ndarray | None = None,
    min_fraction: float = 0.1,
    normalize: bool = True,
    brain_mask: np.ndarray | None = None,
) -> dict[str, np.ndarray | float]:
    """PSNR/SSIM of ``test`` against ``reference`` (same grid), per slice and in 3D.

    With ``normalize`` both are scaled by the reference's robust maximum (inside ``mask``) and
    clipped to ``[0, 1]`` first. Keys: ``slice``, ``psnr``, ``ssim``, ``psnr_mask``, ``ssim_mask``
    (per-slice arrays) and ``psnr_3d``, ``ssim_3d``, ``psnr_3d_mask``, ``ssim_3d_mask`` (floats).
    With a ``brain_mask`` (e.g. deepbet's; ``mask`` stays the head mask that selects the slices and
    sets the intensity scale) also ``psnr_brain``, ``ssim_brain`` (NaN on a slice without brain)
    and ``psnr_3d_brain``, ``ssim_3d_brain``.
    """
    reference = np.asarray(reference, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if reference.shape != test.shape or reference.ndim != 3:
        raise ValueError(f"need two 3D volumes on the same grid, got {reference.shape} and {test.shape}")
    mask = foreground_mask(reference) if mask is None else _slice_mask(mask, reference.shape)
    if normalize:
        reference, test = normalize_pair(reference, test, mask)
    indices = select_slices(mask, plane, min_fraction)
    brain = None if brain_mask is None else _slice_mask(brain_mask, reference.shape)
    keys = ("psnr", "ssim", "psnr_mask", "ssim_mask") + (() if brain is None else ("psnr_brain", "ssim_brain"))
    rows: dict[str, list[float]] = {k: [] for k in keys}
    for index in indices:
        ref2, test2 = take_slice(reference, plane, int(index)), take_slice(test, plane, int(index))
        m2 = take_slice(mask, plane, int(index))
        b2 = None if brain is None else take_slice(brain, plane, int(index))
        whole, masked, *in_brain = ssim_whole_and_masked(ref2, test2, m2, *([] if b2 is None else [b2]))
        rows["psnr"].append(psnr(ref2, test2))
        rows["ssim"].append(whole)
        rows["psnr_mask"].append(psnr(ref2, test2, mask=m2))
        rows["ssim_mask"].append(masked)
        if b2 is not None:
            rows["psnr_brain"].append(psnr(ref2, test2, mask=b2) if b2.any() else np.nan)
            rows["ssim_brain"].append(in_brain[0])
    out: dict[str, np.ndarray | float] = {"slice": indices}
    out.update({k: np.asarray(v, dtype=np.float64) for k, v in rows.items()})
    out["psnr_3d"] = psnr(reference, test)
    out["ssim_3d"], out["ssim_3d_mask"], *in_brain = ssim_whole_and_masked(reference, test, mask,
                                                                            *([] if brain is None else [brain]))
    out["psnr_3d_mask"] = psnr(reference, test, mask=mask)
    if brain is not None:
        out["psnr_3d_brain"] = psnr(reference, test, mask=brain)
        out["ssim_3d_brain"] = in_brain[0]
    return out


def summarize(values: np.ndarray) -> tuple[float, float, int]:
    """``(mean, std, n)`` over the non-NaN values (std with ddof=1; NaN when fewer than 2 values)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan"), 0
    with np.errstate(invalid="ignore"):  # identical images: PSNR inf, its std NaN
        std = float(v.std(ddof=1)) if v.size > 1 else float("nan")
    return float(v.mean()), std, int(v.size)
