"""Data consistency of a super-resolved image with the scan it was made from.

A super-resolution (SR) network can invent detail. Where its output is supported by the acquired data,
degrading the output back to the input's grid gives the input again, up to the input's noise; where it
is not, it does not. This module computes that check as a **z-map on the input grid**::

    z = (D(SR) - input) / sigma

``D`` re-degrades the SR output to the input grid and ``sigma`` is the input's noise level, so
``|z| > 3`` marks input voxels whose value the output contradicts by more than three noise standard
deviations (0.27 % of voxels under pure Gaussian noise). ``z > 0``: the output is brighter there than
the data allow; ``z < 0``: darker. Pure numpy/scipy; only :func:`dsn_consistency` runs torch (the
bundle's DSN).

Re-degradation (the physics model)
    The output grid nests in the input's (:func:`ddasr_nipype.data.slicing.upsampled_affine`: each
    input voxel covers exactly ``s0 x s1 x s2`` output voxels, outer edges aligned), so the model that
    matches the up-sampling is partial-volume averaging: **an input voxel is the mean of the output
    voxels it contains** (``model="area"``, a box point-spread function; the ``area`` degradation of
    :mod:`ddasr_nipype.degradations`, which the shipped DSN also refines). It is chosen over
    k-space truncation (``model="kspace"``, a sinc point-spread function) because it is *local*: a
    disagreement at one place changes the residual of the input voxels that cover it and nowhere else,
    which is what a map meant to show *where* the output disagrees needs; the sinc kernel of k-space
    truncation spreads any local disagreement over the whole line as ringing (a 2 mm fake lesion: with
    ``area`` the map changes in 47 voxels, none further than 4 voxels from it; with ``kspace`` in 361,
    26 % of the change further away). It is also the only one
    of the two that does not assume how the scan was acquired: k-space truncation is exact only for
    the frequency- and phase-encoded axes of a scan acquired at this resolution, while many low-
    resolution scans (the 2 mm IXI scans, for one) were resampled after acquisition. On the bicubic
    interpolation of area-downsampled real volumes the two models give nearly the same figures (the
    tests and ``docs/consistency.md`` give them).

Noise level (:func:`estimate_noise`)
    The background cannot be used: many sites (IXI among them) zero it. The estimate uses the head
    only: the input is filtered with Immerkaer's Laplacian-difference kernel in 3D (the outer product
    of ``[1, -2, 1]`` along each axis, scaled to unit norm), which cancels intensities that are linear
    along any one axis, so Gaussian noise of standard deviation ``sigma`` leaves a residual of standard
    deviation ``sigma``. Anatomical edges leave more. The local standard deviation of that residual
    over 5x5x5 windows, inside the head eroded so that neither the kernel nor the window crosses its
    edge, is computed everywhere, and ``sigma`` is the **mode** of those local values (the half-sample
    mode, a deterministic robust mode estimator): the level of the homogeneous tissue, which makes up
    most of a head, rather than of its edges. A median absolute deviation over the same voxels (also
    recorded, ``mad_sigma``) reads anatomy as noise: it was 16 % (a 1 mm Siemens MPRAGE averaged to
    1 x 2 x 2 mm) to 58 % (a 2 mm IXI scan) above the mode, and would hide disagreements. Limits: one
    level for the whole volume (parallel imaging makes noise vary in space), and noise that was
    smoothed by resampling reads lower than its per-voxel standard deviation (the map then errs
    towards flagging).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from .data.slicing import PLANES, plane_axis, upsampled_affine

__all__ = [
    "PHYSICS_MODELS",
    "THRESHOLD",
    "NoiseEstimate",
    "Cluster",
    "ZMapSummary",
    "ConsistencyResult",
    "grid_factors",
    "redegrade",
    "estimate_noise",
    "half_sample_mode",
    "zmap",
    "summarize_zmap",
    "resummarize",
    "upsample_nearest",
    "physics_consistency",
    "dsn_consistency",
    "dsn_plane",
]

LOGGER = logging.getLogger("ddasr_nipype")

#: re-degradation models of :func:`redegrade` (the first is the default, see the module docstring)
PHYSICS_MODELS = ("area", "kspace")
#: ``|z|`` above which an input voxel counts as contradicted by the output
THRESHOLD = 3.0
#: edge of the cubic window over which the local noise level is measured (voxels)
NOISE_WINDOW = 5
#: fewer head voxels than this after erosion: the estimate falls back to a less eroded mask
MIN_NOISE_VOXELS = 1000
#: the DSN map is flagged when the input's in-plane voxels differ from the DSN's training LR by more
#: than this fraction (the rule of :func:`ddasr_nipype.inference.degrade_image`)
DSN_VOXEL_TOLERANCE = 0.1
#: the DSN map is flagged when its median z in the mask is further than this from 0: the DSN then
#: reproduces another contrast or intensity scale than this scan's (another site)
DSN_OFFSET_TOLERANCE = 1.0


# --------------------------------------------------------------------------------------------
# Grids and re-degradation


def grid_factors(lr_shape: Sequence[int], lr_affine: np.ndarray, sr_shape: Sequence[int],
                 sr_affine: np.ndarray, *, atol_mm: float = 1e-2) -> tuple[int, int, int]:
    """The integer up-sampling factor of each axis from an input grid to an SR grid on the same axes.

    The SR grid must be the field-of-view-preserving up-sampled grid of the input
    (:func:`~ddasr_nipype.data.slicing.upsampled_affine`): every axis ``n * s`` voxels for an integer
    ``s >= 1``, and the affine within ``atol_mm`` of the up-sampled one. Raises ``ValueError`` saying
    which of the two does not hold.
    """
    lr_shape = tuple(int(n) for n in lr_shape[:3])
    sr_shape = tuple(int(n) for n in sr_shape[:3])
    if len(lr_shape) != 3 or len(sr_shape) != 3:
        raise ValueError(f"need two 3D grids, got shapes {lr_shape} and {sr_shape}")
    if any(m % n or m < n for n, m in zip(lr_shape, sr_shape)):
        raise ValueError(
            f"the super-resolved grid {sr_shape} is not an up-sampled grid of the input's {lr_shape}: "
            "every axis must hold a whole multiple (1x, 2x, ...) of the input's voxels; was the output "
            "made from this input, and not resliced or cropped since?")
    factors = tuple(m // n for n, m in zip(lr_shape, sr_shape))
    expected = upsampled_affine(np.asarray(lr_affine, dtype=float), factors)
    error = float(np.max(np.abs(np.asarray(sr_affine, dtype=float) - expected)))
    if not error <= atol_mm:
        raise ValueError(
            f"the super-resolved image has the shape of the input's x{factors} grid but not its position "
            f"or orientation: its affine differs from the field-of-view-preserving one by up to "
            f"{error:.3g} mm (tolerance {atol_mm:g} mm); was it made from another scan, or resliced?")
    return factors  # type: ignore[return-value]


def _area_reduce(data: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """The mean of each ``factors`` block (no clipping: any intensity scale)."""
    out = np.asarray(data, dtype=np.float64)
    for axis, factor in enumerate(factors):
        if factor > 1:
            n = out.shape[axis] // factor
            out = out.reshape(out.shape[:axis] + (n, factor) + out.shape[axis + 1:]).mean(axis=axis + 1)
    return out


def redegrade(sr: np.ndarray, factors: Sequence[int], model: str = "area") -> np.ndarray:
    """Re-degrade an SR volume to the input grid it was up-sampled from by ``factors``.

    ``area``: the mean of the ``factors`` block of output voxels each input voxel covers.
    ``kspace``: the central ``n`` frequencies of the ``n * s`` along each up-sampled axis, magnitude
    (:func:`ddasr_nipype.degradations.kspace_resample`). Returns float64.
    """
    sr = np.asarray(sr)
    factors = tuple(int(f) for f in factors)
    if sr.ndim != 3 or len(factors) != 3 or min(factors) < 1:
        raise ValueError(f"need a 3D volume and three integer factors >= 1, got {sr.shape} and {factors}")
    if any(n % f for n, f in zip(sr.shape, factors)):
        raise ValueError(f"shape {sr.shape} is not a multiple of the factors {factors}")
    if model == "area":
        return _area_reduce(sr, factors)
    if model == "kspace":
        from .degradations import kspace_resample

        axes = tuple(a for a in range(3) if factors[a] > 1)
        if not axes:
            return sr.astype(np.float64)
        return kspace_resample(sr, [sr.shape[a] // factors[a] for a in axes], axes=axes)
    raise ValueError(f"model must be one of {PHYSICS_MODELS}, got {model!r}")


def upsample_nearest(data: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Each voxel repeated ``factors`` times along each axis: a map of the input grid shown on the
    SR grid (every output voxel takes the value of the input voxel that contains it)."""
    out = np.asarray(data)
    for axis, factor in enumerate(factors):
        if factor > 1:
            out = np.repeat(out, int(factor), axis=axis)
    return out


