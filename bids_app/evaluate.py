"""``ddasr-eval``: tables like the paper's (NIQE/BRISQUE on real LR, PSNR/SSIM on synthetic LR).

The command only parses and checks its arguments, builds an
:class:`~ddasr_nipype.evaluation.EvaluationConfig` and calls
:func:`~ddasr_nipype.evaluation.run_evaluation` (``--help`` imports neither torch nor pybids).
"""

from __future__ import annotations

from pathlib import Path

import click

DEGRADATION_NAMES = ("area", "bicubic", "kspace", "kspace-rician", "mri", "realesrgan", "realsr")  # ddasr_nipype.degradations.DEGRADATIONS
PLANES = ("sagittal", "coronal", "axial")
NO_REFERENCE_METRICS = ("niqe", "brisque", "niqe_head", "brisque_head")  # ddasr_nipype.metrics.volume

_existing_dir = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--hr", "hr_dir", type=_existing_dir, default=None,
              help="BIDS dataset of HR T1w scans: LR is synthesized from them with each --degradation "
                   "and the SR output is compared with the HR ground truth (Table II, SR).")
@click.option("--lr", "lr_dir", type=_existing_dir, default=None,
              help="BIDS dataset of real LR T1w scans: no-reference metrics of LR, bicubic and each model "
                   "(Table I), and how consistent each output is with its scan (Table I, consistency). Scans present in both --hr and --lr (same entities, matching grids) also "
                   "give Table II (DS): synthetic vs real LR.")
@click.option("--model", "models", multiple=True, metavar="NAME_OR_PATH",
              help="Model bundle (bundled name or directory); repeat for several.")
@click.option("--baseline", "baselines", multiple=True, type=click.Choice(["bicubic", "none"]),
              default=("bicubic",), show_default=True,
              help="Baselines to include; 'none' evaluates the models only.")
@click.option("--degradation", "degradations", multiple=True, type=click.Choice(DEGRADATION_NAMES),
              help="LR synthesis for Table II; repeat for several [default: all].")
@click.option("--plane", default="sagittal", show_default=True, type=click.Choice(PLANES),
              help="Slice plane of the 2D metrics (and of the SR models).")
@click.option("--scale", default=2, show_default=True, type=click.IntRange(min=2), help="Up-sampling factor.")
@click.option("--participant-label", "participants", multiple=True,
              help="Participant label(s), with or without 'sub-' (default: all).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (tables, per-slice CSV, panels).")
@click.option("--metric", "metrics", multiple=True, type=click.Choice(NO_REFERENCE_METRICS),
              help="No-reference metric(s) of Table I; the _head variants score the slice cropped to the "
                   "head's bounding box [default: niqe and brisque].")
@click.option("--min-brain-fraction", default=0.1, show_default=True, type=click.FloatRange(0, 1),
              help="Slices whose brain (foreground) mask covers less of the area are skipped.")
@click.option("--niqe-block-size", default=96, show_default=True, type=click.IntRange(min=8),
              help="NIQE block size (96 in the MATLAB original).")
@click.option("--panels", "n_panels", default=3, show_default=True, type=click.IntRange(min=0),
              help="PNG panels per scan (and per degradation).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random degradations.")
@click.option("--device", default="cpu", show_default=True, help="Device of the models (cpu, cuda, auto).")
@click.option("--num-threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch (use fewer than the cores on a shared machine) [default: torch's].")
@click.option("--brain-mask", default="none", show_default=True, type=click.Choice(["none", "deepbet"]),
              help="Table II (SR): also PSNR/SSIM inside the HR's brain mask (deepbet, offline), beside "
                   "the head mask.")
@click.option("--test", "test", default="paired", show_default=True, type=click.Choice(["paired", "independent"]),
              help="t-test of each method against the best other one: paired over the slices both scored "
                   "(every method scores the same slices), or independent (ignores the pairing).")
@click.option("--network-only", is_flag=True,
              help="Also score each model's network alone (strength 1, network output in the air), "
                   "beside the output settings its bundle recommends.")
def main(hr_dir, lr_dir, models, baselines, degradations, plane, scale, participants, out_dir, metrics,
         min_brain_fraction, niqe_block_size, n_panels, seed, device, num_threads, brain_mask, network_only, test):
    """Evaluate SR models and baselines on BIDS datasets; write markdown + CSV tables and PNG panels."""
    from ddasr_nipype.errors import DDASRError
    from ddasr_nipype.evaluation import EvaluationConfig, run_evaluation

    if hr_dir is None and lr_dir is None:
        raise click.UsageError("give --hr, --lr or both")
    if "none" in baselines and len(baselines) > 1:
        raise click.UsageError("--baseline none cannot be combined with another baseline")
    try:
        config = EvaluationConfig(
            out_dir=out_dir, hr_dir=hr_dir, lr_dir=lr_dir, models=tuple(models),
            bicubic="bicubic" in baselines, degradations=tuple(degradations) or DEGRADATION_NAMES,
            plane=plane, scale=scale, participants=tuple(participants),
            no_reference_metrics=tuple(metrics) or ("niqe", "brisque"),
            min_brain_fraction=min_brain_fraction, niqe_block_size=niqe_block_size, seed=seed,
            n_panels=n_panels, device=device, brain_mask=brain_mask, network_only=network_only,
            num_threads=num_threads, test=test,
        )
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    import logging

    from ddasr_nipype.progress import log_above_progress_bars

    handler = logging.StreamHandler()  # progress on stderr: a run takes minutes per scan
    handler.setFormatter(logging.Formatter("%(asctime)s | %(message)s", "%H:%M:%S"))
    package_logger = logging.getLogger("ddasr_nipype")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    try:
        with log_above_progress_bars(package_logger):
            results = run_evaluation(config)
    except (ValueError, DDASRError) as err:
        raise click.ClickException(str(err)) from None
    finally:
        package_logger.removeHandler(handler)
    for name in ("table1", "table1_consistency", "table2_sr", "table2_ds"):
        path = out_dir / f"{name}.md"
        if path.is_file():
            click.echo(path.read_text())
    for note in results["notes"]:
        click.echo(f"note: {note}", err=True)
    panels = results.get("panels") or []
    click.echo(f"Tables and per-slice values written to {out_dir}"
               + (f"; {len(panels)} panel(s) in {out_dir / 'panels'}" if panels else ""))


if __name__ == "__main__":  # pragma: no cover
    main()
