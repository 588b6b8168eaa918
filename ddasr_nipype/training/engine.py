"""The training loop shared by the DSN and SRN stages: devices, precision, signals, checkpoints.

:class:`StageTrainer` owns the iteration counter, a :class:`numpy.random.Generator` for every data
draw, the logger, and the checkpoint of one stage. Subclasses implement :meth:`train_step`,
:meth:`model_state` / :meth:`load_model_state` and :meth:`image_columns`.

Signals (:mod:`ddasr_nipype.training.signals`): while :meth:`StageTrainer.run` runs, SIGTERM and SIGINT
(SLURM preemption, Ctrl-C) are only recorded; the loop finishes the current iteration, writes the
checkpoint and raises :class:`TrainingInterrupted`, which ``ddasr-train`` turns into exit code
:data:`EXIT_INTERRUPTED` (75, ``EX_TEMPFAIL``: "try again", i.e. rerun with ``--resume``). A signal
recorded before the loop started stops it after its first iteration.

Reproducibility: on CPU, a run interrupted at any iteration and resumed from its checkpoint produces
bit-for-bit the same weights as the uninterrupted run (the model, optimizer, scheduler, EMA, grad
scaler and all RNG states are restored; image grids and logs draw no random numbers).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from ddasr_nipype.errors import CheckpointError
from ddasr_nipype.training.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from ddasr_nipype.training.config import TrainingPreset
from ddasr_nipype.training.logging import TrainingLogger
from ddasr_nipype.training.signals import mark_acted_on, stop_requested, training_loop

__all__ = ["EXIT_INTERRUPTED", "TrainingInterrupted", "StageTrainer", "resolve_device", "precision_dtype"]

EXIT_INTERRUPTED = 75


class TrainingInterrupted(Exception):
    """Training stopped on SIGTERM/SIGINT after writing ``checkpoint`` at ``iteration``."""

    def __init__(self, stage: str, iteration: int, checkpoint: Path, signal_name: str):
        self.stage, self.iteration, self.checkpoint, self.signal_name = stage, iteration, checkpoint, signal_name
        super().__init__(
            f"{signal_name}: {stage} training stopped at iteration {iteration}; checkpoint {checkpoint} "
            "(rerun the same command with --resume to continue)"
        )


def resolve_device(device: str = "auto"):
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is a ``ValueError``."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA GPU (use --device cpu or auto)")
    return dev


def precision_dtype(precision: str, device) -> Any:
    """Autocast dtype: ``auto`` is bf16 on CUDA GPUs that support it, else fp16 on CUDA, and fp32 on the CPU.

    On the CPU ``bf16`` must be asked for: it halves the time of a training step on CPUs with native
    bfloat16 instructions (AVX512-BF16 or AMX; measured on a 2-core AMD EPYC: the default generator's
    step 1.20 -> 0.60 s on one thread) and is slower than fp32 on CPUs without them. The weights and the
    optimizer stay fp32. ``fp16`` is CUDA only."""
    import torch

    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if precision == "fp32":
        return None
    if device.type != "cuda":
        if precision == "bf16":
            return torch.bfloat16
        if precision == "fp16":
            raise ValueError("precision fp16 needs a CUDA GPU; on the CPU use bf16 (CPUs with AVX512-BF16 or "
                             "AMX) or fp32")
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class StageTrainer:
    """Base class of :class:`~ddasr_nipype.training.dsn_trainer.DSNTrainer` and ``SRNTrainer``."""

    stage = "stage"

    def __init__(self, preset: TrainingPreset, work_dir: str | Path, *, vgg, backbone: dict,
                 device: str = "auto", seed: int = 0, precision: str = "auto", compile: bool = False,
                 tensorboard: bool = True):
        import torch

        self.preset = preset
        self.work_dir = Path(work_dir)
        self.device = resolve_device(device)
        self.seed = int(seed)
        self.amp_dtype = precision_dtype(precision, self.device)
        self.compile = compile
        self.tensorboard = tensorboard
        self.backbone = backbone
        self.vgg = vgg.to(self.device)
        self.iteration = 0
        self.rng = np.random.default_rng([self.seed, _STAGE_SEEDS[self.stage]])
        torch.manual_seed(self.seed * 1000 + _STAGE_SEEDS[self.stage])
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.last_losses: dict[str, float] = {}
        self._last_batch: dict[str, Any] = {}
        self.stopped_early = False  # set when run()'s time limit ended the stage

    # -- to implement -------------------------------------------------------------------------
    @property
    def stage_config(self):
        raise NotImplementedError

    def train_step(self) -> dict[str, Any]:
        raise NotImplementedError

    def model_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_model_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def image_columns(self) -> dict[str, np.ndarray]:
        return {}

    def current_lr(self) -> float:
        raise NotImplementedError

    # -- shared machinery -----------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.work_dir / "checkpoints" / f"{self.stage}_last.pt"

    @property
    def total(self) -> int:
        return int(self.stage_config.iterations)

    @property
    def finished(self) -> bool:
        return self.iteration >= self.total

    def autocast(self):
        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def prepare_module(self, module):
        """Move to the device; on CUDA use channels_last memory format."""
        import torch

        module = module.to(self.device)
        if self.device.type == "cuda":
            module = module.to(memory_format=torch.channels_last)
        return module

    def maybe_compile(self, module):
        """``torch.compile(module)`` when requested (the uncompiled module keeps the weights)."""
        if not self.compile:
            return module
        import torch

        return torch.compile(module)

    def to_tensor(self, array: np.ndarray):
        import torch

        t = torch.from_numpy(np.ascontiguousarray(array)).to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def backward_step(self, loss, optimizer, parameters) -> None:
        """Backward with the grad scaler (fp16 only), optional clipping, optimizer step."""
        import torch

        clip = self.stage_config.grad_clip
        self.scaler.scale(loss).backward()
        if clip:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, clip)
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "iteration": self.iteration,
            "finished": self.finished,
            "seed": self.seed,
            "preset": self.preset.to_dict(),
            "backbone": self.backbone,
            "last_losses": dict(self.last_losses),
            "models": self.model_state(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng(self.rng),
        }

    def save(self) -> Path:
        return save_checkpoint(self.checkpoint_path, self.state_dict())

    def resume(self, path: str | Path | None = None) -> int:
        """Load a checkpoint of this stage (default: ``checkpoints/<stage>_last.pt``); return its iteration."""
        path = Path(path) if path is not None else self.checkpoint_path
        state = load_checkpoint(path, stage=self.stage)
        section = self.stage_config.to_dict()
        saved = state.get("preset", {}).get(self.stage)
        if saved != section or state.get("preset", {}).get("data") != self.preset.data.to_dict():
            raise CheckpointError(
                f"{path}: written with other {self.stage}/data settings than this run's preset "
                f"({self.preset.name}); resume with the same preset and overrides"
            )
        if state.get("seed") != self.seed:
            raise CheckpointError(f"{path}: written with --seed {state.get('seed')}, this run uses {self.seed}")
        try:
            self.load_model_state(state["models"])
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(f"{path}: model/optimizer state does not fit this run: {err}") from err
        restore_rng(state["rng"], self.rng)
        self.iteration = int(state["iteration"])
        self.last_losses = dict(state.get("last_losses", {}))
        return self.iteration

    def run(self, *, until: int | None = None, time_limit: float | None = None) -> dict[str, Any]:
        """Train up to ``until`` (default: the preset's iteration count), checkpointing on the way.

        With ``time_limit`` (seconds of wall time from now) the stage ends early, checkpointed, once
        that time is spent (``self.stopped_early`` is then set): a run that must fit an allocation
        still ends with a usable model. Raises :class:`TrainingInterrupted`
        after checkpointing when SIGTERM/SIGINT arrives.
        """
        import time

        deadline = None if time_limit is None else time.monotonic() + float(time_limit)
        cfg = self.preset.logging
        stop_at = self.total if until is None else min(int(until), self.total)
        logger = TrainingLogger(self.work_dir, self.stage, total=self.total,
                                batch_size=self.stage_config.batch_size, start=self.iteration,
                                tensorboard=self.tensorboard)
        first = self.iteration + 1
        try:
            with training_loop():
                while self.iteration < stop_at:
                    losses = self.train_step()
                    self.iteration += 1
                    it = self.iteration
                    logger.advance(it)
                    out_of_time = deadline is not None and it < stop_at and time.monotonic() >= deadline
                    if it % cfg.log_every == 0 or it == stop_at or it == first or out_of_time:
                        self.last_losses = {k: float(v) for k, v in losses.items()}
                        logger.log(it, self.last_losses, lr=self.current_lr())
                    if it % cfg.image_every == 0 or it == self.total:
                        columns = self.image_columns()
                        if columns:
                            logger.images(it, columns)
                    if it % cfg.checkpoint_every == 0 or it == stop_at or out_of_time:
                        self.save()
                    stop = stop_requested()
                    if stop:
                        self.save()
                        mark_acted_on()
                        raise TrainingInterrupted(self.stage, it, self.checkpoint_path, stop)
                    if out_of_time:
                        self.stopped_early = True
                        break
                if self.iteration >= stop_at and not self.checkpoint_path.exists():
                    self.save()
        finally:
            try:
                logger.plot()
            finally:
                logger.close()
        return {"iterations": self.iteration, "final_losses": dict(self.last_losses),
                "it_per_s": logger.last.get("it_per_s")}


_STAGE_SEEDS = {"stage": 0, "dsn": 1, "srn": 2}
