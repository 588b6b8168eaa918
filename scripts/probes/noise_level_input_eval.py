"""Probe, not product code: score noise_level_input_train.py's checkpoints on sub-trio (kspace-rician and
bicubic, every second slice with >= 5 % brain, inside the deepbet brain mask cached by
scripts/quick_paired_check.py in out/masks/sub-trio_brain.npy), against bicubic. A checkpoint whose
path contains 'sigma' gets each LR slice's Immerkaer sigma, the others 0.

    python scripts/probes/noise_level_input_eval.py CONTROL.pt SIGMA.pt
"""
import sys, numpy as np, torch
from pathlib import Path
torch.set_num_threads(2)
TRAIN = str(Path(__file__).with_name('noise_level_input_train.py'))
sys.argv, models = sys.argv[:1], sys.argv[1:]
exec(open(TRAIN).read().split("net = Net()")[0].split("mode = sys.argv[1]")[0])  # imports
SCALE = 50.0
exec("class Net(torch.nn.Module):" + open(TRAIN).read().split("class Net(torch.nn.Module):")[1].split("net = Net()")[0])
from ddasr_nipype.evaluation import _load_ras, _seed_sequence
from ddasr_nipype.metrics.volume import foreground_mask, normalize_volume
from ddasr_nipype.metrics.reference import psnr
from ddasr_nipype.degradations import get_degradation, bicubic_upsample
_, hr_ras, hr = _load_ras(Path('../shared/data/hr/sub-trio/anat/sub-trio_T1w.nii.gz'))
mask = foreground_mask(hr); hr01 = normalize_volume(hr, mask)
bm = np.load('out/masks/sub-trio_brain.npy')
sl = np.flatnonzero(bm.mean(axis=(1, 2)) >= 0.05)[::2]
nets = {}
for m in models:
    n = Net(); n.load_state_dict(torch.load(m)); nets[m] = n.eval()
for name in ['kspace-rician', 'bicubic']:
    rng = np.random.default_rng(_seed_sequence(0, 'sub-trio', name))
    lr = get_degradation(name, 2, axes=(1, 2))(hr01, rng)[0].astype(np.float32)[sl]
    sig = np.array([noise_sigma(x) for x in lr], np.float32)
    bic = np.clip(bicubic_upsample(lr, 2, axes=(1, 2), out_shape=list(hr.shape[1:])), 0, 1)
    b = np.array([psnr(hr01[i], bic[k], mask=bm[i]) for k, i in enumerate(sl)])
    print(name, f'bicubic brain {b.mean():.3f}; LR Immerkaer sigma median {np.median(sig):.4f}')
    for m, n in nets.items():
        with torch.no_grad():
            out = np.stack([n(torch.from_numpy(x[None, None]), torch.tensor([s if 'sigma' in m else 0.0])).numpy()[0, 0] for x, s in zip(lr, sig)])
        out = np.clip(out[:, :hr.shape[1], :hr.shape[2]], 0, 1)
        v = np.array([psnr(hr01[i], out[k], mask=bm[i]) for k, i in enumerate(sl)])
        print(name, m, f'brain {v.mean():.3f} (d {np.mean(v - b):+.3f})', flush=True)
