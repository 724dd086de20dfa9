import math

import pytest
import torch

from ldm_core.conditioning import ClassEmbedder, condition_dropout
from ldm_core.unet import Denoiser, UNet, UNetConfig, timestep_embedding


def randomise(module):
    """Undo the zero initialisations (ResBlock, SpatialTransformer and output convs) so inputs reach the output."""
    for parameter in module.parameters():
        torch.nn.init.normal_(parameter, std=0.2)


def test_timestep_embedding_closed_form():
    emb = timestep_embedding(torch.tensor([0, 7]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = [10000 ** (-i / 4) for i in range(4)]
    expected = [math.cos(7 * w) for w in freqs] + [math.sin(7 * w) for w in freqs]
    torch.testing.assert_close(emb[1], torch.tensor(expected))


@pytest.mark.parametrize("mult", [(1,), (1, 2), (1, 2, 2)])
def test_unet_keeps_the_input_shape(mult):
    config = UNetConfig(in_channels=3, channels=8, channel_mult=mult, heads=2, groups=4, d_context=5)
    unet = UNet(config)
    z = torch.randn(2, 3, 8, 8)
    assert unet(z, torch.tensor([0, 999]), torch.randn(2, 2, 5)).shape == z.shape


def test_new_unet_predicts_zero_and_depends_on_t_once_trained():
    unet = UNet(UNetConfig.tiny())
    z = torch.randn(2, 4, 8, 8)
    assert torch.equal(unet(z, torch.tensor([1, 2])), torch.zeros_like(z))  # zero-initialised output conv
    randomise(unet)
    out_a, out_b = unet(z, torch.tensor([1, 1])), unet(z, torch.tensor([900, 900]))
    assert not torch.allclose(out_a, out_b), "the timestep must reach the output"


def test_unet_errors_name_the_expected_shape():
    unet = UNet(UNetConfig.tiny(d_context=6))
    z = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match=r"context must be \(2, M, 6\), got \(2, 1, 5\)"):
        unet(z, torch.tensor([1, 2]), torch.randn(2, 1, 5))
    with pytest.raises(ValueError, match=r"context must be \(2, M, 6\), got None"):
        unet(z, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"z_t must be \(B, 4, h, w\)"):
        unet(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), torch.randn(2, 1, 6))
    with pytest.raises(ValueError, match="groups=6 must divide every level width"):
        UNetConfig(channels=16, groups=6)


def test_denoiser_routes_labels_through_the_conditioner():
    denoiser = Denoiser(UNet(UNetConfig.tiny(d_context=6)), ClassEmbedder(10, 6))
    randomise(denoiser)
    z, t = torch.randn(2, 4, 8, 8), torch.tensor([5, 5])
    assert not torch.allclose(denoiser(z, t, torch.tensor([1, 1])), denoiser(z, t, torch.tensor([2, 2])))
    with pytest.raises(ValueError, match="needs a conditioner"):
        Denoiser(UNet(UNetConfig.tiny(d_context=6)))


def test_class_embedder_null_condition_and_dropout():
    embedder = ClassEmbedder(10, 4)
    assert embedder(torch.tensor([0, 10])).shape == (2, 1, 4)
    assert embedder.null(3).tolist() == [10, 10, 10]
    y = torch.arange(10).repeat(1000)
    dropped = condition_dropout(y, embedder.null(len(y)), 0.1, torch.Generator().manual_seed(0))
    share = (dropped == embedder.null_label).float().mean().item()
    assert 0.09 < share < 0.11 and torch.equal(dropped[dropped != 10], y[dropped != 10])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\]"):
        embedder(torch.tensor([11]))
