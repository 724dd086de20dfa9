"""Measured quality, one way every time.

- Reconstructions: PSNR and SSIM (torchmetrics), on images in [0, 1].
- A domain classifier of the digits, a small CNN trained on the training split (see
  :func:`ldm_core.pretrained.classifier`). Its predictions define *conditional accuracy*: the fraction of
  class-conditional samples it labels as the class that was asked for.
- FID and KID in that classifier's feature space. This is **not** Inception FID: the Inception network's
  weights would have to be downloaded, and its ImageNet features know little about handwritten digits. The
  128-wide penultimate features of a classifier trained on the digits themselves are offline and sensitive to
  exactly what matters here (is it a recognisable digit, and which). Numbers are comparable within this book,
  not with published FIDs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .schedules import rng_device


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image: 10 log10(data_range^2 / MSE), in dB.

    Args:
        x, y: images (B, ...) of the same shape, in [0, data_range] (the book uses [0, 1]).

    Returns:
        (B,) float tensor in dB (inf where the images are equal).

    Raises:
        ValueError: if the shapes differ.
    """
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


class DigitClassifier(nn.Module):
    """A small CNN for 32x32 digits: x (B, 1, 32, 32) in [-1, 1] -> logits (B, 10).

    ``features(x)`` returns the 128-wide penultimate activations (B, 128), the feature space of the book's
    FID ("FID in a domain classifier's feature space").
    """

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, w, 16, 16)
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 2w, 8, 8)
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 2w, 4, 4)
            nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.ReLU(),  # (B, 128)
        )
        self.head = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1:] != (1, 32, 32):
            raise ValueError(f"x must be (B, 1, 32, 32) in [-1, 1], got {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Light augmentation: translate each image by up to ``max_shift`` pixels, filling with the background -1."""
    B, _, height, width = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, B), generator=generator, device=rng_device(generator, x.device)).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + height, dx[i]:dx[i] + width] for i in range(B)])


@torch.no_grad()
def predict(classifier: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted labels (B,) int64 for images x (B, 1, 32, 32) in [-1, 1]."""
    classifier.eval()
    return torch.cat([classifier(chunk).argmax(1) for chunk in x.split(batch_size)])


def accuracy(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of images x (B, 1, 32, 32) whose predicted label equals y (B,); for samples generated for
    labels y this is the conditional accuracy."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same batch size, got {x.shape[0]} and {y.shape[0]}")
    return float((predict(classifier, x).cpu() == y.cpu()).float().mean())


def both_digits_correct(classifier: nn.Module, x: torch.Tensor, digits: torch.Tensor) -> float:
    """Fraction of two-digit canvases x (N, 1, 32, 64) in [-1, 1] whose left and right 32x32 halves the
    classifier labels as ``digits`` (N, 2) = (left, right): chapter 6's text-to-image accuracy (chance: 1%)."""
    if x.dim() != 4 or x.shape[1:] != (1, 32, 64) or digits.shape != (x.shape[0], 2):
        raise ValueError(f"need x (N, 1, 32, 64) and digits (N, 2), got {tuple(x.shape)} and {tuple(digits.shape)}")
    left, right = predict(classifier, x[..., :32]).cpu(), predict(classifier, x[..., 32:]).cpu()
    return float(((left == digits[:, 0].cpu()) & (right == digits[:, 1].cpu())).float().mean())


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5) per image, via torchmetrics.

    Args:
        x, y: images (B, C, H, W) of the same shape, in [0, 1].

    Returns:
        (B,) float tensor in [-1, 1]; 1 for identical images.

    Near black it is fragile: against a black window, one of constant gray h scores C1 / (h^2 + C1) with
    C1 = 1e-4 (its luminance term; Wang et al. 2004), so a haze of 0.01 halves it while PSNR reads 40 dB.
    Most of a digit's pixels are black, so on digits SSIM weighs how black a model keeps the background (chapter 1).
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"x and y must be (B, C, H, W) of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    # imported here: torchmetrics (with the torchvision and scipy it loads) adds about 2 s to every process that
    # imports this module, and most chapters measure no SSIM
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(x.float(), y.float(), data_range=1.0, reduction="none")


