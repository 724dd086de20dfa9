import math

import pytest
import torch

from ldm_core.metrics import DigitClassifier, accuracy, psnr, random_shift


def test_psnr_of_known_mse():
    x = torch.zeros(2, 1, 4, 4)
    y = torch.full((2, 1, 4, 4), 0.1)  # MSE = 0.01 -> 20 dB at data range 1
    torch.testing.assert_close(psnr(x, y), torch.tensor([20.0, 20.0]))
    assert psnr(x, y, data_range=2.0)[0].item() == pytest.approx(20 + 20 * math.log10(2), rel=1e-6)
    assert psnr(x, x)[0].item() == math.inf
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, y[:1])


def test_classifier_shapes_and_accuracy_definition():
    model = DigitClassifier(width=4)
    x = torch.randn(6, 1, 32, 32)
    assert model(x).shape == (6, 10) and model.features(x).shape == (6, 128)
    predicted = model(x).argmax(1)
    assert accuracy(model, x, predicted) == 1.0
    assert accuracy(model, x, (predicted + 1) % 10) == 0.0
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32\)"):
        model(torch.randn(2, 1, 28, 28))


def test_random_shift_moves_content_and_keeps_background():
    x = torch.full((1, 1, 8, 8), -1.0)
    x[0, 0, 4, 4] = 1.0
    shifted = random_shift(x.repeat(50, 1, 1, 1), 2, torch.Generator().manual_seed(0))
    assert shifted.shape == (50, 1, 8, 8) and (shifted == 1).flatten(1).sum(1).eq(1).all()
    assert len({int(s.argmax()) for s in shifted}) > 5
