"""Probe, not product code: inference-time knobs for a noise-level generator, scored with
scripts/quick_paired_check.py (every 4th sagittal slice with brain; PSNR in the brain and head minus
bicubic x2 of the same LR).

- ``sigma K[,K...]``: the noise level the generator is told, times K (1 = the Immerkaer estimate);
- ``ensemble``: the mean over 1, 4 (flips) and 8 (flips and transposes) transformed copies of each slice;
- ``nlm H[,H...]``: non-local means on the LR slice (h = H x its noise sigma) before bicubic and the
  network;
- ``scale K[,K...]``: the LR slice's intensities times K into the network, its output divided by K
  (how much the intensity normalization matters; the quick check feeds the HR's head-mask
  normalization, brain median about 0.85 x that of the training normalization on sub-trio).

Each network row is given at strength 1 and 0.4 (blended with bicubic of the same LR slice).

    python scripts/probes/inference_knobs.py sigma 0.75,1,1.5 HR_T1W [BUNDLE] [--degradation NAME ...]
    python scripts/probes/inference_knobs.py ensemble - HR_T1W
    python scripts/probes/inference_knobs.py nlm 0,0.6,0.9 HR_T1W
    python scripts/probes/inference_knobs.py scale 1,1.1,1.2 HR_T1W

Results (sub-otsu, the shipped generator): the starter model card, "Tried and not shipped".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

STRENGTHS = (1.0, 0.4)


def _transform(x, i: int, inverse: bool = False):
    """The ``i``-th of the 8 flips/transposes of the last two axes of a tensor (or its inverse)."""
    steps = [lambda t: t.transpose(-1, -2) if i >= 4 else t, lambda t: t.flip(-1) if i & 1 else t,
             lambda t: t.flip(-2) if i & 2 else t]
    for step in (reversed(steps) if inverse else steps):
        x = step(x)
    return x


def runners(probe: str, values: list[float], generator) -> dict:
    """``{label: f(lr_slice) -> sr_slice}`` for quick_paired_check's ``runners``."""
    import torch

    from ddasr_nipype.degradations import bicubic_upsample
    from ddasr_nipype.models import estimate_noise_sigma

    def network(x: np.ndarray, *, k: float = 1.0, copies: int = 1) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)[None, None])
        with torch.no_grad():
            sigma = estimate_noise_sigma(t) * k
            outs = [_transform(generator(_transform(t, i).contiguous(), sigma), i, inverse=True)
                    for i in range(copies)]
        return torch.stack(outs).mean(0).numpy()[0, 0]

    def cached(make):
        results = {}

        def run(x):
            key = x.tobytes()
            if key not in results:
                results[key] = make(x)
            return results[key]
        return run

    def blended(make, strength: float):
        def run(x):
            lr, sr = make(x)
            return sr if strength == 1.0 else strength * sr + (1 - strength) * bicubic_upsample(lr, 2)
        return run

    def nlm_then_network(x: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
        denoised = nlm(x, h)
        return denoised, network(denoised)

    def nlm(x: np.ndarray, h: float) -> np.ndarray:
        from skimage.restoration import denoise_nl_means

        if h <= 0:
            return x
        sigma = float(estimate_noise_sigma(torch.from_numpy(x.astype(np.float32))[None, None])[0])
        return denoise_nl_means(x.astype(np.float64), h=h * sigma, sigma=sigma, fast_mode=True,
                                patch_size=5, patch_distance=6).astype(np.float32)

    out = {}
    for value in values:
        if probe == "sigma":
            make, label = (lambda x, k=value: (x, network(x, k=k))), f"sigma x{value:g}"
        elif probe == "ensemble":
            make, label = (lambda x, n=int(value): (x, network(x, copies=n))), f"{int(value)} copies"
        elif probe == "scale":
            make, label = (lambda x, k=value: (x, network(x * k) / k)), f"intensity x{value:g}"
        else:
            make, label = (lambda x, h=value: nlm_then_network(x, h)), f"nlm h={value:g}"
        make = cached(make)  # one NLM and network run per slice for all rows
        if probe == "nlm":
            out[f"{label}, bicubic"] = lambda x, make=make: bicubic_upsample(make(x)[0], 2)
        for strength in STRENGTHS:
            out[f"{label}, strength {strength:g}"] = blended(make, strength)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("probe", choices=("sigma", "ensemble", "nlm", "scale"))
    parser.add_argument("values", help="comma-separated factors (sigma, scale: K; nlm: H); '-' for ensemble")
    parser.add_argument("hr", type=Path)
    parser.add_argument("bundle", nargs="?", default="ixi-t1w-x2")
    parser.add_argument("--degradation", action="append")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "out" / "masks")
    opts = parser.parse_args(argv)

    from quick_paired_check import check, print_rows

    from ddasr_nipype.bundle import load_bundle

    generator = load_bundle(opts.bundle).load_generator("cpu").eval()
    if not getattr(generator.config, "noise_level_input", False):
        parser.error(f"{opts.bundle}: the generator has no noise-level input")
    values = [1.0, 4.0, 8.0] if opts.probe == "ensemble" else [float(v) for v in opts.values.split(",")]
    rows = check(opts.hr, [], degradations=tuple(opts.degradation or ("kspace-rician",)), slice_step=4,
                 cache_dir=opts.cache_dir, threads=2, runners=runners(opts.probe, values, generator))
    print_rows(rows, width=28)
    return 0


if __name__ == "__main__":
    sys.exit(main())
