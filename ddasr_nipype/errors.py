"""Typed errors raised by ddasr-nipype, so callers can tell user mistakes from bugs."""

from __future__ import annotations

from pathlib import Path


class DDASRError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidImageError(DDASRError, ValueError):
    """An input image cannot be used: unreadable, wrong dimensionality, non-finite, empty..."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        where = self.path if self.path is not None else "<in-memory image>"
        super().__init__(f"{where}: {problem}")


class InputDatasetError(DDASRError, ValueError):
    """The input dataset cannot be processed as asked (no T1w left to process, two inputs that
    would share an output name)."""


class ModelBundleError(DDASRError):
    """A model bundle is missing, incomplete or malformed."""


class ChecksumMismatchError(ModelBundleError):
    """A model file does not match the sha256 recorded in its bundle manifest."""


class VGGWeightsNotFoundError(DDASRError, FileNotFoundError):
    """No VGG19 weights file was found and a random backbone was not explicitly requested."""


class TrainingDataError(DDASRError, ValueError):
    """Training data are missing, empty, mismatched or too small for the chosen patch size."""


class CheckpointError(DDASRError):
    """A training checkpoint cannot be read or does not match the run it should resume."""
