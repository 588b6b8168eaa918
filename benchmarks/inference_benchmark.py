"""End-to-end and inference benchmark of the ``ddasr`` BIDS App on one real 2 mm IXI volume.

Prints, for one 2 mm T1w volume (by default a subject of ``../shared/data/lr``, else the bundled
example scan; ``--t1w`` takes any file):

- end-to-end wall time of ``ddasr`` (a fresh process: imports, workflow, brain extraction,
  super-resolution, sinks, report), its CPU time and peak RSS (largest process of the run), and the
  time of the brain-extraction and super-resolution nodes (from nipype's node results);
- the split of the SR node: reading, loading the model, normalization, head mask, network, blend,
  restoring, writing (the node's own record, ``timings_s`` of its JSON) and what the node spent
  outside those steps (imports, nipype); the network per slice in the node beside the bare
  generator per slice (one after the other on every thread, and side by side on one thread each, as the
  node runs on the CPU);
- with ``--compare-scheduling``, a second app run with the other scheduling (``--omp-nthreads 1``: brain
  extraction and SR side by side, each on one thread) beside the default (one after the other, every
  thread each);
- the ratios end to end / (brain extraction + SR node) and end to end / (brain extraction + the
  network alone): the app's overhead over pure inference;
- ``--planes all`` (three passes fused) through ``super_resolve_image`` in a fresh process;
- side by side, in this process, on the same LR slices, one slice per forward pass: the DDASR
  generator, Real-ESRGAN's x2 model (RRDBNet-23, pixel-unshuffled body: the x2 RRDBNet most users
  run; "x2plus") and, unless ``--skip-rrdbnet23``, the ESRGAN paper's RRDBNet-23 (body at the LR
  resolution), each as loaded and in the channels-last layout inference uses on the CPU; the
  speed-ups compare like with like (channels-last);
- peak RSS of super-resolving a 256^3 volume (fresh process, the app's default batch and tiling);
- ``ddasr --help`` wall time (fresh processes, first and best of three) and ``python -X importtime``
  of the app's entry module: its total and the slowest top-level imports.

Usage::

    python benchmarks/inference_benchmark.py [--model NAME_OR_DIR | --generator-config JSON_OR_FILE]
        [--subject IXI603 | --t1w FILE] [--ref-slices 4] [--nprocs N] [--omp-nthreads N] [--compare-scheduling]
        [--skip-256] [--skip-all-planes] [--skip-rrdbnet23] [--skip-app] [--skip-startup]

Without ``--model`` it uses the bundled default model (``t1w-x2``) when it exists, else a **random-weights
bundle of the shipped size**. ``--generator-config`` times another generator before it is trained: a
random-weights bundle of that :class:`~ddasr_nipype.models.GeneratorConfig` (JSON text, or a JSON
file; e.g. ``'{"num_feat": 24, "num_grow_ch": 16, "num_down": 2, "num_bottleneck_blocks": 3,
"global_residual": true}'``), with the shipped model's output settings and float16 weights (the
weights do not matter for speed). Run it on an otherwise idle machine; the load average is printed
before and after each part.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
#: OMP_WAIT_POLICY as the user set it (None: unset). This process times the networks with the app's
#: setting (passive waiting, ``ddasr_nipype.bids_app.run.build_workflow``); the app run gets the user's
USER_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")
#: the recipe of the shipped generator (the preset its last fine-tune ran with)
SHIPPED_PRESET = REPO / "ddasr_nipype" / "training" / "presets" / "t1w-x2-nl-cpu.yml"


def _load(label: str) -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (5 min {five:.1f}) {label}"


def _generator_config(text: str) -> dict:
    """A generator config from JSON text or a JSON file."""
    path = Path(text)
    return json.loads(path.read_text() if not text.lstrip().startswith("{") and path.is_file() else text)


def random_bundle(out_dir: Path, config: dict, name: str) -> Path:
    """A random-weights bundle (timing only) of generator ``config``, with the default bundled model's
    preprocessing and output settings (so the node blends like a real run) and float16 weights."""
    import torch

    from ddasr_nipype.bundle import DEFAULT_MODEL, list_bundled_models, load_bundle, save_bundle
    from ddasr_nipype.models import GeneratorConfig, SRGenerator

    preprocessing = {"plane": "sagittal", "scale": 2, "lr_voxel_size": 2.0}
    output = None
    if DEFAULT_MODEL in list_bundled_models():
        shipped = load_bundle(DEFAULT_MODEL, verify=False)
        preprocessing, output = dict(shipped.preprocessing), shipped.output or None
    torch.manual_seed(0)
    generator_config = GeneratorConfig.from_dict(config)
    save_bundle(out_dir, name=name, generator_state=SRGenerator(generator_config).state_dict(),
                generator_config=generator_config, preprocessing=preprocessing,
                backbone={"source": "random", "seed": 0}, training={"note": "random weights, for timing only"},
                weights_dtype="float16", output=output)
    return out_dir


def _resolve_model(model: str | None, generator_config: str | None, tmp: Path) -> tuple[str, str]:
    import yaml

    from ddasr_nipype.bundle import DEFAULT_MODEL, list_bundled_models, resolve_bundle_path

    if generator_config:
        config = _generator_config(generator_config)
        return str(random_bundle(tmp / "random-bundle", config, "random-config")), f"random weights, {config}"
    if model:
        return str(resolve_bundle_path(model)), model
    if DEFAULT_MODEL in list_bundled_models():
        return str(resolve_bundle_path(DEFAULT_MODEL)), DEFAULT_MODEL
    config = yaml.safe_load(SHIPPED_PRESET.read_text())["srn"]["generator"]
    return str(random_bundle(tmp / "random-bundle", config, "random-shipped-size")), "random weights, shipped size"


def _node_result(work: Path, name: str):
    from nipype.utils.filemanip import loadpkl

    results = list(work.rglob(f"{name}/result_{name}.pklz"))
    if not results:
        raise RuntimeError(f"no nipype result for node {name} under {work}")
    return loadpkl(results[0])


def run_app(t1w: Path, model: str, tmp: Path, nprocs: int, omp_nthreads: int | None) -> dict:
    """One ``ddasr`` run in a fresh process, and what its nodes recorded."""
    bids = tmp / "bids"
    (bids / "sub-bench" / "anat").mkdir(parents=True)
    ext = ".nii.gz" if t1w.name.endswith(".gz") else t1w.suffix
    shutil.copy(t1w, bids / "sub-bench" / "anat" / f"sub-bench_T1w{ext}")
    (bids / "dataset_description.json").write_text('{"Name": "bench", "BIDSVersion": "1.9.0"}')
    cmd = [str(Path(sys.executable).parent / "ddasr"), str(bids), str(tmp / "out"), "participant",
           "-w", str(tmp / "work"), "--model", model, "--nprocs", str(nprocs), "--device", "cpu"]
    if omp_nthreads:
        cmd += ["--omp-nthreads", str(omp_nthreads)]
    env = dict(os.environ)
    if USER_WAIT_POLICY is None:  # the app chooses
        env.pop("OMP_WAIT_POLICY", None)
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"ddasr failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    sr_result = _node_result(tmp / "work", "super_resolve")
    node_json = json.loads(Path(sr_result.outputs.out_json).read_text())
    return {
        "end_to_end_s": wall,
        # CPU seconds of every process of the run: on a busy machine, cpu / n_cpus is a lower
        # bound of the wall time the same run would take on an idle one
        "end_to_end_cpu_s": (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime),
        "brain_extraction_s": float(_node_result(tmp / "work", "brain_extraction").runtime.duration),
        "super_resolve_node_s": float(sr_result.runtime.duration),
        "report_s": float(_node_result(tmp / "work", "sr_report_0").runtime.duration),
        "node_timings_s": node_json.get("timings_s", {}),
        "n_slices": int(node_json["input_shape"][0]) if node_json.get("planes") == "sagittal" else None,
        "input_shape": node_json["input_shape"],
        # ru_maxrss of children = the largest single process (main or a MultiProc worker), in KiB
        "peak_rss_gb": usage1.ru_maxrss / 2**20,
    }


def _slices(t1w: Path, n_slices: int, context_slices: int = 0):
    """``n_slices`` sagittal slices from the middle of ``t1w``, normalized: ``[n, 1 + 2c, H, W]`` with each
    slice's ``context_slices`` neighbours on either side (a 2.5D generator's input)."""
    import numpy as np
    import torch

    from ddasr_nipype.data.io import load_volume, to_ras
    from ddasr_nipype.data.normalize import fit_normalization
    from ddasr_nipype.models import context_index

    img_ras, _ = to_ras(load_volume(t1w))
    data = np.asarray(img_ras.dataobj, dtype=np.float32)
    data = fit_normalization(data).apply(data)
    mid = data.shape[0] // 2
    start = max(mid - n_slices // 2, 0)
    index = context_index(np.arange(start, min(start + n_slices, data.shape[0])), data.shape[0], context_slices)
    return torch.from_numpy(np.ascontiguousarray(data[index]))


def _time_per_slice(net, slices, extra=()) -> tuple[float, float]:
    """(wall, CPU) seconds per slice, one slice per forward pass, after one warm-up pass."""
    import torch

    with torch.inference_mode():
        net(slices[:1], *(e[:1] for e in extra))
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(len(slices)):
            net(slices[i:i + 1], *(e[i:i + 1] for e in extra))
        return (time.perf_counter() - t0) / len(slices), (time.process_time() - c0) / len(slices)


def _time_side_by_side(net, slices, extra=(), workers: int = 2) -> tuple[float, float]:
    """(wall, CPU) seconds per slice with ``workers`` threads side by side, one torch thread each, one
    slice per forward pass: how ``super_resolve_plane`` runs on the CPU (``inference.slice_workers``)."""
    import torch

    from ddasr_nipype.inference import one_thread_each

    def one(i):
        with torch.inference_mode():
            net(slices[i:i + 1], *(e[i:i + 1] for e in extra))

    with one_thread_each(workers) as pool:
        list(pool.map(one, range(min(workers, len(slices)))))  # warm-up, every worker
        t0, c0 = time.perf_counter(), time.process_time()
        list(pool.map(one, range(len(slices))))
        return (time.perf_counter() - t0) / len(slices), (time.process_time() - c0) / len(slices)


def compare_reference(t1w: Path, model: str, n_slices: int, threads: int, *, rrdbnet23: bool = True) -> dict:
    """The same LR slices through the DDASR generator, x2plus and RRDBNet-23: seconds per slice."""
    import copy

    import torch

    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.inference import prepare_generator, slice_noise_level
    from ddasr_nipype.models import RRDBNet, RRDBNetConfig

    torch.set_num_threads(threads)
    generator = load_bundle(model).load_generator("cpu")
    inputs = _slices(t1w, n_slices, generator.config.context_slices)  # with the neighbours a 2.5D one takes
    slices = inputs[:, :1]
    sigma = slice_noise_level(generator, inputs)
    extra = () if sigma is None else (sigma,)
    nets = [("ddasr", generator, inputs, extra),
            ("x2plus", RRDBNet(RRDBNetConfig(pixel_unshuffle=True)).eval(), slices, ())]
    if rrdbnet23:
        nets.append(("rrdbnet23", RRDBNet(RRDBNetConfig()).eval(), slices, ()))
    out = {"slice_shape": list(slices.shape[2:]), "n_slices": len(slices), "threads": threads,
           "load_before": os.getloadavg()[0]}
    for label, net, x, args in nets:
        out[f"{label}_params_m"] = sum(p.numel() for p in net.parameters()) / 1e6
        if label != "rrdbnet23":  # as loaded (contiguous); the paper's RRDBNet only channels-last
            out[label] = _time_per_slice(net, x, args)
        prepared = prepare_generator(copy.deepcopy(net), "cpu")
        out[f"{label}_cl"] = _time_per_slice(prepared, x, args)
        if label != "rrdbnet23" and threads > 1:
            out[f"{label}_sbs"] = _time_side_by_side(prepared, x, args, threads)
    out["load_after"] = os.getloadavg()[0]
    return out


SR_SNIPPET = """
import json, resource, sys, time, numpy as np, nibabel as nib
from ddasr_nipype.bundle import load_bundle
from ddasr_nipype.data.io import load_volume
from ddasr_nipype.inference import super_resolve_image
model, threads, tile, planes, source = sys.argv[1:6]
if source == "random256":
    rng = np.random.default_rng(0)
    img = nib.Nifti1Image(rng.random((256, 256, 256), dtype=np.float32) * 100, np.eye(4))
