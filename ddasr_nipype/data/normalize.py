"""Robust, invertible intensity normalization of MR volumes to about ``[0, 1]``.

Rule (:func:`fit_normalization`): take the *foreground* voxels, i.e. the voxels inside ``mask``
(``mask > 0``) when a mask is given, else the voxels whose value is ``> 0`` (MR background is
zero or near zero after the scanner's own scaling; a brain-extracted image has exact zeros
outside the brain). ``low`` and ``high`` are the ``percentiles`` (default 0.5 and 99.5) of these
voxels, so a few hot vessels or a dark artefact do not set the scale.

:meth:`IntensityNormalization.apply` maps ``low -> 0`` and ``high -> 1`` linearly and, by default,
clips the result to ``[floor, clip_max]`` with ``clip_max = 1.5`` and ``floor`` the image of intensity
0 (``min(0, -low / (high - low))``): a magnitude image's background of zeros keeps its value through
``invert(apply(x))`` instead of coming back as ``low`` (a scanner-scaled image's lowest foreground value
can be far from 0, e.g. one quantisation step of an 8-bit IXI volume); bright outliers are kept up to 1.5 (not squashed to
1, which would flatten vessels and fat). ``clip_max=None`` disables clipping entirely.
:meth:`~IntensityNormalization.invert` is the exact inverse of the linear map, so
``invert(apply(x)) == x`` for every ``x`` in ``[min(0, low), low + clip_max * (high - low)]``; clipped
voxels come back as that lower or upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddasr_nipype.errors import InvalidImageError

__all__ = [
    "IntensityNormalization",
    "fit_normalization",
    "DEFAULT_PERCENTILES",
    "DEFAULT_CLIP_MAX",
]

DEFAULT_PERCENTILES = (0.5, 99.5)
DEFAULT_CLIP_MAX = 1.5


def _is_torch(x: Any) -> bool:
    return hasattr(x, "detach") and hasattr(x, "dtype") and not isinstance(x, np.ndarray)


@dataclass(frozen=True)
class IntensityNormalization:
    """A fitted linear intensity map ``y = (x - low) / (high - low)``, clipped to
    ``[floor, clip_max]`` (``floor`` = the image of intensity 0, at most 0) unless ``clip_max`` is None.

    Works on numpy arrays (returns ``float32``) and torch tensors (returns a floating tensor on
    the same device; ``float32`` unless the input is another floating type).
    """

    low: float
    high: float
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    clip_max: float | None = DEFAULT_CLIP_MAX

    def __post_init__(self):
        if not (np.isfinite(self.low) and np.isfinite(self.high)) or self.high <= self.low:
            raise ValueError(
                f"need finite low < high, got low={self.low!r}, high={self.high!r}"
            )
        if self.clip_max is not None and not self.clip_max > 0:
            raise ValueError(f"clip_max must be > 0 or None, got {self.clip_max!r}")
        object.__setattr__(self, "low", float(self.low))
        object.__setattr__(self, "high", float(self.high))
        object.__setattr__(self, "percentiles", tuple(float(p) for p in self.percentiles))
        if self.clip_max is not None:
            object.__setattr__(self, "clip_max", float(self.clip_max))

    @property
    def scale(self) -> float:
        return self.high - self.low

    @property
    def floor(self) -> float:
        """Lower clipping bound: where intensity 0 lands, never above 0."""
        return min(0.0, -self.low / self.scale)

    def apply(self, x):
        """Normalize ``x``: ``low -> 0``, ``high -> 1``, then clip (see class docstring)."""
        if _is_torch(x):
            y = x if x.is_floating_point() else x.float()
            y = (y - self.low) / self.scale
            return y if self.clip_max is None else y.clamp(self.floor, self.clip_max)
        y = (np.asarray(x, dtype=np.float32) - np.float32(self.low)) / np.float32(self.scale)
        if self.clip_max is not None:
            np.clip(y, np.float32(self.floor), self.clip_max, out=y)
        return y.astype(np.float32, copy=False)

    def invert(self, y):
        """Map normalized values back to the original intensity scale (no clipping)."""
        if _is_torch(y):
            y = y if y.is_floating_point() else y.float()
            return y * self.scale + self.low
        y = np.asarray(y, dtype=np.float32)
        return (y * np.float32(self.scale) + np.float32(self.low)).astype(np.float32, copy=False)

    def to_dict(self) -> dict:
        return {
            "low": self.low,
            "high": self.high,
            "percentiles": list(self.percentiles),
            "clip_max": self.clip_max,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "IntensityNormalization":
        known = {"low", "high", "percentiles", "clip_max"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown IntensityNormalization keys: {sorted(unknown)}")
        kwargs = dict(d)
        if "percentiles" in kwargs:
            kwargs["percentiles"] = tuple(kwargs["percentiles"])
        return cls(**kwargs)


def fit_normalization(
    data,
    mask=None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    *,
    clip_max: float | None = DEFAULT_CLIP_MAX,
    path: str | Path | None = None,
) -> IntensityNormalization:
    """Fit a percentile-based :class:`IntensityNormalization` on the foreground of ``data``.

    Parameters
    ----------
    data
        Volume (or slice, or any array; numpy or torch).
    mask
        Optional foreground mask of the same shape (voxels with ``mask > 0`` are used).
        Without it the foreground is ``data > 0``.
    percentiles
        ``(p_low, p_high)`` in percent, ``0 <= p_low < p_high <= 100``.
    clip_max
        Stored in the result; see :meth:`IntensityNormalization.apply`.
    path
        Named in error messages.

    Raises
    ------
    InvalidImageError
        No foreground voxel, non-finite foreground values, or ``high == low`` (a constant
        foreground cannot be normalized).
    ValueError
        Invalid ``percentiles`` or a mask of another shape.
    """
    p_low, p_high = (float(p) for p in percentiles)
    if not 0.0 <= p_low < p_high <= 100.0:
        raise ValueError(f"need 0 <= p_low < p_high <= 100, got percentiles={percentiles}")
    if _is_torch(data):
        data = data.detach().cpu().numpy()
    data = np.asarray(data)
    if mask is not None:
        if _is_torch(mask):
            mask = mask.detach().cpu().numpy()
        mask = np.asarray(mask)
        if mask.shape != data.shape:
            raise ValueError(f"mask shape {mask.shape} differs from data shape {data.shape}")
        fg = data[mask > 0]
        rule = "inside the mask"
    else:
        fg = data[data > 0]
        rule = "with value > 0"
    if fg.size == 0:
        raise InvalidImageError(path, f"cannot normalize intensities: no foreground voxel {rule}")
    if not np.issubdtype(fg.dtype, np.floating):
        fg = fg.astype(np.float64)
    if not np.all(np.isfinite(fg)):
        raise InvalidImageError(path, "cannot normalize intensities: non-finite foreground values")
    # fg is a fresh copy (boolean indexing), so the partition may work in place.
    low, high = (float(v) for v in np.percentile(fg, [p_low, p_high], overwrite_input=True))
    if not high > low:
        raise InvalidImageError(
            path,
            f"cannot normalize intensities: the {p_low:g} and {p_high:g} percentiles of the "
            f"{fg.size} foreground voxels ({rule}) are equal ({low:g})",
        )
    return IntensityNormalization(
        low=float(low), high=float(high), percentiles=(p_low, p_high), clip_max=clip_max
    )
