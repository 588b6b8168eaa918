"""Slices of RAS+ volumes, upsampled grids and resampling that keep the field of view.

Plane convention (RAS+ voxel order, shared by training and inference):

============  ===========  ==============  ============================
plane         slice axis   slice           2D image ``[H, W]``
============  ===========  ==============  ============================
``sagittal``  0            ``vol[i, :, :]``  (axis 1, axis 2) = (A, S)
``coronal``   1            ``vol[:, j, :]``  (axis 0, axis 2) = (R, S)
``axial``     2            ``vol[:, :, k]``  (axis 0, axis 1) = (R, A)
============  ===========  ==============  ============================

No transpose or flip is ever applied, so :func:`insert_slices` is the exact inverse of
:func:`extract_slices`, also for slices whose in-plane size was upsampled.

Upsampled grids keep the field of view (FOV): with a factor ``s`` on an axis, new voxel ``i'``
sits at old continuous voxel index ``(i' + 0.5) / s - 0.5``, so the outer voxel edges
(index ``-0.5`` and ``n - 0.5``) coincide (:func:`upsampled_affine`).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

__all__ = [
    "PLANES",
    "plane_axis",
    "inplane_axes",
    "extract_slices",
    "insert_slices",
    "write_slices",
    "iter_batches",
    "upsample_plane_factors",
    "upsampled_shape",
    "upsampled_affine",
    "resampled_affine",
    "resample_to_grid",
    "zoom_volume",
    "isotropic_resample",
]

PLANES = ("sagittal", "coronal", "axial")


def plane_axis(plane: str) -> int:
    """The RAS voxel axis that a plane slices across: sagittal 0, coronal 1, axial 2."""
    try:
        return PLANES.index(plane)
    except ValueError:
        raise ValueError(f"unknown plane {plane!r}; expected one of {PLANES}") from None


def inplane_axes(plane: str) -> tuple[int, int]:
    """The two RAS voxel axes spanning a plane's 2D image, in ``[H, W]`` order."""
    axis = plane_axis(plane)
    return tuple(a for a in range(3) if a != axis)  # type: ignore[return-value]


def _moveaxis(x, src: int, dst: int):
    if hasattr(x, "movedim"):  # torch.Tensor
        return x.movedim(src, dst)
    return np.moveaxis(x, src, dst)


def extract_slices(vol, plane: str):
    """Slices of a 3D volume as a ``[N, H, W]`` stack (a view, not a copy).

    ``sagittal``: ``out[i] = vol[i, :, :]``; ``coronal``: ``out[j] = vol[:, j, :]``;
    ``axial``: ``out[k] = vol[:, :, k]``. Works on numpy arrays and torch tensors.
    """
    if vol.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {tuple(vol.shape)}")
    return _moveaxis(vol, plane_axis(plane), 0)


def insert_slices(slices, plane: str):
    """Inverse of :func:`extract_slices`: stack ``[N, H', W']`` slices back into a volume.

    ``H'``, ``W'`` may differ from the original in-plane size (upsampled slices); the result has
    shape ``(N, H', W')`` placed on the plane's axes, e.g. ``(H', N, W')`` for coronal.
    Returns a view of ``slices``.
    """
    if slices.ndim != 3:
        raise ValueError(f"expected a [N, H, W] slice stack, got shape {tuple(slices.shape)}")
    return _moveaxis(slices, 0, plane_axis(plane))


def write_slices(vol_out: np.ndarray, plane: str, start: int, slices) -> None:
    """Write a ``[B, H, W]`` or ``[B, 1, H, W]`` batch into ``vol_out`` at slices
    ``start .. start + B - 1`` along ``plane`` (in place; the output of a batched model)."""
    slices = np.asarray(slices)
    if slices.ndim == 4:
        if slices.shape[1] != 1:
            raise ValueError(f"expected one channel, got batch shape {slices.shape}")
        slices = slices[:, 0]
    view = extract_slices(vol_out, plane)
    if slices.shape[1:] != view.shape[1:] or start < 0 or start + len(slices) > len(view):
        raise ValueError(
            f"batch of shape {slices.shape} at {start} does not fit {plane} slices "
            f"{view.shape} of the output volume"
        )
    view[start : start + len(slices)] = slices


