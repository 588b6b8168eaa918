"""Zoomed side-by-side panel of model bundles on one real LR scan: the visual check of the model card.

    python scripts/zoom_panel.py LR_T1W.nii.gz OUT.png --model LABEL=BUNDLE [--model ...]
                                 [--slice N] [--box X0 X1 Y0 Y1] [--network-only]

Each bundle super-resolves the whole scan through ``super_resolve_image`` (the BIDS App's path, with the
output settings the bundle recommends; ``--network-only`` adds a column with the network alone), and
one sagittal slice (``--slice``, default the middle one) is shown beside the real LR (each voxel
repeated) and its bicubic up-sampling, all normalized as ``ddasr-eval`` does (99.5th percentile inside
the head mask). ``--box`` crops the SR grid (first in-plane axis X0:X1, second Y0:Y1, RAS), and the
full slice is drawn in a second row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lr", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", action="append", required=True, metavar="LABEL=BUNDLE")
    parser.add_argument("--slice", type=int, help="sagittal slice (RAS axis 0) of the LR scan")
    parser.add_argument("--box", type=int, nargs=4, metavar=("X0", "X1", "Y0", "Y1"))
    parser.add_argument("--network-only", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    opts = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.data.io import load_volume, to_ras
    from ddasr_nipype.degradations import bicubic_upsample_volume
    from ddasr_nipype.inference import DEFAULT_OUTPUT, output_settings, super_resolve_image
    from ddasr_nipype.metrics.volume import foreground_mask, normalize_volume

    img = load_volume(opts.lr)
    lr = np.asarray(to_ras(img)[0].dataobj, np.float64)
    mask = foreground_mask(lr)
    up_mask = bicubic_upsample_volume(mask.astype(np.float64), (1, 2, 2)) > 0.5
    index = lr.shape[0] // 2 if opts.slice is None else opts.slice
    columns = [("real LR", np.repeat(np.repeat(normalize_volume(lr, mask)[index], 2, 0), 2, 1)),
               ("bicubic x2", normalize_volume(bicubic_upsample_volume(lr, (1, 2, 2)), up_mask)[index])]
    for spec in opts.model:
        label, _, path = spec.partition("=")
        bundle = load_bundle(path or label)
        runs = [(label, {})]
        if opts.network_only and output_settings(bundle) != DEFAULT_OUTPUT:
            runs.append((f"{label}, network only", DEFAULT_OUTPUT))
        for name, settings in runs:
            out, _ = super_resolve_image(img, bundle, num_threads=opts.threads, **settings)
            sr = np.asarray(to_ras(out)[0].dataobj, np.float64)
            columns.append((name, normalize_volume(sr, up_mask)[index]))

    rows = [[(label, image) for label, image in columns]]
    if opts.box:
        x0, x1, y0, y1 = opts.box
        rows.insert(0, [(label, image[x0:x1, y0:y1]) for label, image in columns])
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(2.6 * len(columns), 2.8 * len(rows)),
                             squeeze=False)
    for r, row in enumerate(rows):
        for ax, (label, image) in zip(axes[r], row):
            ax.imshow(np.clip(image, 0, 1).T, cmap="gray", origin="lower", vmin=0, vmax=1,
                      interpolation="nearest")
            if r == 0:
                ax.set_title(label, fontsize=8)
            ax.axis("off")
    fig.suptitle(f"{opts.lr.name.split('.')[0]}, sagittal slice {index}", fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, wspace=0.03, hspace=0.05)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(opts.out, dpi=90)
    print(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
