"""Pieces shared by the architectures: typed configs and checkpoint files.

Every network is built from a frozen ``@dataclass`` config (nanoGPT style). Configs are
plain JSON-serialisable dicts once ``to_dict()``-ed, so a checkpoint or a bundle manifest
holds everything needed to rebuild the model from its file alone.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from ..errors import CheckpointError

C = TypeVar("C", bound="ModelConfig")


@dataclass(frozen=True)
class ModelConfig:
    """Base class of the frozen hyperparameter dataclasses (JSON round-trip helpers)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (tuples become lists)."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Rebuild a config; unknown keys are an error, missing keys take the defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; expected a subset of {sorted(names)}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in data.items():
            if isinstance(value, list) and "tuple" in str(hints.get(key, "")):
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``x [B, C, H, W]`` at the bottom/right to a multiple of ``multiple``.

    Reflection padding where the image is large enough, replication otherwise (reflection needs
    the pad to be smaller than the size). Returns the padded tensor and the original ``(H, W)``.
    """
    h, w = x.shape[-2:]
    ph = (-h) % multiple
    pw = (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if (ph < h and pw < w) else "replicate"
    return nn.functional.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def _registry() -> dict[str, tuple[type[nn.Module], type[ModelConfig]]]:
    from .discriminator_arch import AttentionUNetDiscriminator, DiscriminatorConfig
    from .dsn_arch import DSN, DSNConfig
    from .srn_arch import GeneratorConfig, RRDBNet, RRDBNetConfig, SRGenerator

    return {
        "DSN": (DSN, DSNConfig),
        "SRGenerator": (SRGenerator, GeneratorConfig),
        "AttentionUNetDiscriminator": (AttentionUNetDiscriminator, DiscriminatorConfig),
        "RRDBNet": (RRDBNet, RRDBNetConfig),
    }


def model_kind(model: nn.Module) -> str:
    """The registry name of ``model`` (its class name), checked against the known networks."""
    kind = type(model).__name__
    if kind not in _registry():
        raise ValueError(f"not a ddasr network: {kind}; known kinds are {sorted(_registry())}")
    return kind


def build_model(kind: str, config: dict[str, Any] | ModelConfig) -> nn.Module:
    """Build an (untrained) network of ``kind`` (e.g. ``"SRGenerator"``) from its config."""
    registry = _registry()
    if kind not in registry:
        raise ValueError(f"unknown model kind {kind!r}; known kinds are {sorted(registry)}")
    cls, config_cls = registry[kind]
    if isinstance(config, dict):
        config = config_cls.from_dict(config)
    elif not isinstance(config, config_cls):
        raise TypeError(f"{kind} needs a {config_cls.__name__}, got {type(config).__name__}")
    return cls(config)


def save_model(path: str | Path, model: nn.Module) -> Path:
    """Write ``{"kind", "config", "version", "state_dict"}`` atomically to ``path``.

    The file loads with ``torch.load(path, weights_only=True)``; :func:`load_model` rebuilds
    the network from it alone.
    """
    from .. import __version__

    path = Path(path)
    payload = {
        "kind": model_kind(model),
        "config": model.config.to_dict(),
        "version": __version__,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_model(path: str | Path, *, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild and load a network written by :func:`save_model` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise CheckpointError(f"{path}: not a readable model file ({exc})") from exc
    if not isinstance(payload, dict) or not {"kind", "config", "state_dict"} <= set(payload):
        raise CheckpointError(f"{path}: expected a dict with 'kind', 'config' and 'state_dict'")
    try:
        model = build_model(payload["kind"], payload["config"])
        model.load_state_dict(payload["state_dict"])
    except (ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    return model