# --------------------------------------------------------------------------------------------
# Noise


@dataclass(frozen=True)
class NoiseEstimate:
    """The input's noise level (:func:`estimate_noise`), in the input's intensity units."""

    sigma: float
    method: str
    #: the median-absolute-deviation estimate over the same voxels (recorded for comparison)
    mad_sigma: float
    n_voxels: int
    window: int = NOISE_WINDOW

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_NOISE_METHOD = ("half-sample mode of the local (5x5x5) standard deviation of the 3D Laplacian-difference "
                 "(Immerkaer) residual inside the eroded head")


def half_sample_mode(values: np.ndarray) -> float:
    """The half-sample mode (Bickel & Fruehwirth 2006) of a 1D sample: repeatedly keep the half of the
    sorted values with the smallest range. Deterministic and robust to up to half of outliers."""
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("no values to take a mode of")
    while v.size > 3:
        half = (v.size + 1) // 2
        widths = v[half - 1:] - v[:v.size - half + 1]
        start = int(np.argmin(widths))
        v = v[start:start + half]
    if v.size == 3:  # the mean of the closer pair; the middle value when both gaps are equal
        low, high = v[1] - v[0], v[2] - v[1]
        return float(v[:2].mean() if low < high else v[1:].mean() if low > high else v[1])
    return float(v.mean())


