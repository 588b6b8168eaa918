"""Training throughput of the DSN and SRN stages for the ``fast`` and ``paper`` presets.

Prints iterations/s and slices/s (iterations/s x batch size) per stage and preset on the CPU, and on
CUDA when available (with the peak GPU memory), then the estimated wall time of each preset's full
recipe (the paper: 300k DSN + 250k SRN iterations) on the measured hardware. Data are random
slices of the needed size (throughput does not depend on image content) and the VGG19 loss network
is a seeded random one (same cost as the ImageNet weights).

Usage::

    python benchmarks/train_throughput.py                       # fast + paper, CPU (+ CUDA if any)
    python benchmarks/train_throughput.py --presets fast --iterations 20 --threads 2
    python benchmarks/train_throughput.py --devices cuda --iterations 50
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np


def _slice_set(n: int, size: int, seed: int):
    from ddasr_nipype.training.datasets import SliceSet, SliceStack

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    head = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.45 * size) ** 2).astype(np.float32)
    slices = np.stack([head * (0.5 + 0.5 * rng.random((size, size), dtype=np.float32)) for _ in range(n)])
    return SliceSet([SliceStack("bench", slices, 1.0)])


def _measure(trainer, iterations: int, warmup: int, device) -> dict:
    import torch

    for _ in range(warmup):
        trainer.train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iterations):
        trainer.train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0
    rate = iterations / seconds
    out = {"iterations": iterations, "seconds": round(seconds, 3), "it_per_s": rate,
           "slices_per_s": rate * trainer.stage_config.batch_size,
           # CPU time of this process per iteration: on a loaded machine, 1 / this is the rate one
           # dedicated core would give (wall time includes waiting for the other processes)
           "cpu_seconds_per_it": cpu_seconds / iterations}
    if device.type == "cuda":
        out["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def bench(preset_name: str, device_name: str, iterations: int, warmup: int, precision: str) -> dict:
    import torch

    from ddasr_nipype.models import DSN, load_vgg19
    from ddasr_nipype.training.config import load_preset
    from ddasr_nipype.training.datasets import PairSet
    from ddasr_nipype.training.dsn_trainer import DSNTrainer, build_dsn_config
    from ddasr_nipype.training.srn_trainer import SRNTrainer

    preset = load_preset(preset_name)
    s = preset.data.scale
    vgg, provenance = load_vgg19(allow_random=True)
    kw = {"vgg": vgg, "backbone": provenance, "device": device_name, "seed": 0, "tensorboard": False,
          "precision": precision}
    size = max(preset.dsn.patch_size, preset.srn.patch_size) + 32
    size += (-size) % (s * 8)
    hr = _slice_set(8, size, 0)
    lr = _slice_set(8, size // s, 1)
    result = {"preset": preset_name, "device": device_name}
    with tempfile.TemporaryDirectory() as work:
        dsn_trainer = DSNTrainer(preset, work, hr, lr, **kw)
        dev = dsn_trainer.device
        if dev.type == "cuda":
            result["gpu"] = torch.cuda.get_device_name(dev)
        result["dsn"] = _measure(dsn_trainer, iterations, warmup, dev)
        result["dsn"]["params_m"] = sum(p.numel() for p in dsn_trainer.dsn.parameters()) / 1e6
        del dsn_trainer
        torch.manual_seed(0)
        dsn = DSN(build_dsn_config(preset))
        hr_stack = hr.stacks[0].slices
        with torch.no_grad():
            low = torch.nn.functional.avg_pool2d(torch.from_numpy(hr_stack[:, None]), s).numpy()[:, 0]
        pairs = PairSet([low], [hr_stack], s)
        del dsn
        srn_trainer = SRNTrainer(preset, work, pairs, **kw)
        # measure the adversarial phase (the pixel warm-up is cheaper)
        srn_trainer.iteration = preset.srn.pixel_warmup_iterations
        result["srn"] = _measure(srn_trainer, iterations, warmup, dev)
        result["srn"]["generator_params_m"] = sum(p.numel() for p in srn_trainer.generator.parameters()) / 1e6
    total = preset.dsn.iterations / result["dsn"]["it_per_s"] + preset.srn.iterations / result["srn"]["it_per_s"]
    cpu_total = (preset.dsn.iterations * result["dsn"]["cpu_seconds_per_it"]
                 + preset.srn.iterations * result["srn"]["cpu_seconds_per_it"])
    result["recipe"] = {"dsn_iterations": preset.dsn.iterations, "srn_iterations": preset.srn.iterations,
                        "estimated_hours": total / 3600, "cpu_core_hours": cpu_total / 3600}
    return result


def main(argv=None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["fast", "paper"])
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    parser.add_argument("--iterations", type=int, default=None,
                        help="timed iterations per stage (default: 10 for fast, 2 for paper on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    results = []
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}")
    header = (f"{'preset':7s} {'device':26s} {'stage':5s} {'it/s':>9s} {'slices/s':>9s} {'cpu s/it':>9s} "
              f"{'peak GiB':>9s}")
    print(header)
    for device in devices:
        for name in args.presets:
            n = args.iterations or (20 if device == "cuda" else (2 if name == "paper" else 10))
            r = bench(name, device, n, args.warmup, args.precision)
            results.append(r)
            where = r.get("gpu", device)
            for stage in ("dsn", "srn"):
                m = r[stage]
                peak = f"{m['peak_gpu_memory_gib']:.2f}" if "peak_gpu_memory_gib" in m else "-"
                print(f"{name:7s} {where[:26]:26s} {stage:5s} {m['it_per_s']:9.3f} {m['slices_per_s']:9.2f} "
                      f"{m['cpu_seconds_per_it']:9.3f} {peak:>9s}", flush=True)
            rec = r["recipe"]
            print(f"  -> {name} recipe ({rec['dsn_iterations']} DSN + {rec['srn_iterations']} SRN iterations) on "
                  f"{where}: about {rec['estimated_hours']:.2f} h wall at the measured rate "
                  f"({rec['cpu_core_hours']:.2f} CPU-core hours of compute)", flush=True)
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(results, stream, indent=2)


if __name__ == "__main__":
    main()
