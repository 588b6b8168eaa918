"""Whole-volume inference: SRN super-resolution and DSN degradation, slice by slice.

Memory stays bounded for any volume size: slices stream through the network in batches, large slices
are processed in overlapping tiles, and only the output volume (which must exist anyway) is held whole.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from .data.slicing import PLANES, plane_axis

#: slice axis of each plane in RAS voxel order (the data layer's convention)
PLANE_AXES = {plane: plane_axis(plane) for plane in PLANES}
PLANE_CHOICES = (*PLANES, "all")
#: what fills the air around the head: the network's output, or the bicubic interpolation of the input
BACKGROUNDS = ("model", "input")
#: ``projection``: none, or the physics model under which each output slice is made to agree with
#: its input slice (:func:`ddasr_nipype.degradations.consistency_projection`)
OUTPUT_PROJECTIONS = ("none", "kspace", "area")
#: output settings of bundles whose manifest gives none (the network's output everywhere, no denoising
#: across slices, no data-consistency projection)
DEFAULT_OUTPUT = {"strength": 1.0, "background": "model", "slice_denoise": 0.0, "projection": "none"}
#: ``slice_denoise``: neighbouring slices on each side that the non-local means across slices compares,
#: the width (mm) of the Gaussian of their distance that weighs each, and the in-plane patch it compares
#: them on
SLICE_DENOISE_RADIUS = 2
SLICE_DENOISE_WIDTH_MM = 1.0
SLICE_DENOISE_PATCH = 3
#: ``background="input"``: the head mask is dilated by this many input voxels, and the transition to
#: the interpolated input is feathered by a Gaussian of this width (output voxels)
HEAD_MARGIN_VOXELS = 2
HEAD_FEATHER_SIGMA = 1.5
#: an in-plane voxel edge more than this factor off the LR voxel size a bundle was trained for draws
#: a warning, as do in-plane voxels further than ``SQUARE_TOLERANCE`` from square. The starter model
#: (trained on 2 mm) was checked on 1.4-3 mm input: its model card gives the figures
RESOLUTION_TOLERANCE = 1.5
SQUARE_TOLERANCE = 1.5
#: slices per forward pass when none is given. On the CPU one slice at a time keeps a slice's feature
#: maps in the cache: batches of 8 slices of 120x120 made the shipped generator 1.6x slower per slice
#: (``benchmarks/inference_benchmark.py``); a GPU wants batches
DEFAULT_BATCH_SIZE = {"cpu": 1, "cuda": 8}

LOGGER = logging.getLogger("ddasr_nipype")


def resolve_device(device: str = "auto"):
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error, not a silent fallback."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return torch.device(device)


def default_batch_size(device) -> int:
    """Slices per forward pass on ``device`` when the caller gives none (:data:`DEFAULT_BATCH_SIZE`)."""
    return DEFAULT_BATCH_SIZE["cuda" if str(device).startswith("cuda") else "cpu"]


def slice_workers(device, n_chunks: int) -> int:
    """Threads that super-resolve slices side by side: on the CPU, one per torch thread (each running its
    convolutions on one thread), as a small generator's convolutions on one 2D slice keep two threads
    busy only part of the time (1.45x faster per slice on 2 cores: benchmarks/inference_benchmark.py);
    on a GPU, one."""
    import torch

    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), n_chunks))


@contextlib.contextmanager
def one_thread_each(workers: int) -> Iterator[Any]:
    """A pool of ``workers`` threads (``concurrent.futures``) that run torch on one intra-op thread each
    (:func:`slice_workers`). The caller's torch thread count is back afterwards; on an error or an
    interrupt, work not started yet is dropped, not run."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="ddasr-slices", initializer=torch.set_num_threads,
                              initargs=(1,))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)


def prepare_generator(generator, device):
    """Make ``generator`` ready for inference on ``device`` (in place; returns it): eval mode and, on the
    CPU, weights in the channels-last memory layout, where oneDNN's convolutions run 10-20 % faster
    (same output within float rounding)."""
    import torch

    generator = generator.to(device).eval()
    if torch.device(device).type == "cpu":
        generator = generator.to(memory_format=torch.channels_last)
    return generator


def _check_plane(plane: str) -> None:
    if plane not in PLANE_CHOICES:
        raise ValueError(f"plane must be one of {PLANE_CHOICES}, got {plane!r}")