def _laplacian_residual(data: np.ndarray) -> np.ndarray:
    """``data`` filtered with the unit-norm 3D Laplacian-difference kernel (white noise keeps its sigma)."""
    from scipy import ndimage

    k = np.array([1.0, -2.0, 1.0])
    out = np.asarray(data, dtype=np.float64)
    for axis in range(3):
        out = ndimage.correlate1d(out, k, axis=axis, mode="nearest")
    return out / math.sqrt(6.0 ** 3)


def estimate_noise(data: np.ndarray, head: np.ndarray | None = None) -> NoiseEstimate:
    """Robust noise standard deviation of a 3D scan (method in the module docstring).

    ``head``: where to measure (default: the Otsu head mask of ``data``). Raises ``ValueError`` for a
    volume with no measurable noise (a level of 0: noise-free synthetic data).
    """
    from scipy import ndimage

    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {data.shape}")
    if head is None:
        from .metrics.volume import foreground_mask

        head = foreground_mask(data)
    head = np.asarray(head, dtype=bool)
    if head.shape != data.shape:
        raise ValueError(f"head mask {head.shape} and volume {data.shape} differ")
    if min(data.shape) < 3 or head.sum() < 27:
        raise ValueError(f"volume {data.shape} with {int(head.sum())} head voxels is too small to "
                         "estimate its noise level")
    residual = _laplacian_residual(data)
    local = np.sqrt(np.maximum(ndimage.uniform_filter(residual ** 2, NOISE_WINDOW, mode="nearest"), 0.0))
    inner = head
    for erosion in (1 + NOISE_WINDOW // 2, 1, 0):  # the kernel and the window inside the head
        inner = ndimage.binary_erosion(head, iterations=erosion) if erosion else head
        if inner.sum() >= MIN_NOISE_VOXELS:
            break
    values = residual[inner]
    mad = 1.4826 * float(np.median(np.abs(values - np.median(values))))
    sigma = half_sample_mode(local[inner])
    method = _NOISE_METHOD
    if not sigma > 0:  # e.g. a head of constant (clipped) intensity
        sigma, method = mad, "median absolute deviation of the 3D Laplacian-difference residual in the head"
    if not sigma > 0:
        raise ValueError("the input has no measurable noise (noise level 0: a synthetic or noise-free "
                         "image?); a consistency z-map needs the input's noise level")
    return NoiseEstimate(sigma=float(sigma), method=method, mad_sigma=mad, n_voxels=int(inner.sum()))


# --------------------------------------------------------------------------------------------
# z-maps and their summary


def zmap(lr: np.ndarray, redegraded: np.ndarray, sigma: float) -> np.ndarray:
    """``(redegraded - lr) / sigma`` as float32."""
    lr = np.asarray(lr, dtype=np.float64)
    redegraded = np.asarray(redegraded, dtype=np.float64)
    if lr.shape != redegraded.shape:
        raise ValueError(f"re-degraded output {redegraded.shape} and input {lr.shape} differ")
    if not sigma > 0:
        raise ValueError(f"noise level must be > 0, got {sigma}")
    return ((redegraded - lr) / float(sigma)).astype(np.float32)


@dataclass(frozen=True)
class Cluster:
    """A connected set (6-neighbourhood: voxels sharing a face) of mask voxels with ``|z|`` above the
    threshold."""

    voxels: int
    volume_mm3: float
    peak_z: float
    peak_mm: tuple[float, float, float]
    centre_mm: tuple[float, float, float]
    #: the same in voxel indices of the array the summary was computed on
    peak_index: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"voxels": self.voxels, "volume_mm3": self.volume_mm3, "peak_z": self.peak_z,
                "peak_mm": list(self.peak_mm), "centre_mm": list(self.centre_mm),
                "peak_index": list(self.peak_index)}


