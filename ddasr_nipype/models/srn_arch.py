"""Super-resolution generators: the DDASR encoder-bottleneck-decoder generator and ESRGAN's RRDBNet.

Papers:
- DDASR generator: Cong et al., "Domain-distance adapted super-resolution of brain MR images",
  Sect. II-B and Fig. 2(d). Encoder = conv + one RRDB (``f0``), then stride-2 convs (k4 s2 p1)
  that halve the resolution and widen the channels (``f_i = E_i(f_{i-1})``); bottleneck =
  cascaded RRDBs with a long residual; decoder = progressive fusion of the encoder skips with
  3x3 conv + PixelShuffle upsampling, then the final x``scale`` upsampling.
- RRDB and RRDBNet: Wang et al., "ESRGAN: Enhanced Super-Resolution Generative Adversarial
  Networks", ECCV Workshops 2018 (residual-in-residual dense block, residual scaling 0.2,
  initialisation scaled by 0.1). ``RRDBNet`` is the 23-block reference used in benchmarks.

Forward only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .common import ModelConfig, pad_to_multiple


def _check_positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r}")


RESIDUAL_SCALE = 0.2  # ESRGAN's residual scaling in RDB and RRDB: out * RESIDUAL_SCALE + x


@torch.no_grad()
def default_init_weights(module: nn.Module, scale: float = 1.0) -> None:
    """Kaiming-normal init of every conv scaled by ``scale``, zero bias (BasicSR/ESRGAN)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
            m.weight.mul_(scale)
            if m.bias is not None:
                m.bias.zero_()


class ResidualDenseBlock(nn.Module):
    """ESRGAN residual dense block: 5 densely connected 3x3 convs, LeakyReLU 0.2, out * 0.2 + x."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2)
        default_init_weights(self, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    """ESRGAN residual-in-residual dense block: three RDBs, out * 0.2 + x."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * RESIDUAL_SCALE + x


def _upsampler(num_feat: int, scale: int) -> nn.Sequential:
    """3x3 conv + PixelShuffle(2) per factor-of-2 step (scale 2, 4, 8...), else one PixelShuffle(s)."""
    layers: list[nn.Module] = []
    if scale == 1:
        return nn.Sequential()
    if scale & (scale - 1) == 0:
        for _ in range(int(math.log2(scale))):
            layers += [nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1), nn.PixelShuffle(2),
                       nn.LeakyReLU(0.2)]
    else:
        layers += [nn.Conv2d(num_feat, num_feat * scale * scale, 3, 1, 1), nn.PixelShuffle(scale),
                   nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers)


#: The noise-level map holds ``NOISE_MAP_SCALE * sigma`` (sigma in normalized intensity, where the
#: brain's white matter is near 1): the noise of real 1-3 mm T1w scans (sigma 0.01-0.04) maps to 0.5-2.
NOISE_MAP_SCALE = 50.0

_IMMERKAER = ((1.0, -2.0, 1.0), (-2.0, 4.0, -2.0), (1.0, -2.0, 1.0))


def _immerkaer_response(x: torch.Tensor, replicate: bool = False) -> torch.Tensor:
    """Immerkaer's noise response of ``x [B, 1, H, W]`` (float32), ``|x * mask| * sqrt(pi/2) / 6``: its mean
    over pure Gaussian noise is the noise's standard deviation. ``[B, 1, H-2, W-2]``, or ``[B, 1, H, W]`` with
    ``replicate`` (the image replicated past its edge, which then reads as no edge)."""
    mask = torch.tensor(_IMMERKAER, dtype=torch.float32, device=x.device).view(1, 1, 3, 3)
    if replicate:
        x = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(x, mask).abs() * (math.sqrt(math.pi / 2.0) / 6.0)


