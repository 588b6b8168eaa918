"""End-to-end and inference benchmark of the ``ddasr`` BIDS App on one real 2 mm IXI volume.

Prints, for one 2 mm T1w volume (by default a subject of ``../shared/data/lr``, else the bundled
example scan; ``--t1w`` takes any file):

- end-to-end wall time of ``ddasr`` (a fresh process: imports, workflow, brain extraction,
  super-resolution, sinks, report) and its peak RSS (largest process of the run);
- the time of the brain-extraction and super-resolution nodes (from nipype's node results) and the
  nipype overhead ratio = end-to-end / (brain extraction + inference);
- side by side, in this process, on the same LR slices: the DDASR generator and the ESRGAN
  reference RRDBNet (23 RRDBs, 64 features) per slice, and their ratio, both as in the ESRGAN paper
  (body at the LR resolution) and as Real-ESRGAN's x2 model (pixel-unshuffled body, a quarter of the
  FLOPs: the x2 RRDBNet most users run);
- peak RSS of super-resolving a 256^3 volume (fresh process, the default batch/tiling).

Usage::

    python benchmarks/inference_benchmark.py [--model NAME_OR_DIR] [--subject IXI603 | --t1w FILE]
                                             [--ref-slices 4] [--skip-256]

Without ``--model`` it uses the bundled ``ixi-t1w-x2`` when it exists, else a **random-weights
bundle of the shipped size** (timing only: the weights do not matter for speed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_LR = REPO.parent / "shared" / "data" / "lr"
EXAMPLE_T1W = REPO / "ddasr_nipype" / "resources" / "example" / "sub-IXI606" / "anat" / "sub-IXI606_T1w.nii.gz"


def _random_bundle(out_dir: Path) -> Path:
    import torch

    from ddasr_nipype.bundle import save_bundle
    from ddasr_nipype.models import GeneratorConfig, SRGenerator

    import yaml

    # the recipe of the shipped generator (the preset its last fine-tune ran with)
    preset = REPO / "ddasr_nipype" / "training" / "presets" / "starter-finetune-nl.yml"
    generator = yaml.safe_load(preset.read_text())["srn"]["generator"]
    torch.manual_seed(0)
    config = GeneratorConfig(**generator)  # the size of the shipped starter model
    save_bundle(out_dir, name="random-shipped-size", generator_state=SRGenerator(config).state_dict(),
                generator_config=config, preprocessing={"plane": "sagittal", "scale": 2},
                backbone={"source": "random", "seed": 0},
                training={"note": "random weights, for timing only"})
    return out_dir


def _resolve_model(model: str | None, tmp: Path) -> tuple[str, str]:
    from ddasr_nipype.bundle import DEFAULT_MODEL, list_bundled_models, resolve_bundle_path

    if model:
        return str(resolve_bundle_path(model)), model
    if DEFAULT_MODEL in list_bundled_models():
        return str(resolve_bundle_path(DEFAULT_MODEL)), DEFAULT_MODEL
    return str(_random_bundle(tmp / "random-bundle")), "random weights, shipped size"


def _node_seconds(work: Path, name: str) -> float:
    from nipype.utils.filemanip import loadpkl

    results = list(work.rglob(f"{name}/result_{name}.pklz"))
    if not results:
        raise RuntimeError(f"no nipype result for node {name} under {work}")
    return float(loadpkl(results[0]).runtime.duration)


def run_app(t1w: Path, model: str, tmp: Path, nprocs: int) -> dict:
    bids = tmp / "bids"
    (bids / "sub-bench" / "anat").mkdir(parents=True)
    ext = ".nii.gz" if t1w.name.endswith(".gz") else t1w.suffix
    shutil.copy(t1w, bids / "sub-bench" / "anat" / f"sub-bench_T1w{ext}")
    (bids / "dataset_description.json").write_text('{"Name": "bench", "BIDSVersion": "1.9.0"}')
    cmd = [str(Path(sys.executable).parent / "ddasr"), str(bids), str(tmp / "out"), "participant",
           "-w", str(tmp / "work"), "--model", model, "--nprocs", str(nprocs), "--device", "cpu"]
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    if proc.returncode:
        raise RuntimeError(f"ddasr failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    bet = _node_seconds(tmp / "work", "brain_extraction")
    sr = _node_seconds(tmp / "work", "super_resolve")
    sidecar = next((tmp / "out" / "ddasr").rglob("*desc-ddasr_T1w.json"))
    return {
        "end_to_end_s": wall,
        # CPU seconds of every process of the run: on a busy machine, cpu / n_cpus is a lower
        # bound of the wall time the same run would take on an idle one
        "end_to_end_cpu_s": cpu,
        "brain_extraction_s": bet,
        "super_resolve_node_s": sr,
        "inference_s": json.loads(sidecar.read_text())["RuntimeSeconds"],
        "nipype_overhead": wall / (bet + sr),
        # ru_maxrss of children = the largest single process (main or a MultiProc worker), in KiB
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
    }


def compare_reference(t1w: Path, model: str, n_slices: int, threads: int) -> dict:
    """Same LR slices through the DDASR generator and RRDBNet-23, per-slice seconds."""
    import numpy as np
    import torch

    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.data.io import load_volume, to_ras
    from ddasr_nipype.data.normalize import fit_normalization
    from ddasr_nipype.models import RRDBNet, RRDBNetConfig

    torch.set_num_threads(threads)
    img_ras, _ = to_ras(load_volume(t1w))
    data = np.asarray(img_ras.dataobj, dtype=np.float32)
    data = fit_normalization(data).apply(data)
    mid = data.shape[0] // 2
    slices = torch.from_numpy(np.ascontiguousarray(data[mid - n_slices // 2: mid - n_slices // 2
                                                        + n_slices]))[:, None]
    timings = {}
    load_before = os.getloadavg()[0]
    for label, net in (("ddasr", load_bundle(model).load_generator("cpu")),
                       ("rrdbnet23", RRDBNet(RRDBNetConfig()).eval()),
                       ("rrdbnet23_x2plus", RRDBNet(RRDBNetConfig(pixel_unshuffle=True)).eval())):
        with torch.inference_mode():
            net(slices[:1])  # warm-up
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(n_slices):  # one slice at a time: the RRDBNet figure users know
                net(slices[i:i + 1])
            timings[label] = (time.perf_counter() - t0) / n_slices
            timings[f"{label}_cpu"] = (time.process_time() - c0) / n_slices
        timings[f"{label}_params_m"] = sum(p.numel() for p in net.parameters()) / 1e6
    timings["slice_shape"] = list(slices.shape[2:])
    timings["speedup_vs_rrdbnet23"] = timings["rrdbnet23"] / timings["ddasr"]
    timings["cpu_speedup_vs_rrdbnet23"] = timings["rrdbnet23_cpu"] / timings["ddasr_cpu"]
    timings["speedup_vs_rrdbnet23_x2plus"] = timings["rrdbnet23_x2plus"] / timings["ddasr"]
    timings["load_average"] = (load_before, os.getloadavg()[0])
    return timings


RSS_SNIPPET = """
import resource, sys, time, numpy as np, nibabel as nib
from ddasr_nipype.bundle import load_bundle
from ddasr_nipype.inference import super_resolve_image
rng = np.random.default_rng(0)
data = rng.random((256, 256, 256), dtype=np.float32) * 100
img = nib.Nifti1Image(data, np.eye(4))
t0 = time.perf_counter()
out, info = super_resolve_image(img, load_bundle(sys.argv[1]), device="cpu", batch_size=8,
                                num_threads=int(sys.argv[2]), tile_size=int(sys.argv[3]) or None)