def iter_batches(vol, plane: str, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, batch)`` over the slices of ``vol`` along ``plane``.

    ``batch`` is a new ``float32`` array ``[B, 1, H, W]`` holding slices
    ``start .. start + B - 1`` (the last batch may be shorter); only one batch is copied at a
    time, so memory stays bounded by ``batch_size`` slices.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stack = extract_slices(np.asarray(vol), plane)
    for start in range(0, stack.shape[0], batch_size):
        chunk = stack[start : start + batch_size]
        yield start, np.array(chunk[:, None], dtype=np.float32, order="C", copy=True)


def upsample_plane_factors(plane: str, scale: int) -> tuple[int, int, int]:
    """Per-axis factors of an in-plane SR: ``scale`` on the two in-plane axes, 1 across."""
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    axis = plane_axis(plane)
    return tuple(1 if a == axis else int(scale) for a in range(3))  # type: ignore[return-value]


def upsampled_shape(shape: Sequence[int], factors: Sequence[int]) -> tuple[int, ...]:
    """Shape of a grid upsampled by integer ``factors``: ``n * s`` per axis."""
    if len(shape) != len(factors):
        raise ValueError(f"shape {tuple(shape)} and factors {tuple(factors)} differ in length")
    for s in factors:
        if int(s) != s or s < 1:
            raise ValueError(f"factors must be positive integers, got {tuple(factors)}")
    return tuple(int(n) * int(s) for n, s in zip(shape, factors))


def resampled_affine(
    affine: np.ndarray, step: Sequence[float], offset: Sequence[float]
) -> np.ndarray:
    """Affine of a new grid whose voxel ``i'`` sits at old continuous index
    ``offset + step * i'`` (per axis)."""
    step = np.asarray(step, dtype=float)
    offset = np.asarray(offset, dtype=float)
    if step.shape != (3,) or offset.shape != (3,):
        raise ValueError("step and offset need one value per spatial axis (3)")
    if np.any(step <= 0) or not np.all(np.isfinite(step)):
        raise ValueError(f"steps must be finite and > 0, got {tuple(step)}")
    index_map = np.eye(4)
    index_map[:3, :3] = np.diag(step)
    index_map[:3, 3] = offset
    return np.asarray(affine, dtype=float) @ index_map


def upsampled_affine(affine: np.ndarray, factors: Sequence[float]) -> np.ndarray:
    """Affine of a grid upsampled by ``factors`` that keeps the field of view.

    New voxel ``i'`` sits at old continuous index ``(i' + 0.5) / s - 0.5``: the voxel size
    shrinks by ``s`` and the grid shifts by ``(1 - s) / (2 s)`` old voxels, so the FOV edges
    (index ``-0.5`` and ``n - 0.5``) stay in place. A factor of 1 leaves an axis unchanged.
    """
    s = np.asarray(factors, dtype=float)
    if s.shape != (3,) or np.any(s <= 0) or not np.all(np.isfinite(s)):
        raise ValueError(f"need three finite factors > 0, got {tuple(np.ravel(factors))}")
    return resampled_affine(affine, 1.0 / s, 0.5 / s - 0.5)


def _centred_grid(n_old: int, n_new: int, step: float) -> float:
    """Offset (old index of new voxel 0) that puts the new grid's centre on the old one's."""
    return (n_old - 1) / 2.0 - (n_new - 1) * step / 2.0


