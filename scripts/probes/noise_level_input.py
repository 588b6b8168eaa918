"""Probe, not product code: does a noise-level input let one generator serve clean and noisy LR?

``train`` starts from the step-1 generator (out/gpu2/ixi-t1w-x2-res) with an extra input channel holding
the LR slice's Immerkaer noise sigma (x50), zero-initialised, L1 only, the first conv at 10x the learning
rate, on the bicubic pairs of an earlier ``ddasr-train --degradation bicubic`` run, with flips (as
``srn.augment``) and Gaussian noise (sigma 0-4 %) on half the crops. ``control`` feeds sigma = 0.
``eval`` scores checkpoints with scripts/quick_paired_check.py on sub-trio (kspace-rician and bicubic);
a checkpoint whose path contains 'sigma' gets each LR slice's Immerkaer sigma, the others 0.

    python scripts/probes/noise_level_input.py train sigma|control OUT.pt ITERATIONS [PAIRS.npz] [INIT_BUNDLE]
    python scripts/probes/noise_level_input.py eval CONTROL.pt SIGMA.pt

Results: the starter model card.
"""
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddasr_nipype.models import SRGenerator
from ddasr_nipype.models.srn_arch import GeneratorConfig
from ddasr_nipype.training.synthesis import noise_sigma as _noise_sigma


def noise_sigma(image: np.ndarray) -> float:
    """The whole-slice estimate the probe's figures were made with (the package's default reads only
    the head)."""
    return _noise_sigma(image, foreground=None)

SCALE = 50.0
PAIRS = 'out/s4/bic-aug-p05.work/pairs/pairs.npz'
INIT = 'out/gpu2/ixi-t1w-x2-res'
TRIO = Path('../shared/data/hr/sub-trio/anat/sub-trio_T1w.nii.gz')


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = SRGenerator(GeneratorConfig(in_channels=2, num_feat=32, num_grow_ch=16, num_down=2,
                                                 num_bottleneck_blocks=2))

    def forward(self, lr, sigma):
        smap = (SCALE * sigma).view(-1, 1, 1, 1).expand(-1, 1, *lr.shape[-2:])
        return self.inner(torch.cat([lr, smap], 1)) + F.interpolate(lr, scale_factor=2, mode='bicubic',
                                                                     align_corners=False)


def train(mode: str, out: Path, iters: int, pairs_path: str = PAIRS, init: str = INIT) -> None:
    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.training.datasets import PairSet

    torch.set_num_threads(1)
    pairs = PairSet.load(pairs_path)
    base_sigma = [np.array([noise_sigma(s) for s in stack]) for stack in pairs.lr]
    net = Net()
    src = load_bundle(init).load_generator('cpu').state_dict()
    st = net.inner.state_dict()
    for k, v in src.items():
        if k == 'conv_first.weight':
            st[k].zero_()
            st[k][:, :1] = v
        else:
            st[k].copy_(v)
    net.inner.load_state_dict(st)
    ema = copy.deepcopy(net)
    first = [p for n_, p in net.named_parameters() if n_.startswith("inner.conv_first")]
    rest = [p for n_, p in net.named_parameters() if not n_.startswith("inner.conv_first")]
    opt = torch.optim.Adam([{"params": rest, "lr": 1e-4}, {"params": first, "lr": 1e-3}], betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters, eta_min=1e-7)
    rng = np.random.default_rng(0)
    offsets = pairs._offsets
    t0 = time.time()
    B, p, s = 8, 32, 2
    for it in range(1, iters + 1):
        lrb = np.empty((B, 1, p, p), np.float32)
        hrb = np.empty((B, 1, 2 * p, 2 * p), np.float32)
        sig = np.empty(B, np.float32)
        for b in range(B):
            for _ in range(10):
                idx = int(rng.integers(len(pairs)))
                lr, hr = pairs.pair(idx)
                k = int(np.searchsorted(offsets, idx, side='right') - 1)
                n = idx - offsets[k]
                i, j = int(rng.integers(lr.shape[0] - p + 1)), int(rng.integers(lr.shape[1] - p + 1))
                hp = hr[s * i:s * (i + p), s * j:s * (j + p)]
                if (hp > 0.1).mean() >= 0.1:
                    break
            lrb[b, 0], hrb[b, 0] = lr[i:i + p, j:j + p], hp
            PairSet.augment(lrb[b:b + 1], hrb[b:b + 1], rng)
            added = rng.uniform(0, 0.04) if rng.uniform() < 0.5 else 0.0
            if added:
                lrb[b, 0] += rng.normal(0, added, (p, p))
            sig[b] = np.sqrt(base_sigma[k][n] ** 2 + added ** 2) if mode == 'sigma' else 0.0
        loss = (net(torch.from_numpy(lrb), torch.from_numpy(sig)) - torch.from_numpy(hrb)).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            d = min(0.999, (1 + it) / (10 + it))
            for pe, pn in zip(ema.parameters(), net.parameters()):
                pe.mul_(d).add_(pn, alpha=1 - d)
        if it % 100 == 0:
            print(it, f'{loss.item():.4f}', f'{(time.time() - t0) / it:.2f}s/it', flush=True)
    torch.save(ema.state_dict(), out)


def evaluate(checkpoints: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import quick_paired_check as quick

    def runner(checkpoint: str):
        net = Net()
        net.load_state_dict(torch.load(checkpoint))
        net.eval()
        use_sigma = 'sigma' in checkpoint

        def run(x: np.ndarray) -> np.ndarray:
            sigma = torch.tensor([noise_sigma(x) if use_sigma else 0.0])
            with torch.no_grad():
                return net(torch.from_numpy(x[None, None]), sigma).numpy()[0, 0]

        return run

    rows = quick.check(TRIO, [], degradations=("kspace-rician", "bicubic"), threads=2,
                       cache_dir=quick.REPO / "out" / "masks", runners={c: runner(c) for c in checkpoints})
    for r in rows:
        print(f"{r['degradation']:<14} {r['method']:<30} brain {r['psnr_brain']:.3f} ({r['d_brain']:+.3f})")


if __name__ == "__main__":
    if sys.argv[1:2] == ["train"]:
        train(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), *sys.argv[5:7])
    elif sys.argv[1:2] == ["eval"]:
        evaluate(sys.argv[2:])
    else:
        sys.exit(__doc__)
