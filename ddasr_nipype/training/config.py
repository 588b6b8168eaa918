"""Training presets: frozen dataclasses loaded from the YAML files in ``training/presets``.

A preset is data, not code: ``paper.yml`` holds the paper's sizes and iteration counts, ``fast.yml`` a
model small enough to train on a laptop CPU in about half an hour, ``smoke.yml`` a run that finishes in
seconds (tests, CI). Any YAML file with the same layout can be given instead of a preset name.

Network hyperparameters are kept as plain dicts (``dsn.model``, ``srn.generator``, ``srn.discriminator``)
and turned into :class:`~ddasr_nipype.models.DSNConfig` etc. by the trainers, so this module imports no
torch and ``ddasr-train --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import yaml

PRESETS_DIR = Path(__file__).parent / "presets"
PLANES = ("sagittal", "coronal", "axial")
#: ``srn.projection``: the output settings' projections a generator can be trained through
TRAINING_PROJECTIONS = ("none", "area")

__all__ = [
    "PRESETS_DIR",
    "DataConfig",
    "DSNStageConfig",
    "SynthesisConfig",
    "SRNStageConfig",
    "LoggingConfig",
    "TrainingPreset",
    "LRNoise",
    "lr_noise_settings",
    "available_presets",
    "load_preset",
]


class _Config:
    """``to_dict`` / ``from_dict`` shared by the preset dataclasses (unknown keys are an error)."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, _Config):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        if not isinstance(d, dict):
            raise ValueError(f"{cls.__name__}: expected a mapping, got {type(d).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {unknown} (known: {sorted(known)})")
        kwargs = {}
        for name, value in d.items():
            sub = _NESTED.get((cls.__name__, name))
            if sub is not None:
                value = sub.from_dict(value)
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[name] = value
        return cls(**kwargs)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def _positive(owner: str, **values) -> None:
    for name, value in values.items():
        if value is None or value <= 0:
            raise ValueError(f"{owner}: {name} must be > 0, got {value!r}")