def estimate_noise_sigma(x: torch.Tensor, foreground: float | None = 0.1) -> torch.Tensor:
    """Noise standard deviation of each image of ``x [B, 1, H, W]`` (``H, W >= 3``) by Immerkaer's
    method (CVIU 1996): the mean absolute response to a Laplacian-difference mask that cancels smooth
    structure, times ``sqrt(pi/2) / 6``. Returns ``[B]`` (float32).

    With ``foreground`` (default 0.1, in the normalized intensity of the generator's input) the mean is
    taken over the pixels whose whole 3x3 neighbourhood is above it, the head: sites differ in whether
    they zero the background, and a whole-slice mean would read a masked scan's noise lower the more
    background a slice has. Images with fewer than 16 such pixels fall back to the whole image.
    ``foreground=None``: the whole image.
    """
    if x.ndim != 4 or x.shape[1] != 1 or min(x.shape[-2:]) < 3:
        raise ValueError(f"estimate_noise_sigma expects [B, 1, H>=3, W>=3], got {tuple(x.shape)}")
    x = x.float()
    response = _immerkaer_response(x)
    level = response.mean(dim=(1, 2, 3))
    if foreground is not None:
        inside = (-F.max_pool2d(-x, 3, 1)) > foreground  # the 3x3 minimum, aligned with the response
        count = inside.sum(dim=(1, 2, 3))
        level = torch.where(count >= 16, (response * inside).sum(dim=(1, 2, 3)) / count.clamp(min=1), level)
    return level