def resample_to_grid(
    data: np.ndarray,
    new_shape: Sequence[int],
    step: Sequence[float] | None = None,
    *,
    order: int = 3,
    anti_aliasing: bool = True,
    mode: str = "nearest",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample a 3D array onto a regular grid centred on the same field-of-view centre.

    New voxel ``i'`` is taken at old continuous index ``c_old + (i' - c_new) * step`` with
    ``c = (n - 1) / 2`` (the grids share their centre). With the default
    ``step = n_old / n_new`` the FOV edges coincide exactly, which for integer factors is the
    :func:`upsampled_affine` convention.

    Parameters
    ----------
    data
        3D array.
    new_shape
        Output shape.
    step
        Distance between new voxels in old voxel units (``new_size / old_size`` in mm).
    order
        Spline order (0 nearest, 1 linear, 3 cubic).
    anti_aliasing
        When downsampling (``step > 1``), first smooth with a Gaussian of sigma
        ``(step - 1) / 2`` old voxels (the scikit-image ``rescale`` rule) to avoid aliasing.
    mode
        Boundary mode of :func:`scipy.ndimage.affine_transform`.

    Returns
    -------
    out, step, offset
        The ``float32`` resampled array and the index map (``old = offset + step * new``), to
        give to :func:`resampled_affine`.
    """
    from scipy import ndimage

    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"expected a 3D array, got shape {data.shape}")
    new_shape = tuple(int(n) for n in new_shape)
    if len(new_shape) != 3 or min(new_shape) < 1:
        raise ValueError(f"invalid output shape {new_shape}")
    if step is None:
        step_arr = np.array([o / n for o, n in zip(data.shape, new_shape)], dtype=float)
    else:
        step_arr = np.asarray(step, dtype=float)
    if step_arr.shape != (3,) or np.any(step_arr <= 0):
        raise ValueError(f"invalid step {tuple(np.ravel(step_arr))}")
    offset = np.array(
        [_centred_grid(o, n, s) for o, n, s in zip(data.shape, new_shape, step_arr)]
    )
    src = data
    if anti_aliasing and np.any(step_arr > 1):
        sigma = np.maximum(0.0, (step_arr - 1.0) / 2.0)
        src = ndimage.gaussian_filter(data, sigma=sigma, mode="nearest")
    out = ndimage.affine_transform(
        src,
        step_arr,  # a 1D matrix = diagonal
        offset=offset,
        output_shape=new_shape,
        order=order,
        mode=mode,
        output=np.float32,
    )
    return out, step_arr, offset


def zoom_volume(
    data: np.ndarray, factors: Sequence[float], *, order: int = 3, anti_aliasing: bool = True
) -> np.ndarray:
    """Zoom a 3D array by ``factors`` keeping its FOV: shape ``round(n * f)`` per axis.

    Same alignment as :func:`upsampled_affine` (grid edges coincide); with integer factors the
    result's affine is ``upsampled_affine(affine, factors)``.
    """
    data = np.asarray(data)
    new_shape = tuple(max(1, int(round(n * f))) for n, f in zip(data.shape, factors))
    out, _, _ = resample_to_grid(data, new_shape, order=order, anti_aliasing=anti_aliasing)
    return out


def isotropic_resample(
    img,
    voxel_size: float = 1.0,
    *,
    order: int = 3,
    anti_aliasing: bool = True,
    keep_fov: bool = False,
):
    """Resample a nibabel image onto an isotropic grid with a correct affine.

    Works on the image's own voxel axes (no reorientation). Each axis gets
    ``round(n * size / voxel_size)`` voxels centred on the original field-of-view centre.

    Parameters
    ----------
    img
        A 3D nibabel image.
    voxel_size
        Target voxel edge in mm.
    order, anti_aliasing
        See :func:`resample_to_grid`.
    keep_fov
        ``False`` (default): voxels are exactly ``voxel_size`` and the FOV may change by less
        than one voxel. ``True``: the FOV edges are kept exactly and the voxel size is the
        closest one that tiles it (e.g. 0.9956 mm for 112 x 0.6667 mm).

    Returns
    -------
    nibabel image
        Same class as ``img`` (header copied), ``float32`` data.
    """
    from nibabel.affines import voxel_sizes

    from ddasr_nipype.data.io import new_image_like

    if voxel_size <= 0 or not np.isfinite(voxel_size):
        raise ValueError(f"voxel_size must be finite and > 0, got {voxel_size}")
    data = np.asarray(img.dataobj) if isinstance(img.dataobj, np.ndarray) else img.get_fdata(
        dtype=np.float32
    )
    if data.ndim != 3:
        raise ValueError(f"expected a 3D image, got shape {data.shape}")
    zooms = voxel_sizes(img.affine)
    new_shape = tuple(max(1, int(round(n * z / voxel_size))) for n, z in zip(data.shape, zooms))
    step = None if keep_fov else voxel_size / zooms
    out, step_arr, offset = resample_to_grid(
        data, new_shape, step, order=order, anti_aliasing=anti_aliasing
    )
    return new_image_like(out, resampled_affine(img.affine, step_arr, offset), img)