@dataclass(frozen=True)
class DataConfig(_Config):
    """How volumes become training slices and patches.

    Attributes
    ----------
    plane
        Slicing plane in RAS voxel order (``sagittal`` = ``vol[i, :, :]``), as used at inference.
    scale
        Integer SR factor. The HR volumes are resampled to ``hr_voxel_size`` (by default the LR voxel
        size divided by ``scale``: 1 mm for 2 mm LR data at x2).
    percentiles
        Percentile normalisation of every volume (``fit_normalization``), mapped to ``[0, 1]``.
    hr_voxel_size
        Isotropic HR voxel size in mm; ``None`` derives it from the LR data.
    foreground_threshold
        Normalised intensity above which a pixel counts as head/brain.
    min_brain_fraction
        Slices whose foreground fraction is below this are skipped (edge slices, air).
    min_patch_fraction
        A random patch is redrawn (a few times) while its foreground fraction is below this.
    hr_extra_planes
        Further planes whose slices of the (isotropically resampled) HR volumes join the HR set, e.g.
        ``[coronal, axial]`` for three times as many distinct HR slices of the same subjects. The LR
        data are still sliced in ``plane`` only, and so is inference.
    brain_only_below_ml
        An HR volume whose foreground (above ``foreground_threshold``) is smaller than this many
        millilitres is a skull-stripped brain (a head with skull and scalp is 2.5-4.5 L, a brain
        1-2 L): the SRN's loss counts only inside it, ``brain_margin`` pixels in from its edge, so the
        generator never learns that brains end in black. 0 (default): every volume counts everywhere.
    brain_margin
        How far inside a brain-only slice's edge (HR pixels) the loss starts counting.
    """

    plane: str = "sagittal"
    scale: int = 2
    percentiles: tuple[float, float] = (0.5, 99.5)
    hr_voxel_size: float | None = None
    foreground_threshold: float = 0.1
    min_brain_fraction: float = 0.15
    min_patch_fraction: float = 0.1
    hr_extra_planes: tuple[str, ...] = ()
    brain_only_below_ml: float = 0.0
    brain_margin: int = 3

    def __post_init__(self):
        if self.plane not in PLANES:
            raise ValueError(f"DataConfig: plane must be one of {PLANES}, got {self.plane!r}")
        extra = tuple(self.hr_extra_planes)
        if any(p not in PLANES for p in extra) or self.plane in extra or len(set(extra)) != len(extra):
            raise ValueError(f"DataConfig: hr_extra_planes must be distinct planes of {PLANES} other than "
                             f"plane {self.plane!r}, got {list(extra)}")
        object.__setattr__(self, "hr_extra_planes", extra)
        if int(self.scale) != self.scale or self.scale < 2:
            raise ValueError(f"DataConfig: scale must be an integer >= 2, got {self.scale!r}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"DataConfig: percentiles must satisfy 0 <= lo < hi <= 100, got {self.percentiles}")
        if self.hr_voxel_size is not None:
            _positive("DataConfig", hr_voxel_size=self.hr_voxel_size)
        if not self.brain_only_below_ml >= 0 or int(self.brain_margin) != self.brain_margin or self.brain_margin < 0:
            raise ValueError("DataConfig: brain_only_below_ml must be >= 0 and brain_margin a whole number >= 0, "
                             f"got {self.brain_only_below_ml!r} and {self.brain_margin!r}")


@dataclass(frozen=True)
class DSNStageConfig(_Config):
    """Stage 1: the transformer down-sampling network on unpaired HR/LR patches.

    The learning rate warms up linearly from ``warmup_lr`` to ``lr`` over ``warmup_iterations``, then
    decays as ``lr / (1 + decay * (i - warmup_iterations))`` (implementation notes).
    ``model`` holds :class:`~ddasr_nipype.models.DSNConfig` fields (``scale`` comes from ``data``);
    ``loss_weights`` the :class:`~ddasr_nipype.losses.DSNLossWeights` fields.
    """

    iterations: int = 300_000
    batch_size: int = 3
    patch_size: int = 256
    lr: float = 2e-4
    warmup_lr: float = 5e-5
    warmup_iterations: int = 10_000
    decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = None
    model: dict = field(default_factory=dict)
    loss_weights: dict = field(default_factory=dict)

    def __post_init__(self):
        _positive("DSNStageConfig", iterations=self.iterations, batch_size=self.batch_size,
                  patch_size=self.patch_size, lr=self.lr, warmup_lr=self.warmup_lr)
        if self.warmup_iterations < 0 or self.decay < 0:
            raise ValueError("DSNStageConfig: warmup_iterations and decay must be >= 0")


@dataclass(frozen=True)
class SynthesisConfig(_Config):
    """Stage 2: how the trained DSN turns every HR slice into a synthetic LR slice.

    ``denoise_targets`` (off by default; not in the paper) denoises the HR *targets* with non-local
    means after the DSN has degraded the raw HR slices, with ``h = denoise_targets x`` each slice's
    noise level (Immerkaer's estimate). The synthetic LR keeps the HR scan's noise, the target does
    not, so the SR learns to remove noise instead of passing on the part of it that the LR predicts.

    ``match_intensity`` (off by default; not in the paper) maps every synthetic LR slice onto the
    intensity distribution of the bicubic down-sampling of its HR slice
    (:func:`~ddasr_nipype.training.synthesis.match_intensity`): the DSN also learns the LR site's
    contrast, and an SR trained on such pairs would translate that contrast back to the HR site's
    instead of keeping the contrast of the scan it super-resolves.

    ``mix`` (empty by default; not in the paper) names classical degradations
    (:data:`~ddasr_nipype.training.synthesis.CLASSICAL_DEGRADATIONS`) whose pairs of the same HR
    slices are added to the pairs (the DSN's, or those of ``ddasr-train --degradation``), one set each,
    seeded: the DSN gives the real LR site's degradation, the classical ones make the SR robust to
    scans that are degraded otherwise.

    ``context_strides`` (for a generator with ``srn.generator.context_slices``: 2.5D pairs, classical
    degradations only) are the spacings, in HR slices, of the neighbours degraded with each slice, one
    drawn per slice: ``(1, 2)`` teaches the generator neighbours as far apart as 1 mm and 2 mm slices.
    """

    batch_size: int = 4
    denoise_targets: float = 0.0
    match_intensity: bool = False
    mix: tuple[str, ...] = ()
    context_strides: tuple[int, ...] = (1, 2)

    def __post_init__(self):
        from ddasr_nipype.training.synthesis import CLASSICAL_DEGRADATIONS

        if isinstance(self.mix, str) or set(self.mix) - set(CLASSICAL_DEGRADATIONS):
            raise ValueError(f"SynthesisConfig: mix must list degradations of {', '.join(CLASSICAL_DEGRADATIONS)}, "
                             f"got {self.mix!r}")
        object.__setattr__(self, "mix", tuple(self.mix))
        strides = tuple(self.context_strides) if not isinstance(self.context_strides, (int, str)) else ()
        if not strides or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in strides):
            raise ValueError(f"SynthesisConfig: context_strides must list positive integers, got {self.context_strides!r}")
        object.__setattr__(self, "context_strides", strides)
        if not self.denoise_targets >= 0:
            raise ValueError(f"SynthesisConfig: denoise_targets must be >= 0, got {self.denoise_targets}")


