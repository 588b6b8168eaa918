"""Command line of the ``ddasr`` BIDS App (fMRIPrep spellings).

:func:`_build_parser` has no side effects (``--help`` imports neither torch nor nipype);
:func:`parse_args` checks everything it can before any work starts and returns a frozen
:class:`~ddasr_nipype.bids_app.config.Config`.
"""

from __future__ import annotations

import argparse
import os
import re
import uuid
from datetime import datetime
from pathlib import Path

from ddasr_nipype.bundle import DEFAULT_MODEL
from ddasr_nipype.forksafe import MULTIPROC_START_METHOD

from .config import Config

PLANES = ("sagittal", "coronal", "axial", "all")
#: ddasr_nipype.inference.OUTPUT_PROJECTIONS (not imported: the parser stays light)
OUTPUT_PROJECTIONS = ("none", "kspace", "area")
DEVICES = ("auto", "cpu", "cuda")


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


def _unit_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value}")
    return number


def _nonnegative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not 0.0 <= number < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value}")
    return number


def _mem_gb(value: str) -> float:
    """``--mem`` as fMRIPrep reads it: ``8GB``, ``8G``, ``8000MB`` or a number of MB."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)B?\s*", value.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"cannot read memory amount {value!r} (e.g. 8GB, 8000MB)")
    number, unit = float(match.group(1)), match.group(2) or "M"
    return number * {"K": 1e-6, "M": 1e-3, "G": 1.0, "T": 1e3}[unit]


def _build_parser() -> argparse.ArgumentParser:
    """The argument parser (no side effects)."""
    from ddasr_nipype import __version__

    parser = argparse.ArgumentParser(
        prog="ddasr",
        description="DDASR super-resolution (x2) of the T1w images of a BIDS dataset. Writes BIDS "
        "derivatives (desc-ddasr T1w, brain mask, JSON sidecars) and an HTML report per "
        "participant into <output_dir>/ddasr.",
        epilog="Exit status: 0 done, 1 a participant failed (or, with --reports-only, its latest "
        "run had failed), 2 usage error, 130 interrupted (Ctrl-C).",
    )
    parser.add_argument("bids_dir", type=Path, help="root of the input BIDS dataset (read only)")
    parser.add_argument("output_dir", type=Path, help="output folder (derivatives go to ddasr/)")
    parser.add_argument("analysis_level", choices=["participant"], help="processing stage")
    parser.add_argument("--version", action="version", version=f"ddasr-nipype {__version__}")

    g_bids = parser.add_argument_group("Options for filtering the BIDS queries")
    g_bids.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                        help="participants to process, with or without 'sub-' (default: all)")
    g_bids.add_argument("--session-label", "--session_label", "--session-id", nargs="+",
                        metavar="LABEL", help="sessions to process, with or without 'ses-' (default: all)")
    g_bids.add_argument("--bids-filter-file", type=Path, metavar="FILE",
                        help='JSON with PyBIDS filters, e.g. {"t1w": {"acquisition": "mprage"}}; keys are '
                        "BIDS entities (checked before the run starts)")
    g_bids.add_argument("--skip-bids-validation", "--skip_bids_validation", action="store_true",
                        help="do not check that the input is a valid BIDS dataset")

    g_perf = parser.add_argument_group("Options to handle performance")
    g_perf.add_argument("--nprocs", "--nthreads", "--n_cpus", "--n-cpus", type=_positive_int,
                        help="maximum number of processes (overrides the plugin file's n_procs; default: "
                        "that, else all CPUs)")
    g_perf.add_argument("--omp-nthreads", type=_positive_int,
                        help="threads per process (torch; default: --nprocs, or 1 with a SLURM plugin, where "
                        "each node is a job: match its sbatch --cpus-per-task; maximum: --nprocs)")
    g_perf.add_argument("--mem", "--mem_mb", "--mem-mb", type=_mem_gb, metavar="MEM",
                        help="memory limit for the scheduler, e.g. 8GB (overrides the plugin file's "
                        "memory_gb; default: that, else nipype's 90%% of the machine's memory)")
    g_perf.add_argument("--use-plugin", "--nipype-plugin-file", type=Path, metavar="FILE",
                        help="YAML file with a nipype 'plugin' (e.g. SLURMGraph) and 'plugin_args'")
    g_perf.add_argument("--stop-on-first-crash", action="store_true",
                        help="stop everything at the first failure (default: other participants "
                        "still finish)")
    g_perf.add_argument("-v", "--verbose", dest="verbose", action="count", default=0,
                        help="more verbose console output (-vv, -vvv: even more)")

    g_sr = parser.add_argument_group("Super-resolution options")
    g_sr.add_argument("--model", default=DEFAULT_MODEL,
                      help="model bundle: a bundled model name or the path of a bundle directory "
                      "(default: %(default)s)")
    g_sr.add_argument("--device", choices=DEVICES, default="auto",
                      help="torch device ('auto': CUDA when available; 'cuda' is checked before the run "
                      "starts; default: %(default)s)")
    g_sr.add_argument("--planes", choices=PLANES, default="sagittal",
                      help="plane of the 2D network, or 'all' to fuse three planes (isotropic x2; default: "
                      "%(default)s)")
    g_sr.add_argument("--batch-size", type=_positive_int,
                      help="slices per forward pass (default: 1 on the CPU, where it is fastest; 8 on a GPU)")
    g_sr.add_argument("--tile-size", type=_positive_int,
                      help="tile slices larger than this many pixels (bounds memory; default: no tiling)")
    g_sr.add_argument("--strength", type=_unit_float,
                      help="weight of the network's output against bicubic interpolation of the input, "
                      "0-1 (1: the network alone; default: the model's recommendation)")
    g_sr.add_argument("--background", choices=("input", "model"),
                      help="'input': keep the bicubic interpolation of the input in the air around the "
                      "head; 'model': the network's output everywhere (default: the model's "
                      "recommendation)")
    g_sr.add_argument("--slice-denoise", type=_nonnegative_float, metavar="H",
                      help="denoise the network's input across neighbouring slices first: non-local means of "
                      "each slice with the two slices on either side, h = H x the noise level the model reads "
                      "(0: off; default: the model's recommendation, 2 for t1w-x2)")
    g_sr.add_argument("--projection", choices=OUTPUT_PROJECTIONS,
                      help="make each output slice agree with the network's input slice under this model of "
                      "the down-sampling: 'kspace' replaces the output's central k-space (the frequencies the "
                      "input holds) by the input's, 'area' sets each block's mean to the input voxel's; 'none': "
                      "off (default: the model's recommendation)")
    g_sr.add_argument("--skip-brain-extraction", action="store_true",
                      help="do not compute a brain mask (no deepbet run)")
    g_sr.add_argument("--no-consistency", dest="consistency", action="store_false",
                      help="do not compute the data-consistency z-maps (where the output disagrees with the "
                      "input beyond its noise: the output re-degraded to the input grid by area averaging and, "
                      "when the model has one, by its DSN; computed by default)")
    g_sr.add_argument("--quality-metrics", action="store_true",
                      help="add NIQE and BRISQUE of the input and of the output to the report "
                      "(about 10 s of CPU per image)")

    g_other = parser.add_argument_group("Other options")
    g_other.add_argument("-w", "--work-dir", type=Path, default=Path("work"),
                         help="folder for intermediate results, reused to resume a run (default: "
                         "./%(default)s)")
    g_other.add_argument("--reports-only", action="store_true",
                         help="only (re)generate the HTML reports from existing outputs; each report lists the "
                         "errors of its participant's latest run (exit status 1 if that run failed). "
                         "Participants given with --participant-label must have outputs (else a "
                         "usage error, exit status 2); without it, those that have outputs")
    return parser


def _load_plugin(path: Path) -> tuple[str, dict]:
    import yaml

    try:
        settings = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as err:
        raise ValueError(f"plugin file not found: {path}") from err
    except yaml.YAMLError as err:
        raise ValueError(f"plugin file {path} is not valid YAML: {err}") from err
    if not isinstance(settings, dict) or "plugin" not in settings:
        raise ValueError(f"plugin file {path} must give 'plugin' (and optionally 'plugin_args')")
    plugin_args = settings.get("plugin_args") or {}
    if not isinstance(plugin_args, dict):
        raise ValueError(f"plugin file {path}: 'plugin_args' must be a mapping")
    return str(settings["plugin"]), dict(plugin_args)


def _check_model(model: str) -> str:
    """A bundled name or an existing bundle directory (checksums are verified when it loads)."""
    from ddasr_nipype.bundle import DEFAULT_MODEL, list_bundled_models, resolve_bundle_path
    from ddasr_nipype.errors import ModelBundleError

    try:
        return str(resolve_bundle_path(model))
    except ModelBundleError as err:
        if model == DEFAULT_MODEL and not list_bundled_models():
            raise ValueError(
                f"no model is bundled with this installation yet (default {DEFAULT_MODEL!r} is "
                "missing): pass --model PATH with a bundle directory made by ddasr-train"
            ) from err
        raise ValueError(str(err)) from err


def _check_cuda() -> None:
    """``--device cuda`` only: fail now rather than in every participant's crash file."""
    import torch

    if not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        raise ValueError(f"--device cuda: CUDA is not available on this machine (torch "
                         f"{torch.__version__}, {built}); use --device cpu or auto")


