"""GPU check of a real model bundle with its output settings: CUDA against CPU, tiled against untiled,
and timings (``gpu_check.py`` checks the inference path with a random bundle of the paper's size).

    python benchmarks/gpu_model_check.py [--model ixi-t1w-x2] [--image T1W.nii.gz] [--out DIR]

Runs ``super_resolve_image`` on the image (default: the bundled example) with the bundle's recommended
output settings and with the network alone, on the CPU and on CUDA (and CUDA in 64-pixel tiles, and
with ``planes="all"``), each timed after a warm-up run, and prints the figures as JSON: seconds per
volume, the largest CUDA-CPU and tiled-untiled differences relative to the output's 99.5th percentile,
and the peak CUDA memory. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "ddasr_nipype/resources/example/sub-IXI606/anat/sub-IXI606_T1w.nii.gz"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ixi-t1w-x2")
    parser.add_argument("--image", type=Path, default=EXAMPLE)
    parser.add_argument("--threads", type=int, default=4, help="torch CPU threads")
    parser.add_argument("--out", type=Path, help="also write the figures to OUT/gpu_check.json")
    opts = parser.parse_args(argv)

    import nibabel as nib
    import numpy as np
    import torch

    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.inference import DEFAULT_OUTPUT, super_resolve_image

    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to check", file=sys.stderr)
        return 1
    torch.set_num_threads(opts.threads)
    img, bundle = nib.load(opts.image), load_bundle(opts.model)
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "model": bundle.name,
           "model_sha256": bundle.sha256}
    runs = {"cpu": {"device": "cpu"}, "cuda": {"device": "cuda"}, "cuda-tiled": {"device": "cuda", "tile_size": 64},
            "cuda-network-only": {"device": "cuda", **DEFAULT_OUTPUT},
            "cpu-network-only": {"device": "cpu", **DEFAULT_OUTPUT},
            "cuda-all-planes": {"device": "cuda", "planes": "all"}}
    outputs = {}
    for label, kwargs in runs.items():
        super_resolve_image(img, bundle, **kwargs)  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        out, info = super_resolve_image(img, bundle, **kwargs)
        torch.cuda.synchronize()
        outputs[label] = np.asarray(out.dataobj, np.float32)
        res[label] = {"s": round(time.perf_counter() - start, 3), "output": info["output"], "shape": list(out.shape)}
    scale = float(np.percentile(outputs["cpu"], 99.5))
    for a, b in (("cuda", "cpu"), ("cuda-tiled", "cuda"), ("cuda-network-only", "cpu-network-only")):
        res[f"max |{a} - {b}| / p99.5"] = float(np.abs(outputs[a] - outputs[b]).max() / scale)
    res["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    print(json.dumps(res, indent=1))
    if opts.out:
        opts.out.mkdir(parents=True, exist_ok=True)
        (opts.out / "gpu_check.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
