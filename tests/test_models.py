"""Architectures, VGG19 loading and checkpoint files (tiny configs, CPU, seconds)."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddasr_nipype.errors import CheckpointError, VGGWeightsNotFoundError
from ddasr_nipype.models import (
    DSN,
    RRDB,
    AttentionUNetDiscriminator,
    DiscriminatorConfig,
    DSNConfig,
    GeneratorConfig,
    RRDBNet,
    RRDBNetConfig,
    SRGenerator,
    VGG19Features,
    build_model,
    estimate_noise_sigma,
    load_model,
    load_vgg19,
    save_model,
)
from ddasr_nipype.models.dsn_arch import CAPE, linear_degradation
from ddasr_nipype.models.vgg_arch import ENV_VAR, HUB_FILENAME, LAYER_NAMES

TINY_DSN = dict(d_model=32, nhead=4, dim_feedforward=64, num_encoder_layers=2, num_decoder_layers=2,
                decoder_channels=(16, 8, 8))
TINY_GEN = dict(num_feat=8, num_grow_ch=4, num_bottleneck_blocks=1)


def tiny_dsn(**kwargs) -> DSN:
    torch.manual_seed(0)
    return DSN(DSNConfig(**{**TINY_DSN, **kwargs})).eval()


def patch_shuffle(x: torch.Tensor, m: int, perm: torch.Tensor) -> torch.Tensor:
    """Permute the m x m patches of ``x [B, C, H, W]`` (H, W multiples of m)."""
    b, c, h, w = x.shape
    patches = x.reshape(b, c, h // m, m, w // m, m).permute(0, 1, 2, 4, 3, 5).reshape(b, c, -1, m, m)
    patches = patches[:, :, perm]
    return patches.reshape(b, c, h // m, w // m, m, m).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)


# --------------------------------------------------------------------------- DSN


@pytest.mark.parametrize(
    ("hr_size", "lr_size", "scale", "degradation"),
    [
        ((75, 98), (41, 53), 2, "area"),
        ((64, 64), (32, 32), 2, "bilinear"),
        ((37, 50), (37, 50), 2, "area"),
        ((75, 98), (41, 53), 3, "bilinear"),
        ((40, 33), (16, 60), 4, "area"),
    ],
)
def test_dsn_shapes(hr_size, lr_size, scale, degradation):
    dsn = tiny_dsn(scale=scale, degradation=degradation)
    hr, lr = torch.rand(2, 1, *hr_size), torch.rand(2, 1, *lr_size)
    with torch.no_grad():
        out = dsn(hr, lr)
        full = dsn(hr, lr, degrade=False)
    expected = (math.ceil(hr_size[0] / scale), math.ceil(hr_size[1] / scale))
    assert out.shape == (2, 1, *expected)
    assert dsn.lr_shape(*hr_size) == expected
    assert full.shape == (2, 1, *hr_size)
    # The degraded output is the linear degradation of the decoded image.
    torch.testing.assert_close(out, linear_degradation(full, scale, degradation))
    assert torch.isfinite(out).all()


def test_dsn_paper_size_shapes():
    dsn = DSN().eval()
    assert dsn.config.d_model == 512 and dsn.config.patch_size == 8 and dsn.config.cape_pool_size == 18
    convs = [m for m in dsn.cnn_decoder.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (512, 256), (256, 256), (256, 256), (256, 256), (256, 128), (128, 128), (128, 64), (64, 64), (64, 1)]
    assert sum(isinstance(m, nn.Upsample) for m in dsn.cnn_decoder.modules()) == 3
    with torch.no_grad():
        assert dsn(torch.rand(1, 1, 40, 24), torch.rand(1, 1, 20, 16)).shape == (1, 1, 20, 12)


def test_dsn_lr_branch_has_no_positional_encoding():
    """Shuffling the LR patches leaves the output unchanged; shuffling HR patches does not."""
    dsn = tiny_dsn()
    hr, lr = torch.rand(1, 1, 32, 48), torch.rand(1, 1, 24, 32)
    with torch.no_grad():
        ref = dsn(hr, lr)
        perm_lr = torch.randperm(3 * 4, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(dsn(hr, patch_shuffle(lr, 8, perm_lr)), ref, atol=1e-5, rtol=1e-5)
        perm_hr = torch.randperm(4 * 6, generator=torch.Generator().manual_seed(2))
        shuffled = dsn(patch_shuffle(hr, 8, perm_hr), lr)
        # Undo the shuffle at token level is impossible through the CNN, so outputs differ.
        assert not torch.allclose(shuffled, ref, atol=1e-3)


def test_dsn_depends_on_lr_input_and_validates_batch():
    dsn = tiny_dsn()
    hr = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        a = dsn(hr, torch.rand(1, 1, 32, 32))
        b = dsn(hr, torch.rand(1, 1, 32, 32) * 3)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="batch sizes differ"):
        dsn(torch.rand(2, 1, 32, 32), torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"expects \[B, 1, H, W\]"):
        dsn(torch.rand(1, 3, 32, 32), torch.rand(1, 1, 32, 32))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(d_model=30, nhead=4), "divisible by nhead"),
        (dict(degradation="bicubic"), "degradation must be one of"),
        (dict(patch_size=16), "x2 stages"),
        (dict(scale=0), "scale must be a positive integer"),
        (dict(dropout=1.0), "dropout"),
    ],
)
def test_dsn_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DSNConfig(**{**TINY_DSN, **kwargs})


def test_cape_grid_size_and_pooled_values():
    torch.manual_seed(0)
    cape = CAPE(d_model=4, pool_size=3)
    tokens = torch.randn(2, 4, 5, 7)
    assert cape(tokens).shape == (2, 4, 5, 7)
    # Grid == n: pooling and bilinear interpolation are identities, CAPE = F_pos(E).
    square = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(cape(square), cape.proj(square))
    # Grid == 2n: bilinear (align_corners=False) weights 0.75/0.25 between pooled neighbours.
    big = torch.randn(1, 4, 6, 6)
    pooled = cape.proj(F.avg_pool2d(big, 2))
    pos = cape(big)
    torch.testing.assert_close(pos[..., 0, 0], pooled[..., 0, 0])
    torch.testing.assert_close(pos[..., 0, 1], 0.75 * pooled[..., 0, 0] + 0.25 * pooled[..., 0, 1])
    # Output (2, 3) sits at pooled coordinates (0.75, 1.25).
    torch.testing.assert_close(
        pos[..., 2, 3],
        0.25 * (0.75 * pooled[..., 0, 1] + 0.25 * pooled[..., 0, 2])
        + 0.75 * (0.75 * pooled[..., 1, 1] + 0.25 * pooled[..., 1, 2]),
    )


def test_cape_is_content_aware():
    torch.manual_seed(0)
    cape = CAPE(d_model=4, pool_size=6)
    tokens = torch.zeros(1, 4, 12, 12)
    tokens[..., 2:4, 2:4] = torch.randn(4, 2, 2)
    moved = torch.roll(tokens, shifts=(4, 4), dims=(-2, -1))  # two pooled cells, no wrap-around
    a, b = cape(tokens), cape(moved)
    assert not torch.allclose(a, b)
    # The encoding follows the content: away from the border, the moved content's encoding is
    # the original encoding moved.
    torch.testing.assert_close(b[..., 5:9, 5:9], a[..., 1:5, 1:5])
    # A constant token map gets a constant encoding (no fixed positional pattern).
    const = cape(torch.ones(1, 4, 6, 6))
    torch.testing.assert_close(const, const[..., :1, :1].expand_as(const))


def test_linear_degradation_values():
    x = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    torch.testing.assert_close(linear_degradation(x, 2, "area"),
                               torch.tensor([[[[3.5, 5.5], [11.5, 13.5]]]]))
    # Odd size: the last row/column is edge-replicated, output ceil(H/s).
    y = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    out = linear_degradation(y, 2, "area")
    assert out.shape == (1, 1, 2, 2)
    assert out[0, 0, 1, 1].item() == pytest.approx(9.0)
    assert out[0, 0, 0, 1].item() == pytest.approx((3 + 3 + 6 + 6) / 4)
    const = torch.full((1, 1, 9, 7), 0.3)
    for mode in ("area", "bilinear"):
        for s in (2, 3):
            torch.testing.assert_close(linear_degradation(const, s, mode),
                                       torch.full((1, 1, math.ceil(9 / s), math.ceil(7 / s)), 0.3))
    assert linear_degradation(x, 1) is x


def test_dsn_backward_reaches_every_parameter():
    dsn = tiny_dsn().train()
    out = dsn(torch.rand(2, 1, 24, 40), torch.rand(2, 1, 16, 24))
    out.square().mean().backward()
    missing = [n for n, p in dsn.named_parameters() if p.grad is None]
    assert not missing


# --------------------------------------------------------------------------- generator


@pytest.mark.parametrize("size", [(37, 50), (5, 7), (1, 1), (64, 48)])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_generator_shapes(size, scale):
    torch.manual_seed(0)
    gen = SRGenerator(GeneratorConfig(**TINY_GEN, scale=scale))
    with torch.no_grad():
        out = gen(torch.rand(2, 1, *size))
    assert out.shape == (2, 1, scale * size[0], scale * size[1])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("num_down", [0, 1, 3])
def test_generator_depth(num_down):
    torch.manual_seed(0)
    gen = SRGenerator(GeneratorConfig(**TINY_GEN, num_down=num_down))
    assert len(gen.down) == num_down and len(gen.up) == num_down
    widths = [stage[0].out_channels for stage in gen.down]
    assert widths == [8 * 2 ** (i + 1) for i in range(num_down)]
    with torch.no_grad():
        assert gen(torch.rand(1, 1, 13, 22)).shape == (1, 1, 26, 44)


def test_generator_paper_layout():
    with torch.device("meta"):  # layout only: no memory, no init cost
        gen = SRGenerator(GeneratorConfig())
    assert [(s[0].in_channels, s[0].out_channels, s[0].kernel_size, s[0].stride) for s in gen.down] == [
        (64, 128, (4, 4), (2, 2)), (128, 256, (4, 4), (2, 2))]
    assert isinstance(gen.encoder_rrdb, RRDB)
    assert all(isinstance(b, RRDB) for b in gen.bottleneck)
    assert gen.bottleneck[0].rdb1.conv1.in_channels == 256
    assert any(isinstance(m, nn.PixelShuffle) for m in gen.upsample.modules())


def test_generator_crop_is_local():
    """Padding to 2**N and cropping back: the output for an image equals the crop of a bigger one's
    only far from the border, but it must never depend on the batch neighbour."""
    torch.manual_seed(0)
    gen = SRGenerator(GeneratorConfig(**TINY_GEN))
    x = torch.rand(2, 1, 11, 9)
    with torch.no_grad():
        both = gen(x)
        single = gen(x[:1])
    torch.testing.assert_close(both[:1], single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(13, 22), (16, 16), (5, 3)])
def test_generator_global_residual_adds_bicubic_upsampling(size):
    """With ``global_residual`` the network output is a correction to bicubic x2: a silenced last
    layer leaves exactly torch's bicubic up-sampling, also for sizes that need padding."""
    torch.manual_seed(0)
    gen = SRGenerator(GeneratorConfig(**TINY_GEN, global_residual=True))
    x = torch.rand(2, 1, *size)
    with torch.no_grad():
        full = gen(x)
        nn.init.zeros_(gen.conv_last.weight)
        nn.init.zeros_(gen.conv_last.bias)
        out = gen(x)
    bicubic = nn.functional.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    torch.testing.assert_close(out, bicubic)
    assert not torch.allclose(full, bicubic)
    old = GeneratorConfig(**TINY_GEN).to_dict()
    del old["global_residual"]  # configs written before the option existed
    assert GeneratorConfig.from_dict(old).global_residual is False
    with pytest.raises(ValueError, match="global_residual"):
        GeneratorConfig(**TINY_GEN, global_residual="yes")