@torch.no_grad()
def features(classifier: DigitClassifier, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Penultimate classifier features (N, 128) of images x (N, 1, 32, 32) in [-1, 1], float64 on the CPU."""
    classifier.eval()
    device = next(classifier.parameters()).device
    return torch.cat([classifier.features(chunk.to(device)).cpu() for chunk in x.split(batch_size)]).double()


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982; Heusel et al. 2017):
    ||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    tr((sigma1 sigma2)^(1/2)) is the sum of the square roots of the eigenvalues of sigma1 sigma2 (real and >= 0
    for two covariances, up to rounding), as torchmetrics computes it: no matrix square root, so it is fast enough
    to bootstrap and well defined when ReLU features that never fire make the covariances singular. The unit tests
    check it against scipy's ``sqrtm``.

    Args:
        mu1, mu2: means (d,); sigma1, sigma2: covariances (d, d).

    Returns:
        the distance, >= 0 up to rounding.
    """
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2)
    trace_sqrt = np.sqrt(eigenvalues.astype(complex)).real.sum()  # rounding can leave tiny negative eigenvalues
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def reconstruction_scores(x_hat: torch.Tensor, x: torch.Tensor, classifier: DigitClassifier) -> dict[str, float]:
    """How well reconstructions x_hat match images x, both (N, 1, 32, 32) in [-1, 1]: mean ``psnr`` (dB) and
    ``ssim`` on [0, 1] images, and ``rfid``, the FID between the reconstructions and the originals in the
    classifier's features (paired sets: 0 for perfect reconstructions, unlike a FID between independent sets)."""
    if x_hat.shape != x.shape:
        raise ValueError(f"x_hat and x must have the same shape, got {tuple(x_hat.shape)} and {tuple(x.shape)}")
    unit_hat, unit = (x_hat.cpu() + 1) / 2, (x.cpu() + 1) / 2
    return {"psnr": psnr(unit_hat, unit).mean().item(), "ssim": ssim(unit_hat, unit).mean().item(),
            "rfid": fid(features(classifier, x_hat), features(classifier, x))}


def fid(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """FID between two feature sets (N_a, d) and (N_b, d): the Frechet distance of Gaussians fitted to each.

    Biased for small N (it grows as N shrinks); compare FIDs only at equal sample counts.
    """
    a, b = features_a.double().numpy(), features_b.double().numpy()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need feature sets (N, d) with the same d and N >= 2, got {a.shape} and {b.shape}")
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def fid_bootstrap_se(features_a: torch.Tensor, features_b: torch.Tensor, resamples: int = 50,
                     seed: int = 0) -> float:
    """The bootstrap standard error of :func:`fid`'s estimate over the first set's samples: the std of the FID
    when ``features_a`` (the generated set) is resampled with replacement, ``features_b`` (the reference) fixed.

    Two FIDs at the same N differ by more than their noise when the difference exceeds about twice
    sqrt(se_1^2 + se_2^2). Deterministic given ``seed``.

    Args:
        features_a: (N_a, d), N_a >= 2; features_b: (N_b, d).
        resamples: bootstrap resamples, >= 2.

    Returns:
        the standard error, >= 0.
    """
    if resamples < 2:
        raise ValueError(f"resamples must be >= 2, got {resamples}")
    generator = torch.Generator().manual_seed(seed)
    n = len(features_a)
    values = [fid(features_a[torch.randint(n, (n,), generator=generator)], features_b) for _ in range(resamples)]
    return float(np.std(values, ddof=1))


def kid(features_a: torch.Tensor, features_b: torch.Tensor, subsets: int = 20, subset_size: int = 200,
        seed: int = 0) -> float:
    """KID (Binkowski et al. 2018): the unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, averaged over
    random subsets of ``subset_size`` from each set. Unbiased: its expectation is 0 for two samples of one
    distribution, so, unlike FID, it can be slightly negative and does not depend on the sample size.

    Args:
        features_a, features_b: (N_a, d) and (N_b, d), N >= subset_size.

    Returns:
        the mean MMD^2 over subsets.
    """
    a, b = features_a.double(), features_b.double()
    if a.shape[1] != b.shape[1] or min(len(a), len(b)) < subset_size:
        raise ValueError(f"need (N, d) features with the same d and N >= subset_size={subset_size}, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    d, m = a.shape[1], subset_size
    generator = torch.Generator().manual_seed(seed)
    estimates = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=generator)[:m]]
        y = b[torch.randperm(len(b), generator=generator)[:m]]
        k_xx, k_yy, k_xy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        off_diagonal = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
        estimates.append(float(off_diagonal - 2 * k_xy.mean()))
    return float(np.mean(estimates))
