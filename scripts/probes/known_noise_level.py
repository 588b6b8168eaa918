"""Probe: how much would a noise-level generator gain if it knew the LR noise level exactly?

    python scripts/probes/known_noise_level.py train DDASR_TRAIN_ARGS...
        ddasr-train, the generator told only the level of the noise the synthesis adds to each crop (0 for
        crops without added noise), not the Immerkaer estimate of its slice: a noise level free of anatomy.
    python scripts/probes/known_noise_level.py eval HR_T1W BUNDLE[=told]... [--slices N]
        k-space truncation + Rician noise (ddasr-eval's kspace-rician draw for the subject) and the same
        truncation without noise; each generator run on N brain slices (the evaluation's normalization)
        told its slice's Immerkaer estimate (BUNDLE) or the true added level (BUNDLE=told: the drawn sigma,
        0 on the noise-free input). Prints brain PSNR over bicubic, and how far the output on the noisy
        input lies from the output on the noise-free one (mean squared, brain), beside bicubic's.

Why: the Immerkaer estimate on a 2 mm slice reads the anatomy as noise. On held-out sub-trio it gives
0.039 on the noise-free k-space-truncated slices and 0.047 with sigma 0.026 added (0.023 / 0.036 on
sub-vxm, 0.047 / 0.054 on sub-otsu): the level a generator is told says little about the noise and much
about the subject. A diagnostic, not an app setting: inference cannot know the true level.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def _train(argv) -> None:
    from ddasr_nipype.bids_app import train
    from ddasr_nipype.training.datasets import PairSet

    PairSet.lr_noise_sigma = lambda self: np.zeros(sum(len(s) for s in self.lr))  # told: the added level only
    sys.argv = ["ddasr-train", *argv]
    train.main()


def _eval(argv) -> None:
    import torch
    import torch.nn.functional as F

    from _heldout import load_heldout

    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.degradations import get_degradation, kspace_truncation
    from ddasr_nipype.evaluation import _inplane_axes, _seed_sequence
    from ddasr_nipype.models import estimate_noise_sigma

    parser = argparse.ArgumentParser()
    parser.add_argument("hr", type=Path)
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--slices", type=int, default=30)
    parser.add_argument("--cache-dir", type=Path, default=Path("out/cache"))
    opts = parser.parse_args(argv)
    torch.set_num_threads(1)
    axes = _inplane_axes("sagittal")
    held = load_heldout(opts.hr, opts.cache_dir)
    key, hr01, brain = held.key, held.hr01, held.brain
    degradation = get_degradation("kspace-rician", 2, axes=axes)
    params = degradation.draw(np.random.default_rng(_seed_sequence(0, key, "kspace-rician")))
    noisy = degradation.apply(hr01, params)
    clean = kspace_truncation(hr01, 2, axes=axes)
    rows = np.flatnonzero(brain.sum(axis=(1, 2)) > 0.5 * brain.sum(axis=(1, 2)).max())
    rows = rows[np.linspace(0, len(rows) - 1, min(opts.slices, len(rows))).round().astype(int)]

    def stack(v):
        return torch.from_numpy(np.ascontiguousarray(v[rows], dtype=np.float32))[:, None]

    n, c, h = stack(noisy), stack(clean), stack(hr01)
    m = torch.from_numpy(brain[rows])[:, None]

    def mse(a, b):
        return ((a - b)[m] ** 2).mean().item()

    def bicubic(x):
        return F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)

    base = {"noisy": mse(bicubic(n), h), "clean": mse(bicubic(c), h)}
    print(f"{key}: {len(rows)} slices, added sigma {params.sigma:.4f}; Immerkaer estimate on noisy "
          f"{estimate_noise_sigma(n).median():.4f}, on noise-free {estimate_noise_sigma(c).median():.4f}")
    print(f"bicubic: noisy {10 * np.log10(1 / base['noisy']):.3f} dB, noise-free {10 * np.log10(1 / base['clean']):.3f} dB, "
          f"|noisy - noise-free|^2 {mse(bicubic(n), bicubic(c)):.3e}")
    for spec in opts.bundles:
        path, _, mode = spec.partition("=")
        g = load_bundle(path).load_generator().float().eval()
        with torch.no_grad():
            if mode == "told":
                sn, sc = g(n, torch.full((len(n),), params.sigma)), g(c, torch.zeros(len(c)))
            else:
                sn, sc = g(n, g.estimate_noise(n)), g(c, g.estimate_noise(c))
        gain = {k: 10 * np.log10(base[k] / mse(v, h)) for k, v in (("noisy", sn), ("clean", sc))}
        print(f"{spec}: over bicubic noisy {gain['noisy']:+.3f} dB, noise-free {gain['clean']:+.3f} dB, "
              f"|noisy - noise-free|^2 {mse(sn, sc):.3e}", flush=True)


if __name__ == "__main__":
    {"train": _train, "eval": _eval}[sys.argv[1]](sys.argv[2:])
