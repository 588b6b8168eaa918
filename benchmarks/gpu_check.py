"""Device check of the inference path (run where a CUDA GPU exists; needs torch, numpy, nibabel).

- ``device="cuda"`` super-resolution of the real 2 mm IXI test volume with a random-weights
  bundle of the shipped size, against the CPU result (same weights): agreement and time;
- ``planes="all"`` on CUDA;
- a 256^3 volume on CUDA (time, peak GPU memory) with and without tiling, and on the CPU in a
  fresh process (time, peak RSS).

Usage: ``python benchmarks/gpu_check.py OUT_DIR [--cpu-threads N]`` (writes gpu_check.json).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LR = REPO / "tests" / "data" / "lr" / "sub-IXI603" / "anat" / "sub-IXI603_T1w.nii.gz"

CPU_256 = """
import resource, sys, time, numpy as np, nibabel as nib, torch
from ddasr_nipype.bundle import load_bundle
from ddasr_nipype.inference import super_resolve_image
img = nib.Nifti1Image(np.random.default_rng(0).random((256,) * 3, dtype=np.float32) * 100, np.eye(4))
t0 = time.perf_counter()
out, _ = super_resolve_image(img, load_bundle(sys.argv[1]), device="cpu", batch_size=8,
                             num_threads=int(sys.argv[2]))
print(out.shape, time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> int:
    import nibabel as nib
    import torch

    from ddasr_nipype.bundle import load_bundle, save_bundle
    from ddasr_nipype.inference import super_resolve_image
    from ddasr_nipype.models import GeneratorConfig, SRGenerator

    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--cpu-threads", type=int, default=16)
    parser.add_argument("--tiny", action="store_true", help="tiny network: smoke-test this script")
    parser.add_argument("--skip-cpu-256", action="store_true", help="skip the 256^3 CPU run")
    opts = parser.parse_args()
    report: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
    tmp = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    config = (GeneratorConfig(num_feat=4, num_grow_ch=4, num_down=1, num_bottleneck_blocks=1)
              if opts.tiny else GeneratorConfig())
    state = SRGenerator(config).state_dict()
    # random weights give outputs near 0, clipped to an all-zero image: a positive output bias
    # keeps CPU/CUDA and tiled/untiled comparisons meaningful
    state["conv_last.bias"].fill_(0.5)
    bundle = save_bundle(tmp / "bundle", name="random-shipped-size",
                         generator_state=state, generator_config=config,
                         preprocessing={"plane": "sagittal", "scale": 2},
                         backbone={"source": "random", "seed": 0},
                         training={"note": "random weights, device check only"})
    bundle = load_bundle(bundle.path)
    img = nib.load(LR)

    def timed(**kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out, info = super_resolve_image(img_in, bundle, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        gpu_gb = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
        return np.asarray(out.dataobj, dtype=np.float32), out, info, seconds, gpu_gb

    img_in = img
    cpu, cpu_img, _, cpu_s, _ = timed(device="cpu", num_threads=opts.cpu_threads)
    report["ixi_cpu_s"] = cpu_s
    if torch.cuda.is_available():
        timed(device="cuda")  # warm-up (cuDNN autotune, context)
        gpu, gpu_img, info, gpu_s, gpu_gb = timed(device="cuda", batch_size=32)
        scale = float(np.abs(cpu).max()) or 1.0
        report.update(
            ixi_shape_in=list(img.shape), ixi_shape_out=list(gpu.shape), ixi_cuda_s=gpu_s,
            ixi_cuda_peak_gb=gpu_gb, ixi_device_info=info["device"],
            ixi_cpu_vs_cuda_max_rel_diff=float(np.abs(cpu - gpu).max() / scale),
            ixi_cpu_vs_cuda_mean_rel_diff=float(np.abs(cpu - gpu).mean() / scale),
            ixi_out_nonzero_fraction=float((gpu > 0).mean()),
            ixi_affines_equal=bool(np.allclose(cpu_img.affine, gpu_img.affine)),
        )
        _, all_img, _, all_s, all_gb = timed(device="cuda", planes="all", batch_size=32)
        report.update(ixi_all_planes_shape=list(all_img.shape), ixi_all_planes_cuda_s=all_s)
    if torch.cuda.is_available() or opts.tiny:
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        img_in = nib.Nifti1Image(
            np.random.default_rng(0).random((256,) * 3, dtype=np.float32) * 100, np.eye(4))
        big, _, _, big_s, big_gb = timed(device=dev, batch_size=8)
        tiled, _, _, tiled_s, tiled_gb = timed(device=dev, batch_size=8, tile_size=96)
        report.update(
            v256_cuda_s=big_s, v256_cuda_peak_gb=big_gb, v256_tiled96_cuda_s=tiled_s,
            v256_tiled96_cuda_peak_gb=tiled_gb,
            v256_tiled_vs_untiled_max_rel_diff=float(np.abs(big - tiled).max()
                                                     / (np.abs(big).max() or 1.0)),
        )
        del big, tiled
    if opts.skip_cpu_256:
        proc = None
    else:
        proc = subprocess.run([sys.executable, "-c", CPU_256, str(bundle.path), str(opts.cpu_threads)],
                              capture_output=True, text=True)
    if proc is None:
        pass
    elif proc.returncode == 0:
        shape, seconds, kib = proc.stdout.strip().rsplit(" ", 2)
        report.update(v256_cpu_threads=opts.cpu_threads, v256_cpu_s=float(seconds),
                      v256_cpu_peak_rss_gb=int(kib) / 2**20, v256_cpu_out_shape=shape)
    else:
        report["v256_cpu_error"] = proc.stderr[-2000:]
    report["self_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    (opts.out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
