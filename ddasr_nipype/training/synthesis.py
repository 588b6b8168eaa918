"""Stage 2: turn every HR slice into an LR slice, giving the (LR, HR) pairs the SRN trains on.

With a trained DSN (:func:`synthesize_pairs`), each whole HR slice (centre-cropped to a multiple of
``scale x`` the DSN patch embedding, so the synthetic LR is exactly ``1/scale`` of it) is degraded with
a randomly chosen real LR slice as the domain reference. With a classical degradation instead
(:func:`degrade_pairs`, ``bicubic``, ``kspace``, ``area``, ``realsr`` or ``realesrgan`` from
:mod:`ddasr_nipype.degradations`) no DSN is needed. Pairs are stored losslessly
(:meth:`~ddasr_nipype.training.datasets.PairSet.save`: uncompressed float32 ``.npz``), never as JPEG.
"""

from __future__ import annotations

import numpy as np

from ddasr_nipype.training.datasets import PairSet, SliceSet, center_crop_to_multiple

__all__ = ["synthesize_pairs", "degrade_pairs", "combine_pairs", "denoise_targets", "match_intensity",
           "noise_sigma", "CLASSICAL_DEGRADATIONS"]

CLASSICAL_DEGRADATIONS = ("bicubic", "kspace", "area", "realsr", "realesrgan", "mri")