def test_estimate_noise_sigma_measures_each_image_and_ignores_smooth_structure():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    smooth = (0.2 + 0.5 * xx + 0.2 * yy**2)[None, None].repeat(3, 1, 1, 1)
    noise = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    levels = torch.tensor([0.0, 0.01, 0.05])
    sigma = estimate_noise_sigma(smooth + levels.view(-1, 1, 1, 1) * noise)
    assert sigma.shape == (3,) and sigma[0] < 2e-3
    torch.testing.assert_close(sigma[1:], levels[1:], rtol=0.1, atol=0)
    with pytest.raises(ValueError, match="B, 1, H>=3"):
        estimate_noise_sigma(torch.zeros(1, 2, 8, 8))
    # a zeroed background (as masked scans have) does not dilute the head's noise level ...
    head = 0.6 + 0.03 * torch.randn(1, 1, 64, 32, generator=torch.Generator().manual_seed(1))
    masked = torch.cat((head, torch.zeros(1, 1, 64, 32)), -1)
    assert estimate_noise_sigma(masked)[0] == pytest.approx(estimate_noise_sigma(head)[0].item(), rel=0.05)
    assert estimate_noise_sigma(masked)[0] == pytest.approx(0.03, rel=0.1)
    assert estimate_noise_sigma(masked, foreground=None)[0] < 0.6 * 0.03  # the whole-slice mean would
    # ... and an image with no foreground at all is read whole
    faint = 0.02 * torch.rand(1, 1, 16, 16)
    torch.testing.assert_close(estimate_noise_sigma(faint), estimate_noise_sigma(faint, foreground=None))


