"""No-reference (NIQE/BRISQUE) check of bundles and output variants on real LR scans, on ``ddasr-eval``'s
exact Table I path.

    python scripts/probes/unpaired_variants.py LR_T1W... --model BUNDLE [--model ...]
        [--variant strength=S,background=input|model,slice_denoise=H,projection=M|MODEL:WEIGHT ...]
        [--metric niqe --metric brisque] [--slice-step K] [--perturb smooth=S|sharpen=A|noise=N ...]

Each scan is super-resolved with :func:`ddasr_nipype.inference.super_resolve_image` (the app's path),
bicubic is the same x2 grid; each ``--variant`` (default: the bundle's own output settings) runs with
those output settings (``projection=M``: the app's, onto the network's input), ``projection=MODEL:WEIGHT``
making the output consistent with the LR as given, after the
fact (:func:`ddasr_nipype.degradations.consistency_projection`, in the scan's own intensity units); every
volume is normalized and scored per sagittal slice as Table I does (every ``--slice-step``-th slice). Prints per-scan means and the mean
over all slices, with the paired difference to bicubic. Each ``--perturb`` also scores every volume (bicubic
included) changed after normalization, to see which way the metrics lean: ``smooth=S`` an in-plane Gaussian of
S pixels, ``sharpen=A`` unsharp masking (``v + A (v - Gaussian_1px(v))``), ``noise=N`` Gaussian noise of
standard deviation N of the normalized range (seeded).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _perturbed(volume01: np.ndarray, perturb: str) -> np.ndarray:
    """``volume01 [X, Y, Z]`` (sagittal slices along X) changed in-plane as ``--perturb`` says."""
    from scipy import ndimage

    if not perturb:
        return volume01
    kind, value = perturb.split("=")
    amount = float(value)
    if kind == "smooth":
        return ndimage.gaussian_filter(volume01, (0, amount, amount))
    if kind == "sharpen":
        return volume01 + amount * (volume01 - ndimage.gaussian_filter(volume01, (0, 1.0, 1.0)))
    if kind == "noise":
        return volume01 + np.random.default_rng(0).normal(0.0, amount, volume01.shape)
    raise SystemExit(f"--perturb {perturb!r}: use smooth=S, sharpen=A or noise=N")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scans", nargs="+", type=Path)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--variant", action="append", default=None)
    parser.add_argument("--slice-step", type=int, default=1)
    parser.add_argument("--metric", action="append", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--perturb", action="append", default=[])
    opts = parser.parse_args(argv)

    import nibabel as nib
    import torch

    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.data.io import to_ras
    from ddasr_nipype.degradations import bicubic_upsample_volume, consistency_projection
    from ddasr_nipype.evaluation import _upsample_mask
    from ddasr_nipype.inference import super_resolve_image
    from ddasr_nipype.metrics.volume import foreground_mask, no_reference_scores, normalize_volume

    if opts.threads:
        torch.set_num_threads(opts.threads)
    metrics = tuple(opts.metric or ("niqe", "brisque"))
    factors = (1, 2, 2)
    bundles = [load_bundle(m) for m in opts.model]
    totals: dict[str, dict[str, list[np.ndarray]]] = {}
    for path in opts.scans:
        img = nib.load(str(path))
        lr = np.asarray(to_ras(img)[0].dataobj, dtype=np.float64)
        mask = foreground_mask(lr)
        up_mask = _upsample_mask(mask, factors)
        volumes = {"bicubic": bicubic_upsample_volume(lr, factors)}
        for b in bundles:
            for variant in opts.variant or [""]:
                settings = dict(item.split("=") for item in variant.split(",") if item)
                # projection=MODEL:WEIGHT: after the fact, onto the LR as given; projection=MODEL: the app's setting
                projection = settings.pop("projection") if ":" in settings.get("projection", "") else None
                out, _ = super_resolve_image(img, b, planes="sagittal",
                                             strength=float(settings["strength"]) if "strength" in settings else None,
                                             background=settings.get("background"),
                                             slice_denoise=float(settings["slice_denoise"]) if "slice_denoise" in settings else None,
                                             projection=settings.get("projection"))
                sr = np.asarray(to_ras(out)[0].dataobj, dtype=np.float64)
                if projection:
                    model, weight = projection.split(":")
                    sr = consistency_projection(sr, lr, 2, axes=(1, 2), model=model, weight=float(weight))
                volumes[f"{b.name}:{b.sha256[:8]} {variant}".strip()] = sr
        line = [path.name.split("_")[0]]
        sub = (slice(None, None, opts.slice_step),)
        for name, vol in volumes.items():
            normalized = normalize_volume(vol, up_mask)
            for perturb in ["", *opts.perturb]:
                method = f"{name} {perturb}".strip()
                scores = no_reference_scores(_perturbed(normalized, perturb)[sub],
                                             plane="sagittal", mask=up_mask[sub], metrics=metrics, min_fraction=0.1)
                for m in metrics:
                    totals.setdefault(method, {}).setdefault(m, []).append(scores[m])
                line.append(f"{method} " + " ".join(f"{m} {np.nanmean(scores[m]):.3f}" for m in metrics))
        print(" | ".join(line), flush=True)
    print("== mean over all slices (difference to bicubic, % of bicubic)")
    for method, per in totals.items():
        cells = []
        for m in metrics:
            v = np.concatenate(per[m])
            b = np.concatenate(totals["bicubic"][m])
            cells.append(f"{m} {np.nanmean(v):.3f} ({np.nanmean(v) - np.nanmean(b):+.3f}, "
                         f"{100 * (np.nanmean(v) / np.nanmean(b) - 1):+.1f} %)")
        print(f"{method:40s} " + "  ".join(cells))


if __name__ == "__main__":
    main()
