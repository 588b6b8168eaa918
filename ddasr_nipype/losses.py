"""Losses of DDASR: the DSN losses (paper Eq. 5-8) and the SRN losses (Eq. 9-13).

Paper: Cong et al., "Domain-distance adapted super-resolution of brain MR images" (DDASR),
Sect. II-A (DSN loss) and II-B (SRN loss). Where the paper is terse, the DSN losses follow
the StyTr^2 code the authors started from (see ``/work/shared/paper/implementation-notes.md``):

- every ``||.||_2`` of the paper is a mean squared error (``F.mse_loss``), as in that code;
- ``phi_l`` are the VGG19 relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 features (torchvision
  indices 1, 6, 11, 20, 29); ``mu``/``sigma`` are per-channel over H x W, with
  ``sigma = sqrt(var + 1e-5)`` and the population variance (``correction=0``, so a 1x1 map
  is fine);
- the structure loss compares mean/std-normalised relu4_1 and relu5_1 features;
- the synthetic LR ``Y^g`` is smaller than the HR input ``X`` (factor ``s``); for the structure
  loss it is resized back to the HR size (bilinear, ``align_corners=False``) before VGG, so
  the two feature maps align pixel for pixel (the paper only says all images are resized to
  the same dimension). The domain loss compares channel statistics and needs no resize;
- identity images ``I^g = DSN(I, I, degrade=False)`` are the decoded full-size images.

Each loss module returns a dict of named scalar terms plus ``"total"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .models.common import ModelConfig

#: VGG19 relu1_1 ... relu5_1 (torchvision ``features`` indices), used by the DSN losses.
DSN_LAYERS: tuple[int, ...] = (1, 6, 11, 20, 29)
#: The two deepest of them (relu4_1, relu5_1), used by the structure loss.
STRUCTURE_LAYERS: tuple[int, ...] = (20, 29)
STD_EPS = 1e-5


class FeatureExtractor(Protocol):
    """What the losses need from a VGG: ``vgg(x, layers) -> {index: feature}`` (see ``VGG19Features``)."""

    def __call__(self, x: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]: ...


def mean_std(feat: torch.Tensor, eps: float = STD_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and ``sqrt(var + eps)`` over H x W of ``feat [B, C, H, W]`` -> ``[B, C]`` each."""
    flat = feat.flatten(2)
    return flat.mean(dim=2), (flat.var(dim=2, correction=0) + eps).sqrt()


def mean_variance_norm(feat: torch.Tensor, eps: float = STD_EPS) -> torch.Tensor:
    """Normalise each channel of ``feat`` to zero mean and unit std over H x W."""
    mean, std = mean_std(feat, eps)
    return (feat - mean[..., None, None]) / std[..., None, None]


def structure_distance(feats_a: Mapping[int, torch.Tensor], feats_b: Mapping[int, torch.Tensor],
                       layers: Sequence[int] = STRUCTURE_LAYERS) -> torch.Tensor:
    """Eq. 5: sum over ``layers`` of MSE between mean/std-normalised features."""
    return sum(F.mse_loss(mean_variance_norm(feats_a[i]), mean_variance_norm(feats_b[i])) for i in layers)


def domain_distance(feats_a: Mapping[int, torch.Tensor], feats_b: Mapping[int, torch.Tensor],
                    layers: Sequence[int] = DSN_LAYERS) -> torch.Tensor:
    """Eq. 6: sum over ``layers`` of MSE(mean_a, mean_b) + MSE(std_a, std_b); sizes may differ."""
    total = 0.0
    for i in layers:
        mean_a, std_a = mean_std(feats_a[i])
        mean_b, std_b = mean_std(feats_b[i])
        total = total + F.mse_loss(mean_a, mean_b) + F.mse_loss(std_a, std_b)
    return total


def feature_distance(feats_a: Mapping[int, torch.Tensor], feats_b: Mapping[int, torch.Tensor],
                     layers: Sequence[int] = DSN_LAYERS) -> torch.Tensor:
    """Sum over ``layers`` of the MSE between raw features (the feature part of Eq. 7)."""
    return sum(F.mse_loss(feats_a[i], feats_b[i]) for i in layers)