def test_learned_noise_estimator_starts_as_the_mean_response_over_the_head_and_a_generator_uses_it():
    from ddasr_nipype.models import LearnedNoiseEstimator, with_learned_noise_estimator

    torch.manual_seed(0)
    # a head inside air, as slices are: the fresh estimator is Immerkaer's mean response over the head
    head = torch.zeros(2, 1, 48, 48)
    head[..., 8:40, 8:40] = 0.6 + torch.tensor([0.01, 0.04]).view(2, 1, 1, 1) * torch.randn(2, 1, 32, 32)
    estimator = LearnedNoiseEstimator().eval()
    with torch.no_grad():
        fresh = estimator(head)
    torch.testing.assert_close(fresh, estimate_noise_sigma(head), rtol=0.05, atol=0)
    assert estimator(torch.full((1, 1, 16, 16), 0.5)).item() == 0.0  # flat and noise-free: 0
    with pytest.raises(ValueError, match="B, 1, H>=3"):
        estimator(torch.zeros(1, 2, 8, 8))
    # the config: "learned" needs the noise-level input; older configs read "immerkaer"
    with pytest.raises(ValueError, match="noise_estimator"):
        GeneratorConfig(**TINY_GEN, noise_estimator="learned")
    with pytest.raises(ValueError, match="noise_estimator"):
        GeneratorConfig(**TINY_GEN, noise_level_input=True, noise_estimator="wavelet")
    assert GeneratorConfig.from_dict(GeneratorConfig(**TINY_GEN).to_dict()).noise_estimator == "immerkaer"
    # a generator packed with a trained estimator (here: one whose weights favour nothing but differ
    # from the fresh ones) reads the level with it when none is given, and is otherwise the same network
    plain = SRGenerator(GeneratorConfig(**TINY_GEN, noise_level_input=True)).eval()
    trained = LearnedNoiseEstimator()
    with torch.no_grad():
        trained.body[-1].bias.fill_(0.5)
        trained.body[-1].weight.normal_(0.0, 0.1)
    config, state = with_learned_noise_estimator(plain.config, plain.state_dict(), trained.state_dict())
    assert config.noise_estimator == "learned" and plain.config.noise_estimator == "immerkaer"
    learned = SRGenerator(config).eval()
    learned.load_state_dict(state, strict=True)
    x = torch.rand(2, 1, 13, 10) * 0.8 + 0.1
    with torch.no_grad():
        level = learned.estimate_noise(x)
        torch.testing.assert_close(level, trained(x))
        assert not torch.allclose(level, estimate_noise_sigma(x))
        torch.testing.assert_close(learned(x), plain(x, level))
        torch.testing.assert_close(plain.estimate_noise(x), estimate_noise_sigma(x))
        # the app's path reads each slice's level with the generator's own estimator
        from ddasr_nipype.inference import slice_noise_level

        torch.testing.assert_close(slice_noise_level(learned, x), level)
        torch.testing.assert_close(slice_noise_level(plain, x), estimate_noise_sigma(x))
    with pytest.raises(ValueError, match="noise_level_input"):
        with_learned_noise_estimator(GeneratorConfig(**TINY_GEN), {}, trained.state_dict())


