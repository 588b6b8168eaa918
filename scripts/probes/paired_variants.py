"""Paired held-out check of model bundles and output variants, on ``ddasr-eval``'s exact Table II path.

    python scripts/probes/paired_variants.py HR_T1W BUNDLE... [--degradation kspace-rician ...]
        [--projection kspace|area ...] [--strength S ...] [--background input|model] [--slice-step K]

Each HR scan is prepared as ``ddasr-eval`` does (RAS, odd in-plane sizes cropped, normalized by the head's
99.5th percentile, degraded with the same seeded draws for its ``sub-<label>`` key), every bundle runs
through :func:`ddasr_nipype.inference.super_resolve_image` (the app's normalization and blend), and brain /
head PSNR and SSIM are scored with :func:`ddasr_nipype.metrics.volume.reference_scores` inside deepbet's
brain mask (cached in ``--cache-dir``). Each ``--variant`` (default: the network alone everywhere) runs
with those output settings, ``throughplane=SIGMA`` smoothing the output across slices (a Gaussian of SIGMA
slices: what the neighbouring slices could add, as a diagnostic), ``znlm=C`` / ``prenlm=C`` a non-local
means across slices of the output / of the LR before the network (h = C x the LR's noise level; a
diagnostic; ``nlmlevel=learned``: h from the level the bundle's generator reads instead of Immerkaer's;
``nlmpatch=P``: the in-plane patch, 3 by default),
``slice_denoise=H`` the app's denoising across slices (default: the bundle's), ``projection=M`` the
app's projection of each output slice onto the network's input slice (``kspace``, ``area``, ``none``; default:
the bundle's), ``noisescale=K`` telling a noise-level generator K times each slice's estimated noise
level, ``nlmwidth=MM`` / ``nlmradius=R`` the app's denoising across slices with a Gaussian of the slice
distance MM wide over R slices on either side, ``projection=MODEL:WEIGHT`` (with a weight) making the
output consistent with the LR as given, after the fact (:func:`ddasr_nipype.degradations.consistency_projection`, in the volume's own intensity units). Prints mean brain/head PSNR, SSIM and the paired difference to bicubic with the paired
t-test p-value over slices. ``--thick-slices K`` makes the reference (and so the LR) K times thicker across
the slices first, so that the LR's neighbouring slices lie as far apart as a 3D acquisition at the LR
resolution puts them. ``--no-reference`` also scores NIQE and BRISQUE per slice (Table I's protocol: each
volume normalized in the head mask, whole slices) on the reference itself, bicubic and every output: how the
real HR scores against bicubic says whether a no-reference target below bicubic is one that fidelity meets.
``--ensemble`` adds, for each variant, the mean of all the bundles' outputs (a model ensemble).
``wiener=learned|oracle`` (``walpha=A``, ``wsmooth=S``) moves the output's central k-space toward the LR's
by a Wiener weight per frequency, after the fact: the noise level read by the bundle's estimator, or the
one the degradation drew; ``projection=kspace,wproj=F`` makes the app's own projection (onto the network's
input) such a Wiener weight, the level F x what the estimator reads on that input. ``nlmguide=G``: the
app's denoising across slices run twice, the second pass weighted by the first's output (h = G x the
level). ``--kspace-alpha A`` / ``--kspace-partial F``: ``kspace-rician`` as an apodized (Tukey alpha A) or
partial Fourier (fraction F) acquisition instead of the plain truncation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _through_plane_nlm(vol, c: float, axis: int, *, lr=None, level=None, patch: int = 3):
    """:func:`ddasr_nipype.inference.denoise_across_slices` of ``vol`` along ``axis`` with ``h = c x``
    ``level``, by default the median Immerkaer noise level of the LR slices (``lr``, else ``vol``'s own)."""
    import torch

    from ddasr_nipype.inference import denoise_across_slices
    from ddasr_nipype.models import estimate_noise_sigma

    if level is None:
        ref = np.moveaxis(vol if lr is None else lr, axis, 0)
        sigma = estimate_noise_sigma(torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))[:, None]).numpy()
        level = float(np.median(sigma[sigma > 0]))
    return np.moveaxis(denoise_across_slices(np.moveaxis(vol, axis, 0), level, c, patch=patch), 0, axis)


