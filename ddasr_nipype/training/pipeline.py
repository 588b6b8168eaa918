"""The three training stages chained into one resumable run, and the stage functions the nipype
interfaces call one by one.

Layout of the work directory (default: ``<out_dir>.work`` next to the bundle)::

    run.json                                                  the run's data selection (checked on --resume)
                                                              and the bundle it wrote
    data/hr_slices.npz, data/lr_slices.npz, data/data.json   prepared, normalised slices
    checkpoints/dsn_last.pt, checkpoints/srn_last.pt         atomic checkpoints (resume points)
    checkpoints/srn_pairs.json                                which pairs the SRN checkpoint trained on
    pairs/pairs.npz                                           synthetic (LR, HR) pairs, float32, with
                                                              their provenance (DSN weights digest...)
    logs/{dsn,srn}.csv, logs/tensorboard/, logs/*_losses.png  logs and loss curves
    images/{dsn,srn}_<iteration>.png                          (HR, synthetic LR, SR) grids

The bundle itself (``out_dir``) is written once at the end with :func:`ddasr_nipype.bundle.save_bundle`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ddasr_nipype.errors import CheckpointError, DDASRError, ModelBundleError, TrainingDataError
from ddasr_nipype.fileio import write_text_atomic
from ddasr_nipype.training.checkpoint import load_checkpoint
from ddasr_nipype.training.config import TrainingPreset
from ddasr_nipype.training.datasets import PairSet, SliceSet, array_digest, find_t1w, prepare_datasets
from ddasr_nipype.training.signals import raise_if_stop_requested

log = logging.getLogger(__name__)

__all__ = [
    "OutputNotWritableError",
    "OutputExistsError",
    "ResumeMismatchError",
    "check_init_generator",
    "check_out_dir",
    "find_data",
    "module_digest",
    "TrainingOptions",
    "check_writable",
    "load_backbone",
    "prepare_data",
    "run_dsn_stage",
    "run_synthesis_stage",
    "run_srn_stage",
    "load_dsn",
    "run_training",
    "write_bundle",
]


class OutputNotWritableError(DDASRError, PermissionError):
    """The bundle or work directory cannot be created or written."""


class OutputExistsError(DDASRError, FileExistsError):
    """The bundle directory is not empty, or lies inside an input BIDS dataset."""


class ResumeMismatchError(DDASRError):
    """``--resume`` with another data selection than the run in the work directory was started with."""


@dataclass(frozen=True)
class TrainingOptions:
    """Everything one training run needs besides the preset (what ``ddasr-train`` parses).

    ``dsn_from`` (a bundle directory with ``dsn.pt`` or a DSN checkpoint) skips stage 1;
    ``degradation`` (``bicubic``, ``kspace``, ``realsr``, ``realesrgan``) replaces the DSN by a
    classical degradation. ``allow_random_vgg19`` is the explicit opt-in to a seeded random VGG19
    when no weights file is found; it is recorded in the bundle.
    ``dsn_time_limit``/``srn_time_limit`` (seconds) end that stage early, checkpointed; the run goes
    on and still writes the bundle, which records it. ``srn_stop_at`` ends the SRN stage after that
    iteration of the preset's schedule (the learning rate follows the full schedule; a staged recipe
    such as t1w-x2's stage 1). ``init_generator`` (a bundle) starts the SRN
    from that bundle's generator instead of random weights: fine-tuning, e.g. on another site.
    ``dsn_from`` and ``init_generator`` may also name a bundled model (``ixi-t1w-x2``).
    ``overwrite`` lets :func:`run_training` replace a non-empty ``out_dir``.
    """

    preset: TrainingPreset
    hr_dir: Path | None = None
    lr_dir: Path | None = None
    out_dir: Path | None = None
    work_dir: Path | None = None
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    vgg19_weights: Path | None = None
    allow_random_vgg19: bool = False
    hr_filters: dict = field(default_factory=dict)
    lr_filters: dict = field(default_factory=dict)
    hr_participant_label: tuple[str, ...] = ()
    lr_participant_label: tuple[str, ...] = ()
    dsn_from: Path | None = None
    degradation: str | None = None
    precision: str = "auto"
    compile: bool = False
    tensorboard: bool = True
    name: str | None = None
    num_threads: int | None = None
    dsn_time_limit: float | None = None
    srn_time_limit: float | None = None
    srn_stop_at: int | None = None
    init_generator: Path | None = None
    overwrite: bool = False

    @property
    def work(self) -> Path:
        if self.out_dir is None and not self.work_dir:
            raise ValueError("TrainingOptions: give out_dir or work_dir")
        out = Path(self.out_dir or ".").expanduser().resolve()
        return Path(self.work_dir).expanduser().resolve() if self.work_dir else out.with_name(out.name + ".work")

    def trainer_kwargs(self, vgg, backbone) -> dict[str, Any]:
        return {"vgg": vgg, "backbone": backbone, "device": self.device, "seed": self.seed,
                "precision": self.precision, "compile": self.compile, "tensorboard": self.tensorboard}


def apply_num_threads(num_threads: int | None) -> None:
    """Limit torch's CPU threads (on a loaded machine, oversubscribed OpenMP threads slow training 10x)."""
    if num_threads:
        import torch

        torch.set_num_threads(int(num_threads))