def test_generator_noise_level_input_is_an_extra_channel_of_the_given_or_estimated_sigma():
    torch.manual_seed(0)
    gen = SRGenerator(GeneratorConfig(**TINY_GEN, global_residual=True, noise_level_input=True)).eval()
    assert gen.conv_first.in_channels == 2
    x = torch.rand(2, 1, 13, 10)
    with torch.no_grad():
        quiet, loud = gen(x, torch.tensor([0.0, 0.0])), gen(x, torch.tensor([0.04, 0.04]))
        assert quiet.shape == (2, 1, 26, 20) and not torch.allclose(quiet, loud)
        # a scalar sigma is broadcast; left out, it is estimated from each input
        torch.testing.assert_close(gen(x, torch.tensor(0.04)), loud)
        torch.testing.assert_close(gen(x), gen(x, estimate_noise_sigma(x)))
        # each image gets its own level
        mixed = gen(x, torch.tensor([0.0, 0.04]))
        torch.testing.assert_close(mixed[0], quiet[0])
        torch.testing.assert_close(mixed[1], loud[1])
        # a zero weight on the level channel leaves the generator that has no such channel
        plain = SRGenerator(GeneratorConfig(**TINY_GEN, global_residual=True)).eval()
        state = plain.state_dict()
        state["conv_first.weight"] = torch.cat((state["conv_first.weight"],
                                                torch.zeros_like(state["conv_first.weight"])), 1)
        gen.load_state_dict(state)
        torch.testing.assert_close(gen(x, torch.tensor([0.0, 0.04])), plain(x))
    with pytest.raises(ValueError, match="one value per image"):
        gen(x, torch.tensor([0.01, 0.02, 0.03]))
    with pytest.raises(ValueError, match="no noise-level input"):
        plain(x, torch.tensor([0.01, 0.02]))
    old = GeneratorConfig(**TINY_GEN).to_dict()
    del old["noise_level_input"]  # bundles written before the option existed
    assert GeneratorConfig.from_dict(old).noise_level_input is False
    with pytest.raises(ValueError, match="noise_level_input"):
        GeneratorConfig(**TINY_GEN, noise_level_input=1)