def resolution_warnings(voxel_sizes_ras, bundle, planes: str = "sagittal", *,
                        tolerance: float = RESOLUTION_TOLERANCE,
                        square_tolerance: float = SQUARE_TOLERANCE) -> list[str]:
    """Warnings when the input's in-plane voxels are far from those the bundle was trained on.

    ``voxel_sizes_ras``: voxel edges (mm) along the RAS axes (:func:`ddasr_nipype.data.io.ras_voxel_sizes`).
    The bundle's ``preprocessing.lr_voxel_size`` is the (square) in-plane voxel edge of its training
    LR; a bundle that does not record it draws no warning. Advisory only: the run goes on.
    """
    _check_plane(planes)
    expected = (getattr(bundle, "preprocessing", None) or {}).get("lr_voxel_size")
    sizes = [float(v) for v in voxel_sizes_ras]
    views = PLANES if planes == "all" else (planes,)
    warnings = []
    for view in views:
        inplane = [sizes[a] for a in range(3) if a != PLANE_AXES[view]]
        shown = " x ".join(f"{v:.3g}" for v in inplane)
        if expected and any(not 1 / tolerance <= v / float(expected) <= tolerance for v in inplane):
            warnings.append(
                f"{view} voxels of {shown} mm: model {getattr(bundle, 'name', '?')!r} was trained on "
                f"{float(expected):.3g} mm input, and this is more than {tolerance:g} times finer or coarser; "
                f"its output there is untested (see the model card)"
            )
        if max(inplane) / min(inplane) > square_tolerance:
            warnings.append(
                f"{view} voxels of {shown} mm are not square; the model was trained on square voxels"
            )
    return warnings


def sr_memory_gb(shape, *, scale: int = 2, planes: str = "sagittal") -> float:
    """About the peak memory (GB) of :func:`super_resolve_image` for a volume of ``shape`` (from the
    header alone): float32 copies of the input (loaded, in RAS, normalized, clipped residual) and three
    of the output (the result, its intensities mapped back, its reoriented image), x``scale`` on two
    axes (``planes="all"``: on three). Batches of slices and the network's activations come on top.

    >>> round(sr_memory_gb((120, 120, 90)), 3)  # a 2 mm head
    0.083
    """
    _check_plane(planes)
    n = float(np.prod([int(v) for v in tuple(shape)[:3]]))
    out = n * scale ** (3 if planes == "all" else 2)
    return 4.0 * (4 * n + 3 * out) / 1e9


def _tiles(length: int, tile: int, overlap: int) -> Iterator[tuple[int, int]]:
    """Start/stop of overlapping tiles covering ``range(length)``."""
    if length <= tile:
        yield 0, length
        return
    step = tile - 2 * overlap
    start = 0
    while True:
        stop = min(start + tile, length)
        yield max(stop - tile, 0), stop
        if stop == length:
            return
        start += step


def output_settings(bundle=None, *, strength: float | None = None, background: str | None = None,
                    slice_denoise: float | None = None, projection: str | None = None) -> dict[str, Any]:
    """The output settings of a run: ``strength``, ``background``, ``slice_denoise`` and
    ``projection`` where given, else the bundle's recommendation (its manifest's ``output``), else
    :data:`DEFAULT_OUTPUT`.

    ``strength`` (0-1) is the weight of the network's output against the bicubic interpolation of the
    input: 1 is the network alone, 0 plain bicubic. ``background="input"`` keeps the bicubic
    interpolation of the input outside the head (the air), ``"model"`` the network's output there.
    ``slice_denoise`` (>= 0; 0: off) denoises the network's input across neighbouring slices first
    (:func:`denoise_across_slices`, ``h`` = this x the noise level the generator reads).
    ``projection`` (:data:`OUTPUT_PROJECTIONS`) projects each of the network's output slices onto the
    images that give its input slice (the network's input: after ``slice_denoise`` where on) under that
    model of the down-sampling: ``kspace`` replaces the output's central k-space by the input's (what an
    MR scanner acquires at the lower resolution), ``area`` makes each block's mean the input voxel's.
    Nothing the acquisition cannot see changes; the projection comes before the blend with bicubic.
    """
    recommended = dict(DEFAULT_OUTPUT)
    if bundle is not None:
        recommended.update(getattr(bundle, "output", None) or {})
    settings = {
        "strength": float(recommended["strength"] if strength is None else strength),
        "background": str(recommended["background"] if background is None else background),
        "slice_denoise": float(recommended["slice_denoise"] if slice_denoise is None else slice_denoise),
        "projection": str(recommended["projection"] if projection is None else projection),
    }
    if not 0.0 <= settings["strength"] <= 1.0:
        raise ValueError(f"strength must be between 0 and 1, got {settings['strength']}")
    if settings["background"] not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {settings['background']!r}")
    if not 0.0 <= settings["slice_denoise"] < math.inf:
        raise ValueError(f"slice_denoise must be a finite number >= 0, got {settings['slice_denoise']}")
    if settings["projection"] not in OUTPUT_PROJECTIONS:
        raise ValueError(f"projection must be one of {OUTPUT_PROJECTIONS}, "
                         f"got {settings['projection']!r}")
    return settings