def _thick_slices(hr_ras, hr01, head, brain, k: int, axis: int):
    """``--thick-slices K``: the HR volume's k-space truncated K-fold along the slice axis (and its grid,
    head and brain masks with it: a voxel is in where most of the K slices it covers are)."""
    import nibabel as nib

    from ddasr_nipype.data.slicing import upsampled_affine
    from ddasr_nipype.degradations import kspace_truncation

    thick = kspace_truncation(hr01, k, axes=(axis,))
    n = thick.shape[axis]

    def fold(m):
        m = np.moveaxis(m.astype(np.float64), axis, 0)
        m = np.concatenate([m, np.zeros((n * k - m.shape[0],) + m.shape[1:])])
        return np.moveaxis(m.reshape(n, k, *m.shape[1:]).mean(axis=1) > 0.5, 0, axis)

    factors = tuple(1.0 / k if a == axis else 1.0 for a in range(3))
    img = nib.Nifti1Image(thick.astype(np.float32), upsampled_affine(hr_ras.affine, factors))
    return img, thick, fold(head), fold(brain)


def _learned_level(bundle, lr, axis: int) -> float:
    """The noise level of the LR slices as the bundle's generator reads them (``nlmlevel=learned``)."""
    from ddasr_nipype.inference import volume_noise_level

    return volume_noise_level(bundle.load_generator().float().eval(), np.moveaxis(lr, axis, 0))


def _scale_noise_level(factor: float) -> None:
    """Variant ``noisescale=K``: a noise-level generator is told K times the noise level estimated on each
    slice (FFDNet's denoising-strength knob; 1: as the app runs it), on the app's own path."""
    import ddasr_nipype.inference as inference

    estimate = getattr(inference, "_estimated_noise_level", inference.slice_noise_level)
    inference._estimated_noise_level = estimate
    if factor == 1:
        inference.slice_noise_level = estimate
        return

    def scaled(generator, batch):
        sigma = estimate(generator, batch)
        return None if sigma is None else sigma * factor

    inference.slice_noise_level = scaled


def _slice_denoise_shape(width_mm: float | None, radius: int | None) -> None:
    """Variants ``nlmwidth=MM`` / ``nlmradius=R``: the app's denoising across slices with a Gaussian of the
    slice distance MM wide (default :data:`~ddasr_nipype.inference.SLICE_DENOISE_WIDTH_MM`) over R slices on
    either side (default :data:`~ddasr_nipype.inference.SLICE_DENOISE_RADIUS`), on the app's own path."""
    import functools

    import ddasr_nipype.inference as inference

    original = getattr(inference, "_original_slice_denoise", (inference.denoise_across_slices,
                                                               inference.SLICE_DENOISE_WIDTH_MM))
    inference._original_slice_denoise = original
    function, width = original
    inference.SLICE_DENOISE_WIDTH_MM = width if width_mm is None else width_mm
    inference.denoise_across_slices = function if radius is None else functools.partial(function, radius=radius)


def _guided_slice_denoise(guide: float | None) -> None:
    """Variant ``nlmguide=G``: the app's denoising across slices run twice, the second pass weighting the
    neighbours by how alike they are in the first pass's output (a less noisy pilot, as BM3D's second
    stage) with ``h = G x`` the noise level, and averaging the original slices with those weights."""
    import ddasr_nipype.inference as inference

    first = getattr(inference, "_unguided_slice_denoise", inference.denoise_across_slices)
    inference._unguided_slice_denoise = first
    if guide is None:
        inference.denoise_across_slices = first
        return

    def guided(slices, level, strength, *, spacing=1.0, radius=inference.SLICE_DENOISE_RADIUS,
               patch=inference.SLICE_DENOISE_PATCH):
        pilot = first(slices, level, strength, spacing=spacing, radius=radius, patch=patch)
        if strength * level <= 0:
            return pilot
        return first(slices, level, guide, spacing=spacing, radius=radius, patch=patch, guide=pilot)

    inference.denoise_across_slices = guided