def test_rrdb_residual_scaling_and_init():
    torch.manual_seed(0)
    block = RRDB(num_feat=16, num_grow_ch=8)
    conv = block.rdb1.conv1
    kaiming_std = math.sqrt(2.0 / (conv.in_channels * 9))  # fan_in, leaky_relu a=0
    assert conv.weight.std().item() == pytest.approx(0.1 * kaiming_std, rel=0.25)
    assert torch.count_nonzero(conv.bias) == 0
    x = torch.randn(1, 16, 6, 6)
    with torch.no_grad():
        for rdb in (block.rdb1, block.rdb2, block.rdb3):
            rdb.conv5.weight.zero_()
            rdb.conv5.bias.fill_(1.0)
        # Each RDB adds 0.2 * 1; the RRDB scales the three-RDB output by 0.2 and adds x:
        # rdb3(rdb2(rdb1(x))) = x + 0.6 -> 0.2 * (x + 0.6) + x = 1.2 x + 0.12.
        torch.testing.assert_close(block(x), 1.2 * x + 0.12)


def test_rrdbnet_reference():
    with torch.device("meta"):
        net = RRDBNet()
    assert len(net.body) == 23 and all(isinstance(b, RRDB) for b in net.body)
    n_params = sum(p.numel() for p in net.parameters())
    assert 16.0e6 < n_params < 17.0e6  # ESRGAN x2 with one input channel: ~16.6 M
    tiny = RRDBNet(RRDBNetConfig(num_feat=8, num_block=1, num_grow_ch=4, scale=4))
    with torch.no_grad():
        assert tiny(torch.rand(1, 1, 7, 9)).shape == (1, 1, 28, 36)


def test_rrdbnet_real_esrgan_x2_variant():
    # RealESRGAN_x2plus: the body runs on the pixel-unshuffled input (4 channels, half size)
    net = RRDBNet(RRDBNetConfig(num_feat=8, num_block=1, num_grow_ch=4, pixel_unshuffle=True))
    assert net.conv_first.in_channels == 4
    seen = []
    net.body.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    with torch.no_grad():
        assert net(torch.rand(2, 1, 7, 10)).shape == (2, 1, 14, 20)  # odd sizes padded, then cropped
    assert seen[0][-2:] == (4, 5)
    with pytest.raises(ValueError, match="needs scale=2"):
        RRDBNetConfig(scale=4, pixel_unshuffle=True)


# --------------------------------------------------------------------------- discriminator


@pytest.mark.parametrize("size", [(37, 50), (74, 100), (9, 9), (64, 64)])
def test_discriminator_shapes(size):
    torch.manual_seed(0)
    disc = AttentionUNetDiscriminator(DiscriminatorConfig(num_feat=8))
    out = disc(torch.rand(2, 1, *size))
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all()


def test_discriminator_layout():
    with torch.device("meta"):
        disc = AttentionUNetDiscriminator()
    sn = {name for name, m in disc.named_modules() if hasattr(m, "parametrizations")}
    assert {"conv1", "conv2", "conv3", "gating", "conv4", "conv5", "conv6", "conv7", "conv8",
            "cat1.conv", "cat2.conv", "cat3.conv"} <= sn
    assert "conv0" not in sn and "conv9" not in sn
    assert [disc.conv1.out_channels, disc.conv2.out_channels, disc.conv3.out_channels] == [128, 256, 512]
    assert disc.attn1.theta.kernel_size == (2, 2) and disc.attn1.theta.stride == (2, 2)
    assert isinstance(disc.attn1.out[1], nn.BatchNorm2d)
    assert disc.conv9.out_channels == 1


def test_discriminator_is_per_pixel():
    """Changing one corner of the input changes logits near it more than far away."""
    torch.manual_seed(0)
    disc = AttentionUNetDiscriminator(DiscriminatorConfig(num_feat=8)).eval()
    x = torch.rand(1, 1, 64, 64)
    y = x.clone()
    y[..., :4, :4] = 1.0 - y[..., :4, :4]
    with torch.no_grad():
        diff = (disc(x) - disc(y)).abs()[0, 0]
    assert diff[:8, :8].mean() > 5 * diff[40:, 40:].mean()


# --------------------------------------------------------------------------- VGG19


def test_vgg_layer_indices_match_torchvision():
    vgg = VGG19Features(seed=None)
    assert len(vgg.features) == 37
    assert LAYER_NAMES[1] == "relu1_1" and LAYER_NAMES[6] == "relu2_1" and LAYER_NAMES[11] == "relu3_1"
    assert LAYER_NAMES[20] == "relu4_1" and LAYER_NAMES[29] == "relu5_1"
    assert (LAYER_NAMES[2], LAYER_NAMES[7], LAYER_NAMES[9], LAYER_NAMES[12], LAYER_NAMES[17]) == (
        "conv1_2", "conv2_2", "pool2", "conv3_2", "relu3_4")
    assert (LAYER_NAMES[16], LAYER_NAMES[25], LAYER_NAMES[34]) == ("conv3_4", "conv4_4", "conv5_4")
    conv_keys = sorted(k for k in vgg.state_dict() if k.endswith(".weight"))
    assert len(conv_keys) == 16 and "features.34.weight" in conv_keys
    assert all(not isinstance(m, nn.ReLU) or not m.inplace for m in vgg.features)


