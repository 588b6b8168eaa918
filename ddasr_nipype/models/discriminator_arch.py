"""Attention U-Net discriminator with spectral normalisation (DDASR SRN discriminator).

Papers: Cong et al., "Domain-distance adapted super-resolution of brain MR images" (DDASR),
Sect. II-B and Fig. 2(e), which adopts the discriminator of Wei et al., "A-ESRGAN: Training
real-world blind super-resolution with attention U-Net discriminators" (PRICAI 2023), with
spectral normalisation (Miyato et al., ICLR 2018). Attention gates follow Oktay et al.,
"Attention U-Net" (MIDL 2018).

Differences from the A-ESRGAN code, for arbitrary input sizes: the 1x1 gating conv has no
padding, and each concatenation block upsamples bilinearly to its skip's size (x2 for even
sizes) instead of a fixed x2 followed by padding. Forward only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .common import ModelConfig


@dataclass(frozen=True)
class DiscriminatorConfig(ModelConfig):
    """Hyperparameters of the attention U-Net discriminator (A-ESRGAN: 64 base features)."""

    in_channels: int = 1
    num_feat: int = 64

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_feat"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DiscriminatorConfig.{name} must be a positive integer, got {value!r}")


class AttentionGate(nn.Module):
    """Additive attention gate: theta (2x2 s2) on the skip, phi (1x1) on the gate, ReLU, psi -> sigmoid.

    The 1-channel attention map is upsampled to the skip's size and multiplies it; a 1x1 conv +
    BatchNorm follows (A-ESRGAN ``add_attn``).
    """

    def __init__(self, x_channels: int, g_channels: int):
        super().__init__()
        self.theta = nn.Conv2d(x_channels, x_channels, kernel_size=2, stride=2, bias=False)
        self.phi = nn.Conv2d(g_channels, x_channels, kernel_size=1)
        self.psi = nn.Conv2d(x_channels, 1, kernel_size=1)
        self.out = nn.Sequential(nn.Conv2d(x_channels, x_channels, kernel_size=1), nn.BatchNorm2d(x_channels))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        theta = self.theta(x)
        phi = F.interpolate(self.phi(g), size=theta.shape[-2:], mode="bilinear", align_corners=False)
        attn = torch.sigmoid(self.psi(F.relu(theta + phi)))
        attn = F.interpolate(attn, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(attn * x)


class ConcatBlock(nn.Module):
    """Bilinear upsampling to the skip's size, 3x3 SN conv, LeakyReLU 0.2, concat with the gated skip."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.conv = spectral_norm(nn.Conv2d(dim_in, dim_out, 3, 1, 1, bias=False))

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat((skip, F.leaky_relu(self.conv(x), 0.2)), 1)


class AttentionUNetDiscriminator(nn.Module):
    """``forward(x [B,1,H,W]) -> logits [B,1,H,W]``: a per-pixel real/fake logit map, any H, W."""

    def __init__(self, config: DiscriminatorConfig | None = None):
        super().__init__()
        self.config = config = config if config is not None else DiscriminatorConfig()
        nf = config.num_feat
        sn = spectral_norm
        self.conv0 = nn.Conv2d(config.in_channels, nf, 3, 1, 1)
        self.conv1 = sn(nn.Conv2d(nf, nf * 2, 3, 2, 1, bias=False))
        self.conv2 = sn(nn.Conv2d(nf * 2, nf * 4, 3, 2, 1, bias=False))
        self.conv3 = sn(nn.Conv2d(nf * 4, nf * 8, 3, 2, 1, bias=False))
        self.gating = sn(nn.Conv2d(nf * 8, nf * 4, 1, 1, 0, bias=False))
        self.attn1 = AttentionGate(nf * 4, nf * 4)
        self.attn2 = AttentionGate(nf * 2, nf * 4)
        self.attn3 = AttentionGate(nf, nf * 4)
        self.cat1 = ConcatBlock(nf * 8, nf * 4)
        self.cat2 = ConcatBlock(nf * 4, nf * 2)
        self.cat3 = ConcatBlock(nf * 2, nf)
        self.conv4 = sn(nn.Conv2d(nf * 8, nf * 4, 3, 1, 1, bias=False))
        self.conv5 = sn(nn.Conv2d(nf * 4, nf * 2, 3, 1, 1, bias=False))
        self.conv6 = sn(nn.Conv2d(nf * 2, nf, 3, 1, 1, bias=False))
        self.conv7 = sn(nn.Conv2d(nf, nf, 3, 1, 1, bias=False))
        self.conv8 = sn(nn.Conv2d(nf, nf, 3, 1, 1, bias=False))
        self.conv9 = nn.Conv2d(nf, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"AttentionUNetDiscriminator expects [B, {self.config.in_channels}, H, W], got {tuple(x.shape)}"
            )
        act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        x0 = act(self.conv0(x))
        x1 = act(self.conv1(x0))
        x2 = act(self.conv2(x1))
        x3 = act(self.conv3(x2))
        gate = act(self.gating(x3))
        y = act(self.conv4(self.cat1(self.attn1(x2, gate), x3)))
        y = act(self.conv5(self.cat2(self.attn2(x1, gate), y)))
        y = act(self.conv6(self.cat3(self.attn3(x0, gate), y)))
        y = act(self.conv7(y))
        y = act(self.conv8(y))
        return self.conv9(y)
