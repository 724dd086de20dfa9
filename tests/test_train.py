import pytest
import torch

from ldm_core.train import diffusion_loss, random_batches, train
from ldm_core.schedules import alpha_bar_from_betas, linear_beta_schedule


def test_random_batches_cover_each_epoch_once():
    x = torch.arange(10)
    batches = random_batches(x, batch_size=5, generator=torch.Generator().manual_seed(0))
    first_epoch = torch.cat([next(batches)[0], next(batches)[0]])
    assert sorted(first_epoch.tolist()) == list(range(10))
    with pytest.raises(ValueError, match="batch_size"):
        next(random_batches(x, batch_size=11, generator=torch.Generator()))


def test_diffusion_loss_of_the_exact_noise_predictor_is_zero():
    alpha_bar = alpha_bar_from_betas(linear_beta_schedule(100))
    z0 = torch.randn(16, 2, 4, 4, dtype=torch.float64)

    def exact(z_t, t, cond):
        a = alpha_bar[t].view(-1, 1, 1, 1)
        return (z_t - a.sqrt() * z0) / (1 - a).sqrt()

    assert diffusion_loss(exact, z0, alpha_bar, generator=torch.Generator().manual_seed(0)).item() < 1e-20
    # predicting zero noise costs E||eps||^2 = 1 per element
    zero = diffusion_loss(lambda z, t, c: torch.zeros_like(z), z0, alpha_bar, generator=torch.Generator().manual_seed(0))
    assert 0.8 < zero.item() < 1.2


def test_train_reduces_a_simple_loss_and_reports_history():
    model = torch.nn.Linear(1, 1)
    x = torch.linspace(-1, 1, 64)[:, None]
    history = train(model, lambda: ((model(x) - 3 * x) ** 2).mean(), steps=200, lr=0.05, desc="fit")
    assert len(history["loss"]) == 200 and history["loss"][-1] < 1e-3 < history["loss"][0]
    assert not model.training
    with pytest.raises(FloatingPointError):
        train(model, lambda: torch.tensor(float("nan"), requires_grad=True), steps=1, lr=0.1, desc="nan")