else:
    img = load_volume(source)
t0, c0 = time.perf_counter(), time.process_time()
out, info = super_resolve_image(img, load_bundle(model), device="cpu", planes=planes,
                                num_threads=int(threads), tile_size=int(tile) or None)
print(json.dumps({"output_shape": list(out.shape), "seconds": time.perf_counter() - t0,
                  "cpu_s": time.process_time() - c0, "timings_s": info["timings_s"],
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def super_resolve_fresh(model: str, threads: int, tile_size: int, planes: str, source: str) -> dict:
    """``super_resolve_image`` in a fresh process (its own peak RSS): ``source`` is a file or
    ``random256`` (a 256^3 volume)."""
    proc = subprocess.run([sys.executable, "-c", SR_SNIPPET, model, str(threads), str(tile_size), planes, source],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_startup(repeats: int = 3, top: int = 6) -> dict:
    """``ddasr --help`` in fresh processes (wall and CPU seconds each), and ``python -X importtime`` of
    the entry module (``ddasr_nipype.bids_app.run``): the cumulative seconds of each top-level import
    (``site``: the interpreter's own start, the entry module) and the slowest direct imports of the entry
    module. Importtime figures are wall times: on a loaded machine they grow with the load."""
    ddasr = str(Path(sys.executable).parent / "ddasr")
    help_s, help_cpu_s = [], []
    for _ in range(repeats):
        usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run([ddasr, "--help"], capture_output=True, check=True)
        help_s.append(time.perf_counter() - t0)
        usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        help_cpu_s.append(usage1.ru_utime - usage0.ru_utime + usage1.ru_stime - usage0.ru_stime)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import ddasr_nipype.bids_app.run"],
                          capture_output=True, text=True, check=True)
    top_level, children, pending = {}, [], []
    for line in proc.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if not match:
            continue
        seconds, depth, name = int(match.group(1)) / 1e6, (len(match.group(2)) - 1) // 2, match.group(3)
        if depth == 1:  # children are printed before their parent
            pending.append((seconds, name))
        elif depth == 0:
            top_level[name] = seconds
            if name == "ddasr_nipype.bids_app.run":
                children = pending
            pending = []
    return {"help_s": help_s, "help_cpu_s": help_cpu_s, "import_top_level_s": top_level,
            "entry_children": sorted(children, reverse=True)[:top]}


def _split(timings: dict) -> str:
    return ", ".join(f"{step} {seconds:.2f}" for step, seconds in timings.items())


def print_reference(ref: dict) -> None:
    shape = "x".join(map(str, ref["slice_shape"]))
    print(f"\n== per slice ({shape}, one slice per pass, {ref['threads']} threads, {ref['n_slices']} sagittal "
          "slices; wall s, CPU s) ==")
    print(f"{'DDASR generator':>26}: {ref['ddasr'][0]:.3f}, {ref['ddasr'][1]:.3f} as loaded; "
          f"{ref['ddasr_cl'][0]:.3f}, {ref['ddasr_cl'][1]:.3f} channels-last ({ref['ddasr_params_m']:.2f} M params)")
    print(f"{'x2plus (Real-ESRGAN x2)':>26}: {ref['x2plus'][0]:.3f}, {ref['x2plus'][1]:.3f} as loaded; "
          f"{ref['x2plus_cl'][0]:.3f}, {ref['x2plus_cl'][1]:.3f} channels-last ({ref['x2plus_params_m']:.1f} M params)")
    if "rrdbnet23_cl" in ref:
        print(f"{'RRDBNet-23 (ESRGAN)':>26}: {ref['rrdbnet23_cl'][0]:.3f}, {ref['rrdbnet23_cl'][1]:.3f} "
              f"channels-last ({ref['rrdbnet23_params_m']:.1f} M params)")
    print(f"{'speed-up vs x2plus':>26}: {ref['x2plus_cl'][0] / ref['ddasr_cl'][0]:.1f}x wall, "
          f"{ref['x2plus_cl'][1] / ref['ddasr_cl'][1]:.1f}x CPU (both channels-last)")
    if "rrdbnet23_cl" in ref:
        print(f"{'speed-up vs RRDBNet-23':>26}: {ref['rrdbnet23_cl'][0] / ref['ddasr_cl'][0]:.1f}x wall, "
              f"{ref['rrdbnet23_cl'][1] / ref['ddasr_cl'][1]:.1f}x CPU")
    if "ddasr_sbs" in ref:
        print(f"{'side by side':>26}: DDASR {ref['ddasr_sbs'][0]:.3f}, x2plus {ref['x2plus_sbs'][0]:.3f} s wall per "
              f"slice ({ref['threads']} threads of one torch thread each, channels-last: as the SR node runs on "
              f"the CPU); speed-up {ref['x2plus_sbs'][0] / ref['ddasr_sbs'][0]:.1f}x")
    print(f"{'load average':>26}: {ref['load_before']:.1f} -> {ref['load_after']:.1f}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--model", help="bundle name or directory (default: see module doc)")
    chosen.add_argument("--generator-config", metavar="JSON_OR_FILE",
                        help="time a random-weights generator of this GeneratorConfig instead")
    parser.add_argument("--subject", default="IXI603",
                        help="subject of ../shared/data/lr (when it is missing: the bundled example scan)")
    parser.add_argument("--t1w", type=Path, help="benchmark this T1w file instead")
    parser.add_argument("--ref-slices", type=int, default=4,
                        help="slices timed for the generator/RRDBNet comparison (0: skip it)")
    parser.add_argument("--nprocs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--omp-nthreads", type=int,
                        help="the app's --omp-nthreads (default: the app's, --nprocs: brain extraction and "
                        "SR one after the other with every thread; 1 with 2 CPUs: side by side)")
    parser.add_argument("--compare-scheduling", action="store_true",
                        help="run the app a second time with the other scheduling (--omp-nthreads 1: brain "
                        "extraction and SR side by side) and print both")
    parser.add_argument("--tile-size", type=int, default=0, help="tile size for the 256^3 run")
    parser.add_argument("--skip-256", action="store_true", help="skip the 256^3 RSS run")
    parser.add_argument("--skip-all-planes", action="store_true", help="skip the --planes all run")
    parser.add_argument("--skip-rrdbnet23", action="store_true", help="time x2plus only, not the paper's RRDBNet-23")
    parser.add_argument("--skip-app", action="store_true", help="skip the end-to-end run (per-slice figures only)")
    parser.add_argument("--skip-startup", action="store_true", help="skip the ddasr --help and importtime figures")
    opts = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: as in the app

    t1w = opts.t1w or SHARED_LR / f"sub-{opts.subject}" / "anat" / f"sub-{opts.subject}_T1w.nii.gz"
    if opts.t1w is None and not t1w.is_file():
        print(f"{t1w} not found: benchmarking the bundled example scan instead", file=sys.stderr)
        t1w = EXAMPLE_T1W
    if not t1w.is_file():
        print(f"missing {t1w}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="ddasr-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model, label = _resolve_model(opts.model, opts.generator_config, tmp)
        print(f"machine: {os.cpu_count()} CPUs, {_load('at the start')}; model: {label} ({model}); "
              f"input: {t1w.name}; networks timed here with OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}", flush=True)
        ref = None
        if opts.ref_slices > 0:
            ref = compare_reference(t1w, model, opts.ref_slices, opts.nprocs, rrdbnet23=not opts.skip_rrdbnet23)
            print_reference(ref)

        if not opts.skip_app:
            print(f"\n{_load('before the app run')}", flush=True)
            app = run_app(t1w, model, tmp, opts.nprocs, opts.omp_nthreads)
            steps = app["node_timings_s"]
            network = steps.get("network", float("nan"))
            inside = sum(steps.values())
            print(f"== ddasr end to end (fresh process, brain extraction + SR + sinks + report; --nprocs "
                  f"{opts.nprocs}{f', --omp-nthreads {opts.omp_nthreads}' if opts.omp_nthreads else ''}) ==")
            for key in ("end_to_end_s", "end_to_end_cpu_s", "brain_extraction_s", "super_resolve_node_s",
                        "report_s", "peak_rss_gb"):
                print(f"{key:>26}: {app[key]:.2f}")
            print(f"{'SR node split (s)':>26}: {_split(steps)}, outside these steps "
                  f"{app['super_resolve_node_s'] - inside:.2f}")
            print(f"{'in-node overhead':>26}: {app['super_resolve_node_s'] - network:.2f} s "
                  f"({(app['super_resolve_node_s'] - network) / app['super_resolve_node_s']:.0%} of the node)")
            if app["n_slices"]:
                bare = ""
                if ref:
                    bare = f" vs {ref['ddasr_cl'][0]:.3f} s the bare generator above (channels-last)"
                    if "ddasr_sbs" in ref:
                        bare += f", {ref['ddasr_sbs'][0]:.3f} s side by side"
                print(f"{'network per slice':>26}: {network / app['n_slices']:.3f} s in the node{bare}")
            bet = app["brain_extraction_s"]
            print(f"{'end to end / (BET + SR)':>26}: {app['end_to_end_s'] / (bet + app['super_resolve_node_s']):.2f}")
            print(f"{'end to end / (BET + net)':>26}: {app['end_to_end_s'] / (bet + network):.2f} "
                  "(over pure inference plus extraction)")
            print(f"{_load('after the app run')}", flush=True)
            if opts.compare_scheduling and opts.nprocs > 1:
                other = 1 if (opts.omp_nthreads or opts.nprocs) > 1 else opts.nprocs
                (tmp / "other").mkdir()
                second = run_app(t1w, model, tmp / "other", opts.nprocs, other)
                print(f"== scheduling: --omp-nthreads {other} ({'brain extraction and SR side by side' if other == 1 else 'one after the other, every thread each'}) ==")
                for key in ("end_to_end_s", "brain_extraction_s", "super_resolve_node_s"):
                    print(f"{key:>26}: {second[key]:.2f} (vs {app[key]:.2f})")
                faster = "this one" if second["end_to_end_s"] < app["end_to_end_s"] else "the default"
                print(f"{'faster':>26}: {faster}; {_load('after')}", flush=True)

        if not opts.skip_all_planes:
            both = super_resolve_fresh(model, opts.nprocs, 0, "all", str(t1w))
            print(f"\n== --planes all (three passes fused; super_resolve_image, fresh process, {opts.nprocs} "
                  "threads) ==")
            print(f"{'output':>26}: {both['output_shape']} in {both['seconds']:.1f} s ({both['cpu_s']:.1f} s CPU)")
            print(f"{'split (s)':>26}: {_split(both['timings_s'])}")
            print(f"{'peak RSS':>26}: {both['peak_rss_gb']:.2f} GB; {_load('after')}", flush=True)
        if not opts.skip_256:
            big = super_resolve_fresh(model, opts.nprocs, opts.tile_size, "sagittal", "random256")
            print(f"\n== 256^3 input (sagittal, default batch, tile {opts.tile_size or 'none'}) ==")
            print(f"{'output':>26}: {big['output_shape']} in {big['seconds']:.1f} s ({big['cpu_s']:.1f} s CPU)")
            print(f"{'peak RSS':>26}: {big['peak_rss_gb']:.2f} GB; {_load('after')}", flush=True)
    if not opts.skip_startup:
        startup = time_startup()
        print("\n== start-up (fresh processes) ==")
        print(f"{'ddasr --help':>26}: " + ", ".join(
            f"{wall:.2f} s ({cpu:.2f} s CPU)" for wall, cpu in zip(startup["help_s"], startup["help_cpu_s"]))
            + f"; best {min(startup['help_s']):.2f} s")
        print(f"{'-X importtime (s)':>26}: " + ", ".join(
            f"{name} {seconds:.2f}" for name, seconds in startup["import_top_level_s"].items()
            if seconds >= 0.01))
        print(f"{'slowest under the entry':>26}: " + ", ".join(
            f"{name} {seconds:.2f}" for seconds, name in startup["entry_children"]))
        print(f"{'':>26}  {_load('after')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
