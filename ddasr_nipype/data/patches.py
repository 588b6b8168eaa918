"""Random 2D training patches from slice stacks, replayable from their drawn locations.

As in TorchIO, each random function only *draws* parameters (a :class:`PatchLocations`) and
hands them to a deterministic twin that cuts the patches:

=================================  =======================================
random (draws with ``rng``)        deterministic twin
=================================  =======================================
:func:`draw_patch_locations`       :func:`extract_patches`
:func:`draw_paired_locations`      :func:`extract_paired_patches`
=================================  =======================================

:func:`sample_patches` and :func:`sample_paired_patches` chain the two. The same seed gives the
same patches; storing the locations replays a draw without the generator.

Foreground rule: a pixel is *foreground* when its value is ``> foreground_threshold``
(default 0.05, meant for intensities normalized to about ``[0, 1]`` by
:mod:`ddasr_nipype.data.normalize`), and a candidate patch is kept when at least
``min_foreground`` (default 0.25) of its pixels are foreground. Candidates are drawn uniformly
(slice, then top-left corner) and rejected until ``n`` are kept, in draw order; if
``max_draws_per_patch * n`` candidates do not give ``n`` patches,
:class:`~ddasr_nipype.errors.TrainingDataError` is raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ddasr_nipype.data.slicing import extract_slices
from ddasr_nipype.errors import TrainingDataError

__all__ = [
    "PatchLocations",
    "DEFAULT_MIN_FOREGROUND",
    "DEFAULT_FOREGROUND_THRESHOLD",
    "draw_patch_locations",
    "extract_patches",
    "sample_patches",
    "draw_paired_locations",
    "extract_paired_patches",
    "sample_paired_patches",
]

DEFAULT_MIN_FOREGROUND = 0.25
DEFAULT_FOREGROUND_THRESHOLD = 0.05
MAX_DRAWS_PER_PATCH = 200


@dataclass(frozen=True)
class PatchLocations:
    """Where patches were cut: slice ``index`` and top-left ``row``, ``col`` (int arrays)."""

    index: np.ndarray
    row: np.ndarray
    col: np.ndarray

    def __post_init__(self):
        arrays = [
            np.asarray(a, dtype=np.int64).reshape(-1) for a in (self.index, self.row, self.col)
        ]
        if not len(arrays[0]) == len(arrays[1]) == len(arrays[2]):
            raise ValueError("index, row and col must have the same length")
        for name, a in zip(("index", "row", "col"), arrays):
            a.setflags(write=False)
            object.__setattr__(self, name, a)

    def __len__(self) -> int:
        return len(self.index)

    def to_dict(self) -> dict:
        return {"index": self.index.tolist(), "row": self.row.tolist(), "col": self.col.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "PatchLocations":
        return cls(index=d["index"], row=d["row"], col=d["col"])


def _patch_hw(patch_size: int | Sequence[int]) -> tuple[int, int]:
    if np.isscalar(patch_size):
        hw = (patch_size, patch_size)
    else:
        hw = tuple(patch_size)  # type: ignore[arg-type]
    if len(hw) != 2 or any(int(v) != v or v < 1 for v in hw):
        raise ValueError(
            f"patch_size must be a positive int or (height, width), got {patch_size!r}"
        )
    return int(hw[0]), int(hw[1])


def _as_stack(vol_or_slices, plane: str | None, what: str = "input") -> np.ndarray:
    arr = np.asarray(vol_or_slices)
    if arr.ndim != 3:
        raise ValueError(f"{what} must be a 3D volume or a [N, H, W] slice stack, got {arr.shape}")
    return extract_slices(arr, plane) if plane is not None else arr


def _check_common(n: int, rng, min_foreground: float, max_draws_per_patch: int) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng)}"
        )
    if not 0.0 <= min_foreground <= 1.0:
        raise ValueError(f"min_foreground must be within [0, 1], got {min_foreground!r}")
    if max_draws_per_patch < 1:
        raise ValueError(f"max_draws_per_patch must be >= 1, got {max_draws_per_patch!r}")


def _gather(stack: np.ndarray, index, row, col, hw: tuple[int, int]) -> np.ndarray:
    """Patches ``stack[index, row:row+h, col:col+w]`` as an ``[n, h, w]`` array."""
    h, w = hw
    rows = np.asarray(row)[:, None, None] + np.arange(h)[None, :, None]
    cols = np.asarray(col)[:, None, None] + np.arange(w)[None, None, :]
    return stack[np.asarray(index)[:, None, None], rows, cols]


def _draw(
    stack: np.ndarray,
    hw: tuple[int, int],
    max_row: int,
    max_col: int,
    n: int,
    rng: np.random.Generator,
    min_foreground: float,
    foreground_threshold: float,
    max_draws_per_patch: int,
) -> PatchLocations:
    """Rejection sampling of patch corners in ``[0, max_row] x [0, max_col]`` on ``stack``."""
    batch = max(4 * n, 64)
    budget = max_draws_per_patch * n
    kept: list[np.ndarray] = []
    n_kept = drawn = 0
    best = 0.0
    while n_kept < n and drawn < budget:
        m = min(batch, budget - drawn)
        idx = rng.integers(0, stack.shape[0], size=m)
        row = rng.integers(0, max_row + 1, size=m)
        col = rng.integers(0, max_col + 1, size=m)
        drawn += m
        if min_foreground > 0:
            fraction = (_gather(stack, idx, row, col, hw) > foreground_threshold).mean(axis=(1, 2))
            ok = fraction >= min_foreground
            best = max(best, float(fraction.max()))
        else:
            ok = np.ones(m, dtype=bool)
        cand = np.stack([idx[ok], row[ok], col[ok]], axis=1)
        kept.append(cand)
        n_kept += len(cand)
    if n_kept < n:
        raise TrainingDataError(
            f"only {n_kept} of {n} patches of {hw[0]}x{hw[1]} pixels had at least "
            f"{min_foreground:.0%} foreground (> {foreground_threshold:g}) in {drawn} random "
            f"draws (best {best:.0%}); are the slices normalized and not mostly background?"
        )
    chosen = np.concatenate(kept, axis=0)[:n]
    return PatchLocations(index=chosen[:, 0], row=chosen[:, 1], col=chosen[:, 2])


def draw_patch_locations(
    slices: np.ndarray,
    patch_size: int | Sequence[int],
    n: int,
    rng: np.random.Generator,
    *,
    min_foreground: float = DEFAULT_MIN_FOREGROUND,
    foreground_threshold: float = DEFAULT_FOREGROUND_THRESHOLD,
    max_draws_per_patch: int = MAX_DRAWS_PER_PATCH,
) -> PatchLocations:
    """Draw ``n`` patch locations on a ``[N, H, W]`` slice stack (foreground rule: module doc).

    Raises
    ------
    TrainingDataError
        If the slices are smaller than the patch, or too few candidates pass the foreground rule.
    """
    hw = _patch_hw(patch_size)
    _check_common(n, rng, min_foreground, max_draws_per_patch)
    stack = _as_stack(slices, None, "slices")
    if stack.shape[0] == 0:
        raise TrainingDataError("no slices to sample patches from")
    if stack.shape[1] < hw[0] or stack.shape[2] < hw[1]:
        raise TrainingDataError(
            f"slices of {stack.shape[1]}x{stack.shape[2]} pixels are smaller than the patch "
            f"size {hw[0]}x{hw[1]}; lower the patch size or use larger images"
        )
    return _draw(
        stack, hw, stack.shape[1] - hw[0], stack.shape[2] - hw[1], int(n), rng,
        min_foreground, foreground_threshold, max_draws_per_patch,
    )


def extract_patches(
    slices: np.ndarray, locations: PatchLocations, patch_size: int | Sequence[int]
) -> np.ndarray:
    """Deterministic twin of :func:`draw_patch_locations`: the ``[n, 1, h, w]`` ``float32``
    patches at ``locations``."""
    hw = _patch_hw(patch_size)
    stack = _as_stack(slices, None, "slices")
    if len(locations) and (
        locations.index.max() >= stack.shape[0]
        or locations.row.max() + hw[0] > stack.shape[1]
        or locations.col.max() + hw[1] > stack.shape[2]
        or min(locations.index.min(), locations.row.min(), locations.col.min()) < 0
    ):
        raise ValueError(f"patch locations fall outside the slice stack of shape {stack.shape}")
    out = _gather(stack, locations.index, locations.row, locations.col, hw)
    return np.ascontiguousarray(out[:, None], dtype=np.float32)


def sample_patches(
    vol_or_slices: np.ndarray,
    patch_size: int | Sequence[int],
    n: int,
    rng: np.random.Generator,
    *,
    plane: str | None = "sagittal",
    min_foreground: float = DEFAULT_MIN_FOREGROUND,
    foreground_threshold: float = DEFAULT_FOREGROUND_THRESHOLD,
    max_draws_per_patch: int = MAX_DRAWS_PER_PATCH,
    return_locations: bool = False,
):
    """Random 2D patches from the slices of a volume, ``[n, 1, h, w]`` ``float32``.

    Parameters
    ----------
    vol_or_slices
        A RAS volume sliced along ``plane``, or (``plane=None``) a ``[N, H, W]`` slice stack.
    patch_size
        ``p`` or ``(h, w)``.
    n
        Number of patches.
    rng
        ``numpy.random.Generator``; the same seed gives the same patches.
    plane
        ``sagittal``, ``coronal``, ``axial`` or None (input already a slice stack).
    min_foreground, foreground_threshold, max_draws_per_patch
        Foreground rule (module docstring).
    return_locations
        Also return the :class:`PatchLocations`, to replay the draw with
        :func:`extract_patches`.
    """
    stack = _as_stack(vol_or_slices, plane)
    locations = draw_patch_locations(
        stack, patch_size, n, rng, min_foreground=min_foreground,
        foreground_threshold=foreground_threshold, max_draws_per_patch=max_draws_per_patch,
    )
    patches = extract_patches(stack, locations, patch_size)
    return (patches, locations) if return_locations else patches


def _check_pair(lr: np.ndarray, hr: np.ndarray, scale: int) -> None:
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if lr.shape[0] != hr.shape[0]:
        raise TrainingDataError(
            f"LR and HR stacks hold different numbers of slices ({lr.shape[0]} vs {hr.shape[0]})"
        )
    expected = tuple(-(-n // scale) for n in hr.shape[1:])  # ceil(H / s), as the DSN outputs
    if tuple(lr.shape[1:]) != expected:
        raise TrainingDataError(
            f"LR slices of {lr.shape[1]}x{lr.shape[2]} do not match HR slices of "
            f"{hr.shape[1]}x{hr.shape[2]} at scale {scale} (expected {expected[0]}x{expected[1]})"
        )


def draw_paired_locations(
    lr_slices: np.ndarray,
    hr_slices: np.ndarray,
    lr_patch_size: int | Sequence[int],
    scale: int,
    n: int,
    rng: np.random.Generator,
    *,
    min_foreground: float = DEFAULT_MIN_FOREGROUND,
    foreground_threshold: float = DEFAULT_FOREGROUND_THRESHOLD,
    max_draws_per_patch: int = MAX_DRAWS_PER_PATCH,
) -> PatchLocations:
    """Draw ``n`` LR patch locations such that the matching HR patch (at ``scale`` times the
    corner, ``scale`` times the size) lies inside the HR slice.

    ``lr_slices`` is ``[N, h, w]`` with ``h = ceil(H / scale)``, ``w = ceil(W / scale)`` for
    ``hr_slices`` ``[N, H, W]`` (the DSN's output size). The foreground rule is applied to the
    LR patch.
    """
    hw = _patch_hw(lr_patch_size)
    _check_common(n, rng, min_foreground, max_draws_per_patch)
    lr = _as_stack(lr_slices, None, "lr_slices")
    hr = _as_stack(hr_slices, None, "hr_slices")
    _check_pair(lr, hr, scale)
    s = int(scale)
    max_row = min(lr.shape[1] - hw[0], hr.shape[1] // s - hw[0])
    max_col = min(lr.shape[2] - hw[1], hr.shape[2] // s - hw[1])
    if lr.shape[0] == 0:
        raise TrainingDataError("no slices to sample patches from")
    if max_row < 0 or max_col < 0:
        raise TrainingDataError(
            f"LR slices of {lr.shape[1]}x{lr.shape[2]} pixels (HR {hr.shape[1]}x{hr.shape[2]}) "
            f"are smaller than the LR patch size {hw[0]}x{hw[1]} (HR {s * hw[0]}x{s * hw[1]}); "
            "lower the patch size or use larger images"
        )
    return _draw(
        lr, hw, max_row, max_col, int(n), rng, min_foreground, foreground_threshold,
        max_draws_per_patch,
    )


def extract_paired_patches(
    lr_slices: np.ndarray,
    hr_slices: np.ndarray,
    locations: PatchLocations,
    lr_patch_size: int | Sequence[int],
    scale: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic twin of :func:`draw_paired_locations`: LR patches ``[n, 1, h, w]`` at
    ``(row, col)`` and HR patches ``[n, 1, s*h, s*w]`` at ``(s*row, s*col)``."""
    h, w = _patch_hw(lr_patch_size)
    s = int(scale)
    lr = extract_patches(lr_slices, locations, (h, w))
    hr_locations = PatchLocations(locations.index, locations.row * s, locations.col * s)
    hr = extract_patches(hr_slices, hr_locations, (s * h, s * w))
    return lr, hr


def sample_paired_patches(
    lr_slices: np.ndarray,
    hr_slices: np.ndarray,
    lr_patch_size: int | Sequence[int],
    scale: int,
    n: int,
    rng: np.random.Generator,
    *,
    plane: str | None = None,
    min_foreground: float = DEFAULT_MIN_FOREGROUND,
    foreground_threshold: float = DEFAULT_FOREGROUND_THRESHOLD,
    max_draws_per_patch: int = MAX_DRAWS_PER_PATCH,
    return_locations: bool = False,
):
    """Random aligned (LR, HR) patch pairs for SRN training.

    ``plane=None``: the inputs are ``[N, h, w]`` / ``[N, H, W]`` slice stacks; otherwise RAS
    volumes sliced along ``plane`` (the HR volume upsampled by ``scale`` in-plane only).
    Returns ``(lr [n,1,h,w], hr [n,1,s*h,s*w])`` (plus the locations if asked).
    """
    lr = _as_stack(lr_slices, plane, "lr_slices")
    hr = _as_stack(hr_slices, plane, "hr_slices")
    locations = draw_paired_locations(
        lr, hr, lr_patch_size, scale, n, rng, min_foreground=min_foreground,
        foreground_threshold=foreground_threshold, max_draws_per_patch=max_draws_per_patch,
    )
    lr_p, hr_p = extract_paired_patches(lr, hr, locations, lr_patch_size, scale)
    return (lr_p, hr_p, locations) if return_locations else (lr_p, hr_p)
