"""Probe, not product code: inference's LR intensity normalization taken over the head (an Otsu
mask) instead of over the voxels above 0, scored through ``ddasr-eval``'s own path.

Inference normalizes each LR volume by its 0.5-99.5th percentiles over the voxels above 0. With a
noisy background (the paired test's Rician noise) that reads a lower 99.5th percentile than on a
scan with a zeroed background (IXI), so the same anatomy reaches the generator brighter; the starter
model card ("A scoring fix: odd-sized HR axes") measures the generator's sensitivity to that.

    python scripts/probes/head_normalization.py positive|head|zero-head OUT [BUNDLE] --hr HR_BIDS \\
        --participant trio [--degradation kspace-rician ...] [--lr LR_BIDS --participant IXI132 ...]

``positive`` is the package as it is (the control). ``head`` takes both percentiles over the head;
``zero-head`` maps 0 to 0 and the head's 99.5th percentile to 1 (the scale the quick check feeds,
which normalizes with the HR's head). Both patch the normalization for this process only. Prints
``ddasr-eval``'s rows (brain-mask PSNR/SSIM with ``--hr``, NIQE with ``--lr``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def use_head_mask(zero_low: bool = False) -> None:
    """Make ``fit_normalization`` without a mask use the head (Otsu foreground) of its data, and with
    ``zero_low`` map 0 (not the low percentile) to 0."""
    import ddasr_nipype.data.normalize as normalize
    from ddasr_nipype.metrics.volume import foreground_mask

    original = normalize.fit_normalization

    def fit_on_head(data, mask=None, *args, **kwargs):
        if mask is None:
            head = foreground_mask(np.asarray(data))
            mask = head if head.any() else None
        norm = original(data, mask, *args, **kwargs)
        if zero_low and norm.high > 0:
            norm = normalize.IntensityNormalization(low=0.0, high=norm.high, percentiles=norm.percentiles,
                                                    clip_max=norm.clip_max)
        return norm

    normalize.fit_normalization = fit_on_head


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rule", choices=("positive", "head", "zero-head"))
    parser.add_argument("out", type=Path)
    parser.add_argument("bundle", nargs="?", default="ixi-t1w-x2")
    parser.add_argument("--hr", type=Path)
    parser.add_argument("--lr", type=Path)
    parser.add_argument("--participant", action="append", default=[])
    parser.add_argument("--degradation", action="append")
    opts = parser.parse_args(argv)
    if opts.rule != "positive":
        use_head_mask(zero_low=opts.rule == "zero-head")

    from ddasr_nipype.evaluation import EvaluationConfig, run_evaluation

    config = EvaluationConfig(
        out_dir=opts.out, hr_dir=opts.hr, lr_dir=opts.lr, models=(opts.bundle,), network_only=True,
        degradations=tuple(opts.degradation or ("kspace-rician",)), participants=tuple(opts.participant),
        brain_mask="deepbet" if opts.hr else "none", no_reference_metrics=("niqe",), n_panels=0,
    )
    results = run_evaluation(config)
    for table in ("table2_sr", "table1"):
        for row in results.get(table, []):
            if row["metric"] in ("psnr_brain", "ssim_brain", "psnr_mask", "niqe"):
                print(f"{opts.rule:<8} {table:<9} {row.get('degradation', ''):<14} {row['method']:<34} "
                      f"{row['metric']:<10} {row['mean']:.4f} ± {row['std']:.4f} (n={row['n']})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
