"""Stage 3: train the SR generator against the attention U-Net discriminator on (LR, HR) pairs.

Each iteration crops ``batch_size`` aligned pairs (LR ``p x p`` at ``(i, j)``, HR ``sp x sp`` at
``(s i, s j)``), then

1. generator step (discriminator frozen): ``L_G = eta_1 L_mper + eta_2 L_1 + eta_3 L'_G`` (Eq. 13, with
   the relativistic adversarial term of Eq. 12); during ``pixel_warmup_iterations`` without ``L'_G``;
2. discriminator step: relativistic ``L_D`` (Eq. 11) on ``D(HR)`` and ``D(SR.detach())`` (skipped
   during the warm-up);
3. EMA update of the generator copy used for inference (``ema_decay``; buffers copied).

With ``srn.lr_noise`` the LR crops get Gaussian noise first (:meth:`PairSet.add_lr_noise`). A generator with
``noise_level_input`` is given each crop's noise level: the Immerkaer estimate on its whole LR slice
(:meth:`PairSet.lr_noise_sigma`, as inference estimates it on whole slices; times the crop's
``intensity_scale`` factor) combined with the noise added to the crop, ``sqrt(slice_sigma**2 + added**2)``,
times a random factor with ``noise_level_jitter``. A generator with ``noise_estimator: learned`` is told the
added level alone: its estimator reads the noise, not the slice's anatomy.

Both networks use Adam (``lr``, betas ``(0.9, 0.99)``) and ``CosineAnnealingWarmRestarts(T_0 =
restart_period, T_mult = restart_mult, eta_min = 1e-7)``, stepped once per iteration.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from ddasr_nipype.training.config import SRNStageConfig, TrainingPreset, lr_noise_settings
from ddasr_nipype.training.datasets import PairSet
from ddasr_nipype.training.engine import StageTrainer

__all__ = ["SRNTrainer", "build_generator_config", "build_discriminator_config"]


def _widened_first_layer(weight, theirs, ours, share: float = 0.0):
    """The first-layer weight ``[out, in, k, k]`` of generator config ``theirs`` laid out for ``ours``:
    the image channels of the centre slice where they were, zeros for the neighbour slices that ``ours``
    adds (``context_slices``) and for a noise-level channel it adds (``noise_level_input``), the noise
    channel last. The widened generator computes the same function as the one it starts from.

    With ``share > 0`` (a 2D generator widened to 2.5D: ``SRNStageConfig.context_share``) each new
    neighbour gets ``share`` times the centre slice's weights, which keeps ``1 - 2 c share`` of them: the
    generator starts as the 2D one on the slices averaged across the slice direction."""
    import torch

    out = torch.zeros((weight.shape[0], ours.image_channels + int(ours.noise_level_input), *weight.shape[2:]),
                      dtype=weight.dtype, device=weight.device)
    out[:, :theirs.image_channels] = weight[:, :theirs.image_channels]
    new = ours.context_slices - theirs.context_slices
    if share and new > 0:
        if 2 * new * share >= 1:
            raise ValueError(f"context_share {share} leaves nothing to the centre slice with {new} new neighbours "
                             "on each side: it must be below 1 / (2 x that)")
        centre = weight[:, :theirs.in_channels].clone()
        out[:, :theirs.in_channels] = centre * (1.0 - 2 * new * share)
        for k in range(theirs.image_channels, ours.image_channels, ours.in_channels):
            out[:, k:k + ours.in_channels] = centre * share
    if theirs.noise_level_input:
        out[:, -1] = weight[:, theirs.image_channels]
    return out


def build_generator_config(preset: TrainingPreset):
    from ddasr_nipype.models import GeneratorConfig

    return GeneratorConfig.from_dict({**preset.srn.generator, "scale": preset.data.scale})


def build_discriminator_config(preset: TrainingPreset):
    from ddasr_nipype.models import DiscriminatorConfig

    return DiscriminatorConfig.from_dict(dict(preset.srn.discriminator))


def check_generator_fits(bundle, generator_config) -> bool:
    """Whether ``bundle``'s generator can start a generator of ``generator_config``: equal configs, or
    the bundle's without the ``noise_level_input`` channel, with fewer ``context_slices`` or with fewer
    ``num_bottleneck_blocks`` than ``generator_config`` has (returns True: the state is adapted by
    :func:`grown_generator_state`, which starts the new generator as the bundle's). Raises
    :class:`~ddasr_nipype.errors.ModelBundleError` naming the settings that differ otherwise."""
    from ddasr_nipype.errors import ModelBundleError

    theirs, ours = bundle.generator_config.to_dict(), generator_config.to_dict()
    widened = dict(theirs)
    if ours.get("noise_level_input") and not theirs.get("noise_level_input"):
        widened["noise_level_input"] = True
    if ours.get("context_slices", 0) > theirs.get("context_slices", 0):
        widened["context_slices"] = ours["context_slices"]
    if ours.get("num_bottleneck_blocks", 0) > theirs.get("num_bottleneck_blocks", 0):
        widened["num_bottleneck_blocks"] = ours["num_bottleneck_blocks"]
    # any estimator fits: a learned one comes from srn.noise_estimator_weights, or a preset that names none
    # adopts the bundle's (SRNTrainer.init_generator_from)
    widened["noise_estimator"] = ours.get("noise_estimator", "immerkaer")
    widen = widened != theirs
    if widened != ours:
        differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise ModelBundleError(
            f"{bundle.path}: its generator differs from this preset's in "
            f"{', '.join(f'{k} ({theirs.get(k)!r} vs {ours.get(k)!r})' for k in differ)}; fine-tune with "
            "the bundle's srn.generator settings"
        )
    return widen


def grown_generator_state(state: dict, theirs, ours, fresh: dict, share: float = 0.0) -> dict:
    """The state dict of generator config ``theirs`` laid out for the larger config ``ours`` (see
    :func:`check_generator_fits`), starting as the same function:

    - more input channels (``noise_level_input``, ``context_slices``): :func:`_widened_first_layer`;
    - more bottleneck RRDBs: the new blocks are appended, with the weights of ``fresh`` (the new
      generator's own initialization) except that the last convolution of each of their dense blocks
      starts at zero. Such an RRDB computes ``(1 + RESIDUAL_SCALE) x`` (1.2 x), so ``conv_body``'s
      weights are divided by that per new block; training then grows the new blocks from there (zero-initialized
      residual branches, as in Fixup / ReZero).
    """
    from ddasr_nipype.models.srn_arch import RESIDUAL_SCALE

    state = dict(state)
    if (theirs.image_channels, theirs.noise_level_input) != (ours.image_channels, ours.noise_level_input):
        state["conv_first.weight"] = _widened_first_layer(state["conv_first.weight"], theirs, ours, share)
    new_blocks = range(theirs.num_bottleneck_blocks, ours.num_bottleneck_blocks)
    for k in new_blocks:
        prefix = f"bottleneck.{k}."
        for key, value in fresh.items():
            if key.startswith(prefix):
                state[key] = value.clone().zero_() if ".conv5." in key else value.clone()
    if len(new_blocks):
        state["conv_body.weight"] = state["conv_body.weight"] / (1 + RESIDUAL_SCALE) ** len(new_blocks)
    if ours.noise_estimator == "learned":  # the new generator's own (srn.noise_estimator_weights)
        state.update({k: v.clone() for k, v in fresh.items() if k.startswith("noise_estimator.")})
    return state


def area_projection(sr, lr):
    """``sr [B,1,sH,sW]`` made to agree with ``lr [B,1,H,W]`` by block means (inference's ``projection:
    area``, :func:`ddasr_nipype.degradations.consistency_projection`): the mean of each ``s x s`` block
    becomes the LR pixel's. Differentiable; computed in float32."""
    import torch.nn.functional as F

    scale = sr.shape[-1] // lr.shape[-1]
    sr32, lr32 = sr.float(), lr.float()
    return sr32 + F.interpolate(lr32 - F.avg_pool2d(sr32, scale), scale_factor=scale, mode="nearest")


def _frozen_noise_estimator(weights: dict):
    """A :class:`~ddasr_nipype.models.LearnedNoiseEstimator` with ``weights``, frozen: it is trained on its own
    (``scripts/train_noise_estimator.py``); the generator is only told what it reads."""
    from ddasr_nipype.models import LearnedNoiseEstimator

    estimator = LearnedNoiseEstimator()
    estimator.load_state_dict(weights)
    return estimator.requires_grad_(False)


class SRNTrainer(StageTrainer):
    """Trains :class:`~ddasr_nipype.models.SRGenerator` (``trainer.generator``, EMA in ``trainer.ema``)."""

    stage = "srn"

    def __init__(self, preset: TrainingPreset, work_dir: str | Path, pairs: PairSet, **kwargs):
        import torch

        from ddasr_nipype.losses import SRNLoss, SRNLossConfig
        from ddasr_nipype.models import AttentionUNetDiscriminator, SRGenerator

        super().__init__(preset, work_dir, **kwargs)
        cfg = preset.srn
        if pairs.scale != preset.data.scale:
            raise ValueError(f"pairs are x{pairs.scale}, the preset trains x{preset.data.scale}")
        pairs.check_patch_size(cfg.patch_size)
        self.pairs = pairs
        self.generator_config = build_generator_config(preset)
        if cfg.slice_denoise:
            from ddasr_nipype.inference import SLICE_DENOISE_RADIUS

            if self.generator_config.context_slices:
                raise ValueError("srn.slice_denoise trains a 2D generator (srn.generator.context_slices 0)")
            if not preset.data.hr_voxel_size:
                raise ValueError("srn.slice_denoise needs data.hr_voxel_size (the neighbours' distance in mm)")
            if pairs.context_slices != SLICE_DENOISE_RADIUS:
                raise ValueError(f"srn.slice_denoise needs pairs with {SLICE_DENOISE_RADIUS} context slices on each "
                                 f"side, these have {pairs.context_slices}")
        elif pairs.context_slices != self.generator_config.context_slices:
            raise ValueError(f"the pairs have {pairs.context_slices} context slice(s) on each side, the generator "
                             f"takes {self.generator_config.context_slices} (srn.generator.context_slices)")
        self.initialized_from: dict[str, str] | None = None
        self._lr_noise = lr_noise_settings(cfg.lr_noise)
        self.discriminator_config = build_discriminator_config(preset)
        generator = SRGenerator(self.generator_config)
        if self.generator_config.noise_estimator == "learned":
            if not cfg.noise_estimator_weights:
                raise ValueError("srn.generator.noise_estimator 'learned' needs srn.noise_estimator_weights (a file "
                                 "written by scripts/train_noise_estimator.py)")
            generator.noise_estimator = _frozen_noise_estimator(
                torch.load(cfg.noise_estimator_weights, map_location="cpu", weights_only=True))
        self.generator = self.prepare_module(generator)
        self.discriminator = self.prepare_module(AttentionUNetDiscriminator(self.discriminator_config))
        self.ema = copy.deepcopy(self.generator).eval().requires_grad_(False)
        self._g = self.maybe_compile(self.generator)
        self._d = self.maybe_compile(self.discriminator)
        loss_config = SRNLossConfig.from_dict(dict(cfg.loss))
        features = self.vgg
        #: provenance of the perceptual term's feature network (the bundle records it)
        self.perceptual_backbone = dict(self.backbone or {}, name="vgg19")
        if loss_config.backbone == "deepbet":
            from ddasr_nipype.models.deepbet_arch import load_deepbet_features

            features, info = load_deepbet_features()
            features = features.to(self.device)
            self.perceptual_backbone = dict(info, name="deepbet")
        self.loss = SRNLoss(features, loss_config).to(self.device)
        betas = tuple(cfg.betas)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.lr_d or cfg.lr, betas=betas)
        sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts
        kw = {"T_0": cfg.restart_period, "T_mult": cfg.restart_mult, "eta_min": cfg.eta_min}
        self.sched_g, self.sched_d = sched(self.opt_g, **kw), sched(self.opt_d, **kw)

    def init_generator_from(self, bundle_path) -> dict[str, str]:
        """Start from the generator of a model bundle (weights into the generator and its EMA copy).

        The bundle's generator config must equal this preset's (``srn.generator`` and the scale), except
        that a generator without ``noise_level_input``, with fewer ``context_slices`` or with fewer
        ``num_bottleneck_blocks`` may start one with them (:func:`grown_generator_state`: the new
        generator begins as the bundle's). Raises
        :class:`~ddasr_nipype.errors.ModelBundleError` otherwise. Recorded in the new bundle.
        """
        from ddasr_nipype.bundle import load_bundle

        bundle = load_bundle(bundle_path)
        widen = check_generator_fits(bundle, self.generator_config)
        state = bundle.load_generator(str(self.device)).state_dict()
        if bundle.generator_config.noise_estimator == "learned" and self.generator_config.noise_estimator != "learned":
            self._adopt_noise_estimator(state)
        if widen:  # more inputs or blocks, started so that the new generator computes the bundle's function
            state = grown_generator_state(state, bundle.generator_config, self.generator_config,
                                          self.generator.state_dict(), self.preset.srn.context_share)
        self.generator.load_state_dict(state)
        self.ema.load_state_dict(state)
        self.initialized_from = {"name": bundle.name, "path": str(bundle.path), "sha256": bundle.sha256}
        return self.initialized_from

    def _adopt_noise_estimator(self, state: dict) -> None:
        """Take the learned noise estimator of the bundle a preset without one starts from (its weights in
        ``state``, frozen): the bundle's generator was trained told what that estimator reads, so keeping it
        keeps the bundle's function, and crops are then told their added noise level."""
        from ddasr_nipype.models import GeneratorConfig

        self.generator_config = GeneratorConfig.from_dict({**self.generator_config.to_dict(),
                                                           "noise_estimator": "learned"})
        from ddasr_nipype.models.srn_arch import packed_noise_estimator_state

        weights = packed_noise_estimator_state(state)
        for module in (self.generator, self.ema):
            module.config = self.generator_config
            module.noise_estimator = _frozen_noise_estimator(weights).to(self.device)

    @property
    def stage_config(self) -> SRNStageConfig:
        return self.preset.srn

    def current_lr(self) -> float:
        return float(self.opt_g.param_groups[0]["lr"])

    def train_step(self) -> dict[str, Any]:
        import torch

        cfg, data = self.preset.srn, self.preset.data
        lr_np, hr_np, index = self.pairs.sample_pairs(self.rng, cfg.batch_size, cfg.patch_size,
                                                      threshold=data.foreground_threshold,
                                                      min_fraction=data.min_patch_fraction, return_index=True)
        if cfg.augment:
            self.pairs.augment(lr_np, hr_np, self.rng)
        factor = np.ones((len(lr_np), 1, 1, 1), dtype=np.float32)
        if cfg.intensity_scale != (1.0, 1.0):
            factor = self.rng.uniform(*cfg.intensity_scale, size=factor.shape).astype(np.float32)
            lr_np *= factor
            hr_np *= factor
        added = self.pairs.add_lr_noise(lr_np, self.rng, *self._lr_noise, return_sigma=True)
        if cfg.slice_denoise:
            lr_np = self._denoised_across_slices(lr_np, added, index)
        lr, hr = self.to_tensor(lr_np), self.to_tensor(hr_np)
        extra = ()
        if self.generator_config.noise_level_input:
            if cfg.slice_denoise:  # what the generator reads on the filtered slice, as at inference
                with torch.no_grad():
                    sigma_np = self.generator.estimate_noise(lr).float().cpu().numpy()
            elif self.generator_config.noise_estimator == "learned":
                sigma_np = added  # its estimator reads the noise, not the slice (GeneratorConfig.noise_estimator)
            else:  # the slice's own noise was scaled with it; the added noise came after the scaling
                sigma_np = np.sqrt((self.pairs.lr_noise_sigma()[index] * factor.ravel())**2 + added**2)
            if cfg.noise_level_jitter:
                sigma_np = sigma_np * np.exp(self.rng.uniform(-cfg.noise_level_jitter, cfg.noise_level_jitter,
                                                              size=len(sigma_np)))
            sigma_np = sigma_np.astype(np.float32)
            extra = (torch.from_numpy(sigma_np).to(self.device),)
        weight = self._loss_weight(hr, index)
        adversarial = self.iteration >= cfg.pixel_warmup_iterations
        self.generator.train()
        self.discriminator.train()

        # generator step (D frozen)
        self.discriminator.requires_grad_(False)
        with self.autocast():
            sr = self._projected(self._g(lr, *extra), lr)
            # outside a brain-only slice's brain the discriminator sees the HR in both images
            sr_d = sr if weight is None else sr * weight + hr * (1.0 - weight)
            if adversarial:
                real_logits = self._d(hr).detach()
                fake_logits = self._d(sr_d)
        if adversarial:
            g_terms = self.loss(sr.float(), hr, real_logits.float(), fake_logits.float(), weight=weight)
        else:
            g_terms = self.loss(sr.float(), hr, weight=weight)
        self.opt_g.zero_grad(set_to_none=True)
        self.backward_step(g_terms["total"], self.opt_g, self.generator.parameters())

        # discriminator step
        self.discriminator.requires_grad_(True)
        d_loss = torch.zeros((), device=self.device)
        if adversarial:
            with self.autocast():
                real_logits = self._d(hr)
                fake_logits = self._d(sr_d.detach())
            d_loss = self.loss.discriminator(real_logits.float(), fake_logits.float())["total"]
            self.opt_d.zero_grad(set_to_none=True)
            self.backward_step(d_loss, self.opt_d, self.discriminator.parameters())

        self.sched_g.step()
        self.sched_d.step()
        self._update_ema()
        self._last_batch = {"lr": lr_np, "hr": hr_np, "extra": extra}
        out = {f"g_{k}": v.detach() for k, v in g_terms.items()}
        out["d_total"] = d_loss.detach()
        return out

    def _denoised_across_slices(self, lr_np: np.ndarray, level: np.ndarray, index: np.ndarray) -> np.ndarray:
        """The centre slice ``[B, 1, p, p]`` of each 2.5D crop ``lr_np [B, 1 + 2c, p, p]`` (its noise added)
        denoised across its neighbours as inference's ``slice_denoise`` does
        (:func:`~ddasr_nipype.inference.denoise_across_slices`, ``h = srn.slice_denoise x level``, the
        neighbours as far apart in millimetres as the pair's HR slices were)."""
        from ddasr_nipype.inference import SLICE_DENOISE_WIDTH_MM, denoise_across_slices
        from ddasr_nipype.models import context_offsets

        offsets = np.asarray(context_offsets(self.pairs.context_slices))
        order = np.argsort(offsets)  # the channels in slice order
        centre = int(np.flatnonzero(offsets[order] == 0)[0])
        spacing = (self.pairs.neighbour_spacing(index) * self.preset.data.hr_voxel_size
                   / SLICE_DENOISE_WIDTH_MM)
        out = np.empty_like(lr_np[:, :1])
        for b in range(len(lr_np)):
            out[b, 0] = denoise_across_slices(lr_np[b, order], float(level[b]), self.preset.srn.slice_denoise,
                                              spacing=float(spacing[b]))[centre]
        return out

    def _loss_weight(self, hr, index):
        """Where the loss counts, ``[B, 1, H, W]``, or None (everywhere): inside the brain of crops from
        brain-only (skull-stripped) stacks, ``data.brain_margin`` pixels in from its edge; 1 elsewhere."""
        import torch
        import torch.nn.functional as F

        brain_only = self.pairs.is_brain_only(index)
        if not brain_only.any():
            return None
        data = self.preset.data
        inside = (hr > 0.5 * data.foreground_threshold).float()
        if data.brain_margin:
            k = 2 * data.brain_margin + 1
            inside = -F.max_pool2d(-inside, k, stride=1, padding=data.brain_margin)  # erosion
        flags = torch.as_tensor(brain_only, device=hr.device).view(-1, 1, 1, 1)
        return torch.where(flags, inside, torch.ones_like(inside))

    def _update_ema(self) -> None:
        import torch

        with torch.no_grad():
            self._ema_step()

    def ema_decay_at(self, iteration: int) -> float:
        """EMA decay with a warm-up: ``min(ema_decay, (1 + t) / (10 + t))`` at iteration ``t``.

        Without it the EMA keeps a weight of ``ema_decay ** t`` on the untrained initial generator,
        still 13 % after 2000 iterations at 0.999: short runs would ship a blend with random weights.
        """
        return min(self.preset.srn.ema_decay, (1.0 + iteration) / (10.0 + iteration))

    def _ema_step(self) -> None:
        decay = self.ema_decay_at(self.iteration)
        for p_ema, p in zip(self.ema.parameters(), self.generator.parameters()):
            p_ema.mul_(decay).add_(p.detach(), alpha=1.0 - decay)
        for b_ema, b in zip(self.ema.buffers(), self.generator.buffers()):
            b_ema.copy_(b)

    def image_columns(self) -> dict[str, np.ndarray]:
        import torch

        if not self._last_batch:
            return {}
        b = self._last_batch
        with torch.no_grad():
            lr = self.to_tensor(b["lr"][:4])
            sr = self._projected(self.ema(lr, *(e[:4] for e in b["extra"])), lr).float().cpu().numpy()
        return {"LR (synthetic)": b["lr"][:, :1], "SR (EMA)": np.clip(sr, 0, 1), "HR": b["hr"]}

    def _projected(self, sr, lr):
        """The generator's output ``sr`` as ``srn.projection`` makes it agree with its LR crop (channel 0 of
        ``lr``; the rest are a 2.5D generator's neighbours), or as it is."""
        return area_projection(sr, lr[:, :1]) if self.preset.srn.projection == "area" else sr

    def model_state(self) -> dict[str, Any]:
        return {
            "generator": self.generator.state_dict(),
            "generator_config": self.generator_config.to_dict(),
            "ema": self.ema.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "discriminator_config": self.discriminator_config.to_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "initialized_from": self.initialized_from,
        }

    def load_model_state(self, state: dict[str, Any]) -> None:
        from ddasr_nipype.models import GeneratorConfig

        # read through the config class: a checkpoint written before a setting existed has its default
        saved = GeneratorConfig.from_dict(state["generator_config"])
        if saved.noise_estimator == "learned" and self.generator_config.noise_estimator != "learned":
            self._adopt_noise_estimator(state["generator"])  # adopted from the bundle it started from
        if saved.to_dict() != self.generator_config.to_dict():
            raise ValueError("the checkpoint's generator config differs from this preset's")
        self.generator.load_state_dict(state["generator"])
        self.ema.load_state_dict(state["ema"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        self.initialized_from = state.get("initialized_from")
