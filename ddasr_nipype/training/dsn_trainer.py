"""Stage 1: train the transformer down-sampling network (DSN) on unpaired HR/LR patches.

Every iteration draws ``batch_size`` HR patches (``patch_size`` pixels) and, independently,
``batch_size`` LR patches (``patch_size // scale``) and minimises Eq. 8 of the paper
(:class:`~ddasr_nipype.losses.DSNLoss`: structure, domain and identity terms) with Adam. The learning
rate warms up linearly from ``warmup_lr`` to ``lr`` over ``warmup_iterations`` and then decays as
``lr / (1 + decay * (i - warmup_iterations))`` (the StyTr^2 schedule of the implementation notes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ddasr_nipype.training.config import DSNStageConfig, TrainingPreset
from ddasr_nipype.training.datasets import SliceSet
from ddasr_nipype.training.engine import StageTrainer

__all__ = ["DSNTrainer", "dsn_learning_rate", "build_dsn_config"]


def dsn_learning_rate(iteration: int, cfg: DSNStageConfig) -> float:
    """Learning rate at 0-based ``iteration``: linear warm-up, then inverse decay."""
    if iteration < cfg.warmup_iterations:
        return cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * iteration / cfg.warmup_iterations
    return cfg.lr / (1.0 + cfg.decay * (iteration - cfg.warmup_iterations))


def build_dsn_config(preset: TrainingPreset):
    from ddasr_nipype.models import DSNConfig

    return DSNConfig.from_dict({**preset.dsn.model, "scale": preset.data.scale})


class DSNTrainer(StageTrainer):
    """Trains a :class:`~ddasr_nipype.models.DSN`; ``trainer.dsn`` is the network."""

    stage = "dsn"

    def __init__(self, preset: TrainingPreset, work_dir: str | Path, hr: SliceSet, lr: SliceSet, **kwargs):
        import torch

        from ddasr_nipype.losses import DSNLoss, DSNLossWeights
        from ddasr_nipype.models import DSN

        super().__init__(preset, work_dir, **kwargs)
        cfg = preset.dsn
        s = preset.data.scale
        hr.check_patch_size(cfg.patch_size, "HR")
        lr.check_patch_size(cfg.patch_size // s, "LR")
        self.hr, self.lr = hr, lr
        self.dsn_config = build_dsn_config(preset)
        self.dsn = self.prepare_module(DSN(self.dsn_config))
        self._forward = self.maybe_compile(self.dsn)
        self.loss = DSNLoss(self.vgg, DSNLossWeights.from_dict(cfg.loss_weights)).to(self.device)
        self.optimizer = torch.optim.Adam(self.dsn.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: dsn_learning_rate(i, cfg) / cfg.lr
        )

    @property
    def stage_config(self) -> DSNStageConfig:
        return self.preset.dsn

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def sample_batch(self) -> tuple[np.ndarray, np.ndarray]:
        cfg, data = self.preset.dsn, self.preset.data
        kw = {"threshold": data.foreground_threshold, "min_fraction": data.min_patch_fraction}
        hr = self.hr.sample_patches(self.rng, cfg.batch_size, cfg.patch_size, **kw)
        lr = self.lr.sample_patches(self.rng, cfg.batch_size, cfg.patch_size // data.scale, **kw)
        return hr, lr

    def train_step(self) -> dict[str, Any]:
        hr_np, lr_np = self.sample_batch()
        hr, lr = self.to_tensor(hr_np), self.to_tensor(lr_np)
        self.dsn.train()
        with self.autocast():
            synthetic = self._forward(hr, lr)
            identity_hr = self._forward(hr, hr, degrade=False)
            identity_lr = self._forward(lr, lr, degrade=False)
        terms = self.loss.terms(synthetic.float(), hr, lr, identity_hr.float(), identity_lr.float())
        self.optimizer.zero_grad(set_to_none=True)
        self.backward_step(terms["total"], self.optimizer, self.dsn.parameters())
        self.scheduler.step()
        self._last_batch = {"hr": hr_np, "lr": lr_np, "synthetic": synthetic.detach()}
        return {k: v.detach() for k, v in terms.items()}

    def image_columns(self) -> dict[str, np.ndarray]:
        if not self._last_batch:
            return {}
        b = self._last_batch
        return {"HR": b["hr"], "synthetic LR": np.clip(b["synthetic"].float().cpu().numpy(), 0, 1),
                "real LR (unpaired)": b["lr"]}

    def model_state(self) -> dict[str, Any]:
        return {
            "dsn": self.dsn.state_dict(),
            "dsn_config": self.dsn_config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_model_state(self, state: dict[str, Any]) -> None:
        if state["dsn_config"] != self.dsn_config.to_dict():
            raise ValueError("the checkpoint's DSN config differs from this preset's")
        self.dsn.load_state_dict(state["dsn"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