print(out.shape, round(time.perf_counter() - t0, 1), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def rss_256(model: str, threads: int, tile_size: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", RSS_SNIPPET, model, str(threads), str(tile_size)],
                          capture_output=True, text=True, check=True)
    shape, seconds, kib = proc.stdout.strip().rsplit(" ", 2)
    return {"output_shape": shape, "seconds": float(seconds), "peak_rss_gb": int(kib) / 2**20}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="bundle name or directory (default: see module doc)")
    parser.add_argument("--subject", default="IXI603",
                        help="subject of ../shared/data/lr (when it is missing: the bundled example scan)")
    parser.add_argument("--t1w", type=Path, help="benchmark this T1w file instead")
    parser.add_argument("--ref-slices", type=int, default=4,
                        help="slices timed for the generator/RRDBNet comparison")
    parser.add_argument("--nprocs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tile-size", type=int, default=0, help="tile size for the 256^3 run")
    parser.add_argument("--skip-256", action="store_true", help="skip the 256^3 RSS run")
    opts = parser.parse_args(argv)

    t1w = opts.t1w or SHARED_LR / f"sub-{opts.subject}" / "anat" / f"sub-{opts.subject}_T1w.nii.gz"
    if opts.t1w is None and not t1w.is_file():
        print(f"{t1w} not found: benchmarking the bundled example scan instead", file=sys.stderr)
        t1w = EXAMPLE_T1W
    if not t1w.is_file():
        print(f"missing {t1w}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="ddasr-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model, label = _resolve_model(opts.model, tmp)
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; model: {label} ({model}); input: {t1w.name}")
        app = run_app(t1w, model, tmp, opts.nprocs)
        print("\n== ddasr end to end (fresh process, brain extraction + SR + sinks + report) ==")
        for key, value in app.items():
            print(f"{key:>24}: {value:.2f}")
        ref = compare_reference(t1w, model, opts.ref_slices, opts.nprocs)
        print(f"\n== per slice ({ref['slice_shape'][0]}x{ref['slice_shape'][1]}, batch 1, "
              f"{opts.nprocs} threads, {opts.ref_slices} sagittal slices) ==")
        print(f"{'DDASR generator':>24}: {ref['ddasr']:.3f} s ({ref['ddasr_params_m']:.1f} M params)")
        print(f"{'RRDBNet-23 (ESRGAN)':>24}: {ref['rrdbnet23']:.3f} s "
              f"({ref['rrdbnet23_params_m']:.1f} M params)")
        print(f"{'RRDBNet-23 x2plus':>24}: {ref['rrdbnet23_x2plus']:.3f} s (Real-ESRGAN x2, pixel-unshuffle)")
        print(f"{'speed-up vs x2plus':>24}: {ref['speedup_vs_rrdbnet23_x2plus']:.1f}x wall")
        print(f"{'speed-up':>24}: {ref['speedup_vs_rrdbnet23']:.1f}x wall, "
              f"{ref['cpu_speedup_vs_rrdbnet23']:.1f}x CPU time "
              f"(CPU s/slice {ref['ddasr_cpu']:.2f} vs {ref['rrdbnet23_cpu']:.2f})")
        print(f"{'load average':>24}: {ref['load_average'][0]:.1f} -> {ref['load_average'][1]:.1f}")
        if not opts.skip_256:
            big = rss_256(model, opts.nprocs, opts.tile_size)
            print(f"\n== 256^3 input (sagittal, batch 8, tile {opts.tile_size or 'none'}) ==")
            print(f"{'output':>24}: {big['output_shape']} in {big['seconds']:.1f} s")
            print(f"{'peak RSS':>24}: {big['peak_rss_gb']:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
