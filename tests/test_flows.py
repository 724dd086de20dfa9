"""Appendix B's flows: exact inverses, log-determinants against autograd's Jacobian, and known likelihoods."""

import math

import pytest
import torch

from ldm_core import flows


def _trained_looking(flow, seed=0):
    """Random, non-zero weights everywhere (the zero-initialised last layers would make every coupling the identity),
    and ActNorm initialised from a batch: a flow whose every layer does something."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    flow.train()
    flow(torch.randn(8, *flow.shape) * 0.3)
    return flow.eval()


MODELS = {"nice": lambda: flows.nice(width=2, couplings=2), "realnvp": lambda: flows.realnvp(width=8, couplings=2),
          "glow": lambda: flows.glow(width=8, steps=2)}


@pytest.mark.parametrize("name", MODELS)
def test_every_flow_inverts_exactly(name):
    flow = _trained_looking(MODELS[name]())
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)) - 0.5
    with torch.no_grad():
        z, _ = flow(x)
        assert z.shape[1:] == flow.z_shape
        assert (flow.inverse(z) - x).abs().max() < 1e-5
        assert flow.sample(3, torch.Generator().manual_seed(0)).shape == (3, 1, 28, 28)


@pytest.mark.parametrize("layer", ["additive", "affine", "checkerboard", "scale", "actnorm", "1x1", "squeeze"])
def test_each_layers_log_determinant_is_that_of_its_jacobian(layer):
    """log|det J| from autograd's full Jacobian on a small input (2, 4, 4) against the layer's own formula."""
    torch.manual_seed(0)
    c, h, w = 2, 4, 4
    make = {"additive": lambda: flows.Coupling(flows.channel_mask(c, h, w), flows._conv_net(c, c, 8, 3), False),
            "affine": lambda: flows.Coupling(flows.channel_mask(c, h, w, 1), flows._conv_net(c, 2 * c, 8, 3), True),
            "checkerboard": lambda: flows.Coupling(flows.checkerboard(c, h, w), flows._conv_net(c, 2 * c, 8, 3), True),
            "scale": lambda: flows.Scale((c, h, w)), "actnorm": lambda: flows.ActNorm(c),
            "1x1": lambda: flows.Invertible1x1Conv(c), "squeeze": flows.Squeeze}[layer]
    module = make()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    module.eval()
    x = torch.randn(1, c, h, w, dtype=torch.float64)
    module = module.double()
    jacobian = torch.autograd.functional.jacobian(lambda v: module(v.view(1, c, h, w))[0].flatten(), x.flatten())
    expected = torch.linalg.slogdet(jacobian)[1]
    _, logdet = module(x)
    assert logdet.item() == pytest.approx(expected.item(), abs=1e-8)
    assert (module.inverse(module(x)[0]) - x).abs().max() < 1e-10


def test_log_prob_of_a_scaled_gaussian_is_its_closed_form():
    """z = x / sigma with a N(0, 1) prior is the density of N(0, sigma^2): -log p per dimension has mean
    0.5 log(2 pi e sigma^2), and bits_per_dim adds log2(256) = 8 to its value in bits."""
    sigma = 0.1
    flow = flows.Flow([flows.Scale((1, 28, 28))], (1, 28, 28)).eval()  # eval: no data-dependent start
    with torch.no_grad():
        flow.layers[0].log_scale.fill_(-math.log(sigma))
    y = sigma * torch.randn(2000, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    nats = -flow.log_prob(y).mean().item() / 784
    assert nats == pytest.approx(0.5 * math.log(2 * math.pi * math.e * sigma**2), abs=2e-3)
    assert flows.bits_per_dim(flow, y) == pytest.approx(nats / math.log(2) + 8, abs=1e-6)


def test_dequantisation_keeps_each_pixel_in_its_bin_and_drops_the_padding():
    x = torch.full((2, 1, 32, 32), -1.0)
    x[:, :, 2:30, 2:30] = torch.linspace(-1, 1, 784).view(28, 28)
    y = flows.digits_to_flow_space(x, torch.Generator().manual_seed(0))
    v = ((x[..., 2:30, 2:30] + 1) * 127.5).round()
    assert y.shape == (2, 1, 28, 28)
    assert ((y + 0.5) * 256 - v).min() >= 0 and ((y + 0.5) * 256 - v).max() < 1
    assert torch.allclose(flows.flow_space_to_digits(flows.digits_to_flow_space(x)), x, atol=0.5 / 127.5 + 1e-6)  # rounding
    with pytest.raises(ValueError, match="32, 32"):
        flows.digits_to_flow_space(torch.zeros(1, 1, 28, 28))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="even"):
        flows.Squeeze()(torch.zeros(1, 1, 5, 4))
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        flows.realnvp(width=4, couplings=1)(torch.zeros(1, 1, 32, 32))


def test_every_flow_kind_of_the_recipes_has_a_builder():
    from ldm_core.recipes import FLOW_KINDS, FlowRecipe

    assert tuple(flows.BUILDERS) == FLOW_KINDS
    with pytest.raises(ValueError, match="kind must be one of"):
        FlowRecipe(kind="maf", width=8, steps=1, batch_size=1)
