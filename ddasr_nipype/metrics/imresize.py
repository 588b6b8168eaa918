"""MATLAB-compatible separable resizing (``imresize``) for numpy arrays of any dimensionality.

MATLAB's ``imresize`` maps output index ``x`` (1-based) to input coordinate
``u = x / scale + 0.5 * (1 - 1 / scale)``, i.e. the field of view is preserved and, 0-based,
new sample ``i'`` sits at old index ``(i' + 0.5) / scale - 0.5``: the same convention as
``ddasr_nipype.data.slicing.upsampled_affine``. Samples outside the image are mirrored
("symmetric" padding, the edge sample repeated). When shrinking with ``antialias=True`` the kernel
is stretched by ``1 / scale``, which low-pass filters before sampling.

NIQE and BRISQUE use the bicubic (Keys, a = -0.5) kernel with anti-aliasing to build their second
scale; the degradations and the bicubic baseline reuse the same code so every grid agrees.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = ["KERNELS", "imresize", "resize_axis", "resize_matrix"]


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * (
        (ax > 1) & (ax <= 2)
    )


def _triangle(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return (1 - ax) * (ax <= 1)


def _box(x: np.ndarray) -> np.ndarray:
    return ((x >= -0.5) & (x < 0.5)).astype(float)


#: kernel name -> (function, support width in input samples at scale 1), as in MATLAB.
KERNELS = {"bicubic": (_cubic, 4.0), "bilinear": (_triangle, 2.0), "box": (_box, 1.0)}


@lru_cache(maxsize=256)
def resize_matrix(
    in_len: int, out_len: int, scale: float, kernel: str = "bicubic", antialias: bool = True
) -> np.ndarray:
    """Return the ``(out_len, in_len)`` matrix that resizes a 1D signal the MATLAB way.

    Boundary samples are folded back into the image (symmetric padding), so every row sums to 1.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}")
    func, width = KERNELS[kernel]
    shrink_aa = scale < 1 and antialias
    if shrink_aa:
        width = width / scale
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = math.ceil(width) + 2
    indices = left[:, None] + np.arange(taps)[None, :]  # 1-based input indices
    dist = u[:, None] - indices
    weights = scale * func(dist * scale) if shrink_aa else func(dist)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # symmetric padding: ... 2 1 | 1 2 ... n | n n-1 ...
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    cols = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_len)]
    matrix = np.zeros((out_len, in_len))
    np.add.at(matrix, (np.repeat(np.arange(out_len), taps), cols.ravel()), weights.ravel())
    matrix.setflags(write=False)
    return matrix


def resize_axis(
    x: np.ndarray,
    axis: int,
    *,
    scale: float | None = None,
    out_len: int | None = None,
    kernel: str = "bicubic",
    antialias: bool = True,
) -> np.ndarray:
    """Resize ``x`` along one axis; give ``scale`` (output length ``ceil(n * scale)``) or ``out_len``."""
    n = x.shape[axis]
    if scale is None and out_len is None:
        raise ValueError("give scale or out_len")
    if scale is None:
        scale = out_len / n
    if out_len is None:
        out_len = math.ceil(n * scale)
    if scale <= 0 or out_len < 1:
        raise ValueError(f"cannot resize an axis of length {n} by {scale} to {out_len} samples")
    matrix = resize_matrix(n, int(out_len), float(scale), kernel, bool(antialias))
    moved = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    return np.moveaxis(moved @ matrix.T, -1, axis)


def imresize(
    x: np.ndarray,
    scale: float | None = None,
    *,
    out_shape: tuple[int, ...] | None = None,
    axes: tuple[int, ...] | None = None,
    kernel: str = "bicubic",
    antialias: bool = True,
) -> np.ndarray:
    """MATLAB ``imresize`` along ``axes`` (default: every axis), returning float64.

    With ``scale`` the output length of each axis is ``ceil(n * scale)`` (MATLAB's rule); with
    ``out_shape`` (one length per resized axis) the scale of each axis is ``out / n``.
    """
    x = np.asarray(x)
    axes = tuple(range(x.ndim)) if axes is None else tuple(a % x.ndim for a in axes)
    if out_shape is not None and len(out_shape) != len(axes):
        raise ValueError(f"out_shape {out_shape} needs one length per resized axis {axes}")
    out = x.astype(np.float64)
    for k, axis in enumerate(axes):
        if out_shape is None:
            out = resize_axis(out, axis, scale=scale, kernel=kernel, antialias=antialias)
        else:
            out = resize_axis(out, axis, out_len=int(out_shape[k]), kernel=kernel, antialias=antialias)
    return out
