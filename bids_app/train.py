"""``ddasr-train``: train a DDASR model (DSN, then SRN) on unpaired HR and LR BIDS datasets.

Examples
--------
Smoke run on the test data (seconds, random VGG19 explicitly allowed)::

    ddasr-train --hr tests/data/hr --lr tests/data/lr --out out/smoke-model --preset smoke \\
        --allow-random-vgg19

Train the SRN only, against the DSN of an existing bundle::

    ddasr-train --hr hr_bids --lr lr_bids --out out/m2 --preset fast --dsn-from out/m1

Exit codes: 0 success; 1 a training error (bad data, missing weights, corrupt checkpoint...);
2 a usage error; 75 interrupted by SIGTERM/SIGINT after writing a checkpoint (rerun the same
command with ``--resume``).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from ddasr_nipype.training.config import available_presets

EXIT_ERROR = 1
EXIT_INTERRUPTED = 75  # same value as ddasr_nipype.training.engine.EXIT_INTERRUPTED (EX_TEMPFAIL)

_existing_dir = click.Path(exists=True, file_okay=False, path_type=Path)
_existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)
_LABEL_OPTIONS = ("--hr-participant-label", "--lr-participant-label")


def _expand_label_lists(args: list[str]) -> list[str]:
    """``--hr-participant-label A B`` -> ``--hr-participant-label A --hr-participant-label B``.

    ``ddasr-train`` takes no positional arguments, so every bare word after a label option is one
    more label (as ``ddasr --participant-label A B``), until the next option or ``--``.
    """
    out, current = [], None
    for arg in args:
        if arg == "--":
            current = None
            out.append(arg)
            continue
        name = arg.split("=", 1)[0]
        if name in _LABEL_OPTIONS:
            current = name
            out.append(arg)
            if "=" not in arg:
                current = (name, "value")
            continue
        if isinstance(current, tuple):  # the option's own value
            out.append(arg)
            current = current[0]
            continue
        if current is not None and not arg.startswith("-"):
            out += [current, arg]
            continue
        current = None
        out.append(arg)
    return out


class _TrainCommand(click.Command):
    def parse_args(self, ctx, args):
        return super().parse_args(ctx, _expand_label_lists(list(args)))


def _split_labels(values) -> tuple[str, ...]:
    """Labels given as several words, repeated options, or comma/space separated lists."""
    return tuple(label for value in values for label in re.split(r"[\s,]+", value) if label)


def _model_source(ctx, param, value):
    """A path, or a bundled model name (``ixi-t1w-x2``) resolved as ``ddasr --model`` resolves it."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        from ddasr_nipype.bundle import resolve_bundle_path
        from ddasr_nipype.errors import ModelBundleError

        try:
            path = resolve_bundle_path(value)
        except ModelBundleError as err:
            raise click.BadParameter(str(err), ctx=ctx, param=param) from err
    if param.name == "init_generator" and not path.is_dir():
        raise click.BadParameter(f"{value}: not a model bundle directory", ctx=ctx, param=param)
    return path


@click.command(cls=_TrainCommand,
               context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
               epilog="Exit codes: 0 done, 1 training error, 2 usage error, 75 interrupted after a "
                      "checkpoint (rerun with --resume).")
@click.option("--hr", "hr_dir", type=_existing_dir, required=True, help="BIDS dataset of real HR T1w scans.")
@click.option("--lr", "lr_dir", type=_existing_dir, default=None,
              help="BIDS dataset of real LR T1w scans (the site to super-resolve); unpaired with --hr.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Model bundle directory to write (new or empty, outside the input datasets except under "
                   "their derivatives/).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@click.option("--preset", default="fast", show_default=True,
              help=f"Training recipe: {', '.join(available_presets())}, or a YAML file with the same layout.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Checkpoints, logs, image grids and pairs [default: <out>.work].")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="auto: CUDA when available.")
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              help="Autocast: on CUDA auto = bf16 where supported, else fp16; on the CPU auto = fp32, and bf16 halves "
                   "the step time on CPUs with AVX512-BF16 or AMX.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the networks (CUDA, PyTorch 2).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoints in the work directory.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random draw.")
