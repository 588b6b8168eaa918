"""Full-reference metrics: PSNR and SSIM (scikit-image), over the whole image or inside a mask.

Both images must already be on a common intensity scale; the evaluation scales both by the
reference's robust maximum and clips them to ``[0, 1]`` (:func:`ddasr_nipype.metrics.volume.
normalize_pair`), so ``data_range`` is 1. SSIM uses scikit-image's defaults (7-pixel uniform
window, K1 = 0.01, K2 = 0.03) in 2D and 3D alike; the masked SSIM is the mean of the SSIM map over
the mask, the masked PSNR uses the mean squared error over the mask.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

__all__ = ["psnr", "ssim", "ssim_whole_and_masked"]


def _check_pair(reference: np.ndarray, test: np.ndarray, mask: np.ndarray | None):
    reference = np.asarray(reference, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if reference.shape != test.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape} vs test {test.shape}")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != reference.shape:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {reference.shape}")
        if not mask.any():
            raise ValueError("mask is empty")
    return reference, test, mask


def psnr(reference: np.ndarray, test: np.ndarray, *, mask: np.ndarray | None = None,
         data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (``inf`` for identical images)."""
    reference, test, mask = _check_pair(reference, test, mask)
    diff = (reference - test) if mask is None else (reference - test)[mask]
    mse = float(np.mean(diff**2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def ssim(reference: np.ndarray, test: np.ndarray, *, mask: np.ndarray | None = None,
         data_range: float = 1.0) -> float:
    """Structural similarity (1 for identical images); 2D or 3D, averaged inside ``mask`` if given."""
    reference, test, mask = _check_pair(reference, test, mask)
    if min(reference.shape) < 7:
        raise ValueError(f"SSIM needs at least 7 samples along each axis, got {reference.shape}")
    value, ssim_map = structural_similarity(reference, test, data_range=data_range, full=True)
    return float(value if mask is None else ssim_map[mask].mean())


def ssim_whole_and_masked(reference: np.ndarray, test: np.ndarray, mask: np.ndarray,
                          *more_masks: np.ndarray | None) -> tuple[float, ...]:
    """``(ssim(reference, test), ssim(reference, test, mask=mask), ...)`` from a single SSIM map: one
    masked mean per mask, NaN for an extra mask that is ``None`` or empty."""
    reference, test, mask = _check_pair(reference, test, mask)
    if min(reference.shape) < 7:
        raise ValueError(f"SSIM needs at least 7 samples along each axis, got {reference.shape}")
    value, ssim_map = structural_similarity(reference, test, data_range=1.0, full=True)
    extra = tuple(float(ssim_map[m].mean()) if m is not None and m.any() else float("nan") for m in more_masks)
    return (float(value), float(ssim_map[mask].mean()), *extra)