def parse_args(args=None) -> Config:
    """Parse and check the command line; return the run's :class:`Config`.

    Errors (missing dataset, output inside the input, an output or work folder that cannot be
    written, unknown participant, bad filter or plugin file, missing model, ``--device cuda`` without
    CUDA, ``--reports-only`` for a participant without outputs) exit with status 2 and a one-line
    message, before any work starts.
    """
    from .dataset import (
        UsageError,
        check_output_dir,
        check_writable,
        load_bids_filters,
        normalize_labels,
        participants_with_outputs,
        select_participants,
    )

    parser = _build_parser()
    opts = parser.parse_args(args)
    try:
        bids_dir = opts.bids_dir.expanduser().resolve()
        if not bids_dir.is_dir():
            raise UsageError(f"BIDS dataset not found: {opts.bids_dir}")
        output_dir = opts.output_dir.expanduser().absolute()
        work_dir = opts.work_dir.expanduser().absolute()
        check_output_dir(bids_dir, output_dir)
        check_output_dir(bids_dir, work_dir, what="work directory")
        check_writable(output_dir)
        if not opts.reports_only:
            check_writable(work_dir, what="work directory")
        if not opts.reports_only and not opts.skip_bids_validation:
            from .dataset import validate_bids

            validate_bids(bids_dir)  # raises on fatal problems; warnings are logged at run time
        participants = select_participants(bids_dir, opts.participant_label)
        if opts.reports_only:
            from ddasr_nipype.interfaces.bids import OUT_PATH_BASE

            participants = participants_with_outputs(
                output_dir / OUT_PATH_BASE, participants, explicit=bool(opts.participant_label))
        sessions = (normalize_labels(opts.session_label, prefix="ses-")
                    if opts.session_label else None)
        filters = load_bids_filters(opts.bids_filter_file)
        plugin, plugin_args = "MultiProc", {}
        if opts.use_plugin is not None:
            plugin, plugin_args = _load_plugin(opts.use_plugin)
        model = opts.model if opts.reports_only else _check_model(opts.model)
        if opts.device == "cuda" and not opts.reports_only:
            _check_cuda()  # the only torch import of the parser
    except (UsageError, ValueError) as err:
        parser.error(str(err))

    available_cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1)
    nprocs = int(opts.nprocs or plugin_args.get("n_procs") or plugin_args.get("nprocs")
                 or available_cpus)
    omp_nthreads = min(opts.omp_nthreads or nprocs, nprocs)
    if plugin.startswith("SLURM") and not opts.omp_nthreads:
        # each node is a job of its own, with the CPUs its sbatch_args ask for (1 by default), not
        # this host's
        omp_nthreads = 1
    if plugin in ("MultiProc", "LegacyMultiProc"):
        # the command line wins over the plugin file
        if opts.nprocs:
            plugin_args["n_procs"] = nprocs
        plugin_args.setdefault("n_procs", nprocs)
        plugin_args.setdefault("raise_insufficient", False)
        plugin_args.setdefault("maxtasksperchild", 1)
        if opts.mem is not None:
            plugin_args["memory_gb"] = opts.mem
    if plugin == "MultiProc":
        # workers start from a clean server process, never forked from one where torch ran
        # (ddasr_nipype.forksafe; a plugin file may choose another start method)
        plugin_args.setdefault("mp_context", MULTIPROC_START_METHOD)
    run_uuid = f"{datetime.now():%Y%m%d-%H%M%S}_{uuid.uuid4()}"
    return Config(
        bids_dir=bids_dir,
        output_dir=output_dir,
        analysis_level=opts.analysis_level,
        work_dir=work_dir,
        participant_label=tuple(participants),
        session_label=tuple(sessions) if sessions else None,
        bids_filters=filters,
        nprocs=nprocs,
        omp_nthreads=omp_nthreads,
        mem_gb=opts.mem,
        plugin=plugin,
        plugin_args=plugin_args,
        stop_on_first_crash=opts.stop_on_first_crash,
        skip_bids_validation=opts.skip_bids_validation,
        reports_only=opts.reports_only,
        verbose=opts.verbose,
        model=model,
        device=opts.device,
        planes=opts.planes,
        skip_brain_extraction=opts.skip_brain_extraction,
        quality_metrics=opts.quality_metrics,
        batch_size=opts.batch_size,
        tile_size=opts.tile_size,
        strength=opts.strength,
        background=opts.background,
        slice_denoise=opts.slice_denoise,
        projection=opts.projection,
        consistency=opts.consistency,
        run_uuid=run_uuid,
    )