def volume_noise_level(generator, slices: np.ndarray, max_slices: int = 24, device="cpu") -> float:
    """The noise level of a stack of normalized slices ``[N, H, W]``: the median over (up to
    ``max_slices``, evenly spaced) slices of the level the generator (on ``device``) reads on each
    (:func:`slice_noise_level`; Immerkaer's estimate for a generator without a noise-level input), 0
    where no slice reads any."""
    import torch

    from .models import estimate_noise_sigma

    index = np.unique(np.linspace(0, len(slices) - 1, min(max_slices, len(slices))).round().astype(int))
    levels = []
    with torch.inference_mode():
        for start in range(0, len(index), 8):
            batch = torch.from_numpy(np.ascontiguousarray(slices[index[start:start + 8]], dtype=np.float32))
            batch = batch[:, None].to(device)
            sigma = slice_noise_level(generator, batch)
            if sigma is None:
                sigma = estimate_noise_sigma(batch)
            levels.append(sigma.float().cpu().numpy())
    levels = np.concatenate(levels) if levels else np.zeros(0)
    levels = levels[levels > 0]
    return float(np.median(levels)) if levels.size else 0.0


def denoise_across_slices(slices: np.ndarray, level: float, strength: float, *, spacing: float = 1.0,
                          radius: int = SLICE_DENOISE_RADIUS, patch: int = SLICE_DENOISE_PATCH,
                          guide: np.ndarray | None = None) -> np.ndarray:
    """Non-local means across the slices of ``slices [N, H, W]`` (float32): each pixel averaged with the
    same pixel of the ``radius`` slices on either side, weighted by ``exp(-(k x spacing)^2 / 2)`` for a
    slice ``k`` away (``spacing``: the slice spacing in units of the Gaussian's width,
    :data:`SLICE_DENOISE_WIDTH_MM`) times ``exp(-d / h^2)``, ``d`` the mean squared difference of the two
    slices over a ``patch`` x ``patch`` window around it and ``h = strength x level``. Off (a copy) where
    ``h`` is 0.

    Anatomy changes little from one thin slice to the next and noise does not repeat: where two slices
    agree to within the noise the average keeps the anatomy and loses noise; where they differ by more
    (an edge leaving the slice) the weight falls to nothing, and slices further apart weigh less. It works on
    whole slices across the stack, which the 2D generator cannot see (its input is one slice). At the
    ends of the stack a missing neighbour counts as the slice itself. ``guide`` (like ``slices``; default
    the slices themselves) is the stack whose likeness ``d`` measures: a less noisy pilot estimate of the same
    slices, as the second stage of BM3D uses one.
    """
    from scipy.ndimage import uniform_filter

    y = np.asarray(slices, dtype=np.float32)
    g = y if guide is None else np.asarray(guide, dtype=np.float32)
    if g.shape != y.shape:
        raise ValueError(f"guide shape {g.shape} differs from the slices' {y.shape}")
    h2 = float(strength * level) ** 2
    if h2 <= 0 or len(y) < 2:
        return y.copy()
    total, weights = y.copy(), np.ones_like(y)
    for k in range(1, radius + 1):
        for shift in (k, -k):
            index = np.arange(len(y)) - shift
            outside = (index < 0) | (index >= len(y))
            index = np.where(outside, np.arange(len(y)), index)  # no neighbour that far: the slice itself
            other = y[index]
            d = uniform_filter((g - (other if guide is None else g[index])) ** 2, size=(1, patch, patch))
            w = np.float32(math.exp(-0.5 * (k * spacing) ** 2)) * np.exp(-d / np.float32(h2))
            total += w * other
            weights += w
    return total / weights


def head_mask(data: np.ndarray, margin: int = HEAD_MARGIN_VOXELS) -> np.ndarray | None:
    """The head of a normalized volume (Otsu foreground, largest component, holes filled), dilated by
    ``margin`` voxels; ``None`` when no foreground is found (then nothing is treated as air)."""
    from scipy import ndimage

    from .metrics.volume import foreground_mask

    mask = foreground_mask(data)
    if not mask.any():
        return None
    return ndimage.binary_dilation(mask, iterations=margin) if margin > 0 else mask


def _blend_weights(mask_slices: np.ndarray | None, strength: float, scale: int,
                   shape: tuple[int, int]) -> np.ndarray | float:
    """Per-pixel weight of the network's output for slices ``[B, H, W]`` of the head mask (or ``None``:
    the whole slice), on the up-sampled grid ``shape``: ``strength`` inside the head, 0 in the air,
    with a feathered transition."""
    if mask_slices is None:
        return strength
    from scipy import ndimage

    from .metrics.imresize import imresize

    # linear interpolation (no cubic over/undershoot), then the feathering blur
    weight = imresize(mask_slices.astype(np.float32), out_shape=shape, axes=(1, 2), kernel="bilinear",
                      antialias=False)
    weight = ndimage.gaussian_filter(weight, (0, HEAD_FEATHER_SIGMA, HEAD_FEATHER_SIGMA))
    return strength * np.clip(weight, 0.0, 1.0)


