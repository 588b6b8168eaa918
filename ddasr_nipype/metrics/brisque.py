"""BRISQUE, the Blind/Referenceless Image Spatial Quality Evaluator, with the LIVE-trained model.

Mittal, Moorthy and Bovik, "No-Reference Image Quality Assessment in the Spatial Domain",
IEEE Transactions on Image Processing 21(12), 2012.

This wraps the ``brisque`` PyPI package (0.2.0, Apache-2.0; imported lazily, it works offline): its
support-vector regressor was trained on the LIVE database with the package's own feature code, so
its own features are the consistent input. On the five calibration images (grayscale made the
MATLAB way) it is within +0.3, +1.1, +0.4, +3.7 and +17.6 points of the original MATLAB BRISQUE
(``tests/test_metrics.py`` measures this). BRISQUE implementations disagree by several points:
compare methods only with scores computed by the same code in the same run.

The input is a 2D grayscale image on the 8-bit scale ``[0, 255]``; it is rounded to ``uint8``
(MR slices: see :func:`ddasr_nipype.metrics.to_8bit`). Lower is better.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np

__all__ = ["brisque", "MIN_SIZE"]

MIN_SIZE = 16  #: the smallest image edge BRISQUE scores


@lru_cache(maxsize=1)
def _scorer():
    try:
        with warnings.catch_warnings():  # the package imports deprecated scipy.ndimage.filters
            warnings.simplefilter("ignore", DeprecationWarning)
            from brisque import BRISQUE
    except ImportError as err:  # pragma: no cover - brisque is an install requirement
        raise ImportError("BRISQUE needs the 'brisque' package: pip install brisque==0.2.0") from err
    return BRISQUE(url=False)


def brisque(image: np.ndarray) -> float:
    """BRISQUE score of a 2D grayscale image on the 8-bit scale ``[0, 255]`` (lower is better).

    Returns NaN for a constant image (no texture: the features are undefined).
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"BRISQUE needs a 2D grayscale image, got shape {img.shape}")
    if min(img.shape) < MIN_SIZE:
        raise ValueError(f"image of shape {img.shape} is too small for BRISQUE ({MIN_SIZE} x {MIN_SIZE} at least)")
    gray = np.clip(np.floor(img + 0.5), 0, 255).astype(np.uint8)
    if gray.min() == gray.max():
        return float("nan")
    # the package converts with skimage.color.rgb2gray: three equal channels give the gray back
    score = _scorer().score(np.repeat(gray[..., None], 3, axis=-1))
    return float(score)
