"""Training of DDASR: stage 1 DSN, stage 2 synthetic pairs, stage 3 SRN, then a model bundle.

Plain torch/numpy (no nipype). Entry points:

- :func:`~ddasr_nipype.training.pipeline.run_training` with
  :class:`~ddasr_nipype.training.pipeline.TrainingOptions` (what ``ddasr-train`` calls);
- :class:`~ddasr_nipype.training.dsn_trainer.DSNTrainer`,
  :func:`~ddasr_nipype.training.synthesis.synthesize_pairs`,
  :class:`~ddasr_nipype.training.srn_trainer.SRNTrainer` for the stages one by one;
- :func:`~ddasr_nipype.training.config.load_preset` for the ``paper``, ``fast`` and ``smoke`` recipes.

Submodules are imported lazily so that ``import ddasr_nipype.training.config`` (used by
``ddasr-train --help``) does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainingPreset": "config",
    "load_preset": "config",
    "available_presets": "config",
    "TrainingOptions": "pipeline",
    "run_training": "pipeline",
    "OutputNotWritableError": "pipeline",
    "DSNTrainer": "dsn_trainer",
    "SRNTrainer": "srn_trainer",
    "synthesize_pairs": "synthesis",
    "degrade_pairs": "synthesis",
    "SliceSet": "datasets",
    "PairSet": "datasets",
    "TrainingInterrupted": "engine",
    "EXIT_INTERRUPTED": "engine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
