"""Probe, not product code: does a noise-level input let one generator serve clean and noisy LR?

Trains the step-1 generator (out/gpu2/ixi-t1w-x2-res) with an extra input channel holding the LR
slice's Immerkaer noise sigma (x50), zero-initialised, L1 only, the first conv at 10x the learning rate,
on the bicubic pairs of an earlier `ddasr-train --degradation bicubic` run, with `srn.augment`-style
flips and Gaussian noise (sigma 0-4 %) on half the crops. `control` feeds sigma = 0.

    python scripts/probes/noise_level_input_train.py sigma|control OUT.pt ITERATIONS [PAIRS.npz] [INIT_BUNDLE]

Score with scripts/probes/noise_level_input_eval.py. Results: the starter model card.
"""
import sys, time, copy, numpy as np, torch, torch.nn.functional as F
from pathlib import Path
torch.set_num_threads(1)
from ddasr_nipype.training.datasets import PairSet
from ddasr_nipype.training.synthesis import noise_sigma
from ddasr_nipype.models import SRGenerator
from ddasr_nipype.models.srn_arch import GeneratorConfig
from ddasr_nipype.bundle import load_bundle
mode = sys.argv[1]  # 'sigma' or 'control'
SCALE = 50.0
out = Path(sys.argv[2]); iters = int(sys.argv[3])
pairs = PairSet.load(sys.argv[4] if len(sys.argv) > 4 else 'out/s4/bic-aug-p05.work/pairs/pairs.npz')
base_sigma = [np.array([noise_sigma(s) for s in stack]) for stack in pairs.lr]
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = SRGenerator(GeneratorConfig(in_channels=2, num_feat=32, num_grow_ch=16, num_down=2, num_bottleneck_blocks=2))
    def forward(self, lr, sigma):
        smap = (SCALE * sigma).view(-1, 1, 1, 1).expand(-1, 1, *lr.shape[-2:])
        return self.inner(torch.cat([lr, smap], 1)) + F.interpolate(lr, scale_factor=2, mode='bicubic', align_corners=False)
net = Net()
src = load_bundle(sys.argv[5] if len(sys.argv) > 5 else 'out/gpu2/ixi-t1w-x2-res').load_generator('cpu').state_dict()
st = net.inner.state_dict()
for k, v in src.items():
    if k == 'conv_first.weight':
        st[k].zero_(); st[k][:, :1] = v
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
for it in range(1, iters + 1):
    B, p, s = 8, 32, 2
    lrb = np.empty((B, 1, p, p), np.float32); hrb = np.empty((B, 1, 2 * p, 2 * p), np.float32); sig = np.empty(B, np.float32)
    for b in range(B):
        for _ in range(10):
            idx = int(rng.integers(len(pairs))); lr, hr = pairs.pair(idx)
            k = int(np.searchsorted(offsets, idx, side='right') - 1); n = idx - offsets[k]
            i = int(rng.integers(lr.shape[0] - p + 1)); j = int(rng.integers(lr.shape[1] - p + 1))
            hp = hr[s * i:s * (i + p), s * j:s * (j + p)]
            if (hp > 0.1).mean() >= 0.1: break
        l = lr[i:i + p, j:j + p].copy(); h = hp.copy()
        fr, fc, tr = rng.integers(0, 2, 3)
        if fr: l, h = l[::-1], h[::-1]
        if fc: l, h = l[:, ::-1], h[:, ::-1]
        if tr: l, h = l.T, h.T
        added = rng.uniform(0, 0.04) if rng.uniform() < 0.5 else 0.0
        if added: l = l + rng.normal(0, added, l.shape)
        lrb[b, 0] = l; hrb[b, 0] = h
        sig[b] = np.sqrt(base_sigma[k][n] ** 2 + added ** 2) if mode == 'sigma' else 0.0
    x, y, sg = torch.from_numpy(lrb), torch.from_numpy(hrb), torch.from_numpy(sig)
    loss = (net(x, sg) - y).abs().mean()
    opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    with torch.no_grad():
        d = min(0.999, (1 + it) / (10 + it))
        for pe, pn in zip(ema.parameters(), net.parameters()): pe.mul_(d).add_(pn, alpha=1 - d)
    if it % 100 == 0: print(it, f'{loss.item():.4f}', f'{(time.time()-t0)/it:.2f}s/it', flush=True)
torch.save(ema.state_dict(), out)
