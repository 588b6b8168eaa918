"""The ``ddasr`` console script: parse, configure, build the workflow, run it, write reports."""

from __future__ import annotations

import gc
import json
import logging
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from .config import EXAMPLE_DIR, Config  # noqa: F401  (EXAMPLE_DIR re-exported for users)

LOGGER = logging.getLogger("ddasr")
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
RUN_ID_RE = re.compile(r"^\d{8}-\d{6}_")  # run ids start with %Y%m%d-%H%M%S (parser.parse_args)
POLL_SLEEP_S = 0.05  # nipype's scheduler loop (its default: 2 s); each hop between nodes waits for it


def _resource(name: str) -> Path:
    import ddasr_nipype

    return Path(ddasr_nipype.__file__).resolve().parent / "resources" / name


def setup_logging(verbose: int = 0) -> None:
    """Console progress on the ``ddasr`` logger; nipype's own logs only with ``-v``."""
    level = max(logging.INFO - 5 * verbose, logging.DEBUG)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)s | %(message)s", "%H:%M:%S"))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level)
    LOGGER.propagate = False
    from nipype import logging as nlogging

    nipype_level = max(25 - 5 * verbose, logging.DEBUG)  # 25: nipype's IMPORTANT
    for name in ("workflow", "interface", "utils"):
        nlogging.getLogger(f"nipype.{name}").setLevel(nipype_level)


def _progress(node, status: str) -> None:
    """MultiProc status callback: which subject, which step."""
    parts = node.fullname.split(".")
    subject = next((p[4:-3] for p in parts if p.startswith("sub_") and p.endswith("_wf")), "?")
    run = next((p[:-3] for p in parts if p.startswith("t1w_") and p.endswith("_wf")), "")
    step = parts[-1]
    if step.startswith(("ds_", "merge_", "t1w_meta", "mask_meta")):
        return
    message = f"sub-{subject} {run}: {step} {status}".replace("  ", " ")
    if status == "exception":
        LOGGER.error("%s (crash file in the participant's log folder)", message)
    else:
        LOGGER.info(message)


def wait_for_slurm_graph(batch_dir: Path, *, poll_s: float = 2.0) -> list[str]:
    """Wait until the jobs that nipype's SLURMGraph plugin submitted from ``batch_dir`` have left the queue.

    SLURMGraph returns as soon as its jobs are submitted; the app must not write reports or clean up
    before they ran. This run's jobs are the current user's whose batch script lies in ``batch_dir``
    (job names such as ``j0_conform`` are the same in every run, so they cannot tell concurrent runs
    apart). Jobs whose dependency failed (reason ``DependencyNeverSatisfied``) would wait forever:
    they are cancelled and returned, so the caller can report the run as failed.
    """
    import getpass

    if not (batch_dir / "submit_jobs.sh").is_file():
        return []
    prefix = str(Path(batch_dir).resolve()) + "/"
    cancelled: list[str] = []
    LOGGER.info("SLURMGraph: waiting for the jobs of %s", batch_dir)
    while True:
        queue = subprocess.run(["squeue", "-h", "-u", getpass.getuser(), "-o", "%i|%r|%o"],
                               capture_output=True, text=True, check=True).stdout
        ours = [line.split("|", 2) for line in queue.splitlines() if line.count("|") == 2]
        ours = [job for job in ours if str(Path(job[2].strip()).resolve()).startswith(prefix)]
        stuck = [job[0] for job in ours if "DependencyNeverSatisfied" in job[1]]
        if stuck:
            subprocess.run(["scancel", *stuck], check=False)
            cancelled += stuck
            LOGGER.error("SLURMGraph: cancelled %d job(s) whose dependencies failed", len(stuck))
        if not ours:
            return cancelled
        time.sleep(poll_s)


def build_workflow(config: Config):
    """Check the model (sha256 of every file) and build the nipype workflow for ``config``."""
    import os

    # nipype asks a server for its latest version when the first interface is built (a network
    # request in every run, like fMRIPrep the app does without)
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    # torch's OpenMP threads meet after every layer. libgomp's waiting threads spin, which on a machine
    # other jobs share burns the CPU time the thread they wait for needs: with 2 threads on a busy
    # 2-core machine one slice took 26 s instead of 3.7 s (docs/performance.md). Set before the nodes
    # (forked from this process) import torch; a value the user set is kept
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.workflows.base import init_ddasr_wf

    bundle = load_bundle(config.model)  # raises ModelBundleError / ChecksumMismatchError
    LOGGER.info("model %s (%s), sha256 %s", bundle.name, bundle.path, bundle.sha256)
    workflow = init_ddasr_wf(config=config)
    workflow.config["execution"].update({
        "crashfile_format": "txt",
        "stop_on_first_crash": config.stop_on_first_crash,
        "remove_unnecessary_outputs": False,
        # nipype's scheduler looks for finished nodes every 2 s by default: most of the run time of a
        # small participant went to these waits, one per step of its chain of nodes
        "poll_sleep_duration": POLL_SLEEP_S,
    })
    return workflow