class LearnedNoiseEstimator(nn.Module):
    """Noise standard deviation of each image of ``x [B, 1, H, W]``: Immerkaer's response (as
    :func:`estimate_noise_sigma`) averaged over the head with learned per-pixel weights, ``[B]``.

    Immerkaer's plain mean reads a 2 mm slice's anatomy as noise (on held-out sub-trio 0.039 on a noise-free
    k-space-truncated slice, 0.047 with sigma 0.026 added): a small CNN on the slice and its response
    weights each pixel (``exp`` of its output), trained on synthetic LR slices with known added noise
    (``scripts/train_noise_estimator.py``) to down-weight edges and texture. Its last layer starts at zero,
    where it is the mean response over the head (the image replicated past its edge). The result
    is a weighted mean of the response: it cannot go negative, and it is 0 on a noise-free flat image.
    """

    def __init__(self, num_feat: int = 16, foreground: float = 0.1):
        super().__init__()
        self.foreground = foreground
        self.body = nn.Sequential(
            nn.Conv2d(2, num_feat, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(num_feat, 1, 3, 1, 1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1 or min(x.shape[-2:]) < 3:
            raise ValueError(f"LearnedNoiseEstimator expects [B, 1, H>=3, W>=3], got {tuple(x.shape)}")
        x = x.float()
        response = _immerkaer_response(x, replicate=True)  # an image cropped inside the head has no edge
        inside = ((-F.max_pool2d(-x, 3, 1, 1)) > self.foreground).float()
        inside = torch.where(inside.sum(dim=(1, 2, 3), keepdim=True) >= 16, inside, torch.ones_like(inside))
        # the response x 20 brings noise of 0.01-0.05 to the order of the image
        logit = self.body(torch.cat((x, 20.0 * response), 1).to(self.body[0].weight.dtype)).float()
        weight = torch.exp(logit.clamp(-10.0, 10.0)) * inside
        return (weight * response).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3)).clamp(min=1e-6)


@dataclass(frozen=True)
class GeneratorConfig(ModelConfig):
    """Hyperparameters of the DDASR generator.

    Level ``i`` (0 = input resolution) has ``num_feat * 2**i`` channels: with the defaults
    64 -> 128 -> 256 over ``num_down = 2`` stride-2 stages. The paper does not state the number of
    bottleneck RRDBs; 8 is this package's choice (``num_bottleneck_blocks``). For tests use e.g.
    ``GeneratorConfig(num_feat=8, num_grow_ch=4, num_bottleneck_blocks=1)``.

    ``global_residual`` (off by default; not in the paper) adds the bicubic up-sampling of the input
    to the output, so the network learns only the missing detail (the residual learning of VDSR): short
    trainings then no longer spend their iterations relearning the image itself.

    ``noise_level_input`` (off by default; not in the paper) gives the generator one more input channel,
    a constant map of the LR slice's noise standard deviation (x :data:`NOISE_MAP_SCALE`), as FFDNet
    does: one generator can then denoise noisy scans and still sharpen clean ones, where a generator
    without it must pick one behaviour for all inputs. See :meth:`SRGenerator.forward`.

    ``context_slices`` (0 by default; not in the paper) gives the generator that many neighbouring slices
    on each side of the one it super-resolves, as more input channels (2.5D): the anatomy changes little
    from one slice to the next and the noise does not repeat, so the neighbours tell noise from
    structure. The output is still the centre slice's. Channel order: the centre slice, then the
    neighbours at offsets -1, +1, -2, +2, ... (:func:`context_offsets`), then the noise-level map.

    ``noise_estimator`` (with ``noise_level_input``) is how a slice's level is estimated when none is given:
    ``"immerkaer"`` (default; :func:`estimate_noise_sigma`, which reads a 2 mm slice's anatomy as noise too)
    or ``"learned"`` (a :class:`LearnedNoiseEstimator` inside the generator, its weights in the bundle, that
    reads the noise and little of the anatomy). Training tells a ``"learned"`` generator the level of the
    noise added to each crop, which the estimator is trained to read.
    """

    in_channels: int = 1
    out_channels: int = 1
    num_feat: int = 64
    num_grow_ch: int = 32
    num_down: int = 2
    num_bottleneck_blocks: int = 8
    scale: int = 2
    global_residual: bool = False
    noise_level_input: bool = False
    context_slices: int = 0
    noise_estimator: str = "immerkaer"

    def __post_init__(self) -> None:
        if self.noise_estimator not in ("immerkaer", "learned"):
            raise ValueError(f"GeneratorConfig.noise_estimator must be 'immerkaer' or 'learned', "
                             f"got {self.noise_estimator!r}")
        if self.noise_estimator == "learned" and not self.noise_level_input:
            raise ValueError("GeneratorConfig.noise_estimator 'learned' needs noise_level_input: true")
        if not isinstance(self.context_slices, int) or isinstance(self.context_slices, bool) \
                or self.context_slices < 0:
            raise ValueError(f"GeneratorConfig.context_slices must be a non-negative integer, "
                             f"got {self.context_slices!r}")
        for name in ("global_residual", "noise_level_input"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GeneratorConfig.{name} must be true or false, got {getattr(self, name)!r}")
        _check_positive("GeneratorConfig", in_channels=self.in_channels, out_channels=self.out_channels,
                        num_feat=self.num_feat, num_grow_ch=self.num_grow_ch,
                        num_bottleneck_blocks=self.num_bottleneck_blocks, scale=self.scale)
        if not isinstance(self.num_down, int) or self.num_down < 0:
            raise ValueError(f"GeneratorConfig.num_down must be a non-negative integer, got {self.num_down!r}")

    def channels(self, level: int) -> int:
        """Number of feature channels at encoder level ``level``."""
        return self.num_feat * 2**level

    @property
    def image_channels(self) -> int:
        """Image channels of the input: ``in_channels`` for the centre slice and for each neighbour."""
        return self.in_channels * (1 + 2 * self.context_slices)


def context_offsets(context_slices: int) -> tuple[int, ...]:
    """Slice offsets of a 2.5D input's channels (``GeneratorConfig.context_slices``), centre first.

    >>> context_offsets(0), context_offsets(2)
    ((0,), (0, -1, 1, -2, 2))
    """
    return (0,) + tuple(sign * k for k in range(1, int(context_slices) + 1) for sign in (-1, 1))


def context_index(slices, n_slices: int, context_slices: int, stride: int = 1):
    """The slices a 2.5D input of each slice in ``slices`` takes, ``[len(slices), 1 + 2c]`` (numpy): the slice,
    then its neighbours at ``stride x`` :func:`context_offsets`, the first / last of ``n_slices`` repeated
    past the ends.

    >>> context_index([0, 4], 5, 1).tolist()
    [[0, 0, 1], [4, 3, 4]]
    """
    import numpy as np

    offsets = stride * np.asarray(context_offsets(context_slices))
    return np.clip(np.asarray(slices)[:, None] + offsets, 0, n_slices - 1)


def packed_noise_estimator_state(state: dict) -> dict:
    """The :class:`LearnedNoiseEstimator` weights packed in a generator's state dict (its
    ``noise_estimator.*`` entries, prefix removed; empty for a generator without one): the inverse of
    :func:`with_learned_noise_estimator`."""
    prefix = "noise_estimator."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def with_learned_noise_estimator(config: GeneratorConfig, state: dict, estimator_state: dict):
    """A noise-level generator's config and state dict with a :class:`LearnedNoiseEstimator` (its weights
    ``estimator_state``) in place of the one it had: for a generator trained told the added noise level
    (``noise_estimator: learned``, or the probe ``scripts/probes/known_noise_level.py``) and packed with the
    estimator that reads that level at inference."""
    if not config.noise_level_input:
        raise ValueError("only a generator with noise_level_input can take a noise estimator")
    estimator = LearnedNoiseEstimator()
    estimator.load_state_dict(estimator_state)  # checks the keys and shapes
    state = {k: v for k, v in state.items() if not k.startswith("noise_estimator.")}
    state.update({f"noise_estimator.{k}": v for k, v in estimator.state_dict().items()})
    return GeneratorConfig.from_dict({**config.to_dict(), "noise_estimator": "learned"}), state


class SRGenerator(nn.Module):
    """DDASR generator: ``forward(x [B,1,h,w]) -> [B,1,s*h,s*w]`` for any ``h, w``.

    Inputs are reflection-padded to a multiple of ``2**num_down`` and the output is cropped back.
    With ``config.noise_level_input`` it also takes the noise level: ``forward(x, noise_sigma)``.
    """

    def __init__(self, config: GeneratorConfig | None = None):
        super().__init__()
        self.config = config = config if config is not None else GeneratorConfig()
        ch = config.channels
        gc = config.num_grow_ch
        # Encoder: f0 = RRDB(conv_first(x)); f_i = E_i(f_{i-1}), k4 s2 p1.
        self.conv_first = nn.Conv2d(config.image_channels + int(config.noise_level_input), ch(0), 3, 1, 1)
        self.encoder_rrdb = RRDB(ch(0), gc)
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(ch(i), ch(i + 1), 4, 2, 1), nn.LeakyReLU(0.2))
            for i in range(config.num_down)
        )
        # Bottleneck: cascaded RRDBs at the deepest level, long residual.
        deepest = ch(config.num_down)
        self.bottleneck = nn.Sequential(*(RRDB(deepest, gc) for _ in range(config.num_bottleneck_blocks)))
        self.conv_body = nn.Conv2d(deepest, deepest, 3, 1, 1)
        # Decoder: per level (deepest first) 3x3 conv + PixelShuffle(2), then fuse the skip.
        self.up = nn.ModuleList(
            nn.Sequential(nn.Conv2d(ch(i + 1), ch(i) * 4, 3, 1, 1), nn.PixelShuffle(2), nn.LeakyReLU(0.2))
            for i in reversed(range(config.num_down))
        )
        self.fuse = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 * ch(i), ch(i), 3, 1, 1), nn.LeakyReLU(0.2))
            for i in reversed(range(config.num_down))
        )
        # Final upsampling by the SR scale.
        self.upsample = _upsampler(ch(0), config.scale)
        self.conv_hr = nn.Conv2d(ch(0), ch(0), 3, 1, 1)
        self.conv_last = nn.Conv2d(ch(0), config.out_channels, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2)
        if config.noise_estimator == "learned":
            self.noise_estimator = LearnedNoiseEstimator()

    def estimate_noise(self, x: torch.Tensor) -> torch.Tensor:
        """The noise level ``[B]`` of each slice of ``x [B, 1, H, W]``, as this generator reads it
        (``config.noise_estimator``)."""
        if self.config.noise_estimator == "learned":
            return self.noise_estimator(x)
        return estimate_noise_sigma(x)

    def forward(self, x: torch.Tensor, noise_sigma: torch.Tensor | None = None) -> torch.Tensor:
        """Super-resolve ``x [B, image_channels, h, w]`` (the centre slice first, then its neighbours:
        :attr:`GeneratorConfig.image_channels`).

        ``noise_sigma`` (``[B]`` or a scalar; only with ``config.noise_level_input``) is the noise standard
        deviation of each input. Left out, it is estimated from ``x`` itself (:meth:`estimate_noise`).
        Give it explicitly for a crop or tile of a larger slice: estimate it once on the whole slice, so
        that the tiles of one slice see the same level (a per-tile estimate would leave seams) and training
        crops see what whole slices see at inference.
        """
        if x.ndim != 4 or x.shape[1] != self.config.image_channels:
            raise ValueError(f"SRGenerator expects [B, {self.config.image_channels}, h, w], got {tuple(x.shape)}")
        if not self.config.noise_level_input:
            if noise_sigma is not None:
                raise ValueError("this generator has no noise-level input (GeneratorConfig.noise_level_input)")
            net_in = x
        else:
            if noise_sigma is None:
                noise_sigma = self.estimate_noise(x[:, :1])
            sigma = torch.as_tensor(noise_sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
            if sigma.shape[0] not in (1, x.shape[0]):
                raise ValueError(f"noise_sigma needs one value per image ({x.shape[0]}), got {sigma.shape[0]}")
            level = (NOISE_MAP_SCALE * sigma).expand(x.shape[0], 1, *x.shape[-2:])
            net_in = torch.cat((x, level), 1)
        net_in, (h, w) = pad_to_multiple(net_in, 2**self.config.num_down)
        x = net_in[:, : self.config.in_channels]
        feat = self.encoder_rrdb(self.conv_first(net_in))
        skips = [feat]
        for down in self.down:
            feat = down(feat)
            skips.append(feat)
        feat = feat + self.conv_body(self.bottleneck(feat))
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips[:-1])):
            feat = fuse(torch.cat((up(feat), skip), 1))
        out = self.conv_last(self.lrelu(self.conv_hr(self.upsample(feat))))
        s = self.config.scale
        out = out[..., : s * h, : s * w]
        if self.config.global_residual:
            lr = x[..., :h, :w]
            out = out + F.interpolate(lr, scale_factor=s, mode="bicubic", align_corners=False)
        return out