def check_writable(path: str | Path, what: str = "output") -> Path:
    """Create ``path`` if needed and prove it writable, else :class:`OutputNotWritableError`."""
    from ..fileio import probe_writable

    path = Path(path).expanduser().resolve()
    try:
        return probe_writable(path)
    except OSError as err:
        raise OutputNotWritableError(f"the {what} directory {path} is not writable: {err.strerror or err}") from err


def load_backbone(options: TrainingOptions):
    """The VGG19 loss network and its provenance (raises ``VGGWeightsNotFoundError`` without opt-in)."""
    from ddasr_nipype.models import load_vgg19

    vgg, provenance = load_vgg19(options.vgg19_weights, allow_random=options.allow_random_vgg19, seed=options.seed)
    provenance = dict(provenance)
    provenance["allow_random_opt_in"] = bool(options.allow_random_vgg19)
    return vgg, provenance


def find_data(options: TrainingOptions, *, need_lr: bool = True) -> tuple[list[Path], list[Path]]:
    """The HR and LR T1w files the options select (pybids queries with the filters and labels)."""
    hr_files = find_t1w(options.hr_dir, filters=options.hr_filters,
                        participant_label=options.hr_participant_label, what="HR")
    lr_files = []
    if options.lr_dir is not None:
        lr_files = find_t1w(options.lr_dir, filters=options.lr_filters,
                            participant_label=options.lr_participant_label, what="LR")
    elif need_lr:
        raise TrainingDataError("the DSN needs real LR data: give --lr")
    return hr_files, lr_files


def prepare_data(options: TrainingOptions, *, need_lr: bool = True,
                 files: tuple[list[Path], list[Path]] | None = None) -> tuple[SliceSet, SliceSet | None, dict]:
    """Query both BIDS datasets (or take ``files`` from :func:`find_data`), prepare the slices, cache
    them in ``work/data`` (reused when the files and data settings are unchanged)."""
    preset = options.preset
    hr_files, lr_files = files if files is not None else find_data(options, need_lr=need_lr)
    data_dir = options.work / "data"
    key = {"hr": [str(f) for f in hr_files], "lr": [str(f) for f in lr_files], "data": preset.data.to_dict()}
    meta_path = data_dir / "data.json"
    if meta_path.is_file() and (data_dir / "hr_slices.npz").is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            hr = SliceSet.load(data_dir / "hr_slices.npz")
            lr = SliceSet.load(data_dir / "lr_slices.npz") if lr_files else None
            return hr, lr, meta["summary"]
    # data.json is written last and marks a complete cache: drop the old one before its slices change
    meta_path.unlink(missing_ok=True)
    if lr_files:
        hr, lr, summary = prepare_datasets(hr_files, lr_files, preset.data)
    else:
        if preset.data.hr_voxel_size is None:
            raise TrainingDataError("without LR data, set data.hr_voxel_size in the preset")
        hr, _, summary = _prepare_hr_only(hr_files, preset)
        lr = None
    hr.save(data_dir / "hr_slices.npz")
    if lr is not None:
        lr.save(data_dir / "lr_slices.npz")
    _write_json(meta_path, {"key": key, "summary": summary})
    return hr, lr, summary


def _write_json(path: Path, content: dict) -> None:
    """Write ``content`` as JSON atomically."""
    write_text_atomic(path, json.dumps(content, indent=2, default=str))