@dataclass(frozen=True)
class SRNStageConfig(_Config):
    """Stage 3: generator + attention U-Net discriminator on (synthetic LR, HR) pairs.

    Adam (``lr``, ``betas``) for both networks, ``CosineAnnealingWarmRestarts(T_0=restart_period,
    T_mult=restart_mult, eta_min=eta_min)``, and an EMA copy of the generator (``ema_decay``) that
    becomes the bundle's generator (with a warm-up: ``SRNTrainer.ema_decay_at``). ``patch_size`` is
    the HR crop edge (LR crop = ``patch_size // scale``). During the first ``pixel_warmup_iterations``
    the generator is trained with the L1 + perceptual terms only (no adversarial term, discriminator
    frozen), as in Real-ESRGAN's PSNR pre-training; the paper's recipe sets it to 0.

    ``lr_noise`` (off by default; not in the paper) adds zero-mean Gaussian noise to the synthetic LR
    patch of a training pair with probability ``probability``, its standard deviation drawn uniformly
    from ``sigma`` (normalised [0, 1] intensity scale). The DSN is deterministic and passes on only the
    HR scan's own noise, while real LR scans are noisier: without it the generator learns to sharpen
    noise instead of suppressing it. ``correlation`` (default ``[0, 0]``: white noise) draws a Gaussian
    blur width in LR pixels for the noise field, which keeps its standard deviation: real LR scans that
    were resampled or filtered have spatially correlated noise (neighbouring voxels of the 2 mm IXI scans
    correlate at about 0.25), and a generator that has only seen white noise sharpens such noise into a
    fine chequered texture.

    ``lr_noise.kind: rician`` (default ``gaussian``) makes that noise the magnitude noise of MR images,
    Rician for one coil, non-central chi for ``lr_noise.coils: [low, high]`` coils combined by sum of
    squares (:meth:`PairSet.add_lr_noise`).

    ``intensity_scale`` (default ``[1, 1]``: off; not in the paper) multiplies each training pair, LR
    and HR alike, by a factor drawn uniformly from that range: inference normalizes each scan by its own
    percentiles, which place the anatomy of two scans (or of a noisy and a clean one) at different
    intensities, and the generator should not depend on where.

    ``augment`` (off by default; not in the paper) applies one of the eight flips and transposes of the
    square (the dihedral group, as in EDSR/ESRGAN training) to each (LR, HR) crop, the same to both.
    The field-of-view preserving grids stay aligned under all eight, and a few HR subjects give eight
    times as many distinct patches.

    ``context_share`` (0 by default) is for a 2.5D generator (``generator.context_slices``) started from
    a 2D bundle (``ddasr-train --init-generator``): the fraction of the centre slice's first-layer
    weights given to each new neighbour. 0 starts as the 2D generator (the neighbours' weights at zero);
    0.2 starts as it would on the slices averaged 0.2 / 0.6 / 0.2 across the slice direction, a start
    that already uses the neighbours to average out noise.

    ``noise_level_jitter`` (0 by default) is for a generator with ``generator.noise_level_input``: the
    noise level it is told for each crop is multiplied by ``exp(u)``, ``u`` drawn uniformly from
    ``[-noise_level_jitter, noise_level_jitter]`` (0.4: within a factor 1.5 either way). The level
    inference tells it is an estimate, off by a subject-dependent factor (anatomy the estimator reads as
    noise, resampled or quantized scans); a generator that never saw a level off the training estimate
    learns to trust it fully and sharpens (or smooths) a scan whose estimate is off.

    ``slice_denoise`` (0 by default; not in the paper) trains a 2D generator on the input that inference's
    output setting of the same name gives it (:func:`~ddasr_nipype.inference.denoise_across_slices`): the
    pairs are synthesized with the neighbours that filter compares
    (:data:`~ddasr_nipype.inference.SLICE_DENOISE_RADIUS` on each side, ``synthesis.context_strides`` apart),
    each crop and its neighbours get their noise, and the crop is denoised across them with ``h`` = this x
    the level of the noise added; the generator sees the filtered crop only, and with a noise-level input
    is told the level it reads on it, as at inference. Ship the bundle with the same ``slice_denoise``.

    ``projection`` (``none`` by default; not in the paper): ``area`` makes each generated crop agree with
    its LR crop before every loss, as inference's output setting of the same name does (the mean of each
    ``scale x scale`` block becomes the LR pixel's; differentiable): the generator is trained for what it
    adds within the blocks, and the discriminator sees what the user will. Ship the bundle with
    ``--projection area``.

    ``noise_estimator_weights`` (for ``generator.noise_estimator: learned``; required there) is the file of
    the :class:`~ddasr_nipype.models.LearnedNoiseEstimator` weights (``scripts/train_noise_estimator.py``). The
    estimator is loaded into the generator and frozen; each crop's told level is the level of the noise
    added to it, which the estimator was trained to read.
    """

    iterations: int = 250_000
    batch_size: int = 16
    patch_size: int = 128
    lr: float = 1e-4
    lr_d: float | None = None
    betas: tuple[float, float] = (0.9, 0.99)
    restart_period: int = 50_000
    restart_mult: int = 1
    eta_min: float = 1e-7
    ema_decay: float = 0.999
    pixel_warmup_iterations: int = 0
    grad_clip: float | None = None
    generator: dict = field(default_factory=dict)
    discriminator: dict = field(default_factory=dict)
    loss: dict = field(default_factory=dict)
    lr_noise: dict = field(default_factory=dict)
    augment: bool = False
    intensity_scale: tuple[float, float] = (1.0, 1.0)
    context_share: float = 0.0
    noise_level_jitter: float = 0.0
    noise_estimator_weights: str | None = None
    slice_denoise: float = 0.0
    projection: str = "none"

    def __post_init__(self):
        if self.projection not in TRAINING_PROJECTIONS:
            raise ValueError(f"SRNStageConfig: projection must be one of {TRAINING_PROJECTIONS}, got {self.projection!r}")
        lr_noise_settings(self.lr_noise)  # validates
        if not 0.0 <= float(self.slice_denoise) < math.inf:
            raise ValueError(f"SRNStageConfig: slice_denoise must be a finite number >= 0, got {self.slice_denoise!r}")
        if not 0.0 <= float(self.noise_level_jitter) <= 2.0:
            raise ValueError("SRNStageConfig: noise_level_jitter must be in [0, 2] (a log factor), "
                             f"got {self.noise_level_jitter!r}")
        if not 0.0 <= float(self.context_share) < 0.5:
            raise ValueError(f"SRNStageConfig: context_share must be in [0, 0.5), got {self.context_share!r}")
        try:
            low, high = (float(v) for v in self.intensity_scale)
        except (TypeError, ValueError):
            raise ValueError(f"SRNStageConfig: intensity_scale must be [low, high], got {self.intensity_scale!r}") from None
        if not 0 < low <= high:
            raise ValueError(f"SRNStageConfig: intensity_scale must satisfy 0 < low <= high, got {[low, high]}")
        object.__setattr__(self, "intensity_scale", (low, high))
        if not isinstance(self.augment, bool):
            raise ValueError(f"SRNStageConfig: augment must be true or false, got {self.augment!r}")
        _positive("SRNStageConfig", iterations=self.iterations, batch_size=self.batch_size,
                  patch_size=self.patch_size, lr=self.lr, restart_period=self.restart_period)
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"SRNStageConfig: ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.pixel_warmup_iterations < 0:
            raise ValueError("SRNStageConfig: pixel_warmup_iterations must be >= 0")


