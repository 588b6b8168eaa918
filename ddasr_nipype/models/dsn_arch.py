"""Domain-distance adapted down-sampling network (DSN), stage 1 of DDASR.

Paper: Cong et al., "Domain-distance adapted super-resolution of brain MR images" (DDASR),
Sect. II-A, Eq. 1-4 and Fig. 2(c). The transformer follows the StyTr^2 design the authors
started from (Deng et al., "StyTr^2: Image Style Transfer with Transformers", CVPR 2022):
a shared patch embedding, an HR "structure" encoder with content-aware positional encoding
(CAPE), an LR "domain" encoder without positional encoding, a cross-attention decoder and a
CNN upsampling decoder. Unlike the original code, this DSN ends with the paper's linear
degradation to the LR grid (integer factor ``scale``), so it really outputs an LR image, and it
accepts non-square inputs and HR/LR inputs of different sizes.

Forward only; the losses live in :mod:`ddasr_nipype.losses`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .common import ModelConfig, pad_to_multiple

DEGRADATIONS = ("area", "bilinear")


@dataclass(frozen=True)
class DSNConfig(ModelConfig):
    """Hyperparameters of the DSN; defaults are the paper's (d = 512, m = 8, n = 18).

    ``decoder_channels`` are the widths of the CNN upsampling decoder, one per x2 stage, so
    ``2 ** len(decoder_channels)`` must equal ``patch_size``; ``decoder_extra_convs`` is the
    number of same-width 3x3 convs after each stage's upsampling (StyTr^2: 3, 1, 1).
    ``degradation`` is the linear resize to the LR grid by the integer ``scale``: ``"area"``
    (box average over s x s) or ``"bilinear"`` (anti-aliased bilinear).

    ``residual`` (not in the paper; off by default) makes the decoded image ``hr + decoder(...)``
    with the decoder's last conv initialised to zero: the untrained DSN is then exactly the linear
    degradation of its input, and training only learns the site's departure from it (contrast,
    noise, blur). The paper's design has to learn to carry the whole image through the 8x8 token
    bottleneck first, which takes far more iterations than a CPU budget allows.
    """

    in_channels: int = 1
    d_model: int = 512
    nhead: int = 8
    dim_feedforward: int = 2048
    num_encoder_layers: int = 3
    num_decoder_layers: int = 3
    patch_size: int = 8
    cape_pool_size: int = 18
    dropout: float = 0.1
    scale: int = 2
    degradation: str = "area"
    decoder_channels: tuple[int, ...] = (256, 128, 64)
    decoder_extra_convs: tuple[int, ...] = (3, 1, 1)
    residual: bool = False

    def __post_init__(self) -> None:
        for name in ("decoder_channels", "decoder_extra_convs"):  # lists from YAML/JSON -> tuples
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("in_channels", "d_model", "nhead", "dim_feedforward", "patch_size",
                     "cape_pool_size", "scale"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DSNConfig.{name} must be a positive integer, got {value!r}")
        for name in ("num_encoder_layers", "num_decoder_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"DSNConfig.{name} must be a non-negative integer, got {value!r}")
        if self.d_model % self.nhead:
            raise ValueError(f"DSNConfig.d_model ({self.d_model}) must be divisible by nhead ({self.nhead})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DSNConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.degradation not in DEGRADATIONS:
            raise ValueError(f"DSNConfig.degradation must be one of {DEGRADATIONS}, got {self.degradation!r}")
        if 2 ** len(self.decoder_channels) != self.patch_size:
            raise ValueError(
                f"DSNConfig: the CNN decoder has {len(self.decoder_channels)} x2 stages, which undo a "
                f"patch size of {2 ** len(self.decoder_channels)}, not {self.patch_size}"
            )
        if len(self.decoder_extra_convs) != len(self.decoder_channels):
            raise ValueError("DSNConfig.decoder_extra_convs needs one entry per decoder stage")
        if any(c < 1 for c in self.decoder_channels) or any(n < 0 for n in self.decoder_extra_convs):
            raise ValueError("DSNConfig: decoder widths must be >= 1 and extra conv counts >= 0")


class CAPE(nn.Module):
    """Content-aware positional encoding (paper Eq. 1; StyTr^2).

    ``P_L = F_pos(AvgPool_{n x n}(E))`` with ``F_pos`` a 1x1 conv, then bilinear interpolation
    of ``P_L`` to the token grid gives ``P_c``.
    """

    def __init__(self, d_model: int, pool_size: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.proj = nn.Conv2d(d_model, d_model, kernel_size=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, d, gh, gw]`` (the embedded token map) -> ``P_c [B, d, gh, gw]``."""
        pos = self.proj(self.pool(tokens))
        return F.interpolate(pos, size=tokens.shape[-2:], mode="bilinear", align_corners=False)


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer; ``pos`` is added to queries and keys, never values."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        qk = src if pos is None else src + pos
        src = self.norm1(src + self.dropout1(self.self_attn(qk, qk, src, need_weights=False)[0]))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class DecoderLayer(nn.Module):
    """Decoder layer of paper Eq. 4: two cross-attentions to the LR memory, then the FFN.

    Both attentions take the HR sequence plus CAPE as query (``q = tgt + pos``) and the LR memory
    as keys and values; each is followed by residual + LayerNorm (post-norm, as StyTr^2).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.cross_attn1 = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.cross_attn2 = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        attn = self.cross_attn1(tgt + pos, memory, memory, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(attn))
        attn = self.cross_attn2(tgt + pos, memory, memory, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ffn))


class _ReflectConv(nn.Sequential):
    """3x3 conv with reflection padding (StyTr^2 decoder block), optionally followed by ReLU."""

    def __init__(self, c_in: int, c_out: int, relu: bool = True):
        layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(c_in, c_out, 3)]
        if relu:
            layers.append(nn.ReLU())
        super().__init__(*layers)


def _cnn_decoder(config: DSNConfig) -> nn.Sequential:
    """CNN upsampling decoder (StyTr^2): per stage conv(prev->c) + ReLU, x2 nearest, extra convs."""
    layers: list[nn.Module] = []
    prev = config.d_model
    for width, extra in zip(config.decoder_channels, config.decoder_extra_convs):
        layers += [_ReflectConv(prev, width), nn.Upsample(scale_factor=2, mode="nearest")]
        layers += [_ReflectConv(width, width) for _ in range(extra)]
        prev = width
    layers.append(_ReflectConv(prev, config.in_channels, relu=False))
    return nn.Sequential(*layers)


def linear_degradation(x: torch.Tensor, scale: int, mode: str = "area") -> torch.Tensor:
    """Resize ``x [B, C, H, W]`` to the LR grid ``[ceil(H/s), ceil(W/s)]`` (paper: "linear degradation").

    LR pixel ``j`` covers HR pixels ``[j*s, (j+1)*s)``, the grid convention of
    ``ddasr_nipype.data.slicing.upsampled_affine``. Sizes that are not multiples of ``s`` are
    padded (edge replication) first. ``"area"`` is the s x s box average; ``"bilinear"`` is
    anti-aliased bilinear (a triangle filter twice as wide).
    """
    if scale == 1:
        return x
    if mode not in DEGRADATIONS:
        raise ValueError(f"degradation must be one of {DEGRADATIONS}, got {mode!r}")
    h, w = x.shape[-2:]
    ph, pw = (-h) % scale, (-w) % scale
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    if mode == "area":
        return F.avg_pool2d(x, kernel_size=scale, stride=scale)
    size = (x.shape[-2] // scale, x.shape[-1] // scale)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


class DSN(nn.Module):
    """DDASR down-sampling network: HR slice + unpaired real LR slice -> synthetic LR slice.

    ``forward(hr [B,1,H,W], lr [B,1,h,w], *, degrade=True)`` returns ``[B,1,ceil(H/s),ceil(W/s)]``
    (``degrade=False``: the decoded full-size image ``[B,1,H,W]``, used by the identity losses).
    Both inputs are reflection-padded to a multiple of the patch size; the output is cropped back.
    """

    def __init__(self, config: DSNConfig | None = None):
        super().__init__()
        self.config = config = config if config is not None else DSNConfig()
        d = config.d_model
        self.patch_embed = nn.Conv2d(config.in_channels, d, kernel_size=config.patch_size,
                                     stride=config.patch_size)
        self.cape = CAPE(d, config.cape_pool_size)
        layer_args = (d, config.nhead, config.dim_feedforward, config.dropout)
        self.structure_encoder = nn.ModuleList(EncoderLayer(*layer_args) for _ in range(config.num_encoder_layers))
        self.domain_encoder = nn.ModuleList(EncoderLayer(*layer_args) for _ in range(config.num_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(*layer_args) for _ in range(config.num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.cnn_decoder = _cnn_decoder(config)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Xavier on every matrix of the transformer (StyTr^2 / DETR habit). The CNN decoder gets
        # Kaiming-normal (ReLU gain) instead of torch's default, which shrinks the signal variance
        # about 6x per conv + ReLU, so that the untrained DSN's output already depends on its input.
        for module in (self.structure_encoder, self.domain_encoder, self.decoder):
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        for m in self.cnn_decoder.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        if self.config.residual:
            last = [m for m in self.cnn_decoder.modules() if isinstance(m, nn.Conv2d)][-1]
            nn.init.zeros_(last.weight)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"DSN expects [B, {self.config.in_channels}, H, W], got {tuple(x.shape)}")
        x, _ = pad_to_multiple(x, self.config.patch_size)
        return self.patch_embed(x)

    def forward(self, hr: torch.Tensor, lr: torch.Tensor, *, degrade: bool = True) -> torch.Tensor:
        if hr.shape[0] != lr.shape[0]:
            raise ValueError(f"DSN: batch sizes differ (hr {hr.shape[0]}, lr {lr.shape[0]})")
        height, width = hr.shape[-2:]
        hr_map = self._embed(hr)  # [B, d, gh, gw]
        lr_map = self._embed(lr)
        grid = hr_map.shape[-2:]
        pos = self.cape(hr_map).flatten(2).transpose(1, 2)  # [B, N_hr, d]
        structure = hr_map.flatten(2).transpose(1, 2)
        domain = lr_map.flatten(2).transpose(1, 2)
        for layer in self.structure_encoder:
            structure = layer(structure, pos)
        for layer in self.domain_encoder:
            domain = layer(domain)
        out = structure
        for layer in self.decoder:
            out = layer(out, domain, pos)
        out = self.decoder_norm(out)
        out = out.transpose(1, 2).reshape(hr.shape[0], self.config.d_model, *grid)
        image = self.cnn_decoder(out)[..., :height, :width]
        if self.config.residual:
            image = hr + image
        if not degrade:
            return image
        return linear_degradation(image, self.config.scale, self.config.degradation)

    def lr_shape(self, height: int, width: int) -> tuple[int, int]:
        """The LR grid ``(ceil(H/s), ceil(W/s))`` the DSN produces for an HR slice of ``(H, W)``."""
        s = self.config.scale
        return math.ceil(height / s), math.ceil(width / s)