@dataclass(frozen=True)
class RRDBNetConfig(ModelConfig):
    """ESRGAN RRDBNet hyperparameters (23 RRDBs, 64 features, growth 32)."""

    in_channels: int = 1
    out_channels: int = 1
    num_feat: int = 64
    num_block: int = 23
    num_grow_ch: int = 32
    scale: int = 2
    #: Real-ESRGAN's x2 model (RealESRGAN_x2plus): pixel-unshuffle the input by 2, run the body at half
    #: the LR resolution, then upsample x4. A quarter of the body's FLOPs; the x2 RRDBNet most users run.
    pixel_unshuffle: bool = False

    def __post_init__(self) -> None:
        if self.pixel_unshuffle and self.scale != 2:
            raise ValueError("RRDBNetConfig: pixel_unshuffle is Real-ESRGAN's x2 design; it needs scale=2")
        _check_positive("RRDBNetConfig", in_channels=self.in_channels, out_channels=self.out_channels,
                        num_feat=self.num_feat, num_block=self.num_block, num_grow_ch=self.num_grow_ch,
                        scale=self.scale)


class RRDBNet(nn.Module):
    """ESRGAN generator (reference for benchmarks): ``[B,1,h,w] -> [B,1,s*h,s*w]``.

    Upsampling as in the ESRGAN paper: nearest-neighbour x2 + 3x3 conv + LeakyReLU per factor of 2
    (so x2 uses one such step, x4 two), or one nearest x``s`` + conv for other integers. With
    ``pixel_unshuffle=True`` it is Real-ESRGAN's x2 variant (BasicSR): the input is pixel-unshuffled by
    2 (4x the channels, half the size), the body runs there, and two x2 steps bring it to x2.
    """

    def __init__(self, config: RRDBNetConfig | None = None):
        super().__init__()
        self.config = config = config if config is not None else RRDBNetConfig()
        nf = config.num_feat
        in_channels = config.in_channels * (4 if config.pixel_unshuffle else 1)
        self.conv_first = nn.Conv2d(in_channels, nf, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(nf, config.num_grow_ch) for _ in range(config.num_block)))
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        s = 4 if config.pixel_unshuffle else config.scale
        self._factors = [2] * int(math.log2(s)) if s & (s - 1) == 0 else [s]
        self._factors = [f for f in self._factors if f > 1]
        self.conv_up = nn.ModuleList(nn.Conv2d(nf, nf, 3, 1, 1) for _ in self._factors)
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, config.out_channels, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.pixel_unshuffle:
            height, width = x.shape[-2:]
            x = F.pad(x, (0, width % 2, 0, height % 2), mode="replicate")
            feat = self.conv_first(F.pixel_unshuffle(x, 2))
        else:
            feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for factor, conv in zip(self._factors, self.conv_up):
            feat = self.lrelu(conv(F.interpolate(feat, scale_factor=factor, mode="nearest")))
        out = self.conv_last(self.lrelu(self.conv_hr(feat)))
        if self.config.pixel_unshuffle:
            out = out[..., : 2 * height, : 2 * width]
        return out