def synthesize_pairs(dsn, hr: SliceSet, lr: SliceSet, *, scale: int, rng: np.random.Generator,
                     batch_size: int = 4, device="cpu", amp_dtype=None) -> PairSet:
    """Degrade every HR slice with the trained ``dsn`` (eval mode, no gradients).

    Each batch of HR slices gets real LR reference slices drawn from one random LR volume (cropped
    to the embedding multiple); the DSN output is stored as float32, unclipped.
    """
    import contextlib

    import torch

    embed = int(dsn.config.patch_size)
    multiple = scale * embed
    dsn = dsn.to(device).eval()
    lr_out, hr_out, names = [], [], []
    autocast = (torch.autocast(torch.device(device).type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    with torch.no_grad(), autocast:
        for stack in hr.stacks:
            hr_slices = np.ascontiguousarray(center_crop_to_multiple(stack.slices, multiple))
            synthetic = []
            for start in range(0, len(hr_slices), batch_size):
                hr_batch = hr_slices[start:start + batch_size]
                ref = lr.stacks[int(rng.integers(len(lr.stacks)))]
                idx = rng.integers(len(ref.slices), size=len(hr_batch))
                lr_batch = np.ascontiguousarray(center_crop_to_multiple(ref.slices[idx], embed))
                out = dsn(torch.from_numpy(hr_batch[:, None]).to(device),
                          torch.from_numpy(lr_batch[:, None]).to(device))
                synthetic.append(out.float().cpu().numpy()[:, 0])
            lr_out.append(np.concatenate(synthetic).astype(np.float32))
            hr_out.append(hr_slices.astype(np.float32))
            names.append(stack.name)
    return PairSet(lr_out, hr_out, scale, names, source="dsn", brain_only=[s.brain_only for s in hr.stacks])


def _classical_function(name: str, scale: int = 2):
    """The seeded degradation ``name`` of :mod:`ddasr_nipype.degradations` (``deg(x, rng) -> (y, params)``)."""
    if name not in CLASSICAL_DEGRADATIONS:
        raise ValueError(f"unknown degradation {name!r}; choose one of {', '.join(CLASSICAL_DEGRADATIONS)}")
    try:
        from ddasr_nipype.degradations import get_degradation
    except ImportError as err:
        raise NotImplementedError(
            "classical degradations need the ddasr_nipype.degradations module, which this installation "
            f"does not provide ({err}); train with the DSN instead (omit --degradation)"
        ) from err
    return get_degradation(name, scale)


def degrade_pairs(hr: SliceSet, method: str, *, scale: int, rng: np.random.Generator,
                  multiple: int | None = None, context_slices: int = 0,
                  context_strides: tuple[int, ...] = (1, 2)) -> PairSet:
    """Pairs from a classical degradation: each HR slice degraded with parameters drawn from ``rng``.

    With ``context_slices = c > 0`` (2.5D pairs, ``PairSet.context``) each slice's neighbours at
    ``stride x`` :func:`~ddasr_nipype.models.context_offsets` slices of its stack (``stride`` drawn from
    ``context_strides`` per slice: 1 for scans whose slices are as far apart as the HR's, 2 for twice
    that; clamped at the stack's ends) are degraded together with it, by the same acquisition.
    """
    from ddasr_nipype.models import context_index

    degrade = _classical_function(method, scale)
    top = 1.0 if getattr(degrade, "clips_input", True) else None
    multiple = multiple or scale
    if context_slices and not context_strides:
        raise ValueError("context_strides must name at least one stride")
    lr_out, hr_out, context_out, stride_out, names = [], [], [], [], []
    for stack in hr.stacks:
        hr_slices = np.ascontiguousarray(center_crop_to_multiple(stack.slices, multiple)).astype(np.float32)
        lr_slices, context, strides = [], [], []
        for n in range(len(hr_slices)):
            if context_slices:
                stride = int(context_strides[int(rng.integers(len(context_strides)))])
                strides.append(stride)
                slab = hr_slices[context_index([n], len(hr_slices), context_slices, stride)[0]]
                out = np.asarray(degrade(np.clip(slab, 0.0, top), rng)[0], dtype=np.float32)
                lr_slices.append(out[0])
                context.append(out[1:])
            else:
                lr_slices.append(np.asarray(degrade(np.clip(hr_slices[n], 0.0, top), rng)[0], dtype=np.float32))
        lr_out.append(np.stack(lr_slices))
        hr_out.append(hr_slices)
        if context_slices:
            context_out.append(np.stack(context))
            stride_out.append(np.asarray(strides, dtype=np.int64))
        names.append(stack.name)
    return PairSet(lr_out, hr_out, scale, names, source=method, brain_only=[s.brain_only for s in hr.stacks],
                   context=context_out if context_slices else None,
                   context_stride=stride_out if context_slices else None)


def combine_pairs(first: PairSet, *others: PairSet) -> PairSet:
    """One pair set with the stacks of all (same scale); stack names get their set's source appended
    and the source names every set (``dsn+matched|realsr``)."""
    sets = (first, *others)
    if len({p.scale for p in sets}) != 1:
        raise ValueError(f"cannot combine pair sets of scales {sorted({p.scale for p in sets})}")
    if not others:
        return first
    if len({p.context_slices for p in sets}) != 1:
        raise ValueError("cannot combine pair sets with different numbers of context slices "
                         f"({sorted({p.context_slices for p in sets})})")
    lr = [a for p in sets for a in p.lr]
    hr = [b for p in sets for b in p.hr]
    names = [f"{n}|{p.source}" for p in sets for n in p.names]
    return PairSet(lr, hr, first.scale, names, source="|".join(p.source for p in sets),
                   brain_only=[b for p in sets for b in p.brain_only],
                   context=[c for p in sets for c in p.context] if first.context is not None else None,
                   context_stride=([t for p in sets for t in p.context_stride]
                                   if all(p.context_stride is not None for p in sets) else None))


def noise_sigma(image: np.ndarray, foreground: float | None = 0.1) -> float:
    """Noise standard deviation of a 2D image by Immerkaer's method (Immerkaer, CVIU 1996): the mean
    absolute response to a Laplacian-difference mask that cancels smooth structure
    (:func:`ddasr_nipype.models.estimate_noise_sigma` on one image, with its ``foreground``)."""
    import torch

    from ddasr_nipype.models import estimate_noise_sigma

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2 or min(image.shape) < 3:
        raise ValueError(f"noise_sigma needs a 2D image of at least 3x3 pixels, got shape {image.shape}")
    return float(estimate_noise_sigma(torch.from_numpy(image)[None, None], foreground)[0])


def denoise_targets(pairs: PairSet, strength: float) -> PairSet:
    """Non-local means on every HR target (``h = strength x`` the slice's :func:`noise_sigma`); the LR
    inputs are left as they are. ``strength = 0`` returns ``pairs`` unchanged."""
    if strength <= 0:
        return pairs
    from skimage.restoration import denoise_nl_means

    hr_out = []
    for stack in pairs.hr:
        slices = []
        for sl in stack:
            sigma = noise_sigma(sl)
            slices.append(denoise_nl_means(sl.astype(np.float64), h=strength * sigma, sigma=sigma, fast_mode=True,
                                           patch_size=5, patch_distance=6).astype(np.float32)
                          if sigma > 0 else sl.astype(np.float32))
        hr_out.append(np.stack(slices))
    return PairSet(pairs.lr, hr_out, pairs.scale, pairs.names, source=f"{pairs.source}+nlmeans({strength:g})",
                   brain_only=pairs.brain_only, context=pairs.context, context_stride=pairs.context_stride)


def match_intensity(pairs: PairSet, *, levels: int = 201) -> PairSet:
    """Give every synthetic LR slice the intensity distribution of its own HR slice.

    Each LR slice goes through the monotone, piecewise-linear map that takes its quantiles (``levels``
    of them, 0 to 100 %) onto those of the bicubic down-sampling of its HR target. The LR keeps its
    spatial content (blur, aliasing, noise pattern: what the DSN learned from the real LR site) but
    not a contrast of its own, so the SR trained on it learns resolution, not a contrast
    translation, and keeps the contrast of the scan it is given.
    """
    from ddasr_nipype.degradations import bicubic_downsample

    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    q = np.linspace(0.0, 100.0, int(levels))
    ramp = np.arange(q.size) * 1e-9  # strictly increasing sample points where quantiles tie
    lr_out = []
    for lr_stack, hr_stack in zip(pairs.lr, pairs.hr):
        slices = []
        for lr, hr in zip(lr_stack, hr_stack):
            ref = bicubic_downsample(np.clip(hr.astype(np.float64), 0.0, 1.0), pairs.scale)  # PairSet: same shape
            src_q = np.percentile(lr, q) + ramp
            slices.append(np.interp(lr, src_q, np.percentile(ref, q)).astype(np.float32))
        lr_out.append(np.stack(slices))
    return PairSet(lr_out, pairs.hr, pairs.scale, pairs.names, source=f"{pairs.source}+matched",
                   brain_only=pairs.brain_only)