def _wiener_app_projection(bundle, factor: float | None, smooth: int = 5) -> None:
    """Variant ``projection=kspace,wproj=F``: the app's k-space projection of each output slice onto the
    network's input slice made a Wiener weight per frequency (:func:`_soft_kspace_projection`), the noise
    level ``F x`` what the bundle's estimator reads on those input slices (after the denoising across
    slices where it is on), on the app's own path."""
    import ddasr_nipype.degradations as degradations

    hard = getattr(degradations, "_hard_consistency_projection", degradations.consistency_projection)
    degradations._hard_consistency_projection = hard
    if factor is None:
        degradations.consistency_projection = hard
        return
    from ddasr_nipype.inference import volume_noise_level

    generator = bundle.load_generator().float().eval()

    def wiener(x, lr, scale=2, *, axes=(-2, -1), model="kspace", weight=1.0):
        if model != "kspace":
            return hard(x, lr, scale, axes=axes, model=model, weight=weight)
        out = np.empty_like(x)
        for i in range(len(x)):  # [B, H, W] slices, axes (1, 2)
            sigma = factor * volume_noise_level(generator, lr[i:i + 1])
            out[i] = _soft_kspace_projection(x[i], lr[i], scale, sigma, (0, 1), smooth)
        return out

    degradations.consistency_projection = wiener