@click.option("--vgg19-weights", type=_existing_file, default=None,
              help="torchvision vgg19-dcbb9e9d.pth (else $DDASR_VGG19_WEIGHTS, else the torch hub cache).")
@click.option("--allow-random-vgg19", is_flag=True,
              help="Explicit opt-in: without VGG19 weights, use a seeded random backbone (recorded in the bundle; "
                   "the losses are then far less meaningful).")
@click.option("--hr-filter-file", type=_existing_file, default=None, help="JSON pybids filters for the HR T1w query.")
@click.option("--lr-filter-file", type=_existing_file, default=None, help="JSON pybids filters for the LR T1w query.")
@click.option("--hr-participant-label", multiple=True, metavar="LABEL...",
              help="HR subjects to use (one or more; 'sub-' optional).")
@click.option("--lr-participant-label", multiple=True, metavar="LABEL...",
              help="LR subjects to use (one or more; 'sub-' optional).")
@click.option("--dsn-from", default=None, callback=_model_source, metavar="BUNDLE|CHECKPOINT",
              help="Skip stage 1: use the DSN of this bundle (directory or bundled model name) or DSN checkpoint.")
@click.option("--degradation", type=click.Choice(["bicubic", "kspace", "area", "realsr", "realesrgan", "mri"]), default=None,
              help="Skip the DSN: make the pairs with this classical degradation.")
@click.option("--iterations-dsn", type=click.IntRange(min=1), default=None, help="Override the preset.")
@click.option("--iterations-srn", type=click.IntRange(min=1), default=None, help="Override the preset.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Override both stages.")
@click.option("--patch-size", type=click.IntRange(min=8), default=None, help="HR patch edge, both stages.")
@click.option("--num-threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch (use fewer than the cores on a shared machine).")
@click.option("--init-generator", default=None, callback=_model_source, metavar="BUNDLE",
              help="Fine-tune: start the SRN from this bundle's generator (a directory or bundled model name; "
                   "same srn.generator). Its recommended output settings are inherited.")
@click.option("--dsn-time-limit", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="End the DSN stage after this much wall time (checkpointed) and go on.")
@click.option("--srn-time-limit", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="End the SRN stage after this much wall time (checkpointed) and still write the bundle.")
@click.option("--srn-stop-at", type=click.IntRange(min=1), default=None, metavar="N",
              help="End the SRN stage after iteration N of the preset's schedule (checkpointed; the learning "
                   "rate follows the whole schedule) and write the bundle: a staged recipe.")
@click.option("--no-tensorboard", is_flag=True, help="Skip the TensorBoard log (CSV and PNGs are kept).")
@click.option("--name", default=None, help="Model name recorded in the bundle [default: the --out folder name].")
def main(**kw) -> None:
    """Train DDASR (DSN, synthesis, SRN) and write a model bundle."""
    import atexit

    from ddasr_nipype.training.signals import StopRequested, block_signals, settle, stop_on_signals

    # from the first moment to the exit: SIGTERM/SIGINT exit 75 (never 143 without a message)
    with stop_on_signals(outside_loops="raise"):
        try:
            options = build_options(**kw)
        except StopRequested as stop:
            settle()
            click.echo(f"ddasr-train: {stop.signal_name}: stopped before training started; nothing was "
                       "written (rerun the same command)", err=True)
            code = EXIT_INTERRUPTED
        else:
            code = run(options)
        atexit.register(block_signals)  # the last registered, the first run: before Python's teardown
    sys.exit(code)


