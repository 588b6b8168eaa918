"""A perceptual backbone pretrained on brain MRI: the first stages of deepbet's network, in 2D.

deepbet (Fisch et al., "deepbet: Fast brain extraction of T1-weighted MRI using Convolutional Neural
Networks", Computers in Biology and Medicine 2024; MIT licence; installed with this package for brain
extraction, its weights ship inside the wheel) is a 3D LinkNet trained to segment the brain in T1w
volumes. Its early stages respond to the edges and textures of brain MR images, which is what a perceptual
loss should compare; ImageNet VGG19 weights are not available offline, and a random VGG19 only filters.

:class:`DeepbetFeatures` rebuilds deepbet's stem and first two residual stages as a 2D network. Each 3D
kernel is summed over its depth axis (the left-right axis of deepbet's RAS input): the 2D network answers a
sagittal slice exactly as the 3D network answers a volume made of that slice repeated along left-right,
away from the volume's ends. Instance norms normalize each 2D feature map (deepbet's normalize the volume).

Layers (``forward(x, layers)``): 0 = the stem's ReLU (16 channels, 1/2 resolution), 1 = stage 0
(16 channels, 1/4), 2 = stage 1 (32 channels, 1/8). The input ``[B, 1, H, W]`` on this package's
normalized scale (about [0, 1]) is mapped to deepbet's input statistics (mean 0.449, standard deviation
0.226) with a fixed affine map, the same for the output and the target.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: layer indices of :class:`DeepbetFeatures`
DEEPBET_LAYERS = (0, 1, 2)
#: the fixed affine map of a normalized T1w slice (brain mean about 0.4, deviation 0.25) to deepbet's input
_INPUT_CENTRE, _INPUT_SPREAD = 0.4, 0.25
_DEEPBET_MEAN, _DEEPBET_STD = 0.449, 0.226


def deepbet_weights_path() -> Path:
    """The weights file of the installed deepbet (``model.pt``, TorchScript); an ``ImportError`` without it."""
    from deepbet.utils import DATA_PATH

    return Path(DATA_PATH) / "models" / "model.pt"


def _depth_sum(weight: torch.Tensor) -> torch.Tensor:
    """``[out, in, kD, kH, kW]`` -> ``[out, in, kH, kW]``: the kernel's response to a depth-constant input."""
    return weight.sum(dim=2)


class _Residual2d(nn.Module):
    """deepbet's residual block (conv-IN-ReLU-conv-IN, plus the input or its 1x1 projection, ReLU)."""

    def __init__(self, w1: torch.Tensor, w2: torch.Tensor, stride: int, project: torch.Tensor | None):
        super().__init__()
        self.stride = stride
        self.register_buffer("w1", _depth_sum(w1))
        self.register_buffer("w2", _depth_sum(w2))
        self.register_buffer("project", None if project is None else _depth_sum(project))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(F.instance_norm(F.conv2d(x, self.w1, stride=self.stride, padding=1)))
        y = F.instance_norm(F.conv2d(y, self.w2, padding=1))
        shortcut = x if self.project is None else F.instance_norm(F.conv2d(x, self.project, stride=self.stride))
        return F.relu(y + shortcut)


class DeepbetFeatures(nn.Module):
    """Frozen 2D feature extractor from deepbet's weights (see the module docstring).

    Build it with :func:`load_deepbet_features`. Like :class:`~ddasr_nipype.models.VGG19Features`, it
    never requires gradients, stays in eval mode, and lets gradients flow to its input.
    """

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__()
        self.register_buffer("stem", _depth_sum(state["init.0.weight"]))
        self.stage0 = nn.ModuleList(
            _Residual2d(state[f"down0.block{b}.double_conv.0.weight"], state[f"down0.block{b}.double_conv.3.weight"],
                        1, None) for b in (1, 2))
        self.stage1 = nn.ModuleList([
            _Residual2d(state["down1.block1.double_conv.0.weight"], state["down1.block1.double_conv.3.weight"], 2,
                        state["down1.block1.downsample.0.weight"]),
            _Residual2d(state["down1.block2.double_conv.0.weight"], state["down1.block2.double_conv.3.weight"], 1,
                        None),
        ])

    def train(self, mode: bool = True) -> "DeepbetFeatures":
        return super().train(False)

    def forward(self, x: torch.Tensor, layers: Sequence[int] = DEEPBET_LAYERS) -> dict[int, torch.Tensor]:
        wanted = sorted(set(int(i) for i in layers))
        if not wanted or wanted[0] < 0 or wanted[-1] > 2:
            raise ValueError(f"DeepbetFeatures: layers must be among {DEEPBET_LAYERS}, got {list(layers)}")
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"DeepbetFeatures expects [B, 1, H, W], got {tuple(x.shape)}")
        x = _DEEPBET_MEAN + _DEEPBET_STD * (x - _INPUT_CENTRE) / _INPUT_SPREAD
        out: dict[int, torch.Tensor] = {}
        x = F.relu(F.instance_norm(F.conv2d(x, self.stem, stride=2, padding=3)))
        out[0] = x
        if wanted[-1] >= 1:
            x = F.max_pool2d(x, 3, stride=2, padding=1)
            for block in self.stage0:
                x = block(x)
            out[1] = x
        if wanted[-1] >= 2:
            for block in self.stage1:
                x = block(x)
            out[2] = x
        return {i: out[i] for i in wanted}


def load_deepbet_features(path: str | Path | None = None) -> tuple[DeepbetFeatures, dict[str, Any]]:
    """:class:`DeepbetFeatures` from deepbet's ``model.pt`` (default: the installed package's) and its
    provenance (``source``, ``path``, ``sha256``, ``license``) for the bundle."""
    path = Path(path) if path is not None else deepbet_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"deepbet weights not found at {path}: install deepbet (pip install deepbet)")
    scripted = torch.jit.load(str(path), map_location="cpu")
    state = {k: v.detach().float() for k, v in scripted.state_dict().items()}
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    module = DeepbetFeatures(state).eval().requires_grad_(False)
    return module, {"source": "deepbet", "path": str(path), "sha256": digest, "license": "MIT",
                    "layers": "stem (0), stage 0 (1), stage 1 (2); 3D kernels summed over depth"}
