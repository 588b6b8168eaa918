"""Nipype interfaces of the three training stages: :class:`TrainDSN`, :class:`SynthesizePairs`,
:class:`TrainSRN` (thin wrappers around :mod:`ddasr_nipype.training.pipeline`).

The two training stages keep their checkpoints, logs and prepared data in a stage folder *next to*
the node's directory (``_<node>_<stage>_<hash of the inputs>``, or ``work_dir`` when given) and
resume from the checkpoint they find there. Nipype empties a node's directory before it reruns a
node that failed, so checkpoints kept inside it would be lost: after a crash or a SLURM preemption
(SIGTERM: checkpoint, then the node fails), rerunning the workflow with the same ``base_dir`` and
inputs goes on from the last checkpoint instead of starting over; changed inputs get a fresh stage
folder. ``use_gpu`` tells nipype's MultiProc scheduler that a node occupies a GPU; see
:func:`ddasr_nipype.workflows.train.init_train_wf` for SLURM.

Each node runs its work in a fresh thread (:mod:`ddasr_nipype.forksafe`: a MultiProc worker forked
after torch ran in the parent would hang otherwise); its main thread keeps the SIGTERM/SIGINT
handlers (:mod:`ddasr_nipype.training.signals`): a signal during a training loop checkpoints and
fails the node, one elsewhere goes to the handler installed before (by default, the process ends).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

__all__ = ["TrainDSN", "SynthesizePairs", "TrainSRN"]


def _fork_safe_training(run_interface):
    """Run ``_run_interface`` in a fresh thread, with the signal handlers in the calling (main) thread."""

    @functools.wraps(run_interface)
    def wrapper(self, runtime):
        from ddasr_nipype.forksafe import call_in_fresh_thread
        from ddasr_nipype.training.signals import stop_on_signals

        with stop_on_signals(outside_loops="forward"):
            return call_in_fresh_thread(run_interface, self, runtime)

    return wrapper

DEVICES = ("auto", "cpu", "cuda")


class _CommonInputSpec(BaseInterfaceInputSpec):
    preset = traits.Str("fast", usedefault=True, desc="training preset name (paper, fast, smoke) or YAML file")
    iterations_dsn = traits.Int(desc="override the preset's DSN iterations")
    iterations_srn = traits.Int(desc="override the preset's SRN iterations")
    batch_size = traits.Int(desc="override the preset's batch size (both stages)")
    patch_size = traits.Int(desc="override the preset's HR patch size (both stages)")
    seed = traits.Int(0, usedefault=True, desc="seed of every random draw")
    device = traits.Enum(*DEVICES, usedefault=True, desc="torch device; 'auto' picks CUDA when available")
    precision = traits.Enum("auto", "fp32", "bf16", "fp16", usedefault=True, desc="autocast precision (CPU: fp32 unless bf16 is asked for)")
    use_gpu = traits.Bool(False, usedefault=True, nohash=True,
                          desc="tell nipype's MultiProc scheduler that this node occupies a GPU")
    num_threads = traits.Int(desc="number of CPU threads for torch", nohash=True)
    tensorboard = traits.Bool(True, usedefault=True, nohash=True, desc="write a TensorBoard log")


class _VGGInputSpec(_CommonInputSpec):
    vgg19_weights = File(exists=True, desc="torchvision vgg19-dcbb9e9d.pth (else $DDASR_VGG19_WEIGHTS or hub cache)")
    allow_random_vgg19 = traits.Bool(False, usedefault=True,
                                     desc="explicit opt-in to a seeded random VGG19 when no weights are found")
    work_dir = Directory(desc="folder for the stage's checkpoints, logs and prepared data, kept across "
                              "reruns (default: next to the node's directory, named after the node and a "
                              "hash of its inputs)", nohash=True)


def stage_dir(interface, runtime, stage: str) -> str:
    """The folder where a resumable stage keeps its checkpoints (see the module docstring)."""
    work_dir = interface.inputs.work_dir
    if isdefined(work_dir) and work_dir:
        return os.path.abspath(work_dir)
    _, hashvalue = interface.inputs.get_hashval(hash_method="timestamp")
    cwd = Path(runtime.cwd)
    return str(cwd.parent / f"_{cwd.name}_{stage}_{hashvalue[:12]}")


def _options(inputs, **extra):
    from ddasr_nipype.training.config import load_preset
    from ddasr_nipype.training.pipeline import TrainingOptions

    def opt(name):
        value = getattr(inputs, name, None)
        return value if isdefined(value) else None

    preset = load_preset(inputs.preset).with_overrides(
        iterations_dsn=opt("iterations_dsn"), iterations_srn=opt("iterations_srn"),
        batch_size=opt("batch_size"), patch_size=opt("patch_size"))
    return TrainingOptions(
        preset=preset, seed=inputs.seed, device=inputs.device, precision=inputs.precision, resume=True,
        vgg19_weights=opt("vgg19_weights"), allow_random_vgg19=bool(opt("allow_random_vgg19")),
        tensorboard=inputs.tensorboard, num_threads=opt("num_threads"), **extra)


class _TrainDSNInputSpec(_VGGInputSpec):
    hr_dir = Directory(exists=True, mandatory=True, desc="BIDS dataset of real HR T1w scans")
    lr_dir = Directory(exists=True, mandatory=True, desc="BIDS dataset of real LR T1w scans (unpaired)")
    hr_filters = traits.Dict(desc="pybids filters of the HR T1w query")
    lr_filters = traits.Dict(desc="pybids filters of the LR T1w query")
    hr_participant_label = InputMultiObject(traits.Str, desc="HR subjects to use")
    lr_participant_label = InputMultiObject(traits.Str, desc="LR subjects to use")
    time_limit = traits.Float(desc="end the DSN stage after this many seconds (checkpointed), e.g. to fit "
                                   "a SLURM wall time")


class _TrainDSNOutputSpec(TraitedSpec):
    dsn_checkpoint = File(exists=True, desc="final DSN checkpoint (weights, config, optimizer, RNG)")
    hr_slices = File(exists=True, desc="prepared, normalised HR slices (float32 .npz)")
    lr_slices = File(exists=True, desc="prepared, normalised LR slices (float32 .npz)")
    data_summary = File(exists=True, desc="JSON: files used, voxel sizes, slice counts")
    out_log = File(exists=True, desc="CSV training log of the DSN")


class TrainDSN(SimpleInterface):
    """Stage 1: prepare the unpaired HR/LR slices and train the down-sampling network.

    >>> node = TrainDSN(hr_dir=".", lr_dir=".", preset="smoke")
    >>> node.inputs.preset
    'smoke'
    """

    input_spec = _TrainDSNInputSpec
    output_spec = _TrainDSNOutputSpec
    can_resume = True

    @_fork_safe_training
    def _run_interface(self, runtime):
        from ddasr_nipype.training.pipeline import apply_num_threads, load_backbone, prepare_data, run_dsn_stage

        work = stage_dir(self, runtime, "dsn")
        i = self.inputs
        options = _options(
            i, hr_dir=i.hr_dir, lr_dir=i.lr_dir, work_dir=work,
            hr_filters=dict(i.hr_filters) if isdefined(i.hr_filters) else {},
            lr_filters=dict(i.lr_filters) if isdefined(i.lr_filters) else {},
            hr_participant_label=tuple(i.hr_participant_label) if isdefined(i.hr_participant_label) else (),
            lr_participant_label=tuple(i.lr_participant_label) if isdefined(i.lr_participant_label) else (),
            dsn_time_limit=i.time_limit if isdefined(i.time_limit) else None,
        )
        apply_num_threads(options.num_threads)
        vgg, backbone = load_backbone(options)
        hr, lr, summary = prepare_data(options)
        trainer = run_dsn_stage(options, hr, lr, vgg, backbone)
        summary_file = os.path.join(runtime.cwd, "data_summary.json")
        with open(summary_file, "w") as stream:
            json.dump({**summary, "backbone": backbone}, stream, indent=2)
        self._results.update(
            dsn_checkpoint=str(trainer.checkpoint_path),
            hr_slices=os.path.join(work, "data", "hr_slices.npz"),
            lr_slices=os.path.join(work, "data", "lr_slices.npz"),
            data_summary=summary_file,
            out_log=os.path.join(work, "logs", "dsn.csv"),
        )
        return runtime


class _SynthesizePairsInputSpec(_CommonInputSpec):
    hr_slices = File(exists=True, mandatory=True, desc="prepared HR slices (from TrainDSN)")
    lr_slices = File(exists=True, desc="prepared LR slices (DSN domain references)")
    dsn_checkpoint = File(exists=True, desc="trained DSN checkpoint, or a bundle's dsn via dsn_bundle")
    dsn_bundle = Directory(exists=True, desc="model bundle whose dsn.pt is used (instead of dsn_checkpoint)")
    degradation = traits.Enum("bicubic", "kspace", "realsr", "realesrgan",
                              desc="classical degradation instead of the DSN")


class _SynthesizePairsOutputSpec(TraitedSpec):
    pairs_file = File(exists=True, desc="(LR, HR) slice pairs, float32 .npz (lossless)")
    n_pairs = traits.Int(desc="number of slice pairs")


class SynthesizePairs(SimpleInterface):
    """Stage 2: degrade every HR slice with the trained DSN (or a classical degradation)."""

    input_spec = _SynthesizePairsInputSpec
    output_spec = _SynthesizePairsOutputSpec

    @_fork_safe_training
    def _run_interface(self, runtime):
        from ddasr_nipype.training.datasets import SliceSet
        from ddasr_nipype.training.engine import resolve_device
        from ddasr_nipype.training.pipeline import apply_num_threads, load_dsn, run_synthesis_stage

        i = self.inputs
        degradation = i.degradation if isdefined(i.degradation) else None
        options = _options(i, work_dir=os.path.join(runtime.cwd, "train"), degradation=degradation)
        apply_num_threads(options.num_threads)
        hr = SliceSet.load(i.hr_slices)
        lr = SliceSet.load(i.lr_slices) if isdefined(i.lr_slices) else None
        dsn = None
        if degradation is None:
            source = i.dsn_bundle if isdefined(i.dsn_bundle) else (i.dsn_checkpoint if isdefined(i.dsn_checkpoint) else None)
            if source is None or lr is None:
                raise ValueError("SynthesizePairs needs dsn_checkpoint (or dsn_bundle) and lr_slices, "
                                 "or a classical degradation")
            dsn, _ = load_dsn(source, device=resolve_device(i.device))
        pairs = run_synthesis_stage(options, hr, lr, dsn)
        self._results.update(pairs_file=str(options.work / "pairs" / "pairs.npz"), n_pairs=len(pairs))
        return runtime


class _TrainSRNInputSpec(_VGGInputSpec):
    pairs_file = File(exists=True, mandatory=True, desc="(LR, HR) pairs from SynthesizePairs")
    data_summary = File(exists=True, mandatory=True, desc="JSON data summary from TrainDSN")
    dsn_checkpoint = File(exists=True, desc="the DSN to include in the bundle (optional)")
    out_dir = traits.Str(desc="bundle directory to write (default: <node dir>/bundle)")
    model_name = traits.Str(desc="name recorded in the bundle (default: the bundle folder name)")
    init_generator = Directory(exists=True, desc="fine-tune: start from this bundle's generator")
    time_limit = traits.Float(desc="end the SRN stage after this many seconds (checkpointed) and still "
                                   "write the bundle")


class _TrainSRNOutputSpec(TraitedSpec):
    bundle_dir = Directory(exists=True, desc="the model bundle (manifest.json, srn.pt, dsn.pt, MODEL_CARD.md)")
    generator_sha256 = traits.Str(desc="sha256 of the bundle's generator weights")
    out_log = File(exists=True, desc="CSV training log of the SRN")


class TrainSRN(SimpleInterface):
    """Stage 3: train the SR generator and discriminator, write the model bundle (EMA generator)."""

    input_spec = _TrainSRNInputSpec
    output_spec = _TrainSRNOutputSpec
    can_resume = True

    @_fork_safe_training
    def _run_interface(self, runtime):
        from ddasr_nipype.training.datasets import PairSet
        from ddasr_nipype.training.pipeline import (
            apply_num_threads,
            load_backbone,
            load_dsn,
            run_srn_stage,
            write_bundle,
        )

        i = self.inputs
        out_dir = i.out_dir if isdefined(i.out_dir) and i.out_dir else os.path.join(runtime.cwd, "bundle")
        options = _options(i, work_dir=stage_dir(self, runtime, "srn"), out_dir=out_dir,
                           name=i.model_name if isdefined(i.model_name) else None,
                           init_generator=i.init_generator if isdefined(i.init_generator) else None,
                           srn_time_limit=i.time_limit if isdefined(i.time_limit) else None)
        apply_num_threads(options.num_threads)
        vgg, backbone = load_backbone(options)
        pairs = PairSet.load(i.pairs_file)
        with open(i.data_summary) as stream:
            summary = json.load(stream)
        trainer = run_srn_stage(options, pairs, vgg, backbone)
        dsn, dsn_info = (None, {"source": pairs.source})
        if isdefined(i.dsn_checkpoint):
            dsn, dsn_info = load_dsn(i.dsn_checkpoint)
            dsn_info["source"] = "trained"
        if not pairs.source.startswith("dsn"):  # "dsn" or "dsn+nlmeans(...)": DSN pairs
            options = _replace(options, degradation=pairs.source)
        bundle = write_bundle(options, srn=trainer, summary=summary, n_pairs=len(pairs), backbone=backbone,
                              dsn=dsn, dsn_info=dsn_info)
        self._results.update(bundle_dir=str(bundle.path), generator_sha256=bundle.sha256,
                             out_log=str(options.work / "logs" / "srn.csv"))
        return runtime


def _replace(options, **changes):
    import dataclasses

    return dataclasses.replace(options, **changes)