def slice_noise_level(generator, batch):
    """The noise level ``[B]`` of each whole slice of ``batch [B,C,H,W]`` (channel 0: the slice itself, then
    its neighbours for a 2.5D generator) for a generator with a noise-level input
    (``GeneratorConfig.noise_level_input``), else ``None``."""
    if not getattr(getattr(generator, "config", None), "noise_level_input", False):
        return None
    if hasattr(generator, "estimate_noise"):
        return generator.estimate_noise(batch[:, :1])
    from .models import estimate_noise_sigma

    return estimate_noise_sigma(batch[:, :1])


def _run_tiled(generator, batch, scale: int, tile_size: int | None, overlap: int):
    """Apply the generator to a [B,C,H,W] tensor (C > 1: a 2.5D generator's slices and their neighbours),
    in overlapping tiles when it is large.

    A generator with a noise-level input gets each slice's level estimated on the whole slice, so
    all tiles of a slice see the same level.
    """
    import torch

    _, _, height, width = batch.shape
    sigma = slice_noise_level(generator, batch)
    extra = () if sigma is None else (sigma,)
    if tile_size is None or (height <= tile_size and width <= tile_size):
        return generator(batch, *extra)
    out = torch.empty(
        (batch.shape[0], 1, height * scale, width * scale), dtype=batch.dtype, device=batch.device
    )
    for y0, y1 in _tiles(height, tile_size, overlap):
        for x0, x1 in _tiles(width, tile_size, overlap):
            sr = generator(batch[:, :, y0:y1, x0:x1], *extra)
            # keep the tile's centre: drop `overlap` input pixels on every inner border
            cy0 = 0 if y0 == 0 else overlap
            cx0 = 0 if x0 == 0 else overlap
            cy1 = (y1 - y0) if y1 == height else (y1 - y0 - overlap)
            cx1 = (x1 - x0) if x1 == width else (x1 - x0 - overlap)
            out[:, :, (y0 + cy0) * scale:(y0 + cy1) * scale, (x0 + cx0) * scale:(x0 + cx1) * scale] = (
                sr[:, :, cy0 * scale:cy1 * scale, cx0 * scale:cx1 * scale]
            )
    return out


