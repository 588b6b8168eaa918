"""Where in frequency a bundle's error lies, on a held-out HR scan degraded as ``ddasr-eval`` degrades it.

    python scripts/probes/error_spectrum.py HR_T1W BUNDLE [--degradation kspace-rician ...]
        [--sigma-range LO HI] [--slice-step 3]

For every ``--slice-step``-th sagittal slice with brain, the in-plane spectrum of (output - HR) inside
deepbet's brain mask, summed over radial frequency bands (cycles per HR pixel; the LR's Nyquist frequency
is 0.25), as a percentage of bicubic's total error; and the power of the output and of bicubic in each band
over the HR's (1: the HR's own power there; above 1 in the LR band: sharper than the truth). The bundle runs
with its output settings and again with ``--projection kspace`` (the output's LR band replaced by the input's).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

#: radial bands, cycles per HR pixel: the LR band in three, and above it (the last one takes the corners of
#: the spectrum too, out to sqrt(2) / 2)
EDGES = (0.0, 0.125, 0.1875, 0.25, 0.3125, 0.375, np.inf)


def band_powers(image: np.ndarray, edges=EDGES) -> np.ndarray:
    """The power of a 2D ``image``'s spectrum summed over each radial frequency band of ``edges``."""
    f = np.sqrt(np.add.outer(np.fft.fftfreq(image.shape[0]) ** 2, np.fft.fftfreq(image.shape[1]) ** 2))
    band = np.digitize(f, edges) - 1
    power = np.abs(np.fft.fft2(image)) ** 2
    return np.bincount(band.ravel(), power.ravel(), len(edges) - 1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hr", type=Path)
    parser.add_argument("bundle")
    parser.add_argument("--degradation", action="append", help="default: kspace-rician, bicubic")
    parser.add_argument("--sigma-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                        help="the noise sigma range of kspace-rician (default its own, 0.01-0.03)")
    parser.add_argument("--slice-step", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    opts = parser.parse_args(argv)

    import torch

    from _heldout import app_output, degrade, load_heldout, noise_label

    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.degradations import bicubic_upsample
    from ddasr_nipype.evaluation import _inplane_axes

    torch.set_num_threads(opts.threads)
    held = load_heldout(opts.hr)
    axes = _inplane_axes("sagittal")
    bundle = load_bundle(opts.bundle)
    hr = held.hr01
    for name in opts.degradation or ["kspace-rician", "bicubic"]:
        lr, params = degrade(hr, held.key, name, seed=opts.seed, sigma_range=opts.sigma_range)
        outputs = {"bicubic": bicubic_upsample(lr, 2, axes=axes, out_shape=[hr.shape[a] for a in axes]),
                   "output": app_output(lr, held.hr_ras, bundle),
                   "projected": app_output(lr, held.hr_ras, bundle, projection="kspace")}
        chosen = [i for i in range(hr.shape[0]) if held.brain[i].sum() > 500][:: opts.slice_step]
        error = {k: np.zeros(len(EDGES) - 1) for k in outputs}
        power = {k: np.zeros(len(EDGES) - 1) for k in ("HR", *outputs)}
        for i in chosen:
            brain = held.brain[i].astype(float)
            power["HR"] += band_powers(hr[i] * brain)
            for k, x in outputs.items():
                error[k] += band_powers((x[i] - hr[i]) * brain)
                power[k] += band_powers(x[i] * brain)
        print(f"== {held.key} {name}{noise_label(params)}, {len(chosen)} slices; bands in cycles per HR pixel (LR Nyquist 0.25)")
        print(f"{'':28s}" + "".join(f"{f'{EDGES[j]:.3f}-{EDGES[j + 1]:.3f}':>13s}" for j in range(len(EDGES) - 1))
              + f"{'total':>8s}")
        total = error["bicubic"].sum()
        for k, e in error.items():
            print(f"{'error ' + k + ', % of bicubic':28s}" + "".join(f"{100 * v / total:13.1f}" for v in e)
                  + f"{100 * e.sum() / total:8.1f}")
        for k in outputs:
            print(f"{'power ' + k + ' / HR':28s}" + "".join(f"{v / h:13.3f}" for v, h in zip(power[k], power["HR"])))


if __name__ == "__main__":
    main()
