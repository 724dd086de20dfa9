"""The first stage's losses (paper Sec. 3.1 and Appendix G; Esser et al. 2021, "taming transformers").

- reconstruction: L1 and L2, summed per image;
- KL (:meth:`ldm_core.autoencoder.DiagonalGaussian.kl`) or the VQ codebook loss
  (:class:`ldm_core.autoencoder.VectorQuantizer`);
- perceptual: the distance between the features a trained network extracts from x and from x_hat;
- adversarial: a patch discriminator with the hinge loss, its generator term scaled by the adaptive weight
  lambda = ||grad_L L_rec|| / (||grad_L L_adv|| + delta) at the decoder's last layer L (Esser et al. 2021, Eq. 7).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


def autoencoder_loss(autoencoder, x: torch.Tensor, regularization_weight: float,
                     generator: torch.Generator | None = None, perceptual: "PerceptualLoss | None" = None,
                     perceptual_weight: float = 1.0, discriminator: "PatchDiscriminator | None" = None,
                     adversarial_weight: float = 0.5) -> tuple[torch.Tensor, dict, torch.Tensor | None]:
    """The first stage's loss (paper Appendix G; Esser et al. 2021, Eq. 5-7), per image, averaged over the batch
    (taught in chapter 1):

    L_rec = ||x - D(z)||_1 + perceptual_weight * C H W * P(x, D(z))              z ~ q(z | x)
    loss  = L_rec + regularization_weight * R + adversarial_weight * lambda * (-D_psi(D(z)))

    R is the KL to N(0, I) (KL-reg.; the paper's weight is 1e-6) or the codebook and commitment loss (VQ-reg.;
    weight 1). The adversarial term is there only when a ``discriminator`` D_psi is given (the caller passes
    None before the discriminator's start step); lambda is :func:`adaptive_weight` at the decoder's last layer.

    Summing per image, as the reference code does, is what makes a KL weight of 1e-6 mean what it means in the
    paper (Sec. 3.1: "a slight KL-penalty"); with per-pixel means the same number would weigh the KL H * W * C
    times more. The perceptual distance P (one number per image, like LPIPS) is added to every pixel's L1 term
    in the reference code before that sum, hence the factor C H W: a perceptual weight of 1 means what it means
    there.

    Args:
        autoencoder: an :class:`~ldm_core.autoencoder.Autoencoder`.
        x: images (B, C, H, W) in [-1, 1].
        perceptual: an optional :class:`PerceptualLoss`.
        discriminator: an optional :class:`PatchDiscriminator`.

    Returns:
        (loss, logs, discriminator_loss): logs holds the mean L1 per pixel ``l1``, the mean regulariser ``reg``,
        and ``perceptual``, ``adversarial_weight`` when used; discriminator_loss is the hinge loss on x against
        the detached reconstruction, or None without a discriminator.
    """
    posterior = autoencoder.encode(x)
    x_hat = autoencoder.decode(posterior.sample(generator))
    rec = l1_loss(x, x_hat)  # (B,)
    logs = {"l1": rec.detach().mean().item() / x[0].numel()}
    if perceptual is not None:
        distance = perceptual(x, x_hat)  # (B,), a per-pixel-sized distance ...
        rec = rec + perceptual_weight * distance * x[0].numel()  # ... added at every pixel, as the reference does
        logs["perceptual"] = distance.detach().mean().item()
    reg = posterior.regularization()  # (B,)
    logs["reg"] = reg.detach().mean().item()
    loss = (rec + regularization_weight * reg).mean()
    if discriminator is None:
        return loss, logs, None
    adversarial = generator_adversarial_loss(discriminator(x_hat))
    weight = adversarial_weight * adaptive_weight(rec.mean(), adversarial, autoencoder.last_layer)
    logs["adversarial_weight"] = weight.item()
    d_loss = hinge_discriminator_loss(discriminator(x), discriminator(x_hat.detach()))
    return loss + weight * adversarial, logs, d_loss


def l1_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """sum over pixels of |x - x_hat|, per image: (B, ...) -> (B,)."""
    return (x - x_hat).abs().flatten(1).sum(1)


def l2_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """sum over pixels of (x - x_hat)^2, per image: (B, ...) -> (B,)."""
    return (x - x_hat).pow(2).flatten(1).sum(1)


class PerceptualLoss(nn.Module):
    """Distance between the activations of a frozen, trained network, in the manner of LPIPS (Zhang et al. 2018)
    without learned channel weights: for each layer l, unit-normalise the features along channels and take the
    mean squared difference; sum over layers.

    Args:
        layers: a sequence of frozen modules applied one after the other; the output of each is compared.
            For the book, the convolutional stages of the digit classifier (:func:`digit_feature_layers`).

    ``forward(x, x_hat)``: images (B, C, H, W) in [-1, 1] -> (B,) distances, >= 0, 0 when x == x_hat.
    """

    def __init__(self, layers: nn.ModuleList):
        super().__init__()
        self.layers = layers
        for parameter in self.layers.parameters():
            parameter.requires_grad_(False)

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        if x.shape != x_hat.shape:
            raise ValueError(f"x and x_hat must have the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}")
        self.layers.eval()
        distance = x.new_zeros(x.shape[0])
        a, b = x, x_hat
        for layer in self.layers:
            a, b = layer(a), layer(b)
            na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)  # unit length along channels
            nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            distance = distance + (na - nb).pow(2).flatten(1).mean(1)
        return distance


def digit_feature_layers(classifier) -> nn.ModuleList:
    """The three convolutional stages of a :class:`~ldm_core.metrics.DigitClassifier` (conv, ReLU, pool each),
    copied, as the layers of a :class:`PerceptualLoss` (which freezes them; the classifier is left as it was)."""
    body = list(copy.deepcopy(classifier).body)
    return nn.ModuleList([nn.Sequential(*body[0:3]), nn.Sequential(*body[3:6]), nn.Sequential(*body[6:9])])


class PatchDiscriminator(nn.Module):
    """A PatchGAN discriminator (Isola et al. 2017): strided convolutions whose output is a map of logits, one per
    overlapping patch, rather than one logit per image.

    Args:
        in_channels: image channels C.
        channels: width of the first layer; doubled at each further layer.
        layers: number of stride-2 convolutions; each halves height and width.

    ``forward(x)``: (B, C, H, W) in [-1, 1] -> logits (B, 1, H / 2^layers, W / 2^layers).
    """

    def __init__(self, in_channels: int = 1, channels: int = 32, layers: int = 2):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for _ in range(layers - 1):
            blocks += [nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.GroupNorm(8, 2 * width), nn.LeakyReLU(0.2)]
            width *= 2
        blocks.append(nn.Conv2d(width, 1, 3, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss: 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))) (Lim & Ye 2017)."""
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())


def generator_adversarial_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The decoder's adversarial term: -mean D(x_hat), to be made larger by fooling the discriminator."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: torch.Tensor, adv_loss: torch.Tensor, last_layer: torch.Tensor,
                    delta: float = 1e-4, max_weight: float = 1e4) -> torch.Tensor:
    """lambda = ||grad_L rec_loss|| / (||grad_L adv_loss|| + delta), clamped to [0, max_weight] and detached
    (Esser et al. 2021, Eq. 7): the adversarial gradient at the decoder's last layer L is scaled to the size of
    the reconstruction gradient there, so neither drowns the other whatever their raw scales.

    Args:
        rec_loss, adv_loss: scalar losses that depend on ``last_layer``.
        last_layer: the decoder's last weight tensor.

    Returns:
        a detached scalar tensor.
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adv_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (adv_grad.norm() + delta)).clamp(0, max_weight).detach()
