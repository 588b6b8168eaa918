"""How much of the noisy-input gap could any denoiser in front of the generator close? Oracle bounds on a
held-out HR scan, ``ddasr-eval``'s k-space + Rician degradation (the paired test of issue 20).

    python scripts/probes/denoising_bound.py HR_T1W [BUNDLE] [--sigma S] [--threads N] [--cache-dir out/cache]

The HR scan is prepared as ``ddasr-eval`` does (RAS, odd in-plane sizes cropped, normalized by the head's
99.5th percentile) and degraded in its sagittal planes as ``kspace-rician`` does for its ``sub-<label>`` key
(k-space truncation, then Rician noise of the seeded sigma, or ``--sigma``). Because the noise-free LR is known
here, three LR inputs can be made that no real denoiser can beat in their class:

- ``wiener2d`` / ``wiener3d``: the noisy LR filtered, per Fourier coefficient of each sagittal slice / of the
  whole volume, by ``S / (S + N)``, with ``S`` the noise-free LR's own power in that coefficient and ``N`` the
  noise's mean power: the oracle Wiener filter, which knows the clean spectrum exactly (a linear denoiser
  that only knows the noise level does worse);
- ``clean``: the noise-free LR itself, a perfect denoiser.

Each goes through the bundle on the app's path (:func:`ddasr_nipype.inference.super_resolve_image`, the
bundle's output settings; the generator reads each slice's noise level itself) and is scored by brain PSNR
(deepbet's mask, cached as ``paired_variants.py`` caches it) against the bicubic interpolation of the noisy
LR. The LR columns give the mean square error to the noise-free LR inside the brain.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def oracle_wiener(noisy: np.ndarray, clean: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """``noisy`` filtered by the oracle Wiener filter over ``axes`` (``S / (S + N)`` per coefficient, ``S``
    from ``clean``, ``N`` the noise's mean power)."""
    spectrum = np.abs(np.fft.fftn(clean, axes=axes)) ** 2
    noise_power = np.mean(np.abs(np.fft.fftn(noisy - clean, axes=axes)) ** 2)
    gain = spectrum / (spectrum + noise_power)
    return np.real(np.fft.ifftn(np.fft.fftn(noisy, axes=axes) * gain, axes=axes))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hr", type=Path)
    parser.add_argument("bundle", nargs="?", default="t1w-x2")
    parser.add_argument("--sigma", type=float, default=None, help="Rician sigma (default: the seeded draw)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=Path("out/cache"))
    opts = parser.parse_args(argv)

    import torch

    from _heldout import app_output, load_heldout

    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.degradations import bicubic_upsample, get_degradation, kspace_truncation, rician_noise
    from ddasr_nipype.evaluation import _inplane_axes, _seed_sequence
    from ddasr_nipype.metrics.volume import reference_scores

    torch.set_num_threads(opts.threads)
    bundle = load_bundle(opts.bundle)
    axes = _inplane_axes("sagittal")
    held = load_heldout(opts.hr, opts.cache_dir)
    key, hr_ras, hr01, head, brain = held.key, held.hr_ras, held.hr01, held.head, held.brain
    degradation = get_degradation("kspace-rician", 2, axes=axes)
    params = degradation.draw(np.random.default_rng(_seed_sequence(0, key, "kspace-rician")))
    sigma = params.sigma if opts.sigma is None else opts.sigma
    clean = kspace_truncation(hr01, 2, axes=axes)
    noisy = rician_noise(clean, sigma, seed=params.seed)
    lr_brain = brain[:, ::2, ::2]
    shape = [hr01.shape[a] for a in axes]

    def lr_mse(lr):
        return float(((lr - clean)[lr_brain] ** 2).mean())

    def brain_psnr(volume):
        return np.asarray(reference_scores(hr01, volume, mask=head, brain_mask=brain)["psnr_brain"])

    base = brain_psnr(bicubic_upsample(noisy, 2, axes=axes, out_shape=shape))
    inputs = {"noisy": noisy, "wiener2d": oracle_wiener(noisy, clean, (1, 2)),
              "wiener3d": oracle_wiener(noisy, clean, (0, 1, 2)), "clean": clean}
    print(f"{key}, k-space + Rician sigma {sigma:.4f}, bundle {bundle.name} ({bundle.sha256[:12]}); "
          f"bicubic of the noisy LR: brain PSNR {np.nanmean(base):.3f} dB")
    print(f"{'LR input':10s} {'LR MSE (brain)':>15s} {'bicubic dB':>11s} {'model dB':>9s}  (brain PSNR over "
          "bicubic of the noisy LR)")
    for name, lr in inputs.items():
        gains = []
        for volume in (bicubic_upsample(lr, 2, axes=axes, out_shape=shape), app_output(lr, hr_ras, bundle)):
            psnr = brain_psnr(volume)
            ok = np.isfinite(psnr) & np.isfinite(base)
            gains.append(float(np.mean(psnr[ok] - base[ok])))
        print(f"{name:10s} {lr_mse(lr):15.3e} {gains[0]:+11.3f} {gains[1]:+9.3f}", flush=True)


if __name__ == "__main__":
    main()