def write_boilerplate(workflow, deriv_dir: Path) -> Path:
    """Methods text (``CITATION.md``) assembled from the workflows' ``__desc__``."""
    logs = deriv_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    text = workflow.visit_desc()
    bib = _resource("boilerplate.bib").read_text()
    out = logs / "CITATION.md"
    out.write_text(text + "\n### References\n\n```bibtex\n" + bib + "```\n")
    (logs / "CITATION.bib").write_text(bib)
    return out


def latest_run_id(deriv_dir: Path, label: str) -> str | None:
    """The newest run id under ``sub-<label>/log/`` (ids start with a timestamp, so they sort)."""
    log_dir = Path(deriv_dir) / f"sub-{label}" / "log"
    runs = sorted(p.name for p in log_dir.glob("*") if p.is_dir() and RUN_ID_RE.match(p.name))
    return runs[-1] if runs else None


def run_ids(config: Config) -> dict[str, str]:
    """The run whose crash files each participant's report lists: this run's, or with
    ``--reports-only`` the participant's latest earlier run (this run's id when it has none)."""
    if not config.reports_only:
        return {label: config.run_uuid for label in config.participant_label}
    return {label: latest_run_id(config.derivatives_dir, label) or config.run_uuid
            for label in config.participant_label}


def failed_subjects(config: Config) -> list[str]:
    """Participants with crash files in their run of :func:`run_ids`."""
    deriv = config.derivatives_dir
    return [
        label for label, run_id in run_ids(config).items()
        if any((deriv / f"sub-{label}" / "log" / run_id).glob("crash*"))
    ]


def note_scheduler_failures(config: Config, *, since: float, batch_dir: Path) -> list[str]:
    """After a failed SLURM run: participants with neither a crash file nor outputs written since
    ``since`` (a job ended by the scheduler, e.g. at its time limit, leaves no crash file) get a
    plain-text crash file saying so, so their report and the exit status show the failure."""
    noted = []
    for label in config.participant_label:
        log_dir = config.derivatives_dir / f"sub-{label}" / "log" / config.run_uuid
        if any(log_dir.glob("crash*")):
            continue
        outputs = (config.derivatives_dir / f"sub-{label}").rglob("*_desc-ddasr_T1w.nii.gz")
        if any(path.stat().st_mtime >= since for path in outputs):
            continue
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "crash-scheduler.txt").write_text(
            f"No output was written for sub-{label} and no step left a crash file: a SLURM job of this "
            "participant was probably ended by the scheduler (time limit, memory, node failure).\n"
            f"See the job logs {batch_dir}/batchscript_*.sh.e and `sacct`, then rerun with the same "
            "work folder: finished steps are reused.\n"
        )
        noted.append(label)
    return noted


def log_output_warnings(config: Config) -> int:
    """Log the ``Warnings`` of this run's super-resolved T1w sidecars; return how many there were."""
    count = 0
    for label in config.participant_label:
        for sidecar in sorted((config.derivatives_dir / f"sub-{label}").rglob("*_desc-ddasr_T1w.json")):
            try:
                warnings = json.loads(sidecar.read_text()).get("Warnings") or []
            except (OSError, ValueError):
                continue
            for message in warnings:
                LOGGER.warning("%s: %s", sidecar.name.replace(".json", ".nii.gz"), message)
                count += 1
    return count


def write_reports(config: Config) -> int:
    """One HTML report per participant (``<output_dir>/ddasr/sub-<label>.html``), listing the crash
    files of its run of :func:`run_ids`; returns how many errors the reports list."""
    from niworkflows.reports.core import generate_reports

    from ddasr_nipype.interfaces.bids import OUT_PATH_BASE

    by_run: dict[str, list[str]] = {}
    for label, run_id in run_ids(config).items():
        by_run.setdefault(run_id, []).append(label)
    return sum(  # niworkflows takes one run id for all the participants it is given
        generate_reports(labels, str(config.output_dir), run_id,
                         config=str(_resource("reports-spec.yml")), packagename=OUT_PATH_BASE)
        for run_id, labels in by_run.items()
    )


def _reports_only(config: Config) -> int:
    """``--reports-only``: rewrite the reports; 1 if a participant's latest run had failed."""
    ids = run_ids(config)
    write_reports(config)
    LOGGER.info("reports written to %s", config.derivatives_dir)
    failed = failed_subjects(config)
    if failed:
        LOGGER.error("the latest run of %s failed: see the crash files in %s and the HTML reports",
                     ", ".join(f"sub-{s}" for s in failed),
                     ", ".join(str(config.derivatives_dir / f"sub-{s}" / "log" / ids[s]) for s in failed))
        return 1
    return 0


