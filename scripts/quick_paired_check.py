"""Fast paired check of model bundles on one HR scan: the recipe-selection step behind the starter
model card's "Where the missing decibels are" table.

    python scripts/quick_paired_check.py HR_T1W.nii.gz BUNDLE... [--degradation NAME ...]
                                         [--slice-step 2] [--min-brain 0.05] [--brain-mask deepbet|none]
                                         [--strength S ...] [--hr-voxel-size MM [--hr-resample kspace]]

The HR scan is brought to RAS and normalized as ``ddasr-eval`` does, degraded in the sagittal plane
with the same seeded draws (``--seed``, default 0, and the scan's ``sub-<label>`` key taken from the file
name), and every bundle's generator is run slice by slice on the LR slices directly (no LR
normalization, no tiling: a few minutes instead of ``ddasr-eval``'s whole volumes, and within about
0.1 dB of it). PSNR is scored inside deepbet's brain mask of the HR (cached next to the scan's name
in ``--cache-dir``) and inside the head mask, on every ``--slice-step``-th sagittal slice with at least
``--min-brain`` brain, and printed with the difference to bicubic up-sampling of the same LR.
``--strength`` (repeatable) adds, for every bundle, rows with its output blended with the bicubic
up-sampling of the same LR slice at that network weight (the inference's ``strength``; the air is not
treated apart, which changes nothing inside the brain). ``ddasr-eval`` remains the reference for
reported numbers. ``--hr-voxel-size`` first resamples the HR scan to that isotropic voxel size
(anti-aliased cubic spline, or k-space cropping with ``--hr-resample kspace``), so that the LR is at
twice it: how a model trained for one input resolution fares at others.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def brain_mask(hr_ras, method: str, cache: Path | None) -> np.ndarray | None:
    """deepbet's brain mask of the RAS HR image (cached as .npy), or None for ``method='none'``."""
    if method == "none":
        return None
    if cache is not None and cache.exists():
        mask = np.load(cache)
        if mask.shape == hr_ras.shape:
            return mask
    from ddasr_nipype.evaluation import _brain_mask

    mask = _brain_mask(hr_ras)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, mask)
    return mask


def bundle_runner(bundle: str, strength: float = 1.0):
    """Run a bundle's generator on one LR slice ``[h, w]`` -> ``[s*h, s*w]``, its output weighted by
    ``strength`` against bicubic up-sampling."""
    import torch

    from ddasr_nipype.bundle import load_bundle

    generator = load_bundle(bundle).load_generator("cpu").eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            sr = generator(torch.from_numpy(x[None, None])).numpy()[0, 0]
        if strength == 1.0:
            return sr
        from ddasr_nipype.degradations import bicubic_upsample

        return strength * sr + (1.0 - strength) * bicubic_upsample(x, 2)

    return run


