"""Loading, validating and reorienting T1w volumes (NIfTI-1/2 and FreeSurfer MGH/MGZ).

Every volume entering the package goes through :func:`load_volume`, which reads the whole data
block (so truncated files fail here, not half-way through a workflow) and checks that the image is
usable for 2D slice-wise super-resolution. Problems raise
:class:`~ddasr_nipype.errors.InvalidImageError` whose message names the file and the problem.

The models work in RAS+ voxel order: :func:`to_ras` reorients a volume, :func:`from_ras` puts a
result (possibly upsampled, hence of another shape) back into the input's original orientation.
Both use only axis permutations and flips (no interpolation), so the round trip is exact.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)
from nibabel.spatialimages import HeaderDataError

from ddasr_nipype.errors import InvalidImageError

__all__ = [
    "ImageChecks",
    "DEFAULT_CHECKS",
    "SUPPORTED_SUFFIXES",
    "load_volume",
    "validate_array",
    "to_ras",
    "from_ras",
    "ras_voxel_sizes",
    "new_image_like",
    "header_warnings",
    "save_volume",
]

SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh")
RAS_ORNT = axcodes2ornt(("R", "A", "S"))


@dataclass(frozen=True)
class ImageChecks:
    """Limits applied by :func:`validate_array` / :func:`load_volume`.

    Attributes
    ----------
    min_voxel_mm, max_voxel_mm
        Voxel edges outside ``[min_voxel_mm, max_voxel_mm]`` are taken as a broken header
        (a 0 or 1e-3 mm voxel is a unit or scaling mistake, a 30 mm voxel is not a brain scan).
    max_anisotropy
        Largest allowed ratio between the longest and the shortest voxel edge. Thick-slice
        clinical scans reach 5-8; above 10 the in-plane SR of this package is meaningless.
    min_axis_voxels
        Every axis must have at least this many voxels (one 8x8 patch of the DSN).
    squeeze_singleton_4d
        A 4D image whose 4th axis has length 1 (common in exported NIfTI) is squeezed to 3D.
        A real 4D series (more than one volume) is always rejected: pick the volume first.
    """

    min_voxel_mm: float = 0.05
    max_voxel_mm: float = 20.0
    max_anisotropy: float = 10.0
    min_axis_voxels: int = 8
    squeeze_singleton_4d: bool = True

    def to_dict(self) -> dict:
        return {
            "min_voxel_mm": self.min_voxel_mm,
            "max_voxel_mm": self.max_voxel_mm,
            "max_anisotropy": self.max_anisotropy,
            "min_axis_voxels": self.min_axis_voxels,
            "squeeze_singleton_4d": self.squeeze_singleton_4d,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ImageChecks":
        return cls(**d)


DEFAULT_CHECKS = ImageChecks()


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def validate_array(
    data: np.ndarray,
    zooms: Sequence[float],
    path: str | Path | None = None,
    *,
    checks: ImageChecks = DEFAULT_CHECKS,
) -> np.ndarray:
    """Check an in-memory volume and return it as a 3D ``float32`` array.

    Parameters
    ----------
    data
        Voxel values, 3D (or 4D with a singleton 4th axis, squeezed when
        ``checks.squeeze_singleton_4d``).
    zooms
        Voxel sizes in mm of the three spatial axes (extra entries, e.g. a TR, are ignored).
    path
        The file the data came from, used only in error messages.
    checks
        The limits to apply (:class:`ImageChecks`).

    Raises
    ------
    InvalidImageError
        If the data are not 3D, too small, non-finite, constant, or the voxel sizes are absurd.
    """
    data = np.asanyarray(data)
    if data.ndim == 4 and data.shape[3] == 1 and checks.squeeze_singleton_4d:
        data = data[..., 0]
    if data.ndim != 3:
        if data.ndim == 4:
            problem = (
                f"4D image of shape {data.shape} ({data.shape[3]} volumes); a single 3D T1w "
                "volume is required (extract one volume first)"
            )
        else:
            problem = f"{data.ndim}D image of shape {data.shape}; a 3D volume is required"
        raise InvalidImageError(path, problem)
    if min(data.shape) < checks.min_axis_voxels:
        raise InvalidImageError(
            path,
            f"image of shape {data.shape} is too small: every axis needs at least "
            f"{checks.min_axis_voxels} voxels",
        )
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise InvalidImageError(path, f"unsupported voxel data type {data.dtype}")
    data = data.astype(np.float32, copy=False)
    finite = np.isfinite(data)
    if not finite.all():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(data.size - finite.sum() - n_nan)
        raise InvalidImageError(
            path, f"image contains non-finite voxels ({n_nan} NaN, {n_inf} Inf)"
        )
    vmin, vmax = float(data.min()), float(data.max())
    if vmin == vmax:
        what = "all zeros" if vmax == 0 else f"constant (every voxel = {vmax:g})"
        raise InvalidImageError(path, f"image is empty: {what}")

    zooms = np.asarray(zooms, dtype=float)[:3]
    if zooms.size != 3:
        raise InvalidImageError(path, f"expected 3 voxel sizes, got {_fmt(zooms)}")
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise InvalidImageError(
            path, f"invalid voxel size {_fmt(zooms)} mm: sizes must be finite and > 0"
        )
    if zooms.min() < checks.min_voxel_mm or zooms.max() > checks.max_voxel_mm:
        raise InvalidImageError(
            path,
            f"absurd voxel size {_fmt(zooms)} mm: expected every size within "
            f"[{checks.min_voxel_mm:g}, {checks.max_voxel_mm:g}] mm (broken header or units?)",
        )
    ratio = zooms.max() / zooms.min()
    if ratio > checks.max_anisotropy:
        raise InvalidImageError(
            path,
            f"voxel size {_fmt(zooms)} mm is too anisotropic (ratio {ratio:.3g} > "
            f"{checks.max_anisotropy:g})",
        )
    return data


def _check_affine(affine: np.ndarray, path) -> None:
    if not np.all(np.isfinite(affine)):
        raise InvalidImageError(path, "the image affine contains non-finite values")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InvalidImageError(path, "the image affine is singular (a zero voxel axis)")


GZIP_MAGIC = b"\x1f\x8b"


def _unreadable(path: Path, exc: OSError) -> InvalidImageError:
    return InvalidImageError(path, f"cannot read the file ({exc.strerror or exc}); check its permissions")


def _check_gzip_stream(path: Path) -> None:
    """Decompress a whole gzip stream to check its CRC and length.

    nibabel reads only the bytes it needs, so a damaged stream whose corruption still inflates
    (a flipped bit in a deflate block) would otherwise go unnoticed.
    """
    try:
        with open(path, "rb") as raw:
            magic = raw.read(2)
        if magic != GZIP_MAGIC:
            kind = ".mgz" if path.name.lower().endswith(".mgz") else ".nii.gz"
            raise InvalidImageError(
                path, f"not a gzip-compressed file (it starts with {magic!r}), so not a {kind} image"
            )
        with gzip.open(path, "rb") as fobj:
            while fobj.read(1 << 24):
                pass
    except PermissionError as exc:
        raise _unreadable(path, exc) from exc
    except (gzip.BadGzipFile, zlib.error, EOFError, OSError) as exc:
        raise InvalidImageError(
            path, f"corrupt or truncated gzip stream ({type(exc).__name__}: {exc})"
        ) from exc


def load_volume(path: str | Path, *, checks: ImageChecks = DEFAULT_CHECKS):
    """Read, fully decode and validate a 3D volume.

    Parameters
    ----------
    path
        A ``.nii``, ``.nii.gz``, ``.mgz`` or ``.mgh`` file.
    checks
        Validation limits (:class:`ImageChecks`).

    Returns
    -------
    nibabel image
        Same class as the file (``Nifti1Image``, ``Nifti2Image``, ``MGHImage``), holding the
        validated data in memory as ``float32`` (scaling slope/intercept applied), with the
        file's affine and a copy of its header. A 4D image with a singleton 4th axis is squeezed
        to 3D (see :class:`ImageChecks`).

    Raises
    ------
    InvalidImageError
        Missing, unreadable, corrupt or truncated file, or data failing :func:`validate_array`.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidImageError(path, "file not found")
    if not path.is_file():
        raise InvalidImageError(path, "not a regular file")
    name = path.name.lower()
    if not name.endswith(SUPPORTED_SUFFIXES):
        raise InvalidImageError(
            path, f"unsupported file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if name.endswith((".gz", ".mgz")):
        _check_gzip_stream(path)
    try:
        img = nib.load(str(path))
    except PermissionError as exc:
        raise _unreadable(path, exc) from exc
    except ImageFileError as exc:
        raise InvalidImageError(path, f"not a NIfTI or MGH image: no valid header ({exc})") from exc
    except HeaderDataError as exc:
        raise InvalidImageError(path, f"unreadable image header ({exc})") from exc
    except (gzip.BadGzipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise InvalidImageError(
            path, f"corrupt or truncated file ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image, nib.MGHImage)):
        raise InvalidImageError(path, f"unsupported image format {type(img).__name__}")
    try:
        # Forces decompression and reading of every byte: a truncated file fails here.
        raw = img.get_fdata(dtype=np.float32, caching="unchanged")
    except PermissionError as exc:
        raise _unreadable(path, exc) from exc
    except (gzip.BadGzipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise InvalidImageError(
            path,
            f"corrupt or truncated data block, cannot read {img.shape} voxels "
            f"({type(exc).__name__}: {exc})",
        ) from exc
    # Voxel sizes of the geometry actually used (the affine: sform/qform or MGH delta/Mdc);
    # nibabel silently replaces a zero NIfTI pixdim by 1, the affine is what matters.
    zooms = voxel_sizes(img.affine)
    data = validate_array(raw, zooms, path, checks=checks)
    _check_affine(img.affine, path)
    return new_image_like(data, img.affine, img)


def carried_qform(ref_header, affine: np.ndarray) -> np.ndarray:
    """The qform of a new image whose sform is ``affine``, derived from an image with ``ref_header``.

    When the reference's qform and sform disagree (both set, e.g. a registration written to the sform
    only), the world transform between them is carried over, so each of the new image's two affines
    stays aligned with the reference's same one; otherwise the qform is ``affine``.
    """
    affine = np.asarray(affine, dtype=float)
    if not (int(ref_header["qform_code"]) and int(ref_header["sform_code"])):
        return affine
    qform, sform = ref_header.get_qform(), ref_header.get_sform()
    if np.allclose(qform, sform, atol=1e-4):
        return affine
    return qform @ np.linalg.inv(sform) @ affine


def header_warnings(img) -> list[str]:
    """What the header leaves ambiguous, for the record (the run goes on).

    A NIfTI image whose qform and sform are both set but disagree: the sform (``img.affine``, as
    nibabel, FSL and this package read it) places the outputs; ITK-based tools (ANTs) read the qform,
    so they place the image elsewhere. (``save_volume`` outputs keep both, each aligned with the
    input's same one, :func:`carried_qform`; the app's derivatives get the sform's as both.)
    """
    header = getattr(img, "header", None)
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)) or header is None:
        return []
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    if not (qcode and scode):
        return []
    qform, sform = header.get_qform(), header.get_sform()
    if np.allclose(qform, sform, atol=1e-4):
        return []
    corners = np.array([[i, j, k, 1.0] for i in (0, img.shape[0] - 1) for j in (0, img.shape[1] - 1)
                        for k in (0, img.shape[2] - 1)])
    shift = float(np.max(np.linalg.norm((corners @ qform.T - corners @ sform.T)[:, :3], axis=1)))
    return [f"the qform and the sform of the input header disagree (by up to {shift:.3g} mm at its corners): "
            f"the sform (code {scode}) is used, as nibabel and FSL read it; tools that read the qform "
            f"(code {qcode}), such as ANTs, place the image elsewhere"]


def new_image_like(data: np.ndarray, affine: np.ndarray, ref):
    """A new in-memory image of ``ref``'s class with ``data``, ``affine`` and ``ref``'s header.

    The header's shape, voxel sizes and data type follow ``data`` and ``affine``; the scaling
    slope/intercept are reset (the data are stored as they are, ``float32`` by default).
    """
    data = np.asanyarray(data)
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    header = ref.header.copy()
    header.set_data_dtype(data.dtype)
    img = ref.__class__(data, affine, header)
    if isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        # Keep the reference's sform/qform codes (scanner, aligned, MNI...) for the new affine.
        scode, qcode = int(ref.header["sform_code"]), int(ref.header["qform_code"])
        if scode or qcode:
            img.header.set_sform(affine, code=scode)
            img.header.set_qform(carried_qform(ref.header, affine), code=qcode)
    if hasattr(img.header, "set_slope_inter"):
        try:
            img.header.set_slope_inter(1.0, 0.0)
        except (HeaderDataError, TypeError):  # pragma: no cover - headers without scaling
            pass
    return img


def save_volume(img, path: str | Path) -> Path:
    """Write ``img`` to ``path`` (format from the suffix), through a temporary file in the same
    folder then an atomic rename, so a crash never leaves a half-written output (a failed write
    removes its temporary file)."""
    from ddasr_nipype.fileio import atomic_output

    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
    with atomic_output(path, suffix=suffix) as tmp:
        nib.save(img, str(tmp))
    return path


def _image_data(img) -> np.ndarray:
    """The image's data without copying when it already is an array in memory."""
    if isinstance(img.dataobj, np.ndarray):
        return img.dataobj
    return img.get_fdata(dtype=np.float32)


def _reorient(img, transform: np.ndarray):
    """Apply an orientation transform (permutation + flips) to an image and its affine."""
    data = _image_data(img)
    new_data = apply_orientation(data, transform)
    new_affine = img.affine @ inv_ornt_aff(transform, data.shape)
    out = new_image_like(new_data, new_affine, img)
    # The frequency/phase/slice encoding axes follow the permutation (as nibabel's as_reoriented).
    if hasattr(img.header, "get_dim_info"):
        dims = [None if d is None else int(transform[d, 0]) for d in img.header.get_dim_info()]
        out.header.set_dim_info(*dims)
    return out


def to_ras(img):
    """Reorient an image to RAS+ voxel order (closest canonical axes, no resampling).

    Returns
    -------
    img_ras
        The reoriented image (same class, header copied); its data array may be a *view* of
        the input's data (flips and permutations need no copy): copy before writing in place.
    orig_ornt
        The input's orientation (nibabel ``ornt`` array, ``[[axis, flip], ...]``) to give to
        :func:`from_ras`.
    """
    orig_ornt = io_orientation(img.affine)
    transform = ornt_transform(orig_ornt, RAS_ORNT)
    return _reorient(img, transform), orig_ornt


def from_ras(img_ras, orig_ornt: np.ndarray):
    """Put a RAS+ image back into the orientation ``orig_ornt`` returned by :func:`to_ras`.

    The transform depends only on orientations, so ``img_ras`` may have another shape than the
    original (an upsampled result); the flip offsets use ``img_ras``'s own shape.
    """
    transform = ornt_transform(RAS_ORNT, np.asarray(orig_ornt))
    return _reorient(img_ras, transform)


def ras_voxel_sizes(img_or_affine) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the RAS voxel axes :func:`to_ras` would produce, read from the
    affine alone (no data are loaded): e.g. ``(2, 2, 2)`` ordered as (R-L, A-P, S-I)."""
    affine = np.asarray(getattr(img_or_affine, "affine", img_or_affine), dtype=float)
    ornt = io_orientation(affine)
    zooms = voxel_sizes(affine)
    out = [0.0, 0.0, 0.0]
    for axis, (ras_axis, _) in enumerate(ornt):
        out[int(ras_axis)] = float(zooms[axis])
    return tuple(out)  # type: ignore[return-value]
