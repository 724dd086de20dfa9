import math

import pytest
import torch

from ldm_core.schedules import (SCHEDULES, alpha_bar_from_betas, cosine_beta_schedule, eps_from_v, linear_beta_schedule,
                                log_snr, predict_eps_from_x0, predict_x0_from_eps, q_sample, scaled_linear_beta_schedule,
                                v_from_eps_x0, x0_from_v)


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


def test_scaled_linear_alpha_bar_at_last_step_matches_closed_form():
    T, b0, b1 = 1000, 0.00085, 0.012
    alpha_bar = alpha_bar_from_betas(scaled_linear_beta_schedule(T, b0, b1))
    root = lambda t: math.sqrt(b0) + (math.sqrt(b1) - math.sqrt(b0)) * t / (T - 1)  # noqa: E731
    expected = math.exp(math.fsum(math.log1p(-root(t) ** 2) for t in range(T)))
    assert alpha_bar[-1].item() == pytest.approx(expected, rel=1e-10)


def test_cosine_alpha_bar_is_the_closed_form_until_the_clip():
    T, s = 1000, 0.008
    alpha_bar = alpha_bar_from_betas(cosine_beta_schedule(T, s))
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    # without clipping, the product telescopes: alpha_bar after step t (0-based) is f(t + 1) / f(0)
    for t in (0, 100, 500, 900, 990):
        assert alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    # f(T) / f(0) is 0; the clip at beta = 0.999 leaves alpha_bar_{T-1} = 0.001 * alpha_bar_{T-2}
    assert alpha_bar[-1].item() == pytest.approx(0.001 * f(T - 1) / f(0), rel=1e-9)


def test_log_snr_is_decreasing_and_matches_its_definition():
    for schedule in SCHEDULES.values():
        alpha_bar = alpha_bar_from_betas(schedule(1000))
        snr = log_snr(alpha_bar)
        assert (snr.diff() < 0).all()
        torch.testing.assert_close(snr.exp(), alpha_bar / (1 - alpha_bar))


def test_eps_x0_v_round_trips():
    alpha_bar = alpha_bar_from_betas(cosine_beta_schedule(1000))
    z0 = torch.randn(6, 2, 3, 3, dtype=torch.float64)
    eps = torch.randn_like(z0)
    t = torch.tensor([0, 10, 300, 600, 900, 998])
    z_t = q_sample(z0, t, eps, alpha_bar)
    v = v_from_eps_x0(eps, z0, t, alpha_bar)
    torch.testing.assert_close(predict_eps_from_x0(z_t, t, z0, alpha_bar), eps)
    torch.testing.assert_close(x0_from_v(z_t, t, v, alpha_bar), z0)
    torch.testing.assert_close(eps_from_v(z_t, t, v, alpha_bar), eps)
    torch.testing.assert_close(predict_x0_from_eps(z_t, t, eps_from_v(z_t, t, v, alpha_bar), alpha_bar), z0)


@pytest.mark.parametrize("max_beta", [1.0, 0.0, 1.5])
def test_cosine_schedule_refuses_a_max_beta_that_destroys_the_signal(max_beta):
    # with max_beta = 1 the last step would leave alpha_bar ~ 1e-33 and x0_hat would explode in every sampler
    with pytest.raises(ValueError, match="max_beta"):
        cosine_beta_schedule(1000, max_beta=max_beta)
