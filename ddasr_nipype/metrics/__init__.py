"""Image quality metrics: NIQE and BRISQUE (no reference), PSNR and SSIM (full reference).

No-reference metrics take a 2D grayscale image on the 8-bit scale ``[0, 255]``; MR slices in
``[0, 1]`` are mapped with :func:`to_8bit`. Volume-level helpers (slice selection, intensity
normalization, mean ± std over slices) live in :mod:`ddasr_nipype.metrics.volume`.
"""

from .brisque import brisque, brisque_features
from .imresize import imresize
from .niqe import niqe, rgb2gray_matlab, to_8bit
from .reference import psnr, ssim
from .volume import (
    PLANES,
    foreground_mask,
    no_reference_scores,
    normalize_pair,
    normalize_volume,
    reference_scores,
    robust_max,
    select_slices,
    summarize,
    take_slice,
)

__all__ = [
    "PLANES",
    "brisque",
    "brisque_features",
    "foreground_mask",
    "imresize",
    "niqe",
    "no_reference_scores",
    "normalize_pair",
    "normalize_volume",
    "psnr",
    "reference_scores",
    "rgb2gray_matlab",
    "robust_max",
    "select_slices",
    "ssim",
    "summarize",
    "take_slice",
    "to_8bit",
]