@dataclass(frozen=True)
class ZMapSummary:
    """The figures of a z-map inside a mask (the sidecar's and the report's)."""

    redegradation: str
    mask: str
    threshold: float
    mask_voxels: int
    rms_z: float
    median_z: float
    fraction_above: float
    n_clusters: int
    largest_cluster: Cluster | None
    noise_sigma: float
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "largest_cluster"}
        out["notes"] = list(self.notes)
        out["largest_cluster"] = None if self.largest_cluster is None else self.largest_cluster.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ZMapSummary":
        data = dict(data)
        cluster = data.pop("largest_cluster", None)
        if cluster is not None:
            cluster = Cluster(**{**cluster, "peak_mm": tuple(cluster["peak_mm"]),
                                 "centre_mm": tuple(cluster["centre_mm"]),
                                 "peak_index": tuple(cluster["peak_index"])})
        data["notes"] = tuple(data.get("notes", ()))
        return cls(largest_cluster=cluster, **data)


def summarize_zmap(z: np.ndarray, mask: np.ndarray, affine: np.ndarray, *, threshold: float = THRESHOLD,
                   redegradation: str = "area", mask_name: str = "brain", noise_sigma: float = float("nan"),
                   notes: Sequence[str] = ()) -> ZMapSummary:
    """RMS and median of ``z`` in ``mask``, the fraction of mask voxels with ``|z| > threshold``, and the
    largest face-connected cluster of them (size, peak, centre of mass in world mm through ``affine``)."""
    from nibabel.affines import apply_affine, voxel_sizes
    from scipy import ndimage

    z = np.asarray(z, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if z.shape != mask.shape:
        raise ValueError(f"z-map {z.shape} and mask {mask.shape} differ")
    if not mask.any():
        raise ValueError(f"the {mask_name} mask is empty: no voxel to summarize the z-map over")
    values = z[mask]
    above = (np.abs(z) > threshold) & mask
    labels, n_clusters = ndimage.label(above)  # face neighbours: diagonal speckle does not chain
    largest = None
    if n_clusters:
        sizes = np.bincount(labels.ravel())[1:]
        label = int(np.argmax(sizes)) + 1
        members = labels == label
        index = np.argwhere(members)
        peak_index = tuple(int(i) for i in index[int(np.argmax(np.abs(z[members])))])
        centre = ndimage.center_of_mass(members)
        voxel_mm3 = float(np.prod(voxel_sizes(affine)))
        largest = Cluster(
            voxels=int(sizes[label - 1]),
            volume_mm3=round(float(sizes[label - 1]) * voxel_mm3, 3),
            peak_z=round(float(z[peak_index]), 3),
            peak_mm=tuple(round(float(v), 2) for v in apply_affine(affine, peak_index)),
            centre_mm=tuple(round(float(v), 2) for v in apply_affine(affine, centre)),
            peak_index=peak_index,
        )
    return ZMapSummary(
        redegradation=redegradation, mask=mask_name, threshold=float(threshold),
        mask_voxels=int(mask.sum()), rms_z=round(float(np.sqrt(np.mean(values ** 2))), 4),
        median_z=round(float(np.median(values)), 4),
        fraction_above=round(float(above.sum() / mask.sum()), 6), n_clusters=int(n_clusters),
        largest_cluster=largest, noise_sigma=float(noise_sigma), notes=tuple(notes),
    )


# --------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class ConsistencyResult:
    """A z-map on the input grid (``zmap_img``), its copy on the SR grid (``zmap_sr_img``, every output
    voxel with the value of the input voxel that contains it), both in their own file's orientation,
    and the summary of the map in the mask."""

    zmap_img: Any
    zmap_sr_img: Any
    summary: ZMapSummary
    noise: NoiseEstimate
    factors: tuple[int, int, int]


@dataclass(frozen=True)
class _Prepared:
    lr: np.ndarray
    sr: np.ndarray
    lr_ras: Any
    sr_ras: Any
    lr_ornt: np.ndarray
    sr_ornt: np.ndarray
    factors: tuple[int, int, int]
    mask: np.ndarray
    mask_name: str


def _prepare(lr_img, sr_img, mask_img=None, *, mask_name: str = "brain") -> _Prepared:
    """Both images in RAS, the grid factors checked, and the mask on the input grid: a mask on the SR
    grid is averaged over each input voxel (kept where at least half of it is inside); without one the
    input's Otsu head mask is used (``mask_name`` "head")."""
    from .data.io import to_ras
    from .metrics.volume import foreground_mask

    lr_ras, lr_ornt = to_ras(lr_img)
    sr_ras, sr_ornt = to_ras(sr_img)
    factors = grid_factors(lr_ras.shape, lr_ras.affine, sr_ras.shape, sr_ras.affine)
    lr = np.asarray(lr_ras.dataobj, dtype=np.float64)
    sr = np.asarray(sr_ras.dataobj, dtype=np.float64)
    if mask_img is None:
        mask, mask_name = foreground_mask(lr), "head"
    else:
        mask_ras, _ = to_ras(mask_img)
        mask_data = np.asarray(mask_ras.dataobj) > 0
        if mask_data.shape == sr.shape and np.allclose(mask_ras.affine, sr_ras.affine, atol=1e-2):
            mask = _area_reduce(mask_data, factors) >= 0.5
        elif mask_data.shape == lr.shape and np.allclose(mask_ras.affine, lr_ras.affine, atol=1e-2):
            mask = mask_data
        else:
            raise ValueError(f"the mask's grid {mask_data.shape} is neither the input's {lr.shape} nor the "
                             f"super-resolved image's {sr.shape} (or its affine differs)")
    return _Prepared(lr=lr, sr=sr, lr_ras=lr_ras, sr_ras=sr_ras, lr_ornt=lr_ornt, sr_ornt=sr_ornt,
                     factors=factors, mask=mask, mask_name=mask_name)


def _result(prep: _Prepared, z: np.ndarray, summary: ZMapSummary, noise: NoiseEstimate) -> ConsistencyResult:
    from .data.io import from_ras, new_image_like

    z_lr = from_ras(new_image_like(z.astype(np.float32), prep.lr_ras.affine, prep.lr_ras), prep.lr_ornt)
    z_sr = from_ras(new_image_like(upsample_nearest(z, prep.factors).astype(np.float32), prep.sr_ras.affine,
                                   prep.sr_ras), prep.sr_ornt)
    for img in (z_lr, z_sr):
        img.header.set_intent("z score", name="consistency")
    return ConsistencyResult(zmap_img=z_lr, zmap_sr_img=z_sr, summary=summary, noise=noise, factors=prep.factors)


def physics_consistency(lr_img, sr_img, mask_img=None, *, model: str = "area", threshold: float = THRESHOLD,
                        mask_name: str = "brain", noise: NoiseEstimate | None = None) -> ConsistencyResult:
    """The consistency z-map of ``sr_img`` with ``lr_img``, re-degraded with the physics ``model``.

    ``mask_img`` (on either grid; default: the input's Otsu head mask) is where the figures are
    computed (``mask_name`` names it in them). ``noise`` defaults to :func:`estimate_noise` of the input.
    Raises ``ValueError`` when ``sr_img`` is not on an up-sampled grid of ``lr_img`` (:func:`grid_factors`).
    """
    prep = _prepare(lr_img, sr_img, mask_img, mask_name=mask_name)
    noise = noise or estimate_noise(prep.lr)
    z = zmap(prep.lr, redegrade(prep.sr, prep.factors, model), noise.sigma)
    summary = summarize_zmap(z, prep.mask, prep.lr_ras.affine, threshold=threshold, redegradation=model,
                             mask_name=prep.mask_name, noise_sigma=noise.sigma)
    return _result(prep, z, summary, noise)


def dsn_plane(factors: Sequence[int], bundle) -> str:
    """The plane the bundle's DSN degrades an output up-sampled by ``factors`` (RAS axes) in: the one whose
    two in-plane axes are both up-sampled by the DSN's scale; the bundle's own plane when several are
    (an isotropic ``--planes all`` output). Raises ``ValueError`` when none is."""
    scale = int(bundle.scale)
    fits = [p for p in PLANES if all(factors[a] == scale for a in range(3) if a != plane_axis(p))]
    if not fits:
        raise ValueError(f"the DSN of {bundle.name!r} degrades by {scale} on the two axes of a plane; the "
                         f"output is up-sampled by {tuple(factors)} (RAS axes), which it cannot undo")
    return bundle.plane if bundle.plane in fits else fits[0]


def _dsn_notes(prep: _Prepared, bundle, plane: str) -> list[str]:
    from .data.io import ras_voxel_sizes

    notes = []
    if plane != bundle.plane:
        notes.append(f"the DSN of {bundle.name!r} was trained on {bundle.plane} slices and is applied to "
                     f"{plane} slices here")
    trained = (getattr(bundle, "preprocessing", None) or {}).get("lr_voxel_size")
    sizes = ras_voxel_sizes(prep.lr_ras)
    inplane = [sizes[a] for a in range(3) if a != plane_axis(plane)]
    shown = " x ".join(f"{v:.3g}" for v in inplane)
    if trained is None:
        notes.append(f"the bundle {bundle.name!r} does not record the LR voxel size its DSN was trained on: "
                     "whether it fits this scan's resolution is unknown")
    elif any(abs(v - float(trained)) > DSN_VOXEL_TOLERANCE * float(trained) for v in inplane):
        notes.append(f"the input's {plane} voxels ({shown} mm) are far from the {float(trained):.3g} mm LR the "
                     f"DSN of {bundle.name!r} was trained on: its degradation does not model this scan; "
                     "rely on the physics map")
    return notes


_DSN_OFFSET_NOTE = "the DSN's re-degradation is offset from this scan"


def _dsn_offset_note(summary: ZMapSummary) -> str | None:
    """The note of a DSN map whose median z in the mask is beyond ``DSN_OFFSET_TOLERANCE``, else None."""
    if abs(summary.median_z) <= DSN_OFFSET_TOLERANCE:
        return None
    return (f"{_DSN_OFFSET_NOTE} by a median of {summary.median_z:+.2f} noise levels in the {summary.mask}: it "
            "reproduces another contrast or intensity scale (another site?); read its map with care, the "
            "physics map does not depend on it")


def resummarize(zmap_img, mask_img, summary: ZMapSummary, *, mask_name: str = "brain") -> ZMapSummary:
    """``summary`` of the z-map ``zmap_img`` (input grid, any orientation) computed again in ``mask_img``
    (on the same grid, any orientation): what :func:`physics_consistency` / :func:`dsn_consistency` give
    with that mask, for a map computed before the mask existed (the app computes the maps beside the brain
    extraction). The DSN map's offset note follows the new mask; its other notes are kept. Raises
    ``ValueError`` when the grids differ."""
    from dataclasses import replace

    from .data.io import to_ras

    z_ras, _ = to_ras(zmap_img)
    mask_ras, _ = to_ras(mask_img)
    if mask_ras.shape[:3] != z_ras.shape[:3] or not np.allclose(mask_ras.affine, z_ras.affine, atol=1e-2):
        raise ValueError(f"the mask's grid {mask_ras.shape[:3]} is not the z-map's {z_ras.shape[:3]} (or its "
                         "affine differs)")
    new = summarize_zmap(np.asarray(z_ras.dataobj, dtype=np.float64), np.asarray(mask_ras.dataobj) > 0,
                         z_ras.affine, threshold=summary.threshold, redegradation=summary.redegradation,
                         mask_name=mask_name, noise_sigma=summary.noise_sigma)
    notes = list(summary.notes)
    if summary.redegradation == "dsn":
        notes = [note for note in notes if not note.startswith(_DSN_OFFSET_NOTE)]
        offset = _dsn_offset_note(new)
        if offset:
            LOGGER.warning("consistency: %s", offset)
            notes.append(offset)
    return replace(new, notes=tuple(notes))


def dsn_consistency(lr_img, sr_img, bundle, mask_img=None, *, threshold: float = THRESHOLD,
                    mask_name: str = "brain", noise: NoiseEstimate | None = None, device: str = "cpu",
                    batch_size: int = 4) -> ConsistencyResult:
    """The consistency z-map of ``sr_img`` with ``lr_img``, re-degraded with the bundle's DSN.

    The DSN learned how the site of its training LR scans degrades an image
    (:func:`ddasr_nipype.inference.degrade_image`, with the input itself as the reference LR of the
    site). It degrades by its scale in one plane (:func:`dsn_plane`); other up-sampled axes (an isotropic
    output) are then averaged back (``area``). The summary's ``notes`` say when the input's voxel size
    is far from the DSN's training LR, or when the DSN's result is offset from the input as a whole (a
    median z beyond ``DSN_OFFSET_TOLERANCE``: it reproduces another site's contrast). Raises
    :class:`~ddasr_nipype.errors.ModelBundleError` for a bundle without a DSN.
    """
    from .errors import ModelBundleError
    from .inference import degrade_image

    if not bundle.has_dsn:
        raise ModelBundleError(f"model {bundle.name!r} has no down-sampling network (dsn.pt): only the physics "
                               "consistency map can be computed with it")
    prep = _prepare(lr_img, sr_img, mask_img, mask_name=mask_name)
    noise = noise or estimate_noise(prep.lr)
    plane = dsn_plane(prep.factors, bundle)
    degraded_img, _ = degrade_image(prep.sr_ras, bundle, reference_lr=prep.lr_ras, plane=plane, device=device,
                                    batch_size=batch_size)
    degraded = np.asarray(degraded_img.dataobj, dtype=np.float64)  # RAS in, RAS out
    rest = tuple(prep.factors[a] if a == plane_axis(plane) else 1 for a in range(3))
    degraded = redegrade(degraded, rest, "area")
    z = zmap(prep.lr, degraded, noise.sigma)
    notes = _dsn_notes(prep, bundle, plane)
    summary = summarize_zmap(z, prep.mask, prep.lr_ras.affine, threshold=threshold, redegradation="dsn",
                             mask_name=prep.mask_name, noise_sigma=noise.sigma)
    offset = _dsn_offset_note(summary)
    if offset:
        notes.append(offset)
    for note in notes:
        LOGGER.warning("consistency: %s", note)
    from dataclasses import replace

    return _result(prep, z, replace(summary, notes=tuple(notes)), noise)
