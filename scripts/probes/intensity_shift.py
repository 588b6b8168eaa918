"""Does a bundle change the brain's intensities (contrast) as well as its detail? On a held-out HR scan.

    python scripts/probes/intensity_shift.py HR_T1W BUNDLE... [--degradation bicubic] [--threads N]

The HR scan is prepared and degraded as ``ddasr-eval`` does (``_heldout.load_heldout``, the seeded draw of
its ``sub-<label>`` key); bicubic and each bundle (the app's path, its output settings) are compared with
the HR inside deepbet's brain mask: the mean intensity, the mean squared error, and the error left after
the best affine intensity map ``a x output + c`` (least squares). An error that mostly goes away under
that map is a change of contrast, not of detail.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def affine_fit_error(output: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """``(a, c, mse)``: the least-squares map ``a x output + c`` onto ``reference`` and its mean squared error."""
    a, c = np.polyfit(output, reference, 1)
    return float(a), float(c), float(np.mean((a * output + c - reference) ** 2))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hr", type=Path)
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--degradation", default="bicubic")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=Path("out/cache"))
    opts = parser.parse_args(argv)

    import torch

    from _heldout import app_output, load_heldout

    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.degradations import bicubic_upsample, get_degradation
    from ddasr_nipype.evaluation import _inplane_axes, _seed_sequence

    torch.set_num_threads(opts.threads)
    held = load_heldout(opts.hr, opts.cache_dir)
    axes = _inplane_axes("sagittal")
    rng = np.random.default_rng(_seed_sequence(0, held.key, opts.degradation))
    lr, _ = get_degradation(opts.degradation, 2, axes=axes)(held.hr01, rng)
    outputs = {"bicubic": bicubic_upsample(lr, 2, axes=axes, out_shape=[held.hr01.shape[a] for a in axes])}
    for name in opts.bundles:
        bundle = load_bundle(name)
        outputs[f"{bundle.name}:{bundle.sha256[:8]}"] = app_output(lr, held.hr_ras, bundle)
    reference = held.hr01[held.brain]
    print(f"== {held.key} {opts.degradation}: inside the brain, HR mean {reference.mean():.4f}")
    print(f"{'method':32s} {'mean':>7s} {'MSE':>9s} {'MSE after a x + c':>18s} {'a':>6s} {'c':>7s}")
    for name, volume in outputs.items():
        values = volume[held.brain]
        a, c, fitted = affine_fit_error(values, reference)
        print(f"{name:32s} {values.mean():7.4f} {np.mean((values - reference) ** 2):9.2e} {fitted:18.2e} "
              f"{a:6.3f} {c:+7.3f}", flush=True)


if __name__ == "__main__":
    main()