@dataclass(frozen=True)
class DSNLossWeights(ModelConfig):
    """Weights of Eq. 8; defaults are the paper's (lambda_s, lambda_d, lambda_id1, lambda_id2) = (7, 10, 30, 5).

    The original StyTr^2 code used (7, 10, 70, 1).
    """

    structure: float = 7.0
    domain: float = 10.0
    identity_pixel: float = 30.0
    identity_feature: float = 5.0

    def __post_init__(self) -> None:
        for name, value in self.to_dict().items():
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"DSNLossWeights.{name} must be a non-negative number, got {value!r}")


class DSNLoss(nn.Module):
    """Total DSN loss (Eq. 8) = lambda_s L_s + lambda_d L_d + lambda_id1 L_id,pix + lambda_id2 L_id,feat.

    ``forward(dsn, hr, lr)`` runs the DSN three times — ``DSN(hr, lr)`` (synthetic LR),
    ``DSN(hr, hr, degrade=False)`` and ``DSN(lr, lr, degrade=False)`` (identity images) — and
    returns ``{"structure", "domain", "identity_pixel", "identity_feature", "total"}`` (unweighted
    terms, weighted total). A trainer that wants the images (e.g. to log them) runs the DSN itself
    and calls :meth:`terms` with the outputs.
    """

    def __init__(self, vgg: FeatureExtractor, weights: DSNLossWeights | None = None):
        super().__init__()
        self.vgg = vgg
        self.weights = weights if weights is not None else DSNLossWeights()

    def forward(self, dsn: nn.Module, hr: torch.Tensor, lr: torch.Tensor) -> dict[str, torch.Tensor]:
        synthetic_lr = dsn(hr, lr)
        identity_hr = dsn(hr, hr, degrade=False)
        identity_lr = dsn(lr, lr, degrade=False)
        return self.terms(synthetic_lr, hr, lr, identity_hr, identity_lr)

    def terms(self, synthetic_lr: torch.Tensor, hr: torch.Tensor, lr: torch.Tensor,
              identity_hr: torch.Tensor, identity_lr: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss from precomputed DSN outputs.

        ``synthetic_lr = DSN(hr, lr)``, ``identity_hr = DSN(hr, hr, degrade=False)``,
        ``identity_lr = DSN(lr, lr, degrade=False)``; ``hr`` and ``lr`` are the real inputs.
        """
        layers = DSN_LAYERS
        with torch.no_grad():
            hr_feats = self.vgg(hr, layers)
            lr_feats = self.vgg(lr, layers)
        resized = synthetic_lr
        if synthetic_lr.shape[-2:] != hr.shape[-2:]:
            resized = F.interpolate(synthetic_lr, size=hr.shape[-2:], mode="bilinear", align_corners=False)
        structure = structure_distance(self.vgg(resized, STRUCTURE_LAYERS), hr_feats)
        domain = domain_distance(self.vgg(synthetic_lr, layers), lr_feats)
        identity_pixel = F.mse_loss(identity_hr, hr) + F.mse_loss(identity_lr, lr)
        identity_feature = (feature_distance(self.vgg(identity_hr, layers), hr_feats)
                            + feature_distance(self.vgg(identity_lr, layers), lr_feats))
        w = self.weights
        total = (w.structure * structure + w.domain * domain + w.identity_pixel * identity_pixel
                 + w.identity_feature * identity_feature)
        return {"structure": structure, "domain": domain, "identity_pixel": identity_pixel,
                "identity_feature": identity_feature, "total": total}


class PerceptualLoss(nn.Module):
    """Multi-layer perceptual loss (Eq. 9): ``sum_l tau_l * dist(phi_l(sr), phi_l(hr))``.

    Layers are torchvision ``vgg19().features`` indices. The paper's {2, 7, 9, 12, 17} read
    that way are conv1_2, conv2_2, pool2, conv3_2 and relu3_4, while its weights
    {0.1, 0.1, 1, 1, 1} match Real-ESRGAN's {conv1_2, conv2_2, conv3_4, conv4_4, conv5_4}
    (indices 2, 7, 16, 25, 34); the paper's indices are the default, pass ``layers`` for the
    other reading. ``criterion`` is ``"mse"`` (the paper's ``||.||_2``) or ``"l1"``
    (Real-ESRGAN). Returns ``{"layer_<i>": ..., "total": ...}`` (per-layer terms unweighted).
    """

    def __init__(self, vgg: FeatureExtractor, layers: Sequence[int] = (2, 7, 9, 12, 17),
                 weights: Sequence[float] = (0.1, 0.1, 1.0, 1.0, 1.0), criterion: str = "mse"):
        super().__init__()
        if len(layers) != len(weights) or not layers:
            raise ValueError(f"PerceptualLoss: {len(layers)} layers but {len(weights)} weights")
        if criterion not in ("mse", "l1"):
            raise ValueError(f"PerceptualLoss.criterion must be 'mse' or 'l1', got {criterion!r}")
        self.vgg = vgg
        self.layers = tuple(int(i) for i in layers)
        self.layer_weights = tuple(float(w) for w in weights)
        self.criterion = F.mse_loss if criterion == "mse" else F.l1_loss

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> dict[str, torch.Tensor]:
        sr_feats = self.vgg(sr, self.layers)
        with torch.no_grad():
            hr_feats = self.vgg(hr, self.layers)
        out: dict[str, torch.Tensor] = {}
        total = sr.new_zeros(())
        for index, weight in zip(self.layers, self.layer_weights):
            term = self.criterion(sr_feats[index], hr_feats[index])
            out[f"layer_{index}"] = term
            total = total + weight * term
        out["total"] = total
        return out


def relativistic_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss of Eq. 11 with ``D(a, b) = sigmoid(C(a) - mean C(b))``.

    ``-E[log D(real, fake)] - E[log(1 - D(fake, real))]``, computed stably with
    BCE-with-logits; the means run over the whole logit map (batch and pixels, as ESRGAN).
    Pass ``fake_logits`` of a detached SR image in the discriminator step.
    """
    real_rel = real_logits - fake_logits.mean()
    fake_rel = fake_logits - real_logits.mean()
    return (F.binary_cross_entropy_with_logits(real_rel, torch.ones_like(real_rel))
            + F.binary_cross_entropy_with_logits(fake_rel, torch.zeros_like(fake_rel)))


def relativistic_g_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator adversarial loss of Eq. 12: ``-E[log(1 - D(real, fake))] - E[log D(fake, real)]``."""
    real_rel = real_logits - fake_logits.mean()
    fake_rel = fake_logits - real_logits.mean()
    return (F.binary_cross_entropy_with_logits(real_rel, torch.zeros_like(real_rel))
            + F.binary_cross_entropy_with_logits(fake_rel, torch.ones_like(fake_rel)))


@dataclass(frozen=True)
class SRNLossConfig(ModelConfig):
    """Weights of Eq. 13 (eta_1 perceptual, eta_2 L1, eta_3 adversarial) and the perceptual layers.

    ``backbone`` names the feature network of the perceptual term: ``vgg19`` (the paper's; ``layers`` are
    torchvision indices) or ``deepbet`` (:class:`~ddasr_nipype.models.deepbet_arch.DeepbetFeatures`, a
    network pretrained on brain MRI; ``layers`` among 0, 1, 2). The trainer builds it.
    ``pixel_criterion`` is the pixel term that ``eta_l1`` weighs: ``l1`` (the paper's L_1) or ``mse`` (the
    mean squared error, the criterion PSNR scores: its minimiser is the conditional mean, L1's the median).
    """

    eta_perceptual: float = 1.0
    eta_l1: float = 1.0
    eta_adv: float = 0.1
    layers: tuple[int, ...] = (2, 7, 9, 12, 17)
    layer_weights: tuple[float, ...] = (0.1, 0.1, 1.0, 1.0, 1.0)
    perceptual_criterion: str = "mse"
    backbone: str = "vgg19"
    pixel_criterion: str = "l1"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        object.__setattr__(self, "layer_weights", tuple(float(w) for w in self.layer_weights))
        for name in ("eta_perceptual", "eta_l1", "eta_adv"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"SRNLossConfig.{name} must be a non-negative number, got {value!r}")
        if len(self.layers) != len(self.layer_weights):
            raise ValueError("SRNLossConfig: layers and layer_weights must have the same length")
        if self.perceptual_criterion not in ("mse", "l1"):
            raise ValueError(f"SRNLossConfig.perceptual_criterion must be 'mse' or 'l1', "
                             f"got {self.perceptual_criterion!r}")
        if self.pixel_criterion not in ("l1", "mse"):
            raise ValueError(f"SRNLossConfig.pixel_criterion must be 'l1' or 'mse', got {self.pixel_criterion!r}")
        if self.backbone not in ("vgg19", "deepbet"):
            raise ValueError(f"SRNLossConfig.backbone must be 'vgg19' or 'deepbet', got {self.backbone!r}")
        if self.backbone == "deepbet" and not set(self.layers) <= {0, 1, 2}:
            raise ValueError(f"SRNLossConfig: the deepbet backbone has layers 0, 1 and 2, got {list(self.layers)}")


class SRNLoss(nn.Module):
    """Generator loss of Eq. 13: ``eta_1 L_mper + eta_2 L_1 + eta_3 L'_G``.

    ``forward(sr, hr, real_logits, fake_logits)`` returns
    ``{"perceptual", "l1", "adversarial", "total"}``. ``real_logits = D(hr)`` and
    ``fake_logits = D(sr)`` (not detached, so the adversarial term reaches the generator); pass
    ``None`` for both to train without the adversarial term (e.g. a PSNR-oriented warm-up).
    The discriminator's own loss is :meth:`discriminator` (Eq. 11).
    """

    def __init__(self, vgg: FeatureExtractor, config: SRNLossConfig | None = None):
        super().__init__()
        self.config = config = config if config is not None else SRNLossConfig()
        self.perceptual = PerceptualLoss(vgg, config.layers, config.layer_weights, config.perceptual_criterion)

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, real_logits: torch.Tensor | None = None,
                fake_logits: torch.Tensor | None = None, weight: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """``weight`` (``[B, 1, H, W]`` in [0, 1], optional): where the output is learned. Outside it the
        L1 term does not count and the perceptual term sees the HR itself (``sr`` there is replaced by
        ``hr``), so nothing pulls the output there either way. A perceptual weight ``eta_perceptual = 0``
        skips the feature network. The ``"l1"`` entry is the pixel term of ``pixel_criterion`` (the
        mean squared error with ``mse``)."""
        if (real_logits is None) != (fake_logits is None):
            raise ValueError("SRNLoss: pass both real_logits and fake_logits, or neither")
        c = self.config
        error = (sr - hr).abs() if c.pixel_criterion == "l1" else (sr - hr).square()
        if weight is not None:
            l1 = (error * weight).sum() / weight.sum().clamp(min=1.0)
            sr = sr * weight + hr * (1.0 - weight)
        else:
            l1 = error.mean()
        perceptual = self.perceptual(sr, hr)["total"] if c.eta_perceptual > 0 else sr.new_zeros(())
        adversarial = (relativistic_g_loss(real_logits, fake_logits) if real_logits is not None
                       else sr.new_zeros(()))
        total = c.eta_perceptual * perceptual + c.eta_l1 * l1 + c.eta_adv * adversarial
        return {"perceptual": perceptual, "l1": l1, "adversarial": adversarial, "total": total}

    @staticmethod
    def discriminator(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eq. 11 as a dict: ``{"adversarial": L_D, "total": L_D}``."""
        loss = relativistic_d_loss(real_logits, fake_logits)
        return {"adversarial": loss, "total": loss}