def check(hr_path: Path, bundles: list[str], *, degradations: tuple[str, ...] = ("kspace-rician",),
          slice_step: int = 2, min_brain: float = 0.05, mask_method: str = "deepbet", seed: int = 0,
          cache_dir: Path | None = None, threads: int = 1, runners: dict | None = None,
          hr_voxel_size: float | None = None, hr_resample: str = "spline") -> list[dict]:
    """Rows ``{degradation, method, n, psnr_brain, psnr_head, d_brain, d_head}`` (``d_*``: minus bicubic).

    ``runners`` adds methods that are not bundles: ``{label: f}`` with ``f(lr_slice) -> sr_slice``.
    ``hr_voxel_size`` resamples the HR to that isotropic voxel size (mm) first: ``hr_resample="spline"``
    by anti-aliased cubic interpolation (as training resamples HR scans), ``"kspace"`` by cropping its
    k-space (sharp to the new grid's Nyquist; coarser grids only).
    """
    import nibabel as nib
    import torch

    from ddasr_nipype.degradations import bicubic_upsample, get_degradation
    from ddasr_nipype.evaluation import _load_ras, _seed_sequence, crop_to_scale
    from ddasr_nipype.metrics.reference import psnr
    from ddasr_nipype.metrics.volume import foreground_mask, normalize_volume

    torch.set_num_threads(threads)
    _, hr_ras, hr = _load_ras(hr_path)
    if hr_voxel_size is not None:
        from ddasr_nipype.data.slicing import isotropic_resample
        from ddasr_nipype.degradations import kspace_resample

        hr_ras = isotropic_resample(hr_ras, hr_voxel_size, keep_fov=hr_resample == "kspace")
        if hr_resample == "kspace":  # the scan a coarser acquisition of the same FOV would give
            hr_ras = nib.Nifti1Image(kspace_resample(hr, hr_ras.shape, axes=(0, 1, 2)).astype(np.float32),
                                     hr_ras.affine)
    hr_ras = crop_to_scale(hr_ras, (1, 2), 2)  # odd in-plane sizes would put the SR off the HR grid
    hr = np.asarray(hr_ras.dataobj, dtype=np.float64)
    head = foreground_mask(hr)
    hr01 = normalize_volume(hr, head)
    match = re.match(r"(sub-[a-zA-Z0-9]+)", hr_path.name)
    key = match.group(1) if match else hr_path.name
    grid = "" if hr_voxel_size is None else f"_{hr_voxel_size:g}mm-{hr_resample}"
    cache = cache_dir / f"{key}{grid}_brain.npy" if cache_dir is not None else None
    brain = brain_mask(hr_ras, mask_method, cache)
    fraction = (brain if brain is not None else head).mean(axis=(1, 2))
    slices = np.flatnonzero(fraction >= min_brain)[::slice_step]
    if not len(slices):
        raise ValueError(f"{hr_path}: no sagittal slice has {min_brain:.0%} brain")
    methods = {b: bundle_runner(b) for b in bundles} | dict(runners or {})
    shape = hr.shape[1:]

    def scores(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        volume = np.clip(volume, 0.0, 1.0)
        in_head = np.array([psnr(hr01[i], volume[k], mask=head[i]) for k, i in enumerate(slices)])
        if brain is None:
            return np.full(len(slices), np.nan), in_head
        return np.array([psnr(hr01[i], volume[k], mask=brain[i]) for k, i in enumerate(slices)]), in_head

    rows = []
    for name in degradations:
        rng = np.random.default_rng(_seed_sequence(seed, key, name))
        lr = get_degradation(name, 2, axes=(1, 2))(hr01, rng)[0].astype(np.float32)[slices]
        base_brain, base_head = scores(bicubic_upsample(lr, 2, axes=(1, 2), out_shape=list(shape)))
        rows.append({"degradation": name, "method": "bicubic", "n": len(slices), "psnr_brain": base_brain.mean(),
                     "psnr_head": base_head.mean(), "d_brain": 0.0 if brain is not None else np.nan,
                     "d_head": 0.0})
        for method, run in methods.items():
            sr = np.stack([run(x) for x in lr])
            in_brain, in_head = scores(sr[:, :shape[0], :shape[1]])
            rows.append({"degradation": name, "method": method, "n": len(slices),
                         "psnr_brain": in_brain.mean(), "psnr_head": in_head.mean(),
                         "d_brain": float(np.mean(in_brain - base_brain)),
                         "d_head": float(np.mean(in_head - base_head))})
    return rows


def print_rows(rows: list[dict], width: int = 40) -> None:
    """One line per row of :func:`check`: PSNR in the brain and in the head, each minus bicubic."""
    for r in rows:
        print(f"{r['degradation']:<14} {r['method']:<{width}} n={r['n']:<4} brain {r['psnr_brain']:.3f} "
              f"({r['d_brain']:+.3f})  head {r['psnr_head']:.3f} ({r['d_head']:+.3f})", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hr", type=Path, help="HR T1w NIfTI (sub-<label>_..._T1w.nii.gz)")
    parser.add_argument("bundles", nargs="+", help="model bundle directories or bundled model names")
    parser.add_argument("--degradation", action="append", help="default: kspace-rician")
    parser.add_argument("--slice-step", type=int, default=2)
    parser.add_argument("--min-brain", type=float, default=0.05)
    parser.add_argument("--brain-mask", choices=("deepbet", "none"), default="deepbet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=REPO / "out" / "masks")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--strength", type=float, action="append", default=[],
                        help="also each bundle blended with bicubic at this network weight (repeatable)")
    parser.add_argument("--hr-voxel-size", type=float, default=None,
                        help="resample the HR to this isotropic voxel size (mm) first; the LR is at twice it")
    parser.add_argument("--hr-resample", choices=("spline", "kspace"), default="spline",
                        help="how --hr-voxel-size resamples: anti-aliased cubic spline, or k-space cropping")
    opts = parser.parse_args(argv)
    runners = {f"{b}@{a:g}": bundle_runner(b, a) for b in opts.bundles for a in opts.strength}
    rows = check(opts.hr, opts.bundles, degradations=tuple(opts.degradation or ("kspace-rician",)),
                 slice_step=opts.slice_step, min_brain=opts.min_brain, mask_method=opts.brain_mask,
                 seed=opts.seed, cache_dir=opts.cache_dir, threads=opts.threads, runners=runners,
                 hr_voxel_size=opts.hr_voxel_size, hr_resample=opts.hr_resample)
    print_rows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
