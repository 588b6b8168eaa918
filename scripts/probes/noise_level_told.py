"""Probe, not product code: how much a noise-level generator leans on the noise level it is told.

For each bundle (or training checkpoint ``*.pt``, its EMA generator), four sagittal slices of held-out
sub-vxm and sub-trio are normalized as ``ddasr-eval`` does, down-sampled x2 (bicubic, antialiased: clean
input) and super-resolved with the noise level estimated on each slice (as inference does) and with
0; brain PSNR minus bicubic's, in the deepbet brain masks that ``paired_variants.py`` caches in
``out/cache`` (run it once per subject first).

    python scripts/probes/noise_level_told.py BUNDLE_OR_CHECKPOINT...

Results: the t1w-x2 model card ("Tried", fifth stop of 2026-12-05).
"""
import sys

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from ddasr_nipype.bundle import load_bundle
from ddasr_nipype.data.io import to_ras
from ddasr_nipype.evaluation import _inplane_axes, crop_to_scale
from ddasr_nipype.metrics.volume import foreground_mask, normalize_volume
from ddasr_nipype.models import SRGenerator
from ddasr_nipype.models.srn_arch import GeneratorConfig
from ddasr_nipype.training.checkpoint import load_checkpoint

SUBJECTS = [
    ("sub-vxm", "../shared/data/hr-brain/sub-vxm/anat/sub-vxm_T1w.nii.gz", "out/cache/sub-vxm_brain_160x224x192.npy",
     [50, 70, 90, 110]),
    ("sub-trio", "../shared/data/hr/sub-trio/anat/sub-trio_T1w.nii.gz", "out/cache/sub-trio_brain_176x256x256.npy",
     [60, 80, 100, 120]),
]


def _slices(path, cache, index):
    img = crop_to_scale(to_ras(nib.load(path))[0], _inplane_axes("sagittal"), 2)
    hr = np.asarray(img.dataobj, dtype=np.float64)
    hr01 = normalize_volume(hr, foreground_mask(hr)).astype(np.float32)
    return torch.from_numpy(hr01[index])[:, None], torch.from_numpy(np.load(cache)[index])[:, None]


def _generator(path: str):
    if path.endswith(".pt"):
        state = load_checkpoint(path, stage="srn")["models"]
        gen = SRGenerator(GeneratorConfig.from_dict(state["generator_config"]))
        gen.load_state_dict(state["ema"])
        return gen.eval()
    return load_bundle(path).load_generator("cpu").eval()


def main(paths) -> None:
    torch.set_num_threads(1)
    data = [(key, *_slices(path, cache, index)) for key, path, cache, index in SUBJECTS]
    for path in paths:
        gen, row = _generator(path), [path]
        for key, hr, brain in data:
            lr = F.interpolate(hr, scale_factor=0.5, mode="bicubic", antialias=True)
            bicubic_error = ((F.interpolate(lr, scale_factor=2, mode="bicubic") - hr)[brain] ** 2).mean()
            with torch.no_grad():
                told, zero = (float(10 * torch.log10(bicubic_error / ((out - hr)[brain] ** 2).mean()))
                              for out in (gen(lr, gen.estimate_noise(lr)), gen(lr, torch.zeros(len(lr)))))
            row.append(f"{key}: estimated {told:+.2f} dB, told 0 {zero:+.2f} dB")
        print(" | ".join(row))


if __name__ == "__main__":
    main(sys.argv[1:])
