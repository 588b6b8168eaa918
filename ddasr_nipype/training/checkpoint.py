"""Atomic, verifiable training checkpoints and RNG state capture.

A checkpoint is one ``torch.save`` file holding plain containers and tensors only (loaded back with
``weights_only=True``): the stage, the iteration, the preset, every state dict (networks, EMA,
optimizers, schedulers, grad scaler) and the python / numpy / torch (CPU and CUDA) RNG states. It is
written to a temporary file in the same directory, flushed and fsynced, then renamed over the old one
(``os.replace``), so a crash or a SIGKILL mid-write never leaves a truncated ``*_last.pt``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np

from ddasr_nipype.errors import CheckpointError
from ddasr_nipype.fileio import atomic_output

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "capture_rng", "restore_rng"]

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically to ``path`` (temp file in the same directory + ``os.replace``)."""
    import torch

    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "wb") as stream:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, stream)
        stream.flush()
        os.fsync(stream.fileno())
    return path


def load_checkpoint(path: str | Path, *, stage: str | None = None) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    CheckpointError
        If the file is missing, truncated or corrupt, was not written by this package, or belongs
        to another stage than ``stage``.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle errors, unsupported types...
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a ddasr-nipype training checkpoint (format {CHECKPOINT_FORMAT})")
    if stage is not None and state.get("stage") != stage:
        raise CheckpointError(f"{path}: a {state.get('stage')!r} checkpoint, expected a {stage!r} one")
    return state


def capture_rng(rng: np.random.Generator) -> dict[str, Any]:
    """Every RNG state a training run depends on (python, numpy generator and global, torch)."""
    import torch

    state = {
        "python": random.getstate(),
        "numpy_global": _plain(np.random.get_state(legacy=False)),
        "generator": rng.bit_generator.state,
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], rng: np.random.Generator) -> None:
    """Inverse of :func:`capture_rng` (``rng`` is updated in place)."""
    import torch

    try:
        random.setstate(_tuplify(state["python"]))
        legacy = dict(state["numpy_global"])
        legacy["state"] = {**legacy["state"], "key": np.asarray(legacy["state"]["key"], dtype=np.uint32)}
        np.random.set_state(legacy)
        rng.bit_generator.state = state["generator"]
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint RNG state cannot be restored: {err}") from err


def _plain(x):
    """numpy arrays and scalars -> lists and python numbers (loadable with ``weights_only``)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def _tuplify(x):
    if isinstance(x, (list, tuple)):
        return tuple(_tuplify(v) for v in x)
    return x