def _soft_kspace_projection(x, lr, scale: int, sigma: float, axes, smooth: int = 5, alpha: float = 1.0):
    """Variant ``wiener=oracle|learned``: ``x``'s central k-space moved toward ``lr``'s by a Wiener weight per
    frequency, ``w = max(1 - N / P, 0)``, ``P`` the power of the difference smoothed over ``smooth`` x
    ``smooth`` frequencies and ``N`` the power white noise of ``sigma`` gives there: where the difference is
    mostly noise nothing changes, where it is well above it the input's value is taken (a prototype)."""
    from scipy.ndimage import uniform_filter

    from ddasr_nipype.degradations import kspace_band

    spectrum, low, band, back = kspace_band(x, lr, axes)
    noise = sigma ** 2  # white noise of sigma in lr, on x's spectral scale
    for axis in axes:
        noise *= x.shape[axis] ** 2 / lr.shape[axis]
    residual = low - spectrum[band]
    size = [smooth if a in axes else 1 for a in range(x.ndim)]
    power = uniform_filter(np.abs(residual) ** 2, size=size, mode="nearest")
    spectrum[band] += np.clip(1 - alpha * noise / np.maximum(power, 1e-30), 0, 1) * residual
    return back(spectrum)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hr", type=Path)
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--degradation", action="append", default=None)
    parser.add_argument("--variant", action="append", default=None)
    parser.add_argument("--slice-step", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=Path("out/cache"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--thick-slices", type=int, default=1, metavar="K",
                        help="first truncate the HR's k-space K-fold across the slices (reference and LR then "
                             "have K times thicker slices, as a 3D acquisition at the LR resolution would)")
    parser.add_argument("--no-reference", action="store_true",
                        help="also NIQE and BRISQUE of the reference, bicubic and each output")
    parser.add_argument("--sigma-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                        help="the noise sigma range of kspace-rician (default its own, 0.01-0.03)")
    parser.add_argument("--kspace-alpha", type=float, default=0.0, metavar="A",
                        help="kspace-rician with a Tukey apodization of this alpha (default 0: a plain truncation)")
    parser.add_argument("--kspace-partial", type=float, default=1.0, metavar="F",
                        help="kspace-rician with partial Fourier: this fraction of the lines along the first "
                             "in-plane axis (default 1: all)")
    parser.add_argument("--ensemble", action="store_true",
                        help="also the outputs of all bundles averaged, for each variant")
    opts = parser.parse_args(argv)

    import torch
    from scipy.stats import ttest_rel

    from _heldout import app_output, degrade, load_heldout, noise_label

    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.degradations import bicubic_upsample, consistency_projection
    from ddasr_nipype.evaluation import _inplane_axes
    from ddasr_nipype.data.slicing import plane_axis
    from ddasr_nipype.metrics.volume import reference_scores

    if opts.threads:
        torch.set_num_threads(opts.threads)
    plane, scale = "sagittal", 2
    axes = _inplane_axes(plane)
    held = load_heldout(opts.hr, opts.cache_dir, plane, scale)
    key, hr_ras, hr01, mask, brain = held.key, held.hr_ras, held.hr01, held.head, held.brain
    if opts.thick_slices > 1:  # the reference made of thick slices too: LR neighbours that far apart
        hr_ras, hr01, mask, brain = _thick_slices(hr_ras, hr01, mask, brain, opts.thick_slices, plane_axis(plane))
    bundles = [load_bundle(b) for b in opts.bundles]
    if opts.kspace_alpha > 0 or opts.kspace_partial < 1:  # an acquisition other than the plain truncation
        from ddasr_nipype import degradations

        def acquired(self, x, params):
            lr = degradations.kspace_acquisition(x, params.scale, axes=self.axes, alpha=opts.kspace_alpha,
                                                 partial_fourier=opts.kspace_partial)
            return degradations.rician_noise(lr, params.sigma, seed=params.seed)

        degradations.KSpaceRicianDegradation.apply = acquired
    for name in opts.degradation or ["kspace-rician", "bicubic"]:
        lr, params = degrade(hr01, key, name, seed=opts.seed, sigma_range=opts.sigma_range, plane=plane, scale=scale)
        outputs = {"bicubic": bicubic_upsample(lr, scale, axes=axes, out_shape=[hr01.shape[a] for a in axes])}
        for b in bundles:
            for variant in opts.variant or ["strength=1,background=model"]:
                settings = dict(item.split("=") for item in variant.split(",") if item)
                # projection=MODEL:WEIGHT: after the fact, onto the LR as given; projection=MODEL: the app's setting
                projection = settings.pop("projection") if ":" in settings.get("projection", "") else None
                smooth = float(settings.pop("throughplane", 0) or 0)
                wiener, wsmooth = settings.pop("wiener", ""), int(settings.pop("wsmooth", 5))
                walpha = float(settings.pop("walpha", 1))
                post_nlm = float(settings.pop("znlm", 0) or 0)
                pre_nlm = float(settings.pop("prenlm", 0) or 0)
                level = _learned_level(b, lr, plane_axis(plane)) if settings.pop("nlmlevel", "") == "learned" else None
                patch = int(settings.pop("nlmpatch", 3))
                _scale_noise_level(float(settings.pop("noisescale", 1) or 1))
                width, radius = settings.pop("nlmwidth", None), settings.pop("nlmradius", None)
                _slice_denoise_shape(None if width is None else float(width), None if radius is None else int(radius))
                guide = settings.pop("nlmguide", None)
                wproj = settings.pop("wproj", None)
                _wiener_app_projection(b, None if wproj is None else float(wproj), wsmooth)
                _guided_slice_denoise(None if guide is None else float(guide))
                lr_in = _through_plane_nlm(lr, pre_nlm, plane_axis(plane), level=level, patch=patch) if pre_nlm > 0 else lr
                sr = app_output(lr_in, hr_ras, b,
                                strength=float(settings["strength"]) if "strength" in settings else None,
                                background=settings.get("background"),
                                slice_denoise=float(settings["slice_denoise"]) if "slice_denoise" in settings else None,
                                projection=settings.get("projection"))
                if projection:
                    model, weight = projection.split(":")
                    sr = consistency_projection(sr, lr, scale, axes=axes, model=model, weight=float(weight))
                if wiener:
                    if wiener == "oracle":
                        sigma = params.sigma if hasattr(params, "sigma") else 0.0
                    else:  # the level the bundle reads, in the app's normalization, back in the LR's units
                        from ddasr_nipype.data.normalize import fit_normalization

                        norm = fit_normalization(lr.astype(np.float32), percentiles=tuple(b.normalization["percentiles"]))
                        sigma = _learned_level(b, norm.apply(lr.astype(np.float32)), plane_axis(plane)) * norm.scale
                    print(f"  wiener: noise sigma {sigma:.4f} ({wiener})", flush=True)
                    sr = _soft_kspace_projection(sr, lr, scale, sigma, axes, wsmooth, walpha)
                if post_nlm > 0:
                    sr = _through_plane_nlm(sr, post_nlm, plane_axis(plane), lr=lr, level=level, patch=patch)
                if smooth > 0:  # diagnostic: what neighbouring slices add, a Gaussian across them
                    from scipy.ndimage import gaussian_filter1d

                    sr = gaussian_filter1d(sr, smooth, axis=plane_axis(plane))
                outputs[f"{b.name}:{b.sha256[:8]} {variant}".strip()] = sr
        if opts.ensemble and len(bundles) > 1:  # the bundles' outputs averaged, variant by variant
            for variant in opts.variant or ["strength=1,background=model"]:
                rows = [outputs[f"{b.name}:{b.sha256[:8]} {variant}".strip()] for b in bundles]
                outputs[f"mean of {len(rows)} bundles {variant}".strip()] = np.mean(rows, axis=0)
        scores = {m: reference_scores(hr01, v, plane=plane, mask=mask, min_fraction=0.1, brain_mask=brain)
                  for m, v in outputs.items()}
        ok = ~np.isnan(scores["bicubic"]["psnr_brain"])
        ok[::1] &= (np.arange(len(ok)) % opts.slice_step == 0)
        base = scores["bicubic"]
        print(f"== {key} {name} ({ok.sum()} slices with brain{noise_label(params)})")
        print(f"{'method':60s} {'PSNR brain':>10s} {'d':>6s} {'p':>8s} {'SSIM brain':>10s} {'d':>7s} {'PSNR head':>9s} {'d':>6s}")
        for m, s in scores.items():
            d = s["psnr_brain"][ok] - base["psnr_brain"][ok]
            p = ttest_rel(s["psnr_brain"][ok], base["psnr_brain"][ok]).pvalue if m != "bicubic" else float("nan")
            print(f"{m:60s} {s['psnr_brain'][ok].mean():10.3f} {d.mean():+6.3f} {p:8.1e} "
                  f"{s['ssim_brain'][ok].mean():10.4f} {(s['ssim_brain'][ok] - base['ssim_brain'][ok]).mean():+7.4f} "
                  f"{s['psnr_mask'][ok].mean():9.3f} {(s['psnr_mask'][ok] - base['psnr_mask'][ok]).mean():+6.3f}",
                  flush=True)
        if opts.no_reference:
            _print_no_reference(hr01, outputs, mask, base["slice"][ok], plane)


def _print_no_reference(hr01, outputs: dict, mask, chosen, plane: str) -> None:
    """NIQE / BRISQUE of the reference and each output on the slices ``chosen`` (indices), and their change
    from bicubic."""
    from ddasr_nipype.metrics.volume import no_reference_scores, normalize_volume

    rows = {"HR reference": hr01, **outputs}
    scores = {}
    for name, vol in rows.items():
        got = no_reference_scores(normalize_volume(vol, mask), plane=plane, mask=mask, min_fraction=0.1)
        keep = np.isin(got["slice"], chosen)
        scores[name] = {m: got[m][keep] for m in ("niqe", "brisque")}
    base = scores["bicubic"]
    print(f"{'no-reference (' + str(len(chosen)) + ' slices)':60s} {'NIQE':>7s} {'vs bic':>7s} {'BRISQUE':>8s} {'vs bic':>7s}")
    for name, s in scores.items():
        print(f"{name:60s} {np.nanmean(s['niqe']):7.3f} {100 * (np.nanmean(s['niqe']) / np.nanmean(base['niqe']) - 1):+6.1f}% "
              f"{np.nanmean(s['brisque']):8.2f} {100 * (np.nanmean(s['brisque']) / np.nanmean(base['brisque']) - 1):+6.1f}%",
              flush=True)


if __name__ == "__main__":
    main()
