"""A held-out HR scan prepared as ``ddasr-eval`` prepares it, for the paired probes of this folder."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class HeldOut:
    key: str  # "sub-<label>": the key of the seeded degradations
    hr_ras: Any  # the RAS image, odd in-plane sizes cropped
    hr01: np.ndarray  # normalized by the head's 99.5th percentile
    head: np.ndarray  # foreground (head) mask
    brain: np.ndarray  # deepbet's brain mask


def load_heldout(path: Path, cache_dir: Path = Path("out/cache"), plane: str = "sagittal", scale: int = 2) -> HeldOut:
    """``path`` (RAS, odd in-plane sizes cropped, normalized) with its head mask and deepbet's brain mask,
    the latter cached in ``cache_dir`` (``<key>_brain_<shape>.npy``)."""
    import nibabel as nib

    from ddasr_nipype.data.io import to_ras
    from ddasr_nipype.evaluation import _brain_mask, _inplane_axes, crop_to_scale
    from ddasr_nipype.metrics.volume import foreground_mask, normalize_volume

    match = re.search(r"sub-[A-Za-z0-9]+", path.name)
    key = match.group(0) if match else path.name
    hr_ras = crop_to_scale(to_ras(nib.load(str(path)))[0], _inplane_axes(plane), scale)
    hr = np.asarray(hr_ras.dataobj, dtype=np.float64)
    head = foreground_mask(hr)
    cache = cache_dir / f"{key}_brain_{'x'.join(map(str, hr.shape))}.npy"
    if cache.is_file():
        brain = np.load(cache)
    else:
        brain = _brain_mask(hr_ras)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, brain)
    return HeldOut(key, hr_ras, normalize_volume(hr, head), head, brain.astype(bool))


def degrade(hr01: np.ndarray, key: str, name: str, *, seed: int = 0, sigma_range=None, plane: str = "sagittal",
            scale: int = 2):
    """``(lr, params)``: ``hr01`` degraded by ``name`` with ``ddasr-eval``'s seeded draw for the scan ``key``
    (``sigma_range``: the noise range of ``kspace-rician`` instead of its own)."""
    from ddasr_nipype.degradations import get_degradation
    from ddasr_nipype.evaluation import _inplane_axes, _seed_sequence

    rng = np.random.default_rng(_seed_sequence(seed, key, name))
    kwargs = {"sigma_range": tuple(sigma_range)} if sigma_range and name == "kspace-rician" else {}
    return get_degradation(name, scale, axes=_inplane_axes(plane), **kwargs)(hr01, rng)


def noise_label(params) -> str:
    """``", noise sigma S"`` for a degradation draw ``params`` with a noise sigma, else ``""`` (realsr's
    ``sigma`` is its blur kernel's pair of widths, not a noise level)."""
    sigma = getattr(params, "sigma", None)
    return f", noise sigma {sigma:.3f}" if isinstance(sigma, float) else ""


def app_output(lr: np.ndarray, hr_ras, bundle, **settings) -> np.ndarray:
    """The app's output (:func:`ddasr_nipype.inference.super_resolve_image` in the sagittal plane,
    ``settings`` its output settings) for ``lr``, an x2 degradation of the RAS volume ``hr_ras`` in its
    sagittal planes, on ``hr_ras``'s grid."""
    from ddasr_nipype.data.io import to_ras
    from ddasr_nipype.evaluation import _lr_image
    from ddasr_nipype.inference import super_resolve_image

    img, _ = super_resolve_image(_lr_image(lr, hr_ras, (1.0, 0.5, 0.5)), bundle, planes="sagittal", **settings)
    return np.asarray(to_ras(img)[0].dataobj, dtype=np.float64)