def _prepare_hr_only(hr_files, preset):
    from ddasr_nipype.training.datasets import prepare_hr_stacks

    voxel = preset.data.hr_voxel_size
    hr = SliceSet([s for f in hr_files for s in prepare_hr_stacks(f, preset.data, voxel_size=voxel)])
    summary = {"hr_files": [str(f) for f in hr_files], "lr_files": [], "hr_voxel_size": voxel,
               "lr_voxel_size": voxel * preset.data.scale, "hr_slices": len(hr), "lr_slices": 0,
               "hr_brain_only": sorted({s.name.split("_")[0] for s in hr.stacks if s.brain_only})}
    return hr, None, summary


def run_dsn_stage(options: TrainingOptions, hr: SliceSet, lr: SliceSet, vgg, backbone, *,
                  until: int | None = None):
    """Stage 1 (resumes from ``checkpoints/dsn_last.pt`` with ``options.resume``); returns the trainer."""
    from ddasr_nipype.training.dsn_trainer import DSNTrainer

    trainer = DSNTrainer(options.preset, options.work, hr, lr, **options.trainer_kwargs(vgg, backbone))
    if options.resume and trainer.checkpoint_path.is_file():
        trainer.resume()
    if not trainer.finished:
        trainer.run(until=until, time_limit=options.dsn_time_limit)
    return trainer


def resolve_model_source(source: str | Path) -> Path:
    """An existing file or directory as given, else the bundled model of that name
    (:func:`ddasr_nipype.bundle.resolve_bundle_path`, as ``ddasr --model`` resolves it)."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    from ddasr_nipype.bundle import resolve_bundle_path

    return resolve_bundle_path(source)


def module_digest(module) -> str:
    """sha256 of a network's weights (state dict keys, dtypes, shapes and bytes)."""
    import torch

    state = module.state_dict() if hasattr(module, "state_dict") else module
    arrays, names = [], []
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous().reshape(-1)
        names.append([key, str(tensor.dtype), list(state[key].shape)])
        arrays.append(tensor.view(torch.uint8).numpy())
    return array_digest(arrays, names)