@pytest.fixture(scope="module")
def random_vgg():
    return load_vgg19(allow_random=True, seed=0)[0]


def test_vgg_frozen_normalised_and_early_stop(random_vgg):
    vgg = random_vgg
    assert all(not p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training
    x = torch.rand(2, 1, 32, 40, requires_grad=True)
    called = []
    hook = vgg.features[8].register_forward_hook(lambda *a: called.append(True))
    try:
        feats = vgg(x, layers=(2, 6))
    finally:
        hook.remove()
    assert set(feats) == {2, 6} and not called  # stopped after index 6
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    normed = (x.detach().expand(-1, 3, -1, -1) - mean) / std
    conv12 = vgg.features[2](F.relu(vgg.features[0](normed)))
    torch.testing.assert_close(feats[2], conv12)  # conv output not clobbered by an in-place ReLU
    feats[6].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    three = vgg(x.detach().expand(-1, 3, -1, -1).contiguous(), layers=(2,))[2]
    torch.testing.assert_close(three, feats[2].detach())
    with pytest.raises(ValueError, match="layer indices"):
        vgg(x, layers=(37,))


def test_vgg_random_init_deterministic():
    state = torch.random.get_rng_state()
    a, prov = load_vgg19(allow_random=True, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    b, _ = load_vgg19(allow_random=True, seed=3)
    c, _ = load_vgg19(allow_random=True, seed=4)
    assert prov == {"source": "random", "seed": 3, "init": "kaiming_normal (torchvision vgg init)"}
    w = "features.0.weight"
    assert torch.equal(a.state_dict()[w], b.state_dict()[w])
    assert not torch.equal(a.state_dict()[w], c.state_dict()[w])
    # torchvision init: kaiming normal, fan_out, relu gain; zero bias.
    w34 = a.state_dict()["features.34.weight"]
    assert w34.std().item() == pytest.approx(math.sqrt(2.0 / (512 * 9)), rel=0.05)
    assert torch.count_nonzero(a.state_dict()["features.34.bias"]) == 0


@pytest.fixture()
def no_vgg_env(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


def _torchvision_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """A state dict laid out like torchvision's ``vgg19().state_dict()`` (features + classifier)."""
    gen = torch.Generator().manual_seed(seed)
    state = {f"features.{k}": torch.randn(v.shape, generator=gen)
             for k, v in VGG19Features(seed=None).features.state_dict().items()}
    state["classifier.0.weight"] = torch.randn(8, 4)
    state["classifier.0.bias"] = torch.randn(8)
    return state


def test_vgg_loads_torchvision_file_explicit_env_and_hub(tmp_path, monkeypatch, no_vgg_env):
    state = _torchvision_state_dict(seed=1)
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()

    vgg, prov = load_vgg19(path)
    assert prov == {"source": "file", "path": str(path.resolve()), "sha256": sha}
    torch.testing.assert_close(vgg.state_dict()["features.28.weight"], state["features.28.weight"])
    assert all(not p.requires_grad for p in vgg.parameters())

    monkeypatch.setenv(ENV_VAR, str(path))
    assert load_vgg19()[1]["sha256"] == sha

    monkeypatch.delenv(ENV_VAR)
    (no_vgg_env / "checkpoints").mkdir(parents=True)
    hub_file = no_vgg_env / "checkpoints" / HUB_FILENAME
    hub_file.write_bytes(path.read_bytes())
    assert load_vgg19()[1]["path"] == str(hub_file.resolve())
    # An explicit path wins over the hub cache.
    other = tmp_path / "other.pth"
    torch.save({k[len("features."):]: v for k, v in _torchvision_state_dict(seed=2).items()
                if k.startswith("features.")}, other)
    assert load_vgg19(other)[1]["path"] == str(other.resolve())


def test_vgg_not_found_message(tmp_path, no_vgg_env):
    with pytest.raises(VGGWeightsNotFoundError) as info:
        load_vgg19()
    message = str(info.value)
    assert "explicit path" in message and ENV_VAR in message
    assert str(no_vgg_env / "checkpoints" / HUB_FILENAME) in message
    assert "allow_random=True" in message and "--allow-random-vgg19" in message
    with pytest.raises(VGGWeightsNotFoundError, match="do not exist"):
        load_vgg19(tmp_path / "missing.pth", allow_random=True)


def test_vgg_corrupt_or_wrong_file(tmp_path, no_vgg_env):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file at all")
    with pytest.raises(VGGWeightsNotFoundError, match="cannot read VGG19 weights from .*not a torchvision vgg19 "
                                                      "state dict") as info:
        load_vgg19(corrupt)
    assert str(corrupt) in str(info.value)
    # a pickle of something else: torch's page of weights_only advice is cut to the line that matters
    pickled = tmp_path / "pickled.pth"
    torch.save({"net": torch.nn.Linear(2, 2)}, pickled)
    with pytest.raises(VGGWeightsNotFoundError) as info:
        load_vgg19(pickled)
    message = str(info.value)
    assert message.startswith(f"cannot read VGG19 weights from {pickled}: not a torchvision vgg19 state dict (")
    assert "\n" not in message and "weights_only" not in message and len(message) < 500
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, wrong)
    with pytest.raises(VGGWeightsNotFoundError, match="does not hold VGG19 features weights"):
        load_vgg19(wrong)


# --------------------------------------------------------------------------- configs and checkpoints


TINY_MODELS = {
    "DSN": DSNConfig(**TINY_DSN),
    "SRGenerator": GeneratorConfig(**TINY_GEN),
    "AttentionUNetDiscriminator": DiscriminatorConfig(num_feat=8),
    "RRDBNet": RRDBNetConfig(num_feat=8, num_block=1, num_grow_ch=4),
}


@pytest.mark.parametrize("kind", sorted(TINY_MODELS))
def test_checkpoint_round_trip(kind, tmp_path):
    torch.manual_seed(0)
    model = build_model(kind, TINY_MODELS[kind]).eval()
    x = torch.rand(1, 1, 24, 16)
    if kind == "AttentionUNetDiscriminator":
        model.train()
        model(x)  # update BatchNorm statistics and spectral-norm vectors
        model.eval()
    path = save_model(tmp_path / "sub" / f"{kind}.pt", model)
    payload = torch.load(path, weights_only=True)
    assert payload["kind"] == kind
    assert json.loads(json.dumps(payload["config"])) == TINY_MODELS[kind].to_dict()
    assert payload["version"]
    loaded = load_model(path).eval()
    assert type(loaded) is type(model) and loaded.config == model.config
    with torch.no_grad():
        if kind == "DSN":
            torch.testing.assert_close(loaded(x, x), model(x, x))
        else:
            torch.testing.assert_close(loaded(x), model(x))


def test_config_dict_round_trip_and_errors(tmp_path):
    cfg = DSNConfig(**TINY_DSN)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert DSNConfig.from_dict(data) == cfg
    assert isinstance(DSNConfig.from_dict(data).decoder_channels, tuple)
    assert DSNConfig(**{**TINY_DSN, "decoder_channels": [16, 8, 8]}) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        GeneratorConfig.from_dict({"num_feat": 8, "bogus": 1})
    with pytest.raises(ValueError, match="num_feat must be a positive integer"):
        GeneratorConfig(num_feat=0)
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model("UNet", {})
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a readable model file"):
        load_model(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "absent.pt")
    mismatched = tmp_path / "mismatch.pt"
    torch.save({"kind": "SRGenerator", "config": GeneratorConfig(**TINY_GEN).to_dict(), "version": "0",
                "state_dict": {"conv_first.weight": torch.zeros(3)}}, mismatched)
    with pytest.raises(CheckpointError):
        load_model(mismatched)


def test_residual_dsn_starts_as_the_linear_degradation_and_learns():
    from ddasr_nipype.models.dsn_arch import linear_degradation

    cfg = DSNConfig(d_model=16, nhead=2, dim_feedforward=32, num_encoder_layers=1, num_decoder_layers=1,
                    cape_pool_size=2, decoder_channels=(8, 8, 8), decoder_extra_convs=(0, 0, 0), residual=True)
    torch.manual_seed(0)
    dsn = DSN(cfg).eval()
    hr, lr = torch.rand(2, 1, 37, 50), torch.rand(2, 1, 20, 24)
    with torch.no_grad():
        torch.testing.assert_close(dsn(hr, lr), linear_degradation(hr, 2, "area"))
        torch.testing.assert_close(dsn(hr, lr, degrade=False), hr)
    # the zero-initialised last conv still receives gradient, so training moves away from identity
    dsn.train()
    dsn(hr, lr).mean().backward()
    last = [m for m in dsn.cnn_decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    assert last.weight.grad.abs().sum() > 0
    assert DSNConfig.from_dict(cfg.to_dict()).residual is True and DSNConfig().residual is False


def test_deepbet_features_are_deepbets_3d_stem_on_a_depth_constant_volume():
    import torch.nn.functional as F

    from ddasr_nipype.models import load_deepbet_features
    from ddasr_nipype.models.deepbet_arch import deepbet_weights_path

    features, info = load_deepbet_features()
    assert info["source"] == "deepbet" and info["license"] == "MIT" and len(info["sha256"]) == 64
    x = torch.rand(2, 1, 48, 40, requires_grad=True)
    out = features(x, layers=(0, 1, 2))
    assert [tuple(v.shape) for v in out.values()] == [(2, 16, 24, 20), (2, 16, 12, 10), (2, 32, 6, 5)]
    assert not any(p.requires_grad for p in features.parameters())
    sum(v.mean() for v in out.values()).backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0  # gradients reach the image
    # the 2D stem is the 3D stem's response to the slice repeated along depth (away from the ends)
    stem3d = torch.jit.load(str(deepbet_weights_path())).state_dict()["init.0.weight"]
    mapped = 0.449 + 0.226 * (x.detach() - 0.4) / 0.25
    volume = mapped[:, :, None].repeat(1, 1, 16, 1, 1)
    conv3d = F.conv3d(volume, stem3d, stride=2, padding=3)[:, :, 4]
    conv2d = F.conv2d(mapped, features.stem, stride=2, padding=3)
    torch.testing.assert_close(conv2d, conv3d, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="layers must be among"):
        features(x, layers=(3,))


def test_a_2p5d_generator_takes_its_neighbour_slices_and_starts_as_the_2d_one_it_widens():
    from ddasr_nipype.models import context_offsets
    from ddasr_nipype.training.srn_trainer import _widened_first_layer

    torch.manual_seed(0)
    flat = GeneratorConfig(**TINY_GEN, global_residual=True, noise_level_input=True)
    wide = GeneratorConfig(**TINY_GEN, global_residual=True, noise_level_input=True, context_slices=1)
    assert wide.image_channels == 3 and context_offsets(1) == (0, -1, 1)
    plain, gen = SRGenerator(flat).eval(), SRGenerator(wide).eval()
    assert gen.conv_first.in_channels == 4  # centre, two neighbours, noise level
    x = torch.rand(2, 3, 13, 10)
    with torch.no_grad():
        out = gen(x, torch.tensor([0.01, 0.03]))
        assert out.shape == (2, 1, 26, 20)
        # the neighbours matter ...
        other = x.clone()
        other[:, 1:] = torch.rand(2, 2, 13, 10)
        assert not torch.allclose(gen(other, torch.tensor([0.01, 0.03])), out)
        # ... the noise level is read from the centre slice alone
        torch.testing.assert_close(gen(x), gen(x, estimate_noise_sigma(x[:, :1])))
        # widened from the 2D generator (zero weights for the neighbours), it is the 2D generator
        state = plain.state_dict()
        state["conv_first.weight"] = _widened_first_layer(state["conv_first.weight"], flat, wide)
        gen.load_state_dict(state)
        torch.testing.assert_close(gen(x, torch.tensor([0.01, 0.03])), plain(x[:, :1], torch.tensor([0.01, 0.03])))
    with pytest.raises(ValueError, match=r"\[B, 3, h, w\]"):
        gen(x[:, :1])
    assert GeneratorConfig.from_dict(flat.to_dict()).context_slices == 0
    old = flat.to_dict()
    del old["context_slices"]  # bundles written before the option existed
    assert GeneratorConfig.from_dict(old).context_slices == 0
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="context_slices"):
            GeneratorConfig(**TINY_GEN, context_slices=bad)


def test_a_2p5d_generator_widened_with_a_share_starts_on_the_averaged_slices():
    from ddasr_nipype.training.srn_trainer import _widened_first_layer

    torch.manual_seed(1)
    flat = GeneratorConfig(**TINY_GEN, noise_level_input=True)
    wide = GeneratorConfig(**TINY_GEN, noise_level_input=True, context_slices=1)
    plain, gen = SRGenerator(flat).eval(), SRGenerator(wide).eval()
    state = plain.state_dict()
    state["conv_first.weight"] = _widened_first_layer(state["conv_first.weight"], flat, wide, share=0.2)
    gen.load_state_dict(state)
    x, sigma = torch.rand(2, 3, 12, 12), torch.tensor([0.02, 0.02])
    averaged = 0.6 * x[:, :1] + 0.2 * x[:, 1:2] + 0.2 * x[:, 2:3]
    with torch.no_grad():
        torch.testing.assert_close(gen(x, sigma), plain(averaged, sigma), rtol=1e-4, atol=1e-5)
    wider = GeneratorConfig(**TINY_GEN, noise_level_input=True, context_slices=2)
    with pytest.raises(ValueError, match="context_share"):  # 4 new neighbours x 0.3 leaves the centre nothing
        _widened_first_layer(plain.state_dict()["conv_first.weight"], flat, wider, share=0.3)
    assert _widened_first_layer(plain.state_dict()["conv_first.weight"], flat, wider, share=0.2).shape[1] == 6
