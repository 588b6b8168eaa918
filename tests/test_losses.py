"""DSN and SRN losses: hand-checkable values and gradient flow (tiny networks, random VGG)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ddasr_nipype.losses import (
    DSN_LAYERS,
    STRUCTURE_LAYERS,
    DSNLoss,
    DSNLossWeights,
    PerceptualLoss,
    SRNLoss,
    SRNLossConfig,
    domain_distance,
    mean_std,
    mean_variance_norm,
    relativistic_d_loss,
    relativistic_g_loss,
    structure_distance,
)
from ddasr_nipype.models import (
    DSN,
    AttentionUNetDiscriminator,
    DiscriminatorConfig,
    DSNConfig,
    GeneratorConfig,
    SRGenerator,
    load_vgg19,
)


@pytest.fixture(scope="module")
def vgg():
    return load_vgg19(allow_random=True, seed=0)[0]


def tiny_dsn() -> DSN:
    torch.manual_seed(0)
    return DSN(DSNConfig(d_model=32, nhead=4, dim_feedforward=64, num_encoder_layers=1,
                         num_decoder_layers=1, decoder_channels=(16, 8, 8)))


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def _assert_every_parameter_gets_gradient(module: torch.nn.Module) -> None:
    no_grad = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    zero_grad = [n for n, p in module.named_parameters() if p.grad is not None and not p.grad.abs().sum() > 0]
    assert not no_grad, f"no gradient for {no_grad}"
    assert not zero_grad, f"zero gradient for {zero_grad}"


# --------------------------------------------------------------------------- statistics


def test_mean_std_by_hand():
    feat = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])
    mean, std = mean_std(feat)
    assert mean.item() == pytest.approx(4.0)
    assert std.item() == pytest.approx(math.sqrt(5.0 + 1e-5))  # population variance of 1,3,5,7
    one_pixel = mean_std(torch.full((1, 2, 1, 1), 3.0))[1]
    torch.testing.assert_close(one_pixel, torch.full((1, 2), math.sqrt(1e-5)))
    normed = mean_variance_norm(feat)
    assert normed.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert normed.flatten().std(correction=0).item() == pytest.approx(1.0, abs=1e-5)


def test_domain_distance_known_shift_and_scale():
    torch.manual_seed(0)
    a = {1: torch.randn(2, 3, 5, 4), 6: torch.randn(2, 3, 2, 2)}
    # Mean shift only: the std term vanishes, the mean term is shift**2.
    shifted = {k: v + 2.0 for k, v in a.items()}
    assert domain_distance(a, shifted, layers=(1, 6)).item() == pytest.approx(2 * 4.0, rel=1e-5)
    # Gain g and offset c on one layer: mean -> g*mean + c, std -> sqrt(g**2 var + eps).
    g, c = 3.0, -1.0
    b = {1: g * a[1] + c}
    flat = a[1].flatten(2)
    mean, var = flat.mean(2), flat.var(2, correction=0)
    expected = (F.mse_loss(mean, g * mean + c)
                + F.mse_loss((var + 1e-5).sqrt(), (g * g * var + 1e-5).sqrt()))
    assert domain_distance(a, b, layers=(1,)).item() == pytest.approx(expected.item(), rel=1e-5)
    # Different spatial sizes are fine: only channel statistics are compared.
    small = {1: torch.randn(2, 3, 2, 3)}
    assert torch.isfinite(domain_distance(a, small, layers=(1,)))


def test_structure_distance_zero_for_identical_and_gain_invariant():
    torch.manual_seed(0)
    a = {20: torch.randn(1, 4, 6, 6), 29: torch.randn(1, 4, 3, 3)}
    assert structure_distance(a, a).item() == 0.0
    b = {k: 2.5 * v + 7.0 for k, v in a.items()}
    assert structure_distance(a, b).item() == pytest.approx(0.0, abs=1e-5)
    c = {k: torch.randn_like(v) for k, v in a.items()}
    assert structure_distance(a, c).item() > 0.5


# --------------------------------------------------------------------------- DSN loss


def test_dsn_loss_terms_by_hand(vgg):
    torch.manual_seed(0)
    hr, lr = torch.rand(1, 1, 32, 40), torch.rand(1, 1, 32, 32)
    loss = DSNLoss(vgg)
    # Synthetic LR equal to the HR image and perfect identity maps: only the domain term is left.
    terms = loss.terms(hr, hr, lr, hr, lr)
    assert terms["structure"].item() == 0.0
    assert terms["identity_pixel"].item() == 0.0
    assert terms["identity_feature"].item() == 0.0
    expected_domain = domain_distance(vgg(hr, DSN_LAYERS), vgg(lr, DSN_LAYERS))
    torch.testing.assert_close(terms["domain"], expected_domain)
    torch.testing.assert_close(terms["total"], 10.0 * expected_domain)
    # A synthetic LR that is the real LR: zero domain distance.
    assert loss.terms(lr, hr, lr, hr, lr)["domain"].item() == 0.0
    # Identity pixel term is the MSE on both branches.
    ihr, ilr = hr + 0.1, lr - 0.2
    terms = loss.terms(hr, hr, lr, ihr, ilr)
    assert terms["identity_pixel"].item() == pytest.approx(0.01 + 0.04, rel=1e-4)


def test_dsn_loss_structure_compares_resized_synthetic_lr(vgg):
    """The synthetic LR is resized to the HR size (bilinear) before the VGG structure term."""
    torch.manual_seed(0)
    hr, lr = torch.rand(1, 1, 48, 32), torch.rand(1, 1, 32, 32)
    synthetic = torch.rand(1, 1, 24, 16)
    got = DSNLoss(vgg).terms(synthetic, hr, lr, hr, lr)["structure"]
    up = F.interpolate(synthetic, size=(48, 32), mode="bilinear", align_corners=False)
    expected = structure_distance(vgg(up, STRUCTURE_LAYERS), vgg(hr, STRUCTURE_LAYERS))
    torch.testing.assert_close(got, expected)


def test_dsn_loss_weights_and_gradient_to_every_dsn_parameter(vgg):
    dsn = tiny_dsn().train()
    weights = DSNLossWeights(structure=1.0, domain=2.0, identity_pixel=3.0, identity_feature=4.0)
    torch.manual_seed(1)
    hr, lr = torch.rand(1, 1, 40, 40), torch.rand(1, 1, 33, 35)
    terms = DSNLoss(vgg, weights)(dsn, hr, lr)
    assert set(terms) == {"structure", "domain", "identity_pixel", "identity_feature", "total"}
    expected = (terms["structure"] + 2 * terms["domain"] + 3 * terms["identity_pixel"]
                + 4 * terms["identity_feature"])
    torch.testing.assert_close(terms["total"], expected)
    assert all(v.ndim == 0 and torch.isfinite(v) for v in terms.values())
    terms["total"].backward()
    _assert_every_parameter_gets_gradient(dsn)
    assert all(p.grad is None for p in vgg.parameters())


def test_each_dsn_term_reaches_the_dsn(vgg):
    dsn = tiny_dsn().eval()
    torch.manual_seed(2)
    terms = DSNLoss(vgg)(dsn, torch.rand(1, 1, 32, 32), torch.rand(1, 1, 24, 32))
    params = list(dsn.cnn_decoder.parameters())
    for term in ("structure", "domain", "identity_pixel", "identity_feature"):
        grads = torch.autograd.grad(terms[term], params, retain_graph=True)
        assert sum(g.abs().sum() for g in grads) > 0, term


def test_dsn_loss_weights_defaults_and_validation():
    w = DSNLossWeights()
    assert (w.structure, w.domain, w.identity_pixel, w.identity_feature) == (7.0, 10.0, 30.0, 5.0)
    assert DSNLossWeights.from_dict(w.to_dict()) == w
    with pytest.raises(ValueError, match="non-negative"):
        DSNLossWeights(domain=-1.0)


# --------------------------------------------------------------------------- SRN losses


def test_perceptual_loss_values(vgg):
    torch.manual_seed(0)
    hr = torch.rand(2, 1, 32, 32)
    loss = PerceptualLoss(vgg)
    terms = loss(hr, hr)
    assert set(terms) == {"layer_2", "layer_7", "layer_9", "layer_12", "layer_17", "total"}
    assert terms["total"].item() == 0.0
    sr = torch.rand(2, 1, 32, 32)
    single = PerceptualLoss(vgg, layers=(7,), weights=(2.0,), criterion="l1")(sr, hr)
    expected = 2.0 * F.l1_loss(vgg(sr, (7,))[7], vgg(hr, (7,))[7])
    torch.testing.assert_close(single["total"], expected)
    terms = loss(sr, hr)
    weighted = sum(w * terms[f"layer_{i}"] for i, w in zip((2, 7, 9, 12, 17), (0.1, 0.1, 1, 1, 1)))
    torch.testing.assert_close(terms["total"], weighted)
    with pytest.raises(ValueError, match="layers but"):
        PerceptualLoss(vgg, layers=(2, 7), weights=(1.0,))


def test_relativistic_losses_by_hand():
    real = torch.tensor([1.0, 3.0])
    fake = torch.tensor([0.0, 2.0])
    # mean C(fake) = 1, mean C(real) = 2: real_rel = (0, 2), fake_rel = (-2, 0).
    d_expected = (-(_log_sigmoid(0.0) + _log_sigmoid(2.0)) / 2
                  - (_log_sigmoid(2.0) + _log_sigmoid(0.0)) / 2)  # log(1 - sigmoid(x)) = log sigmoid(-x)
    g_expected = (-(_log_sigmoid(-0.0) + _log_sigmoid(-2.0)) / 2
                  - (_log_sigmoid(-2.0) + _log_sigmoid(0.0)) / 2)
    assert relativistic_d_loss(real, fake).item() == pytest.approx(d_expected, rel=1e-6)
    assert relativistic_g_loss(real, fake).item() == pytest.approx(g_expected, rel=1e-6)
    # Stable for confident logits (no log(0)).
    big_real, big_fake = torch.full((2, 1, 4, 4), 1e4), torch.full((2, 1, 4, 4), -1e4)
    assert relativistic_d_loss(big_real, big_fake).item() == pytest.approx(0.0, abs=1e-6)
    assert relativistic_g_loss(big_real, big_fake).item() == pytest.approx(4e4, rel=1e-6)


def test_srn_loss_and_gradients_into_generator_and_discriminator(vgg):
    torch.manual_seed(0)
    gen = SRGenerator(GeneratorConfig(num_feat=8, num_grow_ch=4, num_bottleneck_blocks=1))
    disc = AttentionUNetDiscriminator(DiscriminatorConfig(num_feat=8))
    lr, hr = torch.rand(2, 1, 17, 19), torch.rand(2, 1, 34, 38)
    loss = SRNLoss(vgg)

    # Generator step.
    sr = gen(lr)
    terms = loss(sr, hr, disc(hr), disc(sr))
    assert set(terms) == {"perceptual", "l1", "adversarial", "total"}
    torch.testing.assert_close(terms["l1"], F.l1_loss(sr, hr))
    torch.testing.assert_close(terms["total"], terms["perceptual"] + terms["l1"] + 0.1 * terms["adversarial"])
    terms["total"].backward()
    _assert_every_parameter_gets_gradient(gen)

    # Discriminator step on a detached SR image: every discriminator parameter learns.
    disc.zero_grad(set_to_none=True)
    gen.zero_grad(set_to_none=True)
    d_terms = SRNLoss.discriminator(disc(hr), disc(sr.detach()))
    torch.testing.assert_close(d_terms["total"], d_terms["adversarial"])
    d_terms["total"].backward()
    _assert_every_parameter_gets_gradient(disc)
    assert all(p.grad is None for p in gen.parameters())


def test_srn_loss_without_adversarial_and_config(vgg):
    torch.manual_seed(0)
    sr, hr = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    cfg = SRNLossConfig(eta_perceptual=0.0, eta_l1=2.0)
    terms = SRNLoss(vgg, cfg)(sr, hr)
    assert terms["adversarial"].item() == 0.0
    torch.testing.assert_close(terms["total"], 2.0 * F.l1_loss(sr, hr))
    assert SRNLoss(vgg)(hr, hr)["total"].item() == 0.0
    default = SRNLossConfig()
    assert (default.eta_perceptual, default.eta_l1, default.eta_adv) == (1.0, 1.0, 0.1)
    assert default.layers == (2, 7, 9, 12, 17) and default.layer_weights == (0.1, 0.1, 1.0, 1.0, 1.0)
    assert SRNLossConfig.from_dict(default.to_dict()) == default
    assert SRNLossConfig(layers=[2, 7, 9, 12, 17], layer_weights=[0.1, 0.1, 1, 1, 1]) == default
    with pytest.raises(ValueError, match="same length"):
        SRNLossConfig(layers=(2,), layer_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="both real_logits and fake_logits"):
        SRNLoss(vgg)(sr, hr, real_logits=torch.zeros(1))


def test_srn_loss_pixel_criterion_mse_and_weight(vgg):
    torch.manual_seed(0)
    sr, hr = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    mse = SRNLoss(vgg, SRNLossConfig(eta_perceptual=0.0, eta_adv=0.0, eta_l1=3.0, pixel_criterion="mse"))
    torch.testing.assert_close(mse(sr, hr)["total"], 3.0 * F.mse_loss(sr, hr))
    # inside a weight map the error counts where the weight is, averaged over the weight
    weight = torch.zeros(2, 1, 16, 16)
    weight[:, :, 4:12, 4:12] = 1.0
    inside = F.mse_loss(sr[:, :, 4:12, 4:12], hr[:, :, 4:12, 4:12])
    torch.testing.assert_close(mse(sr, hr, weight=weight)["l1"], inside)
    l1 = SRNLoss(vgg, SRNLossConfig(eta_perceptual=0.0, eta_adv=0.0))
    torch.testing.assert_close(l1(sr, hr, weight=weight)["l1"],
                               F.l1_loss(sr[:, :, 4:12, 4:12], hr[:, :, 4:12, 4:12]))
    assert SRNLossConfig().pixel_criterion == "l1"
    assert SRNLossConfig.from_dict({"pixel_criterion": "mse"}).pixel_criterion == "mse"
    with pytest.raises(ValueError, match="pixel_criterion"):
        SRNLossConfig(pixel_criterion="l2")
