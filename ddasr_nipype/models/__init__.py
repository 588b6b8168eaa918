"""Network architectures of DDASR (forward only) and their checkpoint helpers.

- :class:`DSN` (``dsn_arch``): the transformer down-sampling network of stage 1.
- :class:`SRGenerator`, :class:`RRDBNet` (``srn_arch``): the DDASR generator and the ESRGAN reference.
- :class:`AttentionUNetDiscriminator` (``discriminator_arch``): the A-ESRGAN-style discriminator.
- :class:`VGG19Features`, :func:`load_vgg19` (``vgg_arch``): the frozen loss network.
- :class:`DeepbetFeatures`, :func:`load_deepbet_features` (``deepbet_arch``): a perceptual backbone
  pretrained on brain MRI (deepbet's first stages, in 2D).
"""

from .common import ModelConfig, build_model, load_model, save_model
from .discriminator_arch import AttentionUNetDiscriminator, DiscriminatorConfig
from .deepbet_arch import DeepbetFeatures, load_deepbet_features
from .dsn_arch import DSN, DSNConfig
from .srn_arch import (NOISE_MAP_SCALE, RRDB, GeneratorConfig, LearnedNoiseEstimator, RRDBNet, RRDBNetConfig,
                       SRGenerator, context_index, context_offsets, estimate_noise_sigma,
                       with_learned_noise_estimator)
from .vgg_arch import VGG19Features, load_vgg19

__all__ = [
    "DSN",
    "DSNConfig",
    "SRGenerator",
    "GeneratorConfig",
    "context_index",
    "context_offsets",
    "estimate_noise_sigma",
    "LearnedNoiseEstimator",
    "with_learned_noise_estimator",
    "NOISE_MAP_SCALE",
    "AttentionUNetDiscriminator",
    "DiscriminatorConfig",
    "RRDB",
    "RRDBNet",
    "RRDBNetConfig",
    "VGG19Features",
    "load_vgg19",
    "DeepbetFeatures",
    "load_deepbet_features",
    "ModelConfig",
    "build_model",
    "save_model",
    "load_model",
]
