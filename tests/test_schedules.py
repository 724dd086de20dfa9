import math

import pytest
import torch

from ldm_core.schedules import alpha_bar_from_betas, linear_beta_schedule, predict_x0_from_eps, q_sample


def test_linear_alpha_bar_at_last_step_matches_closed_form():
    T, b0, b1 = 1000, 1e-4, 0.02
    alpha_bar = alpha_bar_from_betas(linear_beta_schedule(T, b0, b1))
    # independent float64 computation: log alpha_bar_{T-1} = sum_t log(1 - beta_t), beta_t = b0 + (b1 - b0) t / (T-1)
    expected = math.exp(math.fsum(math.log1p(-(b0 + (b1 - b0) * t / (T - 1))) for t in range(T)))
    assert alpha_bar.dtype == torch.float64
    assert alpha_bar[-1].item() == pytest.approx(expected, rel=1e-10)
    assert alpha_bar[0].item() == pytest.approx(1 - b0, rel=1e-12)
    assert (alpha_bar.diff() < 0).all()


def test_q_sample_has_the_forward_process_moments():
    alpha_bar = alpha_bar_from_betas(linear_beta_schedule(1000))
    generator = torch.Generator().manual_seed(0)
    n, z0_value = 200_000, 0.7
    for t in (0, 250, 999):
        z0 = torch.full((n, 1), z0_value, dtype=torch.float64)
        eps = torch.randn(n, 1, generator=generator, dtype=torch.float64)
        z_t = q_sample(z0, torch.full((n,), t), eps, alpha_bar)
        a = alpha_bar[t].item()
        assert z_t.mean().item() == pytest.approx(math.sqrt(a) * z0_value, abs=4 / math.sqrt(n))
        assert z_t.var().item() == pytest.approx(1 - a, rel=0.02)


def test_predict_x0_inverts_q_sample():
    alpha_bar = alpha_bar_from_betas(linear_beta_schedule(1000))
    z0 = torch.randn(8, 4, 8, 8, dtype=torch.float64)
    eps = torch.randn_like(z0)
    t = torch.tensor([0, 1, 10, 100, 500, 900, 998, 999])
    torch.testing.assert_close(predict_x0_from_eps(q_sample(z0, t, eps, alpha_bar), t, eps, alpha_bar), z0)


def test_bad_arguments_are_named():
    alpha_bar = alpha_bar_from_betas(linear_beta_schedule(10))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 9\]"):
        q_sample(torch.zeros(2, 1), torch.tensor([0, 10]), torch.zeros(2, 1), alpha_bar)
    with pytest.raises(ValueError, match="eps must have the shape"):
        q_sample(torch.zeros(2, 1), torch.tensor([0, 1]), torch.zeros(2, 2), alpha_bar)
    with pytest.raises(ValueError, match="beta_start"):
        linear_beta_schedule(10, 0.1, 0.01)
