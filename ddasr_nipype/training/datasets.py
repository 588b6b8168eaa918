"""Training data: BIDS queries, volume preparation, slice sets and patch sampling.

The DSN learns from *unpaired* data: HR patches and LR patches are drawn independently
(:class:`SliceSet`). The SRN learns from the pairs the DSN synthesizes (:class:`PairSet`), cropped
aligned (an LR patch at ``(i, j)`` goes with the HR patch at ``(s*i, s*j)``).

Every random draw goes through an explicit :class:`numpy.random.Generator` owned by the trainer, so
a checkpoint that stores the generator's state resumes the exact same sequence of patches.
Slice sets are stored losslessly as uncompressed ``float32`` ``.npz`` archives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ddasr_nipype.errors import TrainingDataError
from ddasr_nipype.fileio import atomic_output
from ddasr_nipype.training.config import DataConfig

__all__ = [
    "SliceStack",
    "SliceSet",
    "PairSet",
    "find_t1w",
    "load_filters",
    "prepare_volume_slices",
    "prepare_hr_stacks",
    "prepare_datasets",
    "center_crop_to_multiple",
    "array_digest",
]


def array_digest(arrays: Iterable[np.ndarray], *labels: object) -> str:
    """sha256 of ``labels`` (as JSON) and of each array's dtype, shape and bytes: a content identity
    for cached slices and pairs (a few seconds per GB)."""
    import hashlib

    digest = hashlib.sha256(json.dumps(labels, sort_keys=True, default=str).encode())
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


@dataclass
class SliceStack:
    """The kept slices of one volume: ``[N, H, W]`` float32, normalised to about ``[0, 1]``."""

    name: str
    slices: np.ndarray
    voxel_size: float
    normalization: dict = field(default_factory=dict)
    #: a skull-stripped brain (``DataConfig.brain_only_below_ml``): the SRN learns only inside it
    brain_only: bool = False


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_output(path, suffix=".npz") as tmp:  # np.savez adds .npz to other names
        np.savez(tmp, **arrays)


def _stack_fraction(x: np.ndarray, threshold: float) -> np.ndarray:
    return (x > threshold).mean(axis=(-2, -1))


class SliceSet:
    """Slices of several volumes, for unpaired patch sampling."""

    def __init__(self, stacks: Sequence[SliceStack]):
        self.stacks = [s for s in stacks if len(s.slices)]
        if not self.stacks:
            raise TrainingDataError("no usable slices (every slice was skipped as background)")
        counts = np.array([len(s.slices) for s in self.stacks])
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        self._digest: str | None = None

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def min_shape(self) -> tuple[int, int]:
        return (min(s.slices.shape[1] for s in self.stacks), min(s.slices.shape[2] for s in self.stacks))

    def slice(self, index: int) -> np.ndarray:
        k = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return self.stacks[k].slices[index - self._offsets[k]]

    def iter_slices(self) -> Iterable[tuple[int, int, np.ndarray]]:
        """Yield ``(stack index, slice index, slice)``."""
        for k, stack in enumerate(self.stacks):
            for n, sl in enumerate(stack.slices):
                yield k, n, sl

    def check_patch_size(self, size: int, what: str) -> None:
        """Raise :class:`TrainingDataError` naming the volumes whose slices are smaller than ``size``."""
        small = [f"{s.name} ({s.slices.shape[1]}x{s.slices.shape[2]})" for s in self.stacks
                 if min(s.slices.shape[1:]) < size]
        if small:
            raise TrainingDataError(
                f"{what} slices are too small for the patch size {size}x{size}: {', '.join(small)}; "
                "lower --patch-size or use larger images"
            )

    def sample_patches(self, rng: np.random.Generator, batch_size: int, size: int, *,
                       threshold: float = 0.1, min_fraction: float = 0.0, tries: int = 10) -> np.ndarray:
        """Draw ``batch_size`` random ``size x size`` patches, shape ``[B, 1, size, size]``.

        A patch is redrawn up to ``tries`` times while less than ``min_fraction`` of it is above
        ``threshold`` (mostly air).
        """
        out = np.empty((batch_size, 1, size, size), dtype=np.float32)
        for b in range(batch_size):
            for _ in range(tries):
                sl = self.slice(int(rng.integers(len(self))))
                i = int(rng.integers(sl.shape[0] - size + 1))
                j = int(rng.integers(sl.shape[1] - size + 1))
                patch = sl[i:i + size, j:j + size]
                if (patch > threshold).mean() >= min_fraction:
                    break
            out[b, 0] = patch
        return out

    def digest(self) -> str:
        """Content identity (:func:`array_digest` of the stack names and slices), computed once."""
        if self._digest is None:
            self._digest = array_digest((s.slices for s in self.stacks), [s.name for s in self.stacks])
        return self._digest

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        arrays = {f"stack_{k:04d}": s.slices.astype(np.float32, copy=False) for k, s in enumerate(self.stacks)}
        meta = [{"name": s.name, "voxel_size": s.voxel_size, "normalization": s.normalization,
                 "brain_only": s.brain_only} for s in self.stacks]
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        _atomic_savez(path, arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SliceSet":
        try:
            with np.load(path) as archive:
                meta = json.loads(bytes(archive["meta"]).decode())
                stacks = [SliceStack(m["name"], archive[f"stack_{k:04d}"], m["voxel_size"], m["normalization"],
                                     bool(m.get("brain_only", False))) for k, m in enumerate(meta)]
        except (OSError, KeyError, ValueError) as err:
            raise TrainingDataError(f"{path}: cannot read slice archive: {err}") from err
        return cls(stacks)


class PairSet:
    """Aligned (LR, HR) slice pairs: ``lr[k]`` is ``[N, h, w]``, ``hr[k]`` is ``[N, s*h, s*w]``.

    With ``context`` (2.5D pairs, for a generator with ``context_slices = c``), ``context[k]`` is
    ``[N, 2c, h, w]``: the LR of each pair's neighbouring HR slices, degraded by the same acquisition as
    its own LR, at the offsets of :func:`~ddasr_nipype.models.context_offsets` (without the centre).
    ``context_stride[k]`` (``[N]`` int, optional) is how many HR slices apart each pair's neighbours are
    (:func:`~ddasr_nipype.training.synthesis.degrade_pairs` draws it per slice); 1 where not recorded.
    """

    def __init__(self, lr: Sequence[np.ndarray], hr: Sequence[np.ndarray], scale: int,
                 names: Sequence[str] | None = None, source: str = "dsn", provenance: dict | None = None,
                 brain_only: Sequence[bool] | None = None, context: Sequence[np.ndarray] | None = None,
                 context_stride: Sequence[np.ndarray] | None = None):
        if len(lr) != len(hr) or not lr:
            raise TrainingDataError("a pair set needs as many LR as HR stacks, and at least one")
        for a, b in zip(lr, hr):
            if a.shape[0] != b.shape[0] or a.shape[1] * scale != b.shape[1] or a.shape[2] * scale != b.shape[2]:
                raise TrainingDataError(f"LR stack {a.shape} does not match HR stack {b.shape} at x{scale}")
        if context is not None:
            if len(context) != len(lr):
                raise TrainingDataError("context needs one stack per LR stack")
            widths = {c.shape[1] for c in context}
            for a, c in zip(lr, context):
                if c.ndim != 4 or c.shape[0] != a.shape[0] or c.shape[2:] != a.shape[1:] or c.shape[1] % 2:
                    raise TrainingDataError(f"context stack {c.shape} does not match LR stack {a.shape}")
            if len(widths) != 1:
                raise TrainingDataError(f"context stacks differ in their number of neighbours: {sorted(widths)}")
        #: neighbouring LR slices of every pair (2.5D), or None
        self.context = list(context) if context is not None else None
        if context_stride is not None:
            if context is None or len(context_stride) != len(lr) or any(
                    np.shape(t) != (len(a),) for t, a in zip(context_stride, lr)):
                raise TrainingDataError("context_stride needs context and one stride per pair")
            context_stride = [np.asarray(t, dtype=np.int64) for t in context_stride]
        #: how many HR slices apart each pair's neighbours are (per stack ``[N]``), or None (1)
        self.context_stride = context_stride
        self.lr, self.hr, self.scale = list(lr), list(hr), int(scale)
        self.names = list(names) if names is not None else [f"stack_{k}" for k in range(len(lr))]
        self.source = source
        #: per stack: pairs of a skull-stripped brain, whose loss counts only inside the brain
        self.brain_only = [bool(b) for b in brain_only] if brain_only is not None else [False] * len(self.lr)
        if len(self.brain_only) != len(self.lr):
            raise TrainingDataError("brain_only needs one flag per stack")
        # what made these pairs (``run_synthesis_stage``: the DSN's weights digest, the synthesis
        # settings, the seed, the HR/LR slices); saved with them, None when unknown
        self.provenance = provenance
        self._offsets = np.concatenate([[0], np.cumsum([len(a) for a in lr])])
        self._lr_sigma: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def context_slices(self) -> int:
        """Neighbouring slices on each side of every pair's LR (0 without ``context``)."""
        return 0 if self.context is None else self.context[0].shape[1] // 2

    def stack_of(self, index) -> np.ndarray:
        """The stack number of each pair index (an array of indices, or one)."""
        return np.searchsorted(self._offsets, index, side="right") - 1

    def is_brain_only(self, index) -> np.ndarray:
        """Whether each pair index (as :meth:`sample_pairs` returns them) comes from a brain-only stack."""
        return np.asarray(self.brain_only, dtype=bool)[self.stack_of(np.asarray(index))]

    def _locate(self, index: int) -> tuple[int, int]:
        """(stack, slice in that stack) of a pair index."""
        k = int(self.stack_of(int(index)))
        return k, int(index) - int(self._offsets[k])

    def neighbour_spacing(self, index) -> np.ndarray:
        """How many HR slices apart the neighbours of each pair index are (1 where not recorded)."""
        index = np.atleast_1d(np.asarray(index))
        if self.context_stride is None:
            return np.ones(len(index), dtype=np.int64)
        return np.array([self.context_stride[k][n] for k, n in map(self._locate, index)], dtype=np.int64)

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        k, n = self._locate(index)
        return self.lr[k][n], self.hr[k][n]

    def check_patch_size(self, hr_size: int) -> None:
        small = [f"{n} ({h.shape[1]}x{h.shape[2]})" for n, h in zip(self.names, self.hr) if min(h.shape[1:]) < hr_size]
        if small:
            raise TrainingDataError(
                f"HR slices are too small for the SRN patch size {hr_size}x{hr_size}: {', '.join(small)}"
            )

    def sample_pairs(self, rng: np.random.Generator, batch_size: int, hr_size: int, *,
                     threshold: float = 0.1, min_fraction: float = 0.0, tries: int = 10,
                     return_index: bool = False):
        """Aligned random crops: LR ``[B, 1, p, p]`` at ``(i, j)``, HR ``[B, 1, s*p, s*p]`` at ``(s*i, s*j)``.

        With ``context`` the LR crops are ``[B, 1 + 2c, p, p]``: the pair's LR, then the same crop of its
        neighbours. With ``return_index`` also the index (into this set, as :meth:`pair` takes it) of each
        crop's slice.
        """
        s = self.scale
        p = hr_size // s
        lr_out = np.empty((batch_size, 1 + 2 * self.context_slices, p, p), dtype=np.float32)
        hr_out = np.empty((batch_size, 1, p * s, p * s), dtype=np.float32)
        index = np.empty(batch_size, dtype=np.int64)
        for b in range(batch_size):
            for _ in range(tries):
                index[b] = int(rng.integers(len(self)))
                lr, hr = self.pair(int(index[b]))
                i = int(rng.integers(lr.shape[0] - p + 1))
                j = int(rng.integers(lr.shape[1] - p + 1))
                hr_patch = hr[s * i:s * (i + p), s * j:s * (j + p)]
                if (hr_patch > threshold).mean() >= min_fraction:
                    break
            lr_out[b, 0] = lr[i:i + p, j:j + p]
            if self.context is not None:
                k, n = self._locate(index[b])
                lr_out[b, 1:] = self.context[k][n, :, i:i + p, j:j + p]
            hr_out[b, 0] = hr_patch
        return (lr_out, hr_out, index) if return_index else (lr_out, hr_out)

    def fingerprint(self) -> str:
        """Identity of this pair set: the digest of its provenance key when known (cheap), else of its
        content (:func:`array_digest`)."""
        if self.provenance and "key" in self.provenance:
            return "provenance:" + array_digest((), self.provenance["key"])
        return "content:" + array_digest((*self.lr, *self.hr), self.names, self.scale, self.source)

    def lr_noise_sigma(self) -> np.ndarray:
        """Noise standard deviation of every whole LR slice (Immerkaer; ``[len(self)]``, computed once).

        The noise level a generator with a noise-level input is given for a crop of that slice: whole
        slices are what it is estimated on at inference (:mod:`ddasr_nipype.inference`).
        """
        if self._lr_sigma is None:
            from ddasr_nipype.models import estimate_noise_sigma
            import torch

            sigmas = [estimate_noise_sigma(torch.from_numpy(np.asarray(stack, np.float32))[:, None]).numpy()
                      for stack in self.lr]
            self._lr_sigma = np.concatenate(sigmas).astype(np.float64)
        return self._lr_sigma

    @staticmethod
    def augment(lr: np.ndarray, hr: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Apply one random element of the dihedral group (flips of either axis, transpose) to each
        pair of ``lr`` ``[B, C, p, p]`` and ``hr`` ``[B, 1, s*p, s*p]``, the same to both and to every
        channel (in place). 2.5D crops (``C = 1 + 2c``, :meth:`sample_pairs`) also have their slice
        direction reversed (each neighbour at -k swapped with the one at +k) half of the time."""
        for b in range(lr.shape[0]):
            flip_rows, flip_cols, transpose = (bool(v) for v in rng.integers(0, 2, size=3))
            for arr in (lr, hr):
                x = arr[b]
                if flip_rows:
                    x = x[:, ::-1]
                if flip_cols:
                    x = x[:, :, ::-1]
                if transpose:
                    x = x.transpose(0, 2, 1)
                arr[b] = x.copy()
            if lr.shape[1] > 1 and rng.integers(0, 2):
                lr[b, 1:] = lr[b, 1:].reshape(-1, 2, *lr.shape[2:])[:, ::-1].reshape(-1, *lr.shape[2:]).copy()
        return lr, hr

    @staticmethod
    def add_lr_noise(lr: np.ndarray, rng: np.random.Generator, probability: float, sigma_low: float,
                     sigma_high: float, correlation_low: float = 0.0, correlation_high: float = 0.0,
                     kind: str = "gaussian", coils_low: int = 1, coils_high: int = 1, *,
                     return_sigma: bool = False):
        """Zero-mean Gaussian noise on each LR patch of ``lr`` ``[B, 1, p, p]`` (in place), with
        probability ``probability`` and a standard deviation drawn from ``U(sigma_low, sigma_high)``.

        With ``correlation_high > 0`` the noise field is first blurred by a Gaussian of width drawn from
        ``U(correlation_low, correlation_high)`` LR pixels (then scaled back to the drawn deviation):
        spatially correlated noise, as in resampled scans.

        ``kind="rician"`` makes it the noise of a magnitude image: the patch (a magnitude image without
        noise) becomes ``sqrt((x + n_1)^2 + n_2^2 + ... + n_2L^2)`` with ``2L`` independent fields of that
        deviation (each blurred alike), ``L`` coils drawn from ``coils_low..coils_high``: Rician for one
        coil, the non-central chi of a sum-of-squares combination for several. Signal well above the noise
        gets zero-mean noise of the drawn deviation; the air gets the chi noise floor.

        Returns ``lr``, or with ``return_sigma`` the level of the noise added to each patch (0 where
        none) as the noise-level estimator (:func:`~ddasr_nipype.models.estimate_noise_sigma`) reads
        such noise on average: the drawn deviation for white noise, less for correlated noise (exact
        expectations, :func:`correlated_noise_gains`, not a noisy estimate on the small patch).
        """
        added = np.zeros(lr.shape[0])
        if probability <= 0 or sigma_high <= 0:
            return added if return_sigma else lr
        if kind == "rician":
            return _add_magnitude_noise(lr, rng, probability, sigma_low, sigma_high, correlation_low,
                                        correlation_high, coils_low, coils_high, added, return_sigma)
        if kind != "gaussian":
            raise ValueError(f"noise kind must be 'gaussian' or 'rician', got {kind!r}")
        for b in range(lr.shape[0]):
            if rng.uniform() < probability:
                sigma = rng.uniform(sigma_low, sigma_high)
                noise = rng.normal(0.0, sigma, size=lr[b].shape)
                added[b] = sigma
                if correlation_high > 0:
                    width = rng.uniform(correlation_low, correlation_high)
                    if width > 0:
                        from scipy.ndimage import gaussian_filter

                        norm, reading = correlated_noise_gains(width)
                        noise = gaussian_filter(noise, (0, width, width), mode="wrap") / norm
                        added[b] = sigma * reading
                lr[b] += noise.astype(lr.dtype, copy=False)
        return added if return_sigma else lr

    def save(self, path: str | Path) -> Path:
        arrays = {}
        for k, (a, b) in enumerate(zip(self.lr, self.hr)):
            arrays[f"lr_{k:04d}"] = a.astype(np.float32, copy=False)
            arrays[f"hr_{k:04d}"] = b.astype(np.float32, copy=False)
            if self.context is not None:
                arrays[f"context_{k:04d}"] = self.context[k].astype(np.float32, copy=False)
            if self.context_stride is not None:
                arrays[f"stride_{k:04d}"] = self.context_stride[k]
        meta = {"scale": self.scale, "names": self.names, "source": self.source, "brain_only": self.brain_only}
        if self.provenance is not None:
            meta["provenance"] = self.provenance
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        _atomic_savez(Path(path), arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "PairSet":
        try:
            with np.load(path) as archive:
                meta = json.loads(bytes(archive["meta"]).decode())
                n = len(meta["names"])
                lr = [archive[f"lr_{k:04d}"] for k in range(n)]
                hr = [archive[f"hr_{k:04d}"] for k in range(n)]
                context = ([archive[f"context_{k:04d}"] for k in range(n)] if "context_0000" in archive.files
                           else None)
                stride = ([archive[f"stride_{k:04d}"] for k in range(n)] if "stride_0000" in archive.files
                          else None)
        except (OSError, KeyError, ValueError) as err:
            raise TrainingDataError(f"{path}: cannot read pair archive: {err}") from err
        return cls(lr, hr, meta["scale"], meta["names"], meta.get("source", "dsn"), meta.get("provenance"),
                   meta.get("brain_only"), context, stride)


def _add_magnitude_noise(lr, rng, probability, sigma_low, sigma_high, correlation_low, correlation_high,
                         coils_low, coils_high, added, return_sigma):
    """The ``kind="rician"`` branch of :meth:`PairSet.add_lr_noise` (in place)."""
    from scipy.ndimage import gaussian_filter

    coils_low, coils_high = int(coils_low), int(coils_high)
    if not 1 <= coils_low <= coils_high:
        raise ValueError(f"coils must satisfy 1 <= low <= high, got {[coils_low, coils_high]}")
    for b in range(lr.shape[0]):
        if rng.uniform() >= probability:
            continue
        sigma = rng.uniform(sigma_low, sigma_high)
        coils = int(rng.integers(coils_low, coils_high + 1))
        width = rng.uniform(correlation_low, correlation_high) if correlation_high > 0 else 0.0
        # one draw for every channel (a 2.5D crop's slices: one acquisition), independent fields per slice
        fields = rng.normal(0.0, sigma, size=(2 * coils,) + lr[b].shape)
        reading = 1.0
        if width > 0:
            norm, reading = correlated_noise_gains(width)
            fields = gaussian_filter(fields, (0, 0, width, width), mode="wrap") / norm
        clean = np.maximum(lr[b].astype(np.float64), 0.0)
        magnitude = np.sqrt((clean + fields[0]) ** 2 + (fields[1:] ** 2).sum(axis=0))
        lr[b] = magnitude.astype(lr.dtype, copy=False)
        added[b] = sigma * reading
    return added if return_sigma else lr


def correlated_noise_gains(width: float) -> tuple[float, float]:
    """For white noise blurred by a Gaussian of ``width`` pixels (scipy's, truncated at 4 widths):
    ``(norm, reading)``, the standard deviation the blur leaves of unit noise (divide by it to keep the
    deviation) and the fraction of the kept deviation that Immerkaer's estimator reads on average.

    The estimator's response to a Gaussian field is Gaussian with deviation ``sigma * ||mask * k|| /
    ||k||`` for the normalised kernel ``k``, and the estimator is ``sqrt(pi / 2) E|response| / 6``, so it
    reads ``||mask * k|| / (6 ||k||)`` of the deviation (1 for white noise).
    """
    from scipy.ndimage import convolve, gaussian_filter

    from ddasr_nipype.models.srn_arch import _IMMERKAER

    radius = int(4.0 * width + 0.5) + 2
    delta = np.zeros((2 * radius + 1, 2 * radius + 1))
    delta[radius, radius] = 1.0
    kernel = gaussian_filter(delta, width, mode="constant")
    response = convolve(kernel, np.asarray(_IMMERKAER), mode="constant")
    norm = float(np.linalg.norm(kernel))
    return norm, float(np.linalg.norm(response)) / (6.0 * norm)


def center_crop_to_multiple(x: np.ndarray, multiple: int) -> np.ndarray:
    """Centre-crop the last two axes of ``x`` to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    nh, nw = h - h % multiple, w - w % multiple
    if nh == 0 or nw == 0:
        raise TrainingDataError(f"slice {h}x{w} is smaller than {multiple} pixels")
    i, j = (h - nh) // 2, (w - nw) // 2
    return x[..., i:i + nh, j:j + nw]


def load_filters(path: str | Path | None) -> dict:
    """Read a pybids filter file (JSON): ``{"t1w": {...}}`` or a flat entity mapping."""
    if path is None:
        return {}
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise TrainingDataError(f"{path}: cannot read the BIDS filter file: {err}") from err
    if not isinstance(content, dict):
        raise TrainingDataError(f"{path}: a BIDS filter file must hold a JSON object")
    return dict(content.get("t1w", content))


def find_t1w(bids_dir: str | Path, *, filters: dict | None = None,
             participant_label: Sequence[str] | None = None, what: str = "") -> list[Path]:
    """T1w NIfTI files of a BIDS dataset (pybids query), sorted; :class:`TrainingDataError` if none."""
    from bids import BIDSLayout

    bids_dir = Path(bids_dir)
    label = f"{what} dataset " if what else "dataset "
    if not bids_dir.is_dir():
        raise TrainingDataError(f"{label}{bids_dir} is not a directory")
    try:
        layout = BIDSLayout(str(bids_dir), validate=False, derivatives=False)
    except Exception as err:  # pybids raises many error types for a broken dataset
        raise TrainingDataError(f"{label}{bids_dir} is not a readable BIDS dataset: {err}") from err
    query = {"suffix": "T1w", "datatype": "anat", "extension": [".nii", ".nii.gz"]}
    query.update(filters or {})
    if participant_label:
        query["subject"] = [p[4:] if p.startswith("sub-") else p for p in participant_label]
    files = sorted(Path(f) for f in layout.get(return_type="file", **query))
    if not files:
        raise TrainingDataError(
            f"no T1w image found in the {label}{bids_dir} (query: {json.dumps(query, default=str)})"
        )
    return files


def _inplane_voxel(img, plane: str) -> float:
    from nibabel.affines import voxel_sizes

    from ddasr_nipype.data.slicing import inplane_axes

    zooms = voxel_sizes(img.affine)
    return float(np.mean([zooms[a] for a in inplane_axes(plane)]))


def _prepare_stacks(path: str | Path, cfg: DataConfig, planes: Sequence[str], voxel_size: float | None
                    ) -> list[SliceStack]:
    """One load, reorientation, resampling and normalisation of a volume; one stack per plane (the
    first named after the file, the others ``<file>_<plane>``)."""
    from ddasr_nipype.data.io import load_volume, to_ras
    from ddasr_nipype.data.normalize import fit_normalization
    from ddasr_nipype.data.slicing import extract_slices, isotropic_resample

    img, _ = to_ras(load_volume(path))
    native = _inplane_voxel(img, cfg.plane)
    if voxel_size is not None:
        from nibabel.affines import voxel_sizes

        if np.any(np.abs(voxel_sizes(img.affine) - voxel_size) > 0.01 * voxel_size):
            img = isotropic_resample(img, voxel_size)
    data = np.asarray(img.dataobj, dtype=np.float32)
    norm = fit_normalization(data, percentiles=tuple(cfg.percentiles), path=path)
    data = np.asarray(norm.apply(data), dtype=np.float32)
    name = Path(path).name.split(".")[0]
    brain_only = False
    if cfg.brain_only_below_ml:
        from nibabel.affines import voxel_sizes

        volume_ml = float((data > cfg.foreground_threshold).sum() * np.prod(voxel_sizes(img.affine)) / 1000.0)
        brain_only = volume_ml < cfg.brain_only_below_ml
    stacks = []
    for k, plane in enumerate(planes):
        slices = np.ascontiguousarray(extract_slices(data, plane))
        keep = _stack_fraction(slices, cfg.foreground_threshold) >= cfg.min_brain_fraction
        stacks.append(SliceStack(
            name=name if k == 0 else f"{name}_{plane}",
            slices=slices[keep],
            voxel_size=float(voxel_size if voxel_size is not None else native),
            normalization=norm.to_dict() if hasattr(norm, "to_dict") else {},
            brain_only=brain_only,
        ))
    return stacks


def prepare_volume_slices(path: str | Path, cfg: DataConfig, *, voxel_size: float | None = None) -> SliceStack:
    """Load, reorient to RAS, optionally resample to isotropic ``voxel_size``, normalise and slice.

    Slices whose foreground fraction is below ``cfg.min_brain_fraction`` are dropped.
    """
    return _prepare_stacks(path, cfg, (cfg.plane,), voxel_size)[0]


def prepare_hr_stacks(path: str | Path, cfg: DataConfig, *, voxel_size: float) -> list[SliceStack]:
    """The HR stacks of one volume resampled to isotropic ``voxel_size``: ``cfg.plane`` first, then each
    of ``cfg.hr_extra_planes`` (stack names ``<file>_<plane>``), from one load and normalisation."""
    return _prepare_stacks(path, cfg, (cfg.plane, *cfg.hr_extra_planes), voxel_size)


def prepare_datasets(hr_files: Sequence[Path], lr_files: Sequence[Path], cfg: DataConfig
                     ) -> tuple[SliceSet, SliceSet, dict]:
    """Prepare HR and LR slice sets; returns ``(hr, lr, summary)``.

    The HR volumes are resampled to ``cfg.hr_voxel_size`` or, by default, the LR in-plane voxel size
    divided by ``cfg.scale``. Raises :class:`TrainingDataError` when the LR volumes disagree on their
    voxel size (more than 20 %) or when the HR data are not finer than the LR data.
    """
    import nibabel as nib

    from ddasr_nipype.data.io import to_ras

    if not hr_files or not lr_files:
        raise TrainingDataError("training needs at least one HR and one LR T1w image")

    def header_voxels(files):
        out = []
        for f in files:
            try:
                out.append(_inplane_voxel(to_ras(nib.load(str(f)))[0], cfg.plane))
            except Exception as err:
                raise TrainingDataError(f"{f}: cannot read the image header: {err}") from err
        return np.array(out)

    lr_vox = header_voxels(lr_files)
    if lr_vox.max() > 1.2 * lr_vox.min():
        detail = ", ".join(f"{Path(f).name}: {v:.3g} mm" for f, v in zip(lr_files, lr_vox))
        raise TrainingDataError(
            f"LR volumes have mismatched {cfg.plane} in-plane voxel sizes ({detail}); train one model "
            "per LR resolution (select a subset with --lr-filter-file or --lr-participant-label)"
        )
    lr_voxel = float(np.median(lr_vox))
    hr_voxel = cfg.hr_voxel_size or lr_voxel / cfg.scale
    hr_vox = header_voxels(hr_files)
    coarse = [f"{Path(f).name}: {v:.3g} mm" for f, v in zip(hr_files, hr_vox) if v >= 0.95 * lr_voxel]
    if coarse:
        raise TrainingDataError(
            f"HR volumes are not finer than the LR data ({lr_voxel:.3g} mm in-plane): {', '.join(coarse)}; "
            f"a x{cfg.scale} model needs HR data near {lr_voxel / cfg.scale:.3g} mm"
        )
    if abs(hr_voxel * cfg.scale - lr_voxel) > 0.2 * lr_voxel:
        raise TrainingDataError(
            f"hr_voxel_size {hr_voxel:.3g} mm x scale {cfg.scale} does not match the LR voxel size "
            f"{lr_voxel:.3g} mm"
        )
    hr = SliceSet([s for f in hr_files for s in prepare_hr_stacks(f, cfg, voxel_size=hr_voxel)])
    lr = SliceSet([prepare_volume_slices(f, cfg) for f in lr_files])
    summary = {
        "hr_files": [str(f) for f in hr_files],
        "lr_files": [str(f) for f in lr_files],
        "hr_voxel_size": float(hr_voxel),
        "lr_voxel_size": lr_voxel,
        "hr_slices": len(hr),
        "lr_slices": len(lr),
        "hr_brain_only": sorted({s.name.split("_")[0] for s in hr.stacks if s.brain_only}),
    }
    return hr, lr, summary