def load_dsn(source: str | Path, device="cpu"):
    """A trained DSN from a bundle directory (``dsn.pt``) or a DSN checkpoint file."""
    from ddasr_nipype.models import DSN, DSNConfig

    source = resolve_model_source(source)
    if source.is_dir():
        from ddasr_nipype.bundle import load_bundle

        bundle = load_bundle(source)
        return bundle.load_dsn(str(device)), {"source": "bundle", "path": str(source), "sha256": bundle.manifest["files"]["dsn.pt"]["sha256"]}
    state = load_checkpoint(source, stage="dsn")
    try:
        dsn = DSN(DSNConfig.from_dict(state["models"]["dsn_config"]))
        dsn.load_state_dict(state["models"]["dsn"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{source}: cannot rebuild the DSN: {err}") from err
    return dsn.to(device).eval(), {"source": "checkpoint", "path": str(source), "iterations": int(state["iteration"]),
                                 "final_losses": dict(state.get("last_losses", {}))}


def context_slices(preset) -> int:
    """Neighbouring slices on each side that the preset's pairs carry: those its generator takes
    (``srn.generator.context_slices``), or with ``srn.slice_denoise`` those the denoising across slices
    compares (:data:`~ddasr_nipype.inference.SLICE_DENOISE_RADIUS`)."""
    from ddasr_nipype.inference import SLICE_DENOISE_RADIUS
    from ddasr_nipype.training.srn_trainer import build_generator_config

    if preset.srn.slice_denoise:
        return SLICE_DENOISE_RADIUS
    return build_generator_config(preset).context_slices


def check_context_source(options: TrainingOptions) -> None:
    """Pairs with neighbouring slices (a 2.5D generator, ``srn.generator.context_slices``, or
    ``srn.slice_denoise``) come from classical degradations only: the DSN degrades single slices. Raises
    ValueError otherwise."""
    if context_slices(options.preset) and not options.degradation:
        raise ValueError("a generator with context slices (srn.generator.context_slices) or srn.slice_denoise "
                         "trains on classical degradations (--degradation); the DSN degrades single slices")


def pairs_provenance(options: TrainingOptions, hr: SliceSet, lr: SliceSet | None, dsn=None,
                     dsn_info: dict | None = None) -> dict[str, Any]:
    """What the pairs of :func:`run_synthesis_stage` depend on: ``key`` (compared on resume: the
    degradation or the digest of the DSN's weights, the synthesis settings, the scale, the seed, and the
    digests of the HR and LR slices) and, for the record, the DSN's iterations when known."""
    key = {
        "source": options.degradation or "dsn",
        "dsn_sha256": module_digest(dsn) if dsn is not None and not options.degradation else None,
        "synthesis": options.preset.synthesis.to_dict(),
        "context_slices": context_slices(options.preset),
        "scale": options.preset.data.scale,
        "seed": options.seed,
        "hr_slices": hr.digest(),
        "lr_slices": lr.digest() if lr is not None and not options.degradation else None,
    }
    info = dsn_info or {}
    return {"key": key, "dsn_iterations": info.get("iterations"), "dsn_source": info.get("source")}


def run_synthesis_stage(options: TrainingOptions, hr: SliceSet, lr: SliceSet | None, dsn=None, *,
                        dsn_info: dict | None = None) -> PairSet:
    """Stage 2: pairs from the DSN (or ``options.degradation``), cached in ``pairs/pairs.npz``.

    The pairs are saved with their :func:`pairs_provenance` (``PairSet.provenance``). With
    ``options.resume`` a cached file is reused only when its provenance key equals this call's: the same
    DSN weights (not just the same checkpoint path: a DSN stage that a time limit ended and a resumed run
    continued makes new pairs), synthesis settings, seed and slices; otherwise the pairs are synthesized
    again (logged).
    """
    from ddasr_nipype.training.engine import precision_dtype, resolve_device
    from ddasr_nipype.training.synthesis import (combine_pairs, degrade_pairs, denoise_targets, match_intensity,
                                                 synthesize_pairs)

    path = options.work / "pairs" / "pairs.npz"
    provenance = pairs_provenance(options, hr, lr, dsn, dsn_info)
    if options.resume and path.is_file():
        cached = PairSet.load(path)
        if cached.provenance and cached.provenance.get("key") == provenance["key"]:
            return cached
        changed = sorted(k for k in provenance["key"]
                         if (cached.provenance or {}).get("key", {}).get(k) != provenance["key"][k])
        log.warning("%s was made %s; synthesizing the pairs again", path,
                    f"with another {', '.join(changed)}" if cached.provenance else "without a provenance record")
    preset = options.preset
    rng = np.random.default_rng([options.seed, 3])
    context = {"context_slices": context_slices(preset), "context_strides": preset.synthesis.context_strides}
    if options.degradation:
        pairs = degrade_pairs(hr, options.degradation, scale=preset.data.scale, rng=rng, **context)
    else:
        if dsn is None or lr is None:
            raise ValueError("synthesis needs a trained DSN and the real LR slices")
        check_context_source(options)
        device = resolve_device(options.device)
        pairs = synthesize_pairs(dsn, hr, lr, scale=preset.data.scale, rng=rng,
                                 batch_size=preset.synthesis.batch_size, device=device,
                                 amp_dtype=precision_dtype(options.precision, device))
        if preset.synthesis.match_intensity:
            pairs = match_intensity(pairs)
    pairs = combine_pairs(pairs, *(degrade_pairs(hr, name, scale=preset.data.scale, rng=rng, **context)
                                   for name in preset.synthesis.mix))
    pairs = denoise_targets(pairs, preset.synthesis.denoise_targets)
    pairs.provenance = provenance
    pairs.save(path)
    return pairs


def run_srn_stage(options: TrainingOptions, pairs: PairSet, vgg, backbone, *, until: int | None = None):
    """Stage 3 (resumes from ``checkpoints/srn_last.pt`` with ``options.resume``); returns the trainer.

    ``checkpoints/srn_pairs.json`` records which pairs (``PairSet.fingerprint``) the SRN checkpoint
    trains on. When a resumed run brings other pairs (the DSN went on training after a time limit,
    or the synthesis settings changed), the SRN does not continue on them: the old checkpoint is kept
    as ``checkpoints/srn_stale.pt``, a warning is logged, and the SRN stage starts again from
    iteration 0 (from ``options.init_generator`` when given), so the bundle's generator has been
    trained on the pairs of the DSN it ships. A checkpoint without that record (older versions) is
    resumed as before.
    """
    from ddasr_nipype.training.srn_trainer import SRNTrainer

    trainer = SRNTrainer(options.preset, options.work, pairs, **options.trainer_kwargs(vgg, backbone))
    record_path = options.work / "checkpoints" / "srn_pairs.json"
    fingerprint = {"pairs": pairs.fingerprint(), "provenance": pairs.provenance}
    resume = options.resume and trainer.checkpoint_path.is_file()
    if resume and record_path.is_file():
        recorded = json.loads(record_path.read_text())
        if recorded.get("pairs") != fingerprint["pairs"]:
            stale = trainer.checkpoint_path.with_name("srn_stale.pt")
            os.replace(trainer.checkpoint_path, stale)
            log.warning(
                "the SRN checkpoint was trained on other pairs than this run's (%s); it is kept as %s and "
                "the SRN stage starts again from iteration 0 on the new pairs",
                _describe_pairs_change(recorded.get("provenance"), pairs.provenance), stale)
            resume = False
    if resume:
        trainer.resume()
    elif options.init_generator is not None:
        trainer.init_generator_from(resolve_model_source(options.init_generator))
    _write_json(record_path, fingerprint)
    if until is None:
        until = options.srn_stop_at
    if not trainer.finished:
        trainer.run(until=until, time_limit=options.srn_time_limit)
    trainer.stop_at = options.srn_stop_at if (options.srn_stop_at or trainer.total) < trainer.total else None
    return trainer


def _describe_pairs_change(old: dict | None, new: dict | None) -> str:
    old_key, new_key = (old or {}).get("key", {}), (new or {}).get("key", {})
    changed = [k for k in sorted(set(old_key) | set(new_key)) if old_key.get(k) != new_key.get(k)]
    text = "changed: " + (", ".join(changed) or "content")
    if "dsn_sha256" in changed and (old or {}).get("dsn_iterations") is not None:
        text += f"; DSN iterations {old['dsn_iterations']} -> {(new or {}).get('dsn_iterations')}"
    return text


def _refuse_overwrite(options: TrainingOptions) -> None:
    ckpts = sorted((options.work / "checkpoints").glob("*_last.pt"))
    if ckpts and not options.resume:
        raise FileExistsError(
            f"{options.work} already holds a training run ({', '.join(c.name for c in ckpts)}); rerun with "
            "--resume to continue it, or choose another --work-dir"
        )


def _norm_labels(labels) -> list[str]:
    return sorted(str(p)[4:] if str(p).startswith("sub-") else str(p) for p in labels)


def data_selection(options: TrainingOptions, hr_files, lr_files) -> dict[str, Any]:
    """What determines a run's prepared data and pairs, recorded in ``work/run.json``."""
    return {
        "HR files": [str(f) for f in hr_files],
        "LR files": [str(f) for f in lr_files],
        "--hr-participant-label": _norm_labels(options.hr_participant_label),
        "--lr-participant-label": _norm_labels(options.lr_participant_label),
        "--hr-filter-file": dict(options.hr_filters or {}),
        "--lr-filter-file": dict(options.lr_filters or {}),
        "--degradation": options.degradation,
        "preset data settings": options.preset.data.to_dict(),
        "preset synthesis settings": options.preset.synthesis.to_dict(),
    }


def _run_record_path(options: TrainingOptions) -> Path:
    return options.work / "run.json"


def _read_run_record(options: TrainingOptions) -> dict[str, Any]:
    path = _run_record_path(options)
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def check_resume_selection(options: TrainingOptions, selection: dict[str, Any]) -> None:
    """With ``options.resume``, refuse a data selection other than the one recorded in ``work/run.json``
    (:class:`ResumeMismatchError` naming what changed); then record ``selection``."""
    record = _read_run_record(options)
    old = record.get("selection")
    if options.resume and old is not None:
        changed = [k for k in selection if old.get(k) != selection[k]]
        if changed:
            def short(value):
                if isinstance(value, list) and value and all(isinstance(v, str) and os.sep in v for v in value):
                    value = [Path(v).name for v in value]
                return json.dumps(value, default=str)

            detail = "; ".join(f"{k}: was {short(old.get(k))}, now {short(selection[k])}" for k in changed)
            raise ResumeMismatchError(
                f"cannot --resume the run in {options.work}: it was started with another data selection "
                f"({detail}). Its checkpoints, slices and pairs belong to that selection: rerun with the "
                "original options, or start a new run with another --work-dir (or --out), or without "
                "--resume after deleting that work directory"
            )
    _write_json(_run_record_path(options), {**record, "selection": selection})


def check_out_dir(options: TrainingOptions) -> Path:
    """Refuse an ``out_dir`` that is not empty (unless ``options.overwrite``, or ``options.resume`` and it
    holds the bundle this work directory wrote) or that lies inside the HR or LR BIDS dataset but not
    under its ``derivatives/`` (:class:`OutputExistsError`)."""
    out = Path(options.out_dir).expanduser().resolve()
    for flag, data_dir in (("--hr", options.hr_dir), ("--lr", options.lr_dir)):
        if data_dir is None:
            continue
        root = Path(data_dir).expanduser().resolve()
        if (out == root or root in out.parents) and (root / "derivatives") not in out.parents:
            raise OutputExistsError(
                f"--out {out} lies inside the {flag} BIDS dataset {root}: write the model outside it, or "
                f"under {root / 'derivatives'}/"
            )
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} exists and is not a directory")
    if options.overwrite or not out.is_dir() or not any(out.iterdir()):
        return out
    if options.resume:
        written = _read_run_record(options).get("bundle", {})
        try:
            current = json.loads((out / "manifest.json").read_text())["files"]["srn.pt"]["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            current = None
        if current is not None and written.get("path") == str(out) and written.get("sha256") == current:
            return out  # the bundle an earlier pass of this run wrote (e.g. before a time limit)
    raise OutputExistsError(
        f"--out {out} is not empty; ddasr-train does not overwrite it: choose another --out, or pass "
        "--overwrite to replace it"
    )


def check_init_generator(options: TrainingOptions):
    """Load the ``init_generator`` bundle up front (checksums verified, weights loaded) and check that its
    generator fits the preset's ``srn.generator`` (as ``SRNTrainer.init_generator_from`` does, which
    runs only after the DSN stage). Returns the bundle; raises :class:`ModelBundleError`."""
    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.training.srn_trainer import build_generator_config, check_generator_fits

    bundle = load_bundle(resolve_model_source(options.init_generator))
    try:
        check_generator_fits(bundle, build_generator_config(options.preset))
    except ModelBundleError as err:
        raise ModelBundleError(f"--init-generator {err}") from None
    try:
        bundle.load_generator("cpu")
    except ModelBundleError:
        raise
    except Exception as err:  # noqa: BLE001 - a state dict that does not fit its own config
        raise ModelBundleError(f"--init-generator {bundle.path}: cannot load its generator: {err}") from err
    return bundle


def run_training(options: TrainingOptions):
    """All stages: data, DSN (unless ``dsn_from``/``degradation``), synthesis, SRN, bundle.

    Everything that can be checked is checked before any training: the output and work directories,
    ``init_generator`` (:func:`check_init_generator`), ``dsn_from``, and with ``resume`` the data selection
    (:func:`check_resume_selection`). Returns the :class:`~ddasr_nipype.bundle.ModelBundle` written to
    ``options.out_dir``. Raises :class:`~ddasr_nipype.training.engine.TrainingInterrupted` after
    checkpointing on SIGTERM/SIGINT in a training loop, and
    :class:`~ddasr_nipype.training.signals.StopRequested` for one outside the loops (under
    ``stop_on_signals(outside_loops="raise")``, as ``ddasr-train`` runs it).
    """
    if options.dsn_from and options.degradation:
        raise ValueError("give either --dsn-from or --degradation, not both")
    apply_num_threads(options.num_threads)
    _refuse_overwrite(options)
    check_out_dir(options)
    check_writable(Path(options.out_dir).expanduser().resolve().parent, "output")
    check_writable(options.work, "work")
    if options.degradation:  # fail before any long step when the module is missing
        from ddasr_nipype.training.synthesis import _classical_function

        _classical_function(options.degradation)
    check_context_source(options)  # before a DSN stage that would train for nothing
    if options.init_generator is not None:
        check_init_generator(options)
    dsn = None
    dsn_info: dict[str, Any] = {}
    if options.dsn_from:
        dsn, dsn_info = load_dsn(options.dsn_from)
        if dsn.config.scale != options.preset.data.scale:
            raise ModelBundleError(f"{options.dsn_from}: the DSN is x{dsn.config.scale}, the preset trains "
                                   f"x{options.preset.data.scale}")
    vgg, backbone = load_backbone(options)
    use_dsn = not options.degradation
    files = find_data(options, need_lr=use_dsn and options.dsn_from is None)
    check_resume_selection(options, data_selection(options, *files))
    hr, lr, summary = prepare_data(options, files=files)
    # a signal that arrived outside the training loops raised StopRequested at once; these checks
    # stop the run at the next step should that exception have been swallowed on its way
    raise_if_stop_requested()

    if options.dsn_from:
        if lr is None:
            raise TrainingDataError("synthesis with a DSN needs real LR reference slices: give --lr")
    elif use_dsn:
        dsn_trainer = run_dsn_stage(options, hr, lr, vgg, backbone)
        dsn = dsn_trainer.dsn
        dsn_info = {"source": "trained", "iterations": dsn_trainer.iteration,
                    "planned_iterations": dsn_trainer.total, "stopped_early": dsn_trainer.stopped_early,
                    "final_losses": dsn_trainer.last_losses}
        del dsn_trainer
        raise_if_stop_requested()
    pairs = run_synthesis_stage(options, hr, lr, dsn, dsn_info=dsn_info)
    raise_if_stop_requested()
    srn = run_srn_stage(options, pairs, vgg, backbone)
    raise_if_stop_requested()

    bundle = write_bundle(options, srn=srn, summary=summary, n_pairs=len(pairs), backbone=backbone,
                          dsn=dsn, dsn_info=dsn_info, pairs_provenance=pairs.provenance)
    _write_json(_run_record_path(options), {**_read_run_record(options),
                                            "bundle": {"path": str(bundle.path), "sha256": bundle.sha256}})
    return bundle


def _settings_text(settings: dict) -> str:
    """Output settings as a card states them: strength and background, then what is on of the rest."""
    text = f"strength {settings['strength']:g}, background {settings['background']}"
    if settings.get("slice_denoise"):
        text += f", slice_denoise {settings['slice_denoise']:g}"
    if settings.get("projection", "none") != "none":
        text += f", projection {settings['projection']}"
    return text


def inherited_output(srn) -> tuple[dict | None, str | None]:
    """The output settings (manifest ``output``) of the bundle the SRN was fine-tuned from, and its name;
    ``(None, None)`` without one or when it recommends none. The settings were chosen for that bundle's
    generator: the fine-tuned one inherits them without re-evaluation."""
    init = getattr(srn, "initialized_from", None)
    if not init:
        return None, None
    try:
        from ddasr_nipype.bundle import load_bundle

        source = load_bundle(init.get("path") or init.get("name"), verify=False)
    except (DDASRError, OSError) as err:
        log.warning("cannot read the output settings of %s (%s): the fine-tuned model runs at full strength "
                    "unless --strength is given", init.get("path") or init.get("name"), err)
        return None, None
    return (source.output or None), init.get("name") or source.name


def write_bundle(options: TrainingOptions, *, srn, summary: dict, n_pairs: int, backbone: dict,
                 dsn=None, dsn_info: dict | None = None, pairs_provenance: dict | None = None):
    """Save the trained EMA generator (and the DSN, if any) as a model bundle in ``options.out_dir``.

    A generator fine-tuned from a bundle that recommends output settings (``--strength``,
    ``--background``) inherits them, recorded as "inherited from <name>, not re-evaluated" in the
    manifest (``training.output``) and the model card.
    """
    from ddasr_nipype.bundle import save_bundle

    dsn_info = dsn_info or {}
    dsn_config = dsn.config if dsn is not None else None
    preset = options.preset
    preprocessing = {
        "plane": preset.data.plane,
        "scale": preset.data.scale,
        "normalization": {"method": "percentile", "percentiles": list(preset.data.percentiles)},
        "hr_voxel_size": summary["hr_voxel_size"],
        "lr_voxel_size": summary["lr_voxel_size"],
    }
    training = {
        "preset": preset.name,
        "recipe": preset.to_dict(),
        "seed": options.seed,
        "device": str(srn.device),
        "degradation": options.degradation or "dsn",
        "dsn": dsn_info,
        "srn": {"iterations": srn.iteration, "final_losses": srn.last_losses,
                "initialized_from": srn.initialized_from,
                "perceptual_backbone": getattr(srn, "perceptual_backbone", None),
                "planned_iterations": srn.total, "stopped_early": srn.stopped_early,
                "stop_at": getattr(srn, "stop_at", None)},
        "data": {"hr_files": [Path(f).name for f in summary["hr_files"]],
                 "lr_files": [Path(f).name for f in summary["lr_files"]],
                 "hr_slices": summary["hr_slices"], "lr_slices": summary["lr_slices"],
                 "pairs": n_pairs},
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if pairs_provenance:
        training["pairs"] = pairs_provenance
    output, output_from = inherited_output(srn)
    if output:
        training["output"] = {"settings": output, "inherited_from": output_from,
                              "note": f"inherited from {output_from}, not re-evaluated"}
    name = options.name or Path(options.out_dir).name
    card = model_card(name, preprocessing, backbone, training)
    return save_bundle(
        Path(options.out_dir).expanduser().resolve(), name=name,
        generator_state=srn.ema.state_dict(), generator_config=srn.generator_config,
        dsn_state=dsn.state_dict() if dsn is not None else None, dsn_config=dsn_config,
        preprocessing=preprocessing, backbone=backbone, training=training, card_text=card, output=output,
    )


def model_card(name: str, preprocessing: dict, backbone: dict, training: dict) -> str:
    """The MODEL_CARD.md of a trained bundle."""
    from ddasr_nipype import __version__

    def losses(d):
        return ", ".join(f"{k} {v:.4g}" for k, v in (d or {}).items()) or "n/a"

    def iterations(stage):
        text = f"iterations {stage.get('iterations', 'n/a')}"
        if stage.get("stopped_early"):
            text += f" of {stage['planned_iterations']} planned (stopped by the time limit)"
        elif stage.get("stop_at"):
            text += f" of {stage['planned_iterations']} planned (stopped there by --srn-stop-at)"
        return text

    if backbone.get("source") == "random":
        vgg = (f"**random, untrained VGG19** (seed {backbone.get('seed')}, explicit opt-in): perceptual, "
               "structure and domain losses were far less meaningful than with ImageNet weights")
    else:
        vgg = f"VGG19 weights {backbone.get('path')} (sha256 {backbone.get('sha256')})"
    data = training["data"]
    dsn = training["dsn"]
    lines = [
        f"# Model card: {name}",
        "",
        "DDASR (domain-distance adapted super-resolution) model trained with `ddasr-train`.",
        "",
        "## Intended use",
        f"x{preprocessing['scale']} in-plane super-resolution of T1-weighted brain MRI, {preprocessing['plane']} "
        f"slices, for LR data near {preprocessing['lr_voxel_size']:.3g} mm (output grid "
        f"{preprocessing['hr_voxel_size']:.3g} mm). Research use only; not a medical device.",
        "",
        "## Training data",
        f"- HR (real, unpaired): {', '.join(data['hr_files'])} ({data['hr_slices']} slices kept)",
        f"- LR (real, unpaired): {', '.join(data['lr_files']) or 'none'} ({data['lr_slices']} slices kept)",
        f"- Training pairs: {data['pairs']} slices, degradation: {training['degradation']}",
        f"- Normalisation: percentiles {preprocessing['normalization']['percentiles']} per volume",
        "",
        "## Training",
        f"- Preset: `{training['preset']}`, seed {training['seed']}, device {training['device']}",
        f"- DSN: {dsn.get('source', 'none')}; {iterations(dsn)}; final losses: {losses(dsn.get('final_losses'))}",
        f"- SRN: {iterations(training['srn'])}; final losses: {losses(training['srn']['final_losses'])}",
        *([f"- SRN generator fine-tuned from `{training['srn']['initialized_from']['name']}` (generator sha256 "
           f"{training['srn']['initialized_from']['sha256'][:12]})"] if training["srn"].get("initialized_from") else []),
        f"- Perceptual backbone: {vgg}",
        *([f"- SRN perceptual term: deepbet's brain-MRI features (sha256 "
           f"{training['srn']['perceptual_backbone'].get('sha256', '?')[:12]}, MIT licence)"]
          if (training["srn"].get("perceptual_backbone") or {}).get("name") == "deepbet" else []),
        *([f"- Recommended output settings: {_settings_text(training['output']['settings'])}, "
           f"{training['output']['note']}"] if training.get("output") else []),
        f"- ddasr-nipype {__version__}, finished {training['finished']}",
        "",
        "The generator weights are the EMA copy. See `manifest.json` for the full recipe and checksums.",
    ]
    return "\n".join(lines) + "\n"


__all__ += ["model_card"]
