"""Measured quality: PSNR for reconstructions, and a domain classifier of the digits.

The classifier is a small CNN trained on the training split (see :func:`ldm_core.pretrained.classifier`);
its predictions define conditional accuracy: the fraction of class-conditional samples it labels as the
class that was asked for.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


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
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, B), generator=generator, device=x.device).tolist()
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