def build_options(*, hr_dir, lr_dir, out_dir, preset, work_dir, device, precision, compile_, resume, seed,
                  vgg19_weights, allow_random_vgg19, hr_filter_file, lr_filter_file, hr_participant_label,
                  lr_participant_label, dsn_from, degradation, iterations_dsn, iterations_srn, batch_size,
                  patch_size, num_threads, no_tensorboard, name, dsn_time_limit=None, srn_time_limit=None,
                  init_generator=None, overwrite=False, srn_stop_at=None):
    """Turn the parsed command line into :class:`~ddasr_nipype.training.pipeline.TrainingOptions`."""
    from ddasr_nipype.errors import TrainingDataError
    from ddasr_nipype.training.config import load_preset
    from ddasr_nipype.training.datasets import load_filters
    from ddasr_nipype.training.pipeline import TrainingOptions

    if dsn_from and degradation:
        raise click.UsageError("--dsn-from and --degradation are mutually exclusive")
    if lr_dir is None and not degradation:
        raise click.UsageError("--lr is required unless --degradation is given")
    try:
        recipe = load_preset(preset).with_overrides(
            iterations_dsn=iterations_dsn, iterations_srn=iterations_srn,
            batch_size=batch_size, patch_size=patch_size)
        hr_filters, lr_filters = load_filters(hr_filter_file), load_filters(lr_filter_file)
    except (ValueError, TrainingDataError) as err:
        raise click.BadParameter(str(err)) from err
    weights = recipe.srn.noise_estimator_weights
    if recipe.srn.generator.get("noise_estimator") == "learned" and not (weights and Path(weights).is_file()):
        # before any data is read: the trainer would fail only after the pairs are synthesized
        raise click.BadParameter(
            f"preset {recipe.name}: srn.generator.noise_estimator 'learned' needs the estimator's weights at "
            f"srn.noise_estimator_weights ({weights or 'not set'}: not found); write them with "
            "scripts/train_noise_estimator.py", param_hint="--preset")
    return TrainingOptions(
        hr_dir=hr_dir, lr_dir=lr_dir, out_dir=out_dir, preset=recipe, work_dir=work_dir, device=device,
        seed=seed, resume=resume, vgg19_weights=vgg19_weights, allow_random_vgg19=allow_random_vgg19,
        hr_filters=hr_filters, lr_filters=lr_filters, hr_participant_label=_split_labels(hr_participant_label),
        lr_participant_label=_split_labels(lr_participant_label), dsn_from=dsn_from, degradation=degradation,
        precision=precision, compile=compile_, tensorboard=not no_tensorboard, name=name,
        num_threads=num_threads, dsn_time_limit=dsn_time_limit, srn_time_limit=srn_time_limit,
        srn_stop_at=srn_stop_at, init_generator=init_generator, overwrite=overwrite,
    )


def run(options) -> int:
    """Run the training; print typed errors without a traceback; return the exit code.

    SIGTERM/SIGINT anywhere in the run exit :data:`EXIT_INTERRUPTED`: in a training loop after a
    checkpoint; elsewhere (preparing data, synthesizing pairs, writing the bundle) at once, keeping
    only what was completely written (every cache file and the bundle are written atomically)
    (:mod:`ddasr_nipype.training.signals`). Once the outcome is known, a later signal is only
    recorded, so the messages that report it are not cut short.
    """
    from ddasr_nipype.errors import DDASRError
    from ddasr_nipype.progress import log_above_progress_bars
    from ddasr_nipype.training.engine import TrainingInterrupted
    from ddasr_nipype.training.signals import StopRequested, settle, stop_on_signals

    import logging

    warnings_out = logging.StreamHandler(sys.stderr)  # sys.stderr of this call (click's test runner swaps it)
    warnings_out.setFormatter(logging.Formatter("ddasr-train: %(levelname)s: %(message)s"))
    warnings_out.setLevel(logging.WARNING)
    package_log = logging.getLogger("ddasr_nipype")
    package_log.addHandler(warnings_out)
    try:
        with stop_on_signals(outside_loops="raise"), log_above_progress_bars(package_log):
            try:
                from ddasr_nipype.training.pipeline import run_training

                bundle = run_training(options)
            finally:
                settle()
    except TrainingInterrupted as stop:
        click.echo(f"ddasr-train: {stop}", err=True)
        return EXIT_INTERRUPTED
    except StopRequested as stop:
        click.echo(f"ddasr-train: {stop.signal_name}: stopped outside the training loops (preparing data, "
                   "synthesizing pairs or writing the bundle); completed steps are kept in "
                   f"{options.work}, nothing half-written (rerun the same command with --resume to "
                   "continue)", err=True)
        return EXIT_INTERRUPTED
    except (DDASRError, FileExistsError, NotImplementedError) as err:
        click.echo(f"ddasr-train: error: {err}", err=True)
        return EXIT_ERROR
    finally:
        package_log.removeHandler(warnings_out)
    click.echo(f"ddasr-train: model bundle written to {bundle.path} (generator sha256 {bundle.sha256[:12]})", err=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    main()