class LRNoise(NamedTuple):
    """The settings of ``srn.lr_noise`` (:func:`lr_noise_settings`), in the order
    :meth:`~ddasr_nipype.training.datasets.PairSet.add_lr_noise` takes them."""

    probability: float = 0.0
    sigma_low: float = 0.0
    sigma_high: float = 0.0
    correlation_low: float = 0.0
    correlation_high: float = 0.0
    kind: str = "gaussian"
    coils_low: int = 1
    coils_high: int = 1


def lr_noise_settings(spec: dict) -> LRNoise:
    """The :class:`LRNoise` of an ``srn.lr_noise`` mapping (``{}``: no noise)."""
    spec = dict(spec or {})
    unknown = set(spec) - {"probability", "sigma", "correlation", "kind", "coils"}
    if unknown:
        raise ValueError(f"srn.lr_noise: unknown keys {sorted(unknown)}; expected 'probability', 'sigma', "
                         "'correlation', 'kind' and 'coils'")
    if not spec:
        return LRNoise()
    probability = float(spec.get("probability", 1.0))
    ranges = {}
    for key, default, top in (("sigma", None, 1.0), ("correlation", [0.0, 0.0], 5.0)):
        try:
            low, high = (float(v) for v in (spec[key] if default is None else spec.get(key, default)))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"srn.lr_noise.{key} must be [low, high], got {spec.get(key)!r}") from err
        if not 0.0 <= low <= high <= top:
            raise ValueError(f"srn.lr_noise.{key} must satisfy 0 <= low <= high <= {top:g}, got {[low, high]}")
        ranges[key] = (low, high)
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"srn.lr_noise.probability must be in [0, 1], got {probability}")
    kind = spec.get("kind", "gaussian")
    if kind not in ("gaussian", "rician"):
        raise ValueError(f"srn.lr_noise.kind must be 'gaussian' or 'rician', got {kind!r}")
    try:
        coils = [int(v) for v in spec.get("coils", [1, 1])]
        if len(coils) != 2 or any(float(v) != int(v) for v in spec.get("coils", [1, 1])):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"srn.lr_noise.coils must be [low, high] whole numbers, got {spec.get('coils')!r}") from None
    if not 1 <= coils[0] <= coils[1] or (kind == "gaussian" and coils != [1, 1]):
        raise ValueError(f"srn.lr_noise.coils must satisfy 1 <= low <= high (and needs kind: rician), got {coils}")
    return LRNoise(probability, *ranges["sigma"], *ranges["correlation"], kind, *coils)


