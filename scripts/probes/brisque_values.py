"""Record ddasr_nipype.metrics.brisque's scores on a fixed image set, as exact float reprs (issue 24).

Compares two implementations (or two numpy versions) bit for bit: the five calibration images
(../shared/iqa), every few slices of the committed scans and of three ../shared/data/lr scans (sharp and
blurred; ../shared is $DDASR_SHARED when set), odd-sized and degenerate images, and the per-slice volume protocol of ``ddasr-eval``.

    python scripts/probes/brisque_values.py /tmp/after.json
    python scripts/probes/brisque_values.py --compare /tmp/before.json /tmp/after.json

The before.json of issue 24 came from the parent commit of the reimplementation (the brisque 0.2.0
package with libsvm, numpy 2.3.5).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("DDASR_SHARED", REPO.parent / "shared"))  # a worktree: set DDASR_SHARED


def _normalized(path: Path) -> np.ndarray:
    data = nib.as_closest_canonical(nib.load(path)).get_fdata()
    return np.clip(data / np.percentile(data[data > 0], 99.5), 0, 1)


def record(out_file: str) -> None:
    from skimage.io import imread

    from ddasr_nipype.metrics import brisque, foreground_mask, no_reference_scores, rgb2gray_matlab, to_8bit

    scores: dict[str, float | list[float]] = {}
    iqa = SHARED / "iqa"
    if (iqa / "reference_scores.csv").is_file():
        with open(iqa / "reference_scores.csv") as handle:
            for row in csv.DictReader(handle):
                scores["iqa/" + row["image"]] = brisque(rgb2gray_matlab(imread(iqa / row["image"])))
    volumes = sorted(REPO.glob("tests/data/*/sub-*/anat/*_T1w.nii.gz"))
    volumes += sorted((SHARED / "data" / "lr").glob("sub-*/anat/*_T1w.nii.gz"))[:3]
    for path in volumes:
        data = _normalized(path)
        for axis in range(3):
            n = data.shape[axis]
            for i in range(n // 8, n - n // 8, max(1, n // 12)):
                plane = np.take(data, i, axis=axis)
                if min(plane.shape) >= 16:
                    scores[f"{path.name}/ax{axis}/{i}"] = brisque(to_8bit(plane))
                    scores[f"{path.name}/ax{axis}/{i}/blur"] = brisque(to_8bit(ndimage.gaussian_filter(plane, 1.5)))
    rng = np.random.default_rng(0)
    scores["noise"] = brisque(rng.uniform(0, 255, (64, 80)))
    scores["noise_odd"] = brisque(rng.uniform(0, 255, (33, 17)))
    scores["min16"] = brisque(rng.uniform(0, 255, (16, 16)))
    two_level = np.zeros((64, 64))
    two_level[:, 32:] = 255
    scores["two_level"] = brisque(two_level)
    scores["ramp"] = brisque(np.tile(np.arange(64.0) * 4, (64, 1)))
    scores["constant"] = brisque(np.full((64, 64), 7.0))
    data = _normalized(sorted(REPO.glob("tests/data/lr/sub-*/anat/*_T1w.nii.gz"))[0])
    per_slice = no_reference_scores(data, plane="sagittal", mask=foreground_mask(data),
                                    metrics=("brisque", "brisque_head"))
    for metric in ("brisque", "brisque_head"):
        scores[f"volume/{metric}"] = [float(v) for v in per_slice[metric]]
    reprs = {k: [repr(x) for x in v] if isinstance(v, list) else repr(v) for k, v in scores.items()}
    Path(out_file).write_text(json.dumps({"numpy": np.__version__, "values": reprs}, indent=0))
    count = sum(len(v) if isinstance(v, list) else 1 for v in scores.values())
    print(f"{count} scores ({len(scores)} entries) with numpy {np.__version__} -> {out_file}")


def compare(first: str, second: str) -> int:
    a, b = (json.loads(Path(f).read_text()) for f in (first, second))
    if a["values"].keys() != b["values"].keys():
        print("the two files score different image sets")
        return 1
    differ = [k for k in a["values"] if a["values"][k] != b["values"][k]]
    print(f"numpy {a['numpy']} vs {b['numpy']}: {len(differ)} of {len(a['values'])} entries differ")
    for key in differ[:20]:
        print(f"  {key}: {a['values'][key]} vs {b['values'][key]}")
    return int(bool(differ))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--compare"] and len(sys.argv) == 4:
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    record(sys.argv[1])
