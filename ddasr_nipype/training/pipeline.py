"""The three training stages chained into one resumable run, and the stage functions the nipype
interfaces call one by one.

Layout of the work directory (default: ``<out_dir>.work`` next to the bundle)::

    data/hr_slices.npz, data/lr_slices.npz, data/data.json   prepared, normalised slices
    checkpoints/dsn_last.pt, checkpoints/srn_last.pt         atomic checkpoints (resume points)
    pairs/pairs.npz                                           synthetic (LR, HR) pairs, float32
    logs/{dsn,srn}.csv, logs/tensorboard/, logs/*_losses.png  logs and loss curves
    images/{dsn,srn}_<iteration>.png                          (HR, synthetic LR, SR) grids

The bundle itself (``out_dir``) is written once at the end with :func:`ddasr_nipype.bundle.save_bundle`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ddasr_nipype.errors import CheckpointError, DDASRError, ModelBundleError, TrainingDataError
from ddasr_nipype.training.checkpoint import load_checkpoint
from ddasr_nipype.training.config import TrainingPreset
from ddasr_nipype.training.datasets import PairSet, SliceSet, find_t1w, prepare_datasets

__all__ = [
    "OutputNotWritableError",
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


@dataclass(frozen=True)
class TrainingOptions:
    """Everything one training run needs besides the preset (what ``ddasr-train`` parses).

    ``dsn_from`` (a bundle directory with ``dsn.pt`` or a DSN checkpoint) skips stage 1;
    ``degradation`` (``bicubic``, ``kspace``, ``realsr``, ``realesrgan``) replaces the DSN by a
    classical degradation. ``allow_random_vgg19`` is the explicit opt-in to a seeded random VGG19
    when no weights file is found; it is recorded in the bundle.
    ``dsn_time_limit``/``srn_time_limit`` (seconds) end that stage early, checkpointed; the run goes
    on and still writes the bundle, which records it. ``init_generator`` (a bundle) starts the SRN
    from that bundle's generator instead of random weights: fine-tuning, e.g. on another site.
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
    init_generator: Path | None = None

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
    path = Path(path).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputNotWritableError(f"the {what} directory {path} is not writable: {err.strerror or err}") from err
    return path


def load_backbone(options: TrainingOptions):
    """The VGG19 loss network and its provenance (raises ``VGGWeightsNotFoundError`` without opt-in)."""
    from ddasr_nipype.models import load_vgg19

    vgg, provenance = load_vgg19(options.vgg19_weights, allow_random=options.allow_random_vgg19, seed=options.seed)
    provenance = dict(provenance)
    provenance["allow_random_opt_in"] = bool(options.allow_random_vgg19)
    return vgg, provenance


def prepare_data(options: TrainingOptions, *, need_lr: bool = True) -> tuple[SliceSet, SliceSet | None, dict]:
    """Query both BIDS datasets, prepare the slices, cache them in ``work/data`` (reused when unchanged)."""
    preset = options.preset
    hr_files = find_t1w(options.hr_dir, filters=options.hr_filters,
                        participant_label=options.hr_participant_label, what="HR")
    lr_files = []
    if options.lr_dir is not None:
        lr_files = find_t1w(options.lr_dir, filters=options.lr_filters,
                            participant_label=options.lr_participant_label, what="LR")
    elif need_lr:
        raise TrainingDataError("the DSN needs real LR data: give --lr")
    data_dir = options.work / "data"
    key = {"hr": [str(f) for f in hr_files], "lr": [str(f) for f in lr_files], "data": preset.data.to_dict()}
    meta_path = data_dir / "data.json"
    if meta_path.is_file() and (data_dir / "hr_slices.npz").is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            hr = SliceSet.load(data_dir / "hr_slices.npz")
            lr = SliceSet.load(data_dir / "lr_slices.npz") if lr_files else None
            return hr, lr, meta["summary"]
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
    meta_path.write_text(json.dumps({"key": key, "summary": summary}, indent=2))
    return hr, lr, summary


def _prepare_hr_only(hr_files, preset):
    from ddasr_nipype.training.datasets import prepare_hr_stacks

    voxel = preset.data.hr_voxel_size
    hr = SliceSet([s for f in hr_files for s in prepare_hr_stacks(f, preset.data, voxel_size=voxel)])
    summary = {"hr_files": [str(f) for f in hr_files], "lr_files": [], "hr_voxel_size": voxel,
               "lr_voxel_size": voxel * preset.data.scale, "hr_slices": len(hr), "lr_slices": 0}
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


def load_dsn(source: str | Path, device="cpu"):
    """A trained DSN from a bundle directory (``dsn.pt``) or a DSN checkpoint file."""
    from ddasr_nipype.models import DSN, DSNConfig

    source = Path(source)
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


