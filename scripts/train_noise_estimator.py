"""Train the learned noise-level estimator (:class:`ddasr_nipype.models.LearnedNoiseEstimator`) on synthetic LR
slices with known added noise, and write its weights for ``srn.noise_estimator_weights``.

    python scripts/train_noise_estimator.py PAIRS.npz OUT.pt [--preset t1w-x2-nl-cpu] [--iterations 3000]
        [--seed 0] [--threads 1] [--crop 64]

PAIRS.npz: the (LR, HR) pairs of a ``ddasr-train`` run (``<work>/pairs/pairs.npz``). Each iteration draws 16
LR crops of 64 x 64 pixels (the preset's patch filter), scales them by the preset's ``srn.intensity_scale``,
adds the preset's ``srn.lr_noise`` (Rician / non-central chi, white or correlated) and regresses the level
of the added noise (as :meth:`PairSet.add_lr_noise` reports it) with an L1 loss; Adam, learning rate 1e-3
with cosine decay. About 4 minutes for 3000 iterations on one CPU thread. The target is the added noise
only: the estimator learns to read noise and to leave out the anatomy (and what little noise the HR
slices hold themselves).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--preset", default="t1w-x2-nl-cpu")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--crop", type=int, default=64, help="LR crop edge in pixels")
    opts = parser.parse_args(argv)

    import torch

    from ddasr_nipype.models import LearnedNoiseEstimator
    from ddasr_nipype.training.config import load_preset, lr_noise_settings
    from ddasr_nipype.training.datasets import PairSet

    torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    preset = load_preset(opts.preset)
    noise = lr_noise_settings(preset.srn.lr_noise)
    if noise.probability <= 0:
        raise SystemExit(f"preset {opts.preset} adds no LR noise (srn.lr_noise): nothing to learn from")
    pairs = PairSet.load(opts.pairs)
    scale = pairs.scale
    net = LearnedNoiseEstimator()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    start = time.time()
    for it in range(1, opts.iterations + 1):
        lr, _ = pairs.sample_pairs(rng, 16, opts.crop * scale, threshold=preset.data.foreground_threshold,
                                   min_fraction=preset.data.min_patch_fraction)
        lr = np.ascontiguousarray(lr[:, :1])
        lr *= rng.uniform(*preset.srn.intensity_scale, size=(len(lr), 1, 1, 1)).astype(np.float32)
        added = pairs.add_lr_noise(lr, rng, *noise, return_sigma=True)
        for group in opt.param_groups:
            group["lr"] = 1e-3 * 0.5 * (1.0 + math.cos(math.pi * it / opts.iterations))
        loss = (net(torch.from_numpy(lr)) - torch.from_numpy(added.astype(np.float32))).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 500 == 0 or it == opts.iterations:
            print(f"{it}/{opts.iterations} L1 {loss.item():.5f} ({time.time() - start:.0f} s)", flush=True)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), opts.out)
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