def run(config: Config) -> int:
    """Run the app for ``config``; return the exit status (0: every participant finished)."""
    from ddasr_nipype.errors import DDASRError
    from ddasr_nipype.forksafe import MULTIPROC_START_METHOD, preload_forkserver
    from ddasr_nipype.workflows.base import staging_dir_for

    from .dataset import claim_staging, remove_stale_staging, write_derivative_description

    deriv = config.derivatives_dir
    if config.reports_only:
        return _reports_only(config)
    LOGGER.info("ddasr: %d participant(s): %s", len(config.participant_label),
                ", ".join(f"sub-{s}" for s in config.participant_label))
    if config.plugin_args.get("mp_context") == MULTIPROC_START_METHOD:
        # the server that forks the workers starts now and imports nipype on an idle core while the
        # workflow is built; its workers start with it imported
        preload_forkserver(start=True)
    try:
        workflow = build_workflow(config)
    except (DDASRError, FileNotFoundError) as err:
        LOGGER.error("%s", err)
        return 1
    skipped = getattr(workflow, "skipped_participants", [])
    if skipped:
        LOGGER.warning("no T1w image%s for %s: skipped",
                       " matching the session/filters" if config.session_label or config.bids_filters
                       else "", ", ".join(f"sub-{s}" for s in skipped))
        config = replace(config, participant_label=tuple(
            label for label in config.participant_label if label not in skipped))
    write_derivative_description(config.bids_dir, deriv)
    write_boilerplate(workflow, deriv)
    plugin_args = dict(config.plugin_args)
    if config.plugin in ("MultiProc", "LegacyMultiProc", "Linear"):
        plugin_args.setdefault("status_callback", _progress)
    for label in config.participant_label:  # marks the run: --reports-only finds the latest one
        (deriv / f"sub-{label}" / "log" / config.run_uuid).mkdir(parents=True, exist_ok=True)
    claim_staging(staging_dir_for(config))
    for stale in remove_stale_staging(staging_dir_for(config)):
        LOGGER.info("removed the staged files of a run that was killed: %s", stale)
    crashed = interrupted = False
    started = time.time()
    # nipype's MultiProc scheduler runs a full garbage collection before each submission and after each
    # node it runs in this process: 0.09 s apiece over everything imported (2.9 s in all on the example,
    # some of it while a ready node waited). What exists now (modules, the workflow graph) is frozen out
    # of those collections; they then scan only what the run itself creates.
    gc.collect()
    gc.freeze()
    try:
        workflow.run(plugin=config.plugin, plugin_args=plugin_args)
        if config.plugin == "SLURMGraph":
            crashed = bool(wait_for_slurm_graph(Path(workflow.base_dir) / workflow.name / "batch"))
    except KeyboardInterrupt:
        interrupted = True
    except Exception as err:  # nipype: "Workflow did not execute cleanly", or the first crash
        crashed = True
        LOGGER.debug("nipype: %s", err)
        if config.stop_on_first_crash:
            LOGGER.error("stopped at the first crash (--stop-on-first-crash): %s",
                         str(err).strip().splitlines()[-1] if str(err).strip() else err)
    finally:
        gc.unfreeze()
        shutil.rmtree(staging_dir_for(config), ignore_errors=True)
        staging_root = staging_dir_for(config).parent
        try:  # other array tasks may be staging into the same folder at the same time
            staging_root.rmdir()
        except OSError:
            pass
    if interrupted:
        LOGGER.error("interrupted: outputs already committed are kept; rerun with the same "
                     "--work-dir to resume")
        return EXIT_INTERRUPTED
    if crashed and config.plugin.startswith("SLURM"):
        note_scheduler_failures(config, since=started,
                                batch_dir=Path(workflow.base_dir or ".") / workflow.name / "batch")
    failed = failed_subjects(config)
    write_reports(config)
    log_output_warnings(config)
    if failed or crashed:
        LOGGER.error(
            "failed participant(s): %s; see the crash files in %s/sub-<label>/log/%s and the "
            "HTML reports", ", ".join(f"sub-{s}" for s in failed) or "unknown", deriv,
            config.run_uuid,
        )
        return 1
    LOGGER.info("done: outputs and reports in %s", deriv)
    return 0


def main(argv=None) -> int:
    """Entry point of the ``ddasr`` command (exit status: see ``ddasr --help``)."""
    from .parser import parse_args

    try:
        config = parse_args(argv)
        setup_logging(config.verbose)
        return run(config)
    except KeyboardInterrupt:  # outside the workflow run (which cleans up in run())
        LOGGER.error("interrupted")
        return EXIT_INTERRUPTED


def cli() -> int:
    """The ``ddasr`` command: :func:`main`, then everything the process holds frozen out of the garbage
    collector for the interpreter's exit, whose final collections over it took 0.45 s of the bundled
    example's run (0.2 s frozen). Not for a caller that goes on: frozen objects are never collected."""
    status = main()
    gc.freeze()
    return status


if __name__ == "__main__":
    sys.exit(cli())