def run_synthesis_stage(options: TrainingOptions, hr: SliceSet, lr: SliceSet | None, dsn=None) -> PairSet:
    """Stage 2: pairs from the DSN (or ``options.degradation``), cached in ``pairs/pairs.npz``."""
    from ddasr_nipype.training.engine import precision_dtype, resolve_device
    from ddasr_nipype.training.synthesis import (combine_pairs, degrade_pairs, denoise_targets, match_intensity,
                                                 synthesize_pairs)

    path = options.work / "pairs" / "pairs.npz"
    if options.resume and path.is_file():
        return PairSet.load(path)
    preset = options.preset
    rng = np.random.default_rng([options.seed, 3])
    if options.degradation:
        pairs = degrade_pairs(hr, options.degradation, scale=preset.data.scale, rng=rng)
    else:
        if dsn is None or lr is None:
            raise ValueError("synthesis needs a trained DSN and the real LR slices")
        device = resolve_device(options.device)
        pairs = synthesize_pairs(dsn, hr, lr, scale=preset.data.scale, rng=rng,
                                 batch_size=preset.synthesis.batch_size, device=device,
                                 amp_dtype=precision_dtype(options.precision, device))
        if preset.synthesis.match_intensity:
            pairs = match_intensity(pairs)
    pairs = combine_pairs(pairs, *(degrade_pairs(hr, name, scale=preset.data.scale, rng=rng)
                                   for name in preset.synthesis.mix))
    pairs = denoise_targets(pairs, preset.synthesis.denoise_targets)
    pairs.save(path)
    return pairs


def run_srn_stage(options: TrainingOptions, pairs: PairSet, vgg, backbone, *, until: int | None = None):
    """Stage 3 (resumes from ``checkpoints/srn_last.pt`` with ``options.resume``); returns the trainer."""
    from ddasr_nipype.training.srn_trainer import SRNTrainer

    trainer = SRNTrainer(options.preset, options.work, pairs, **options.trainer_kwargs(vgg, backbone))
    if options.resume and trainer.checkpoint_path.is_file():
        trainer.resume()
    elif options.init_generator is not None:
        trainer.init_generator_from(options.init_generator)
    if not trainer.finished:
        trainer.run(until=until, time_limit=options.srn_time_limit)
    return trainer


def _refuse_overwrite(options: TrainingOptions) -> None:
    ckpts = sorted((options.work / "checkpoints").glob("*_last.pt"))
    if ckpts and not options.resume:
        raise FileExistsError(
            f"{options.work} already holds a training run ({', '.join(c.name for c in ckpts)}); rerun with "
            "--resume to continue it, or choose another --work-dir"
        )


def run_training(options: TrainingOptions):
    """All stages: data, DSN (unless ``dsn_from``/``degradation``), synthesis, SRN, bundle.

    Returns the :class:`~ddasr_nipype.bundle.ModelBundle` written to ``options.out_dir``. Raises
    :class:`~ddasr_nipype.training.engine.TrainingInterrupted` after checkpointing on SIGTERM/SIGINT.
    """
    if options.dsn_from and options.degradation:
        raise ValueError("give either --dsn-from or --degradation, not both")
    apply_num_threads(options.num_threads)
    check_writable(Path(options.out_dir).expanduser().resolve().parent, "output")
    check_writable(options.work, "work")
    _refuse_overwrite(options)
    if options.degradation:  # fail before any long step when the module is missing
        from ddasr_nipype.training.synthesis import _classical_function

        _classical_function(options.degradation)
    vgg, backbone = load_backbone(options)
    use_dsn = not options.degradation
    hr, lr, summary = prepare_data(options, need_lr=use_dsn and options.dsn_from is None)

    dsn = None
    dsn_info: dict[str, Any] = {}
    if options.dsn_from:
        dsn, dsn_info = load_dsn(options.dsn_from)
        if dsn.config.scale != options.preset.data.scale:
            raise ModelBundleError(f"{options.dsn_from}: the DSN is x{dsn.config.scale}, the preset trains "
                                   f"x{options.preset.data.scale}")
        if lr is None:
            raise TrainingDataError("synthesis with a DSN needs real LR reference slices: give --lr")
    elif use_dsn:
        dsn_trainer = run_dsn_stage(options, hr, lr, vgg, backbone)
        dsn = dsn_trainer.dsn
        dsn_info = {"source": "trained", "iterations": dsn_trainer.iteration,
                    "planned_iterations": dsn_trainer.total, "stopped_early": dsn_trainer.stopped_early,
                    "final_losses": dsn_trainer.last_losses}
        del dsn_trainer
    pairs = run_synthesis_stage(options, hr, lr, dsn)
    srn = run_srn_stage(options, pairs, vgg, backbone)

    return write_bundle(options, srn=srn, summary=summary, n_pairs=len(pairs), backbone=backbone,
                        dsn=dsn, dsn_info=dsn_info)


def write_bundle(options: TrainingOptions, *, srn, summary: dict, n_pairs: int, backbone: dict,
                 dsn=None, dsn_info: dict | None = None):
    """Save the trained EMA generator (and the DSN, if any) as a model bundle in ``options.out_dir``."""
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
                "planned_iterations": srn.total, "stopped_early": srn.stopped_early},
        "data": {"hr_files": [Path(f).name for f in summary["hr_files"]],
                 "lr_files": [Path(f).name for f in summary["lr_files"]],
                 "hr_slices": summary["hr_slices"], "lr_slices": summary["lr_slices"],
                 "pairs": n_pairs},
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    name = options.name or Path(options.out_dir).name
    card = model_card(name, preprocessing, backbone, training)
    return save_bundle(
        Path(options.out_dir).expanduser().resolve(), name=name,
        generator_state=srn.ema.state_dict(), generator_config=srn.generator_config,
        dsn_state=dsn.state_dict() if dsn is not None else None, dsn_config=dsn_config,
        preprocessing=preprocessing, backbone=backbone, training=training, card_text=card,
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
        f"- ddasr-nipype {__version__}, finished {training['finished']}",
        "",
        "The generator weights are the EMA copy. See `manifest.json` for the full recipe and checksums.",
    ]
    return "\n".join(lines) + "\n"


__all__ += ["model_card"]
