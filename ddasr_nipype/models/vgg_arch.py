"""VGG19 feature extractor for the perceptual, structure and domain losses (no torchvision).

Paper: Simonyan & Zisserman, "Very deep convolutional networks for large-scale image
recognition", ICLR 2015. The module indices equal torchvision's ``vgg19().features`` so a
torchvision state dict (``features.N.weight``/``features.N.bias``, classifier keys ignored)
loads as is, and layers are addressed by the same indices, e.g. relu1_1 = 1, relu2_1 = 6,
relu3_1 = 11, relu4_1 = 20, relu5_1 = 29; conv1_2 = 2, conv2_2 = 7, pool2 = 9, conv3_2 = 12,
relu3_4 = 17.

Weights are never downloaded: :func:`load_vgg19` reads them from an explicit path,
``$DDASR_VGG19_WEIGHTS`` or the torch hub cache, or builds a seeded random backbone only when
asked to explicitly.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import VGGWeightsNotFoundError

#: torchvision's configuration "E" (VGG19): conv widths, "M" = 2x2 max pooling.
VGG19_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                    512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
#: File name of torchvision's ImageNet VGG19 weights in the torch hub cache.
HUB_FILENAME = "vgg19-dcbb9e9d.pth"
#: Environment variable that points to a VGG19 weights file.
ENV_VAR = "DDASR_VGG19_WEIGHTS"
#: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (torchvision indices).
RELU_X_1 = (1, 6, 11, 20, 29)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _layer_names() -> list[str]:
    names, block, conv = [], 1, 1
    for v in VGG19_CFG:
        if v == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 1
        else:
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
            conv += 1
    return names


#: Human-readable name of each torchvision index (``LAYER_NAMES[20] == "relu4_1"``).
LAYER_NAMES: tuple[str, ...] = tuple(_layer_names())


class VGG19Features(nn.Module):
    """Frozen VGG19 ``features`` (37 modules, torchvision indices), ImageNet-normalised input.

    ``forward(x, layers)`` takes ``x [B, 1 or 3, H, W]`` in ``[0, 1]`` (one channel is replicated
    to three), normalises it with the ImageNet mean/std and returns ``{index: feature}`` for
    the requested torchvision indices, stopping after the deepest one. Parameters never require
    gradients and the module stays in eval mode, but gradients flow to the input.
    ReLUs are not in-place, so a conv output returned as a feature is not overwritten.

    ``VGG19Features(seed)`` is a randomly initialised backbone (torchvision's init, seeded);
    build the module through :func:`load_vgg19`, which also loads pretrained weights.
    """

    def __init__(self, seed: int | None = 0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                # Built on the meta device and materialised below: torch's default init would
                # draw from (and advance) the global RNG for nothing.
                layers += [nn.Conv2d(c_in, int(v), kernel_size=3, padding=1, device="meta"), nn.ReLU()]
                c_in = int(v)
        self.features = nn.Sequential(*layers).to_empty(device="cpu")
        if seed is not None:  # None: left uninitialised, for a state dict to be loaded next
            self.reset_parameters(seed)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """torchvision's VGG init (Kaiming normal, fan-out, ReLU gain; zero bias) drawn from ``seed``.

        Uses a private generator: the global RNG is left untouched.
        """
        generator = torch.Generator().manual_seed(int(seed))
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
                nn.init.zeros_(module.bias)

    def train(self, mode: bool = True) -> VGG19Features:
        """Always eval: a loss network is frozen, whatever the trainer's ``model.train()`` says."""
        return super().train(False)

    def forward(self, x: torch.Tensor, layers: Sequence[int] = RELU_X_1) -> dict[int, torch.Tensor]:
        wanted = sorted(set(int(i) for i in layers))
        if not wanted:
            raise ValueError("VGG19Features: no layers requested")
        if wanted[0] < 0 or wanted[-1] >= len(self.features):
            raise ValueError(f"VGG19Features: layer indices must be in [0, {len(self.features) - 1}], got {layers}")
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"VGG19Features expects [B, 1 or 3, H, W], got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        out: dict[int, torch.Tensor] = {}
        for index, module in enumerate(self.features):
            x = module(x)
            if index in wanted:
                out[index] = x
                if index == wanted[-1]:
                    break
        return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_weight_locations(weights: str | os.PathLike | None = None) -> list[tuple[str, Path | None]]:
    """The places searched, in order: ``[(description, path or None), ...]``."""
    env = os.environ.get(ENV_VAR)
    return [
        ("explicit path", Path(weights).expanduser() if weights is not None else None),
        (f"${ENV_VAR}", Path(env).expanduser() if env else None),
        ("torch hub cache", Path(torch.hub.get_dir()) / "checkpoints" / HUB_FILENAME),
    ]


def _find_weights(weights: str | os.PathLike | None) -> Path | None:
    explicit, env, hub = default_weight_locations(weights)
    for description, path in (explicit, env):
        if path is not None:
            if not path.is_file():
                raise VGGWeightsNotFoundError(f"VGG19 weights given by {description} do not exist: {path}")
            return path
    return hub[1] if hub[1] is not None and hub[1].is_file() else None


def _features_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a torchvision-format VGG19 state dict; keep ``features.*`` (``N.weight`` also accepted)."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle errors, non-tensor payloads...
        reason = _short_load_error(exc)
        raise VGGWeightsNotFoundError(
            f"cannot read VGG19 weights from {path}: not a torchvision vgg19 state dict "
            f"({reason})"
        ) from exc
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise VGGWeightsNotFoundError(f"cannot read VGG19 weights from {path}: not a torchvision vgg19 state dict "
                                      f"(got a {type(raw).__name__})")
    state = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key.startswith("classifier."):
            continue
        name = key[len("features."):] if key.startswith("features.") else key
        state[name] = value
    return state


def _short_load_error(exc: Exception) -> str:
    """One line of a ``torch.load`` error: the ``weights_only`` text runs to a page of advice about
    trusting pickles; what follows ``WeightsUnpickler error:`` says what was found."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if found:
        reason = found.group(1).split(". Please")[0].strip()
    else:
        reason = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {reason[:200]}"


def load_vgg19(
    weights: str | os.PathLike | None = None, *, allow_random: bool = False, seed: int = 0
) -> tuple[VGG19Features, dict[str, Any]]:
    """Build the frozen VGG19 feature extractor and say where its weights came from.

    Lookup order: ``weights`` (explicit path), ``$DDASR_VGG19_WEIGHTS``, then
    ``torch.hub.get_dir()/checkpoints/vgg19-dcbb9e9d.pth``. A path given explicitly or by the
    environment must exist. With no file found, :class:`VGGWeightsNotFoundError` is raised
    unless ``allow_random=True``, which builds a backbone initialised like torchvision's VGG
    (Kaiming normal, fan-out, zero bias) from ``seed`` (same seed, same weights; the global RNG
    is untouched).

    Returns ``(module, provenance)`` with provenance
    ``{"source": "file", "path": ..., "sha256": ...}`` or
    ``{"source": "random", "seed": seed, "init": "kaiming_normal (torchvision vgg init)"}``.
    """
    path = _find_weights(weights)
    if path is None:
        if not allow_random:
            places = "\n".join(
                f"  - {description}: {p if p is not None else '(not given)'}"
                for description, p in default_weight_locations(weights)
            )
            raise VGGWeightsNotFoundError(
                "No VGG19 weights found (nothing is downloaded at run time). Looked in:\n"
                f"{places}\n"
                f"Put torchvision's {HUB_FILENAME} in one of these places (or pass its path: ddasr-train "
                "--vgg19-weights PATH), or opt in to a random, untrained backbone explicitly: "
                "ddasr-train --allow-random-vgg19 (Python API: allow_random=True); the perceptual, "
                "structure and domain losses are then far less meaningful."
            )
        provenance = {"source": "random", "seed": int(seed), "init": "kaiming_normal (torchvision vgg init)"}
        return VGG19Features(seed=seed), provenance

    state = _features_state_dict(path)
    model = VGG19Features(seed=None)
    try:
        model.features.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise VGGWeightsNotFoundError(f"{path} does not hold VGG19 features weights: {exc}") from exc
    model.requires_grad_(False)
    return model, {"source": "file", "path": str(path.resolve()), "sha256": _sha256(path)}