def super_resolve_plane(
    data: np.ndarray,
    generator,
    *,
    plane: str = "sagittal",
    scale: int = 2,
    batch_size: int | None = None,
    device: str = "cpu",
    tile_size: int | None = None,
    tile_overlap: int = 8,
    strength: float = 1.0,
    mask: np.ndarray | None = None,
    residual: np.ndarray | None = None,
    timings: dict[str, float] | None = None,
    slice_denoise: float = 0.0,
    slice_spacing_mm: float | None = None,
    projection: str = "none",
) -> np.ndarray:
    """Super-resolve every slice of a normalized RAS volume along one plane.

    Returns a float32 volume upsampled by ``scale`` on the plane's two in-plane axes. With
    ``strength < 1`` or a head ``mask`` (a boolean volume like ``data``) each output slice is
    blended with the bicubic interpolation of its input slice (:func:`output_settings`): the
    network's output weighs ``strength`` inside the mask and nothing outside it. ``residual`` (like
    ``data``) is what the normalization clipped off the input: it is added back to the interpolated
    input, so the blend keeps the input's own values (negative air, very bright vessels).
    ``batch_size`` defaults to :func:`default_batch_size`. ``slice_denoise > 0`` gives the network the
    slices denoised across the stack (:func:`denoise_across_slices`, ``h`` = ``slice_denoise`` x
    :func:`volume_noise_level`; slices ``slice_spacing_mm`` apart, by default
    :data:`SLICE_DENOISE_WIDTH_MM`); the blend keeps the input as it is. ``projection``
    (``kspace`` / ``area``) projects each output slice onto the network's input slice under that model
    (:func:`ddasr_nipype.degradations.consistency_projection`) before the blend. ``timings`` (a dict), when
    given, is added the seconds spent in the network (``network``, the projection included), in the blend
    (``blend``) and denoising across slices (``slice_denoise``).
    """
    import torch

    if plane not in PLANE_AXES:
        raise ValueError(f"plane must be one of {tuple(PLANE_AXES)}, got {plane!r}")
    if data.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {data.shape}")
    torch_device = resolve_device(device)
    if batch_size is None:
        batch_size = default_batch_size(torch_device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    axis = PLANE_AXES[plane]
    moved = np.moveaxis(data, axis, 0)  # [N, H, W], a view
    n_slices, height, width = moved.shape
    if mask is not None and mask.shape != data.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the volume's {data.shape}")
    if residual is not None and residual.shape != data.shape:
        raise ValueError(f"residual shape {residual.shape} differs from the volume's {data.shape}")
    checked = output_settings(strength=strength, projection=projection)
    strength, projection = checked["strength"], checked["projection"]
    network_input = moved
    if slice_denoise > 0:
        t0 = time.perf_counter()
        spacing = (slice_spacing_mm or SLICE_DENOISE_WIDTH_MM) / SLICE_DENOISE_WIDTH_MM
        level = volume_noise_level(generator, moved, device=torch_device)
        network_input = denoise_across_slices(moved, level, slice_denoise, spacing=spacing)
        if timings is not None:
            timings["slice_denoise"] = timings.get("slice_denoise", 0.0) + time.perf_counter() - t0
    blend = strength < 1.0 or mask is not None
    mask_moved = None if mask is None else np.moveaxis(mask, axis, 0)
    residual_moved = None if residual is None else np.moveaxis(residual, axis, 0)
    out = np.empty((n_slices, height * scale, width * scale), dtype=np.float32)
    from .degradations import bicubic_upsample, consistency_projection
    from .models import context_index

    # a 2.5D generator also takes the neighbouring slices (GeneratorConfig.context_slices)
    context = getattr(getattr(generator, "config", None), "context_slices", 0)

    def run_chunk(start: int) -> tuple[float, float]:
        with torch.inference_mode():  # thread-local: entered in every worker
            t0 = time.perf_counter()
            index = context_index(np.arange(start, min(start + batch_size, n_slices)), n_slices, context)
            stack = np.ascontiguousarray(network_input[index], dtype=np.float32)  # [B, 1 + 2c, H, W]
            chunk = np.asarray(moved[start:start + len(stack)], dtype=np.float32)
            batch = torch.from_numpy(stack).to(torch_device)
            sr = _run_tiled(generator, batch, scale, tile_size, tile_overlap)[:, 0].float().cpu().numpy()
        if projection != "none":
            target = np.asarray(network_input[start:start + len(chunk)], dtype=np.float32)
            sr = consistency_projection(sr, target, scale, axes=(1, 2), model=projection).astype(np.float32)
        t1 = time.perf_counter()
        if blend:
            stop = start + len(chunk)
            weight = _blend_weights(None if mask_moved is None else mask_moved[start:stop], strength,
                                    scale, sr.shape[1:])
            interpolated = chunk
            if residual_moved is not None and residual_moved[start:stop].any():
                interpolated = chunk + residual_moved[start:stop]
            sr = weight * sr + (1.0 - weight) * bicubic_upsample(interpolated, scale, axes=(1, 2))
        out[start:start + len(chunk)] = sr
        return t1 - t0, time.perf_counter() - t1

    from threadpoolctl import threadpool_limits

    starts = range(0, n_slices, batch_size)
    workers = slice_workers(torch_device, len(starts))
    t_start = time.perf_counter()
    # The blend resizes with a few small matrix products per slice: numpy's BLAS on one thread. On more,
    # OpenBLAS's threads spin after each product on the cores torch's threads need (the example on two
    # cores: network 7.5 -> 5.5 s, blend 0.9 -> 0.1 s; the same output).
    with threadpool_limits(limits=1, user_api="blas"):
        if workers == 1:
            spent = [run_chunk(start) for start in starts]
        else:
            with one_thread_each(workers) as pool:
                spent = list(pool.map(run_chunk, starts))
    if timings is not None:  # wall seconds, split in the workers' proportions
        wall = time.perf_counter() - t_start
        network_s, blend_s = (sum(part) for part in zip(*spent)) if spent else (0.0, 0.0)
        share = wall / (network_s + blend_s) if network_s + blend_s > 0 else 0.0
        timings["network"] = timings.get("network", 0.0) + network_s * share
        timings["blend"] = timings.get("blend", 0.0) + blend_s * share
    return np.moveaxis(out, 0, axis)


def _upsample_axis_linear(vol: np.ndarray, axis: int, scale: int, out: np.ndarray, chunk: int = 16):
    """Add to ``out`` the FOV-preserving linear up-sampling of ``vol`` along ``axis``.

    Output index ``i'`` samples input position ``(i' + 0.5) / scale - 0.5`` (edges clamped).
    """
    n_in = vol.shape[axis]
    n_out = n_in * scale
    src = np.moveaxis(vol, axis, 0)
    dst = np.moveaxis(out, axis, 0)
    for start in range(0, n_out, chunk):
        idx = np.arange(start, min(start + chunk, n_out))
        pos = np.clip((idx + 0.5) / scale - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        w = (pos - lo).astype(np.float32)[:, None, None]
        dst[idx] += src[lo] * (1 - w) + src[hi] * w


def super_resolve_volume(
    data: np.ndarray,
    generator,
    *,
    plane: str = "sagittal",
    scale: int = 2,
    batch_size: int | None = None,
    device: str = "cpu",
    tile_size: int | None = None,
    tile_overlap: int = 8,
    strength: float = 1.0,
    background: str = "model",
    residual: np.ndarray | None = None,
    timings: dict[str, float] | None = None,
    slice_denoise: float = 0.0,
    voxel_size_mm: tuple[float, float, float] | None = None,
    projection: str = "none",
) -> np.ndarray:
    """Super-resolve a normalized RAS volume.

    ``plane`` is one of sagittal/coronal/axial (x``scale`` on the two in-plane axes, as in the paper)
    or ``all``: the three single-plane results, each brought to the isotropic x``scale`` grid by linear
    interpolation along its slice axis, are averaged into an isotropic volume. ``strength`` and
    ``background`` blend the network's output with bicubic interpolation, ``slice_denoise`` denoises its
    input across each plane's slices first, ``projection`` makes each output slice agree with its
    input slice (:func:`output_settings`; ``voxel_size_mm``, the RAS voxel size, gives the slice spacing);
    ``residual`` is what the normalization clipped off (:func:`super_resolve_plane`). ``timings`` (a
    dict), when given, is added the seconds of each step: ``head_mask``, ``slice_denoise`` where on,
    ``network``, ``blend`` and, for ``all``, ``fuse``.
    """
    _check_plane(plane)
    settings = output_settings(strength=strength, background=background, slice_denoise=slice_denoise,
                               projection=projection)
    t0 = time.perf_counter()
    mask = head_mask(data) if settings["background"] == "input" else None
    if timings is not None:
        timings["head_mask"] = timings.get("head_mask", 0.0) + time.perf_counter() - t0
    kwargs = dict(scale=scale, batch_size=batch_size, device=device, tile_size=tile_size,
                  tile_overlap=tile_overlap, strength=settings["strength"], mask=mask, residual=residual,
                  timings=timings, slice_denoise=settings["slice_denoise"],
                  projection=settings["projection"])

    def spacing(name: str) -> float | None:
        return None if voxel_size_mm is None else float(voxel_size_mm[PLANE_AXES[name]])

    if plane != "all":
        return super_resolve_plane(data, generator, plane=plane, slice_spacing_mm=spacing(plane), **kwargs)
    fused = np.zeros(tuple(n * scale for n in data.shape), dtype=np.float32)
    fuse_s = 0.0
    for name, axis in PLANE_AXES.items():
        in_plane = super_resolve_plane(data, generator, plane=name, slice_spacing_mm=spacing(name), **kwargs)
        t0 = time.perf_counter()
        _upsample_axis_linear(in_plane, axis, scale, fused)
        del in_plane
        fuse_s += time.perf_counter() - t0
    fused /= len(PLANE_AXES)
    if timings is not None:
        timings["fuse"] = timings.get("fuse", 0.0) + fuse_s
    return fused


def _output_image(data: np.ndarray, affine: np.ndarray, like):
    """A float32 NIfTI image carrying over the reference header's spatial/unit codes."""
    import nibabel as nib

    from .data.io import carried_qform

    img = nib.Nifti1Image(data.astype(np.float32, copy=False), affine)
    header = getattr(like, "header", None)
    if isinstance(header, nib.Nifti1Header):
        img.header.set_xyzt_units(*header.get_xyzt_units())
        img.set_qform(carried_qform(header, affine), int(header["qform_code"]) or 1)
        img.set_sform(affine, int(header["sform_code"]) or 1)
    return img


def super_resolve_image(
    img,
    bundle,
    *,
    planes: str = "sagittal",
    device: str = "cpu",
    batch_size: int | None = None,
    num_threads: int | None = None,
    tile_size: int | None = None,
    generator=None,
    strength: float | None = None,
    background: str | None = None,
    slice_denoise: float | None = None,
    projection: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Super-resolve a nibabel image with a model bundle.

    The image is reoriented to RAS, normalized with the bundle's percentile rule, super-resolved, mapped
    back to the input's intensity range and orientation, and given a field-of-view-preserving affine.
    ``strength``, ``background``, ``slice_denoise`` and ``projection`` default to the bundle's
    recommendation (:func:`output_settings`),
    ``batch_size`` to :func:`default_batch_size`. Without ``generator`` the bundle's is loaded and
    prepared (:func:`prepare_generator`); a given one is used as it is.
    Returns ``(out_img, info)``; ``info["warnings"]`` lists what :func:`resolution_warnings` found (also
    logged on the ``ddasr_nipype`` logger), ``info["timings_s"]`` the seconds of each step
    (``load_model``, ``normalize``, ``head_mask``, ``slice_denoise`` where on, ``network``, ``blend``,
    ``fuse`` for ``planes="all"``, ``restore``: back to the input's intensities and orientation).
    """
    import torch

    from .data.io import from_ras, ras_voxel_sizes, to_ras
    from .data.normalize import fit_normalization
    from .data.slicing import upsampled_affine

    _check_plane(planes)
    settings = output_settings(bundle, strength=strength, background=background, slice_denoise=slice_denoise,
                               projection=projection)
    warnings = resolution_warnings(ras_voxel_sizes(img), bundle, planes)
    for message in warnings:
        LOGGER.warning("%s", message)
    if num_threads:
        torch.set_num_threads(int(num_threads))
    t0 = time.perf_counter()
    torch_device = resolve_device(device)
    batch_size = default_batch_size(torch_device) if batch_size is None else batch_size
    timings: dict[str, float] = {}
    if generator is None:
        generator = prepare_generator(bundle.load_generator(str(torch_device)), torch_device)
    timings["load_model"] = time.perf_counter() - t0
    img_ras, orig_ornt = to_ras(img)
    data = np.asarray(img_ras.dataobj, dtype=np.float32)
    norm_kwargs = {}
    if "percentiles" in bundle.normalization:
        norm_kwargs["percentiles"] = tuple(bundle.normalization["percentiles"])
    norm = fit_normalization(data, **norm_kwargs)
    scale = bundle.scale
    normalized = norm.apply(data)
    # the network sees the clipped input; the interpolated input in the blend keeps every value
    residual = None
    blends = settings["strength"] < 1.0 or settings["background"] == "input"
    if blends and norm.clip_max is not None and (
            data.min() < norm.invert(np.float32(norm.floor)) or data.max() > norm.invert(np.float32(norm.clip_max))):
        residual = (data - np.float32(norm.low)) / np.float32(norm.scale) - normalized
    timings["normalize"] = time.perf_counter() - t0 - timings["load_model"]
    sr = super_resolve_volume(
        normalized, generator, plane=planes, scale=scale, batch_size=batch_size,
        device=str(torch_device), tile_size=tile_size, residual=residual, timings=timings,
        voxel_size_mm=tuple(float(v) for v in ras_voxel_sizes(img_ras)), **settings,
    )
    t_restore = time.perf_counter()
    del normalized, residual
    sr = np.asarray(norm.invert(sr), dtype=np.float32)
    if float(data.min()) >= 0:
        np.maximum(sr, 0, out=sr)  # magnitude images stay non-negative
    factors = tuple(scale for _ in range(3)) if planes == "all" else tuple(
        1 if axis == PLANE_AXES[planes] else scale for axis in range(3)
    )
    out_ras = _output_image(sr, upsampled_affine(img_ras.affine, factors), img)
    out_img = from_ras(out_ras, orig_ornt)
    timings["restore"] = time.perf_counter() - t_restore
    info = {
        "scale": scale,
        "planes": planes,
        "upsampling_factors_ras": list(factors),
        "device": str(torch_device),
        "batch_size": batch_size,
        "runtime_s": round(time.perf_counter() - t0, 3),
        "timings_s": {step: round(seconds, 3) for step, seconds in timings.items()},
        "model_name": bundle.name,
        "model_sha256": bundle.sha256,
        "normalization": norm.to_dict(),
        "output": settings,
        "warnings": warnings,
    }
    return out_img, info


def _matched_reference_slices(ref: np.ndarray, axis: int, n_slices: int) -> np.ndarray:
    """Indices of reference slices at the same relative position as each of ``n_slices`` slices."""
    n_ref = ref.shape[axis]
    return np.clip(np.round((np.arange(n_slices) + 0.5) / n_slices * n_ref - 0.5), 0, n_ref - 1).astype(int)


def degrade_image(
    img,
    bundle,
    *,
    reference_lr,
    device: str = "cpu",
    batch_size: int = 4,
    plane: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Degrade an HR image with the bundle's DSN into a synthetic LR image of the target site.

    The DSN needs a real LR image of the target domain (``reference_lr``): each HR slice is paired with
    the reference slice at the same relative position along the plane. The output is down-sampled by
    the bundle's scale on the two in-plane axes, with a field-of-view-preserving affine; an odd in-plane
    axis first loses its last HR voxel (``info["hr_cropped"]``), so the LR grid covers the HR's field of
    view exactly. The through-plane axis keeps the HR's spacing. ``info["warnings"]`` says when the
    synthetic LR's in-plane voxels differ by more than 10 % from the site's (the bundle's
    ``preprocessing.lr_voxel_size``, else the reference's): the DSN was trained on HR resampled to the
    site's voxel size / scale, so resample the HR first for a synthetic LR of the site's resolution.
    """
    import torch

    from .data.io import from_ras, to_ras
    from .data.normalize import fit_normalization
    from .data.slicing import upsampled_affine

    plane = plane or bundle.plane
    if plane not in PLANE_AXES:
        raise ValueError(f"plane must be one of {tuple(PLANE_AXES)}, got {plane!r}")
    t0 = time.perf_counter()
    torch_device = resolve_device(device)
    dsn = bundle.load_dsn(str(torch_device))
    scale = bundle.scale
    hr_ras, orig_ornt = to_ras(img)
    axis = PLANE_AXES[plane]
    odd = tuple(slice(0, n - n % scale) if a != axis else slice(None) for a, n in enumerate(hr_ras.shape[:3]))
    cropped = [a for a, n in enumerate(hr_ras.shape[:3]) if a != axis and n % scale]
    if cropped:
        hr_ras = hr_ras.slicer[odd]
    hr = np.asarray(hr_ras.dataobj, dtype=np.float32)
    ref_ras, _ = to_ras(reference_lr)
    ref = np.asarray(ref_ras.dataobj, dtype=np.float32)
    hr_norm = fit_normalization(hr)
    ref_norm = fit_normalization(ref)
    hr_slices = np.moveaxis(hr_norm.apply(hr), axis, 0)
    ref_slices = np.moveaxis(ref_norm.apply(ref), axis, 0)
    matched = _matched_reference_slices(ref, axis, hr_slices.shape[0])
    out_h, out_w = (math.ceil(n / scale) for n in hr_slices.shape[1:])
    out = np.empty((hr_slices.shape[0], out_h, out_w), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, hr_slices.shape[0], batch_size):
            stop = min(start + batch_size, hr_slices.shape[0])
            hr_batch = torch.from_numpy(np.ascontiguousarray(hr_slices[start:stop]))[:, None]
            lr_batch = torch.from_numpy(np.ascontiguousarray(ref_slices[matched[start:stop]]))[:, None]
            lr = dsn(hr_batch.to(torch_device), lr_batch.to(torch_device), degrade=True)
            out[start:stop] = lr[:, 0, :out_h, :out_w].float().cpu().numpy()
    lr_vol = np.asarray(hr_norm.invert(np.moveaxis(out, 0, axis)), dtype=np.float32)
    if float(hr.min()) >= 0:
        np.maximum(lr_vol, 0, out=lr_vol)
    factors = tuple(1.0 if a == axis else 1.0 / scale for a in range(3))
    out_ras = _output_image(lr_vol, upsampled_affine(hr_ras.affine, factors), img)
    info = {
        "scale": scale,
        "plane": plane,
        "device": str(torch_device),
        "runtime_s": round(time.perf_counter() - t0, 3),
        "model_name": bundle.name,
        "dsn_sha256": bundle.manifest["files"]["dsn.pt"]["sha256"],
        "hr_cropped": ["RAS"[a] + "-" + "LPI"[a] for a in cropped],
        "warnings": _site_voxel_warnings(out_ras, ref_ras, bundle, axis),
    }
    for message in info["warnings"]:
        LOGGER.warning("%s", message)
    return from_ras(out_ras, orig_ornt), info


def _site_voxel_warnings(out_ras, ref_ras, bundle, axis: int, tolerance: float = 0.1) -> list[str]:
    """A warning when the synthetic LR's in-plane voxels are more than ``tolerance`` off the site's."""
    from .data.io import ras_voxel_sizes

    site = (getattr(bundle, "preprocessing", None) or {}).get("lr_voxel_size")
    ref_sizes = ras_voxel_sizes(ref_ras)
    inplane = [a for a in range(3) if a != axis]
    expected = [float(site)] * 2 if site else [ref_sizes[a] for a in inplane]
    got = [ras_voxel_sizes(out_ras)[a] for a in inplane]
    if all(abs(g - e) <= tolerance * e for g, e in zip(got, expected)):
        return []
    shown = " x ".join(f"{v:.3g}" for v in got)
    target = " x ".join(f"{v:.3g}" for v in expected)
    return [f"synthetic LR voxels of {shown} mm in-plane, the site's are {target} mm: the DSN of "
            f"{getattr(bundle, 'name', '?')!r} was trained on HR resampled to the site's voxel size / "
            f"{bundle.scale}; resample the HR to that first for a synthetic LR of the site's resolution"]