@dataclass(frozen=True)
class LoggingConfig(_Config):
    """How often to print, write the CSV/TensorBoard logs, save image grids and checkpoints."""

    log_every: int = 100
    image_every: int = 5000
    checkpoint_every: int = 5000

    def __post_init__(self):
        _positive("LoggingConfig", log_every=self.log_every, image_every=self.image_every,
                  checkpoint_every=self.checkpoint_every)


@dataclass(frozen=True)
class TrainingPreset(_Config):
    """A complete training recipe (see ``presets/*.yml``)."""

    name: str = "custom"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    dsn: DSNStageConfig = field(default_factory=DSNStageConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    srn: SRNStageConfig = field(default_factory=SRNStageConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self):
        s = self.data.scale
        embed = int(self.dsn.model.get("patch_size", 8))
        if self.dsn.patch_size % (s * embed):
            raise ValueError(
                f"preset {self.name!r}: dsn.patch_size {self.dsn.patch_size} must be a multiple of "
                f"scale x DSN patch embedding = {s * embed}"
            )
        if self.srn.patch_size % s:
            raise ValueError(
                f"preset {self.name!r}: srn.patch_size {self.srn.patch_size} must be a multiple of the "
                f"scale {s}"
            )

    def with_overrides(
        self,
        *,
        iterations_dsn: int | None = None,
        iterations_srn: int | None = None,
        batch_size: int | None = None,
        patch_size: int | None = None,
    ) -> "TrainingPreset":
        """Return a copy with the command-line overrides applied (``None`` keeps the preset value).

        ``batch_size`` and ``patch_size`` (HR patch edge) apply to both the DSN and the SRN stages; an
        unusable ``patch_size`` is a ``ValueError`` that names ``--patch-size``, not the preset.
        """
        if patch_size is not None:
            multiple = self.data.scale * int(self.dsn.model.get("patch_size", 8))
            if int(patch_size) != patch_size or patch_size <= 0 or patch_size % multiple:
                raise ValueError(
                    f"--patch-size {patch_size} must be a positive multiple of {multiple} (scale "
                    f"{self.data.scale} x the DSN patch embedding {multiple // self.data.scale} of preset "
                    f"{self.name!r}), e.g. {max(multiple, patch_size - patch_size % multiple)}"
                )
        dsn, srn = self.dsn, self.srn
        if iterations_dsn is not None:
            dsn = dsn.replace(iterations=iterations_dsn,
                              warmup_iterations=min(dsn.warmup_iterations, iterations_dsn))
        if iterations_srn is not None:
            srn = srn.replace(iterations=iterations_srn,
                              pixel_warmup_iterations=min(srn.pixel_warmup_iterations, iterations_srn))
        if batch_size is not None:
            dsn, srn = dsn.replace(batch_size=batch_size), srn.replace(batch_size=batch_size)
        if patch_size is not None:
            dsn, srn = dsn.replace(patch_size=patch_size), srn.replace(patch_size=patch_size)
        return dataclasses.replace(self, dsn=dsn, srn=srn)


_NESTED = {
    ("TrainingPreset", "data"): DataConfig,
    ("TrainingPreset", "dsn"): DSNStageConfig,
    ("TrainingPreset", "synthesis"): SynthesisConfig,
    ("TrainingPreset", "srn"): SRNStageConfig,
    ("TrainingPreset", "logging"): LoggingConfig,
}


def available_presets() -> list[str]:
    """Names of the presets shipped with the package."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yml"))


def load_preset(name_or_path: str | Path) -> TrainingPreset:
    """Load a shipped preset by name (``paper``, ``fast``, ``smoke``) or a YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix and str(name_or_path) in available_presets():
        path = PRESETS_DIR / f"{name_or_path}.yml"
    if not path.is_file():
        raise ValueError(
            f"unknown preset {name_or_path!r}: not a shipped preset ({', '.join(available_presets())}) "
            "nor a YAML file"
        )
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: invalid YAML: {err}") from err
    if not isinstance(content, dict):
        raise ValueError(f"{path}: a preset must be a YAML mapping")
    content.setdefault("name", path.stem)
    return TrainingPreset.from_dict(content)
