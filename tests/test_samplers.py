import pytest
import torch

from ldm_core.samplers import SPACINGS, classifier_free_guidance, ddim_sample, ddpm_sample, make_timesteps, slerp
from ldm_core.schedules import alpha_bar_from_betas, linear_beta_schedule

T = 1000
ALPHA_BAR = alpha_bar_from_betas(linear_beta_schedule(T))


@pytest.mark.parametrize("spacing", SPACINGS)
def test_timesteps_strictly_decreasing_unique_in_range_for_every_n(spacing):
    for n in range(1, T + 1):
        ts = make_timesteps(T, n, spacing)
        assert ts.shape == (n,) and ts.dtype == torch.int64
        assert (ts.diff() < 0).all(), (spacing, n)
        assert 0 <= ts.min() and ts.max() <= T - 1
        if spacing != "leading":
            assert ts[0] == T - 1, "sampling starts where pure noise belongs"


def test_one_step_sampler_starts_from_pure_noise():
    assert make_timesteps(T, 1).tolist() == [T - 1]
    assert make_timesteps(T, 1, "leading").tolist() == [0], "leading's known flaw, documented"


def test_timesteps_reject_bad_requests():
    with pytest.raises(ValueError, match=r"n \(sampler steps\) must be an integer in \[1, 1000\]"):
        make_timesteps(T, 0)
    with pytest.raises(ValueError, match="spacing must be one of"):
        make_timesteps(T, 10, "cubic")
    with pytest.raises(ValueError, match=r"eta must be a finite number in \[0.0, 1.0\]"):
        ddim_sample(lambda z, t, c: z, torch.zeros(1, 1), ALPHA_BAR, make_timesteps(T, 2), eta=1.5)


def oracle(x0: torch.Tensor):
    """The exact noise predictor for a single known data point x0: eps = (z_t - sqrt(a) x0) / sqrt(1 - a)."""
    def model(z_t, t, cond):
        a = ALPHA_BAR[t].view(-1, *[1] * (z_t.dim() - 1)).to(z_t.dtype)
        return (z_t - a.sqrt() * x0) / (1 - a).sqrt()
    return model


def test_exact_noise_oracle_recovers_x0():
    # With the exact eps, x0_hat = x0 at every step. The last step (t_prev = -1, alpha_bar = 1) returns x0_hat
    # itself in both samplers (DDPM: posterior mean with beta = 1 - alpha_bar_0, zero variance; DDIM:
    # sqrt(1) x0_hat + sqrt(0) eps), so the sample equals x0 up to float64 rounding, for any start noise.
    x0 = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    noise = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    expected = x0.expand_as(noise)
    for n in (1, 10, T):
        ts = make_timesteps(T, n)
        torch.testing.assert_close(ddim_sample(oracle(x0), noise, ALPHA_BAR, ts), expected, atol=1e-8, rtol=0)
        out = ddpm_sample(oracle(x0), noise, ALPHA_BAR, ts, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, expected, atol=1e-8, rtol=0)


def test_ddim_eta_1_over_all_steps_is_ddpm():
    # DDIM's sigma at eta = 1 is the DDPM posterior std, and its mean is the posterior mean, so with the same
    # noise draws the two chains coincide step by step.
    model = lambda z, t, cond: torch.tanh(z) * (t.view(-1, 1, 1, 1) / T)  # noqa: E731  any deterministic model
    noise = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    ts = make_timesteps(T, T)
    a = ddim_sample(model, noise, ALPHA_BAR, ts, eta=1.0, generator=torch.Generator().manual_seed(1))
    b = ddpm_sample(model, noise, ALPHA_BAR, ts, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_ddim_eta_0_is_deterministic_and_eta_1_is_not():
    model = lambda z, t, cond: 0.5 * z  # noqa: E731
    noise = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    ts = make_timesteps(T, 20)
    runs = [ddim_sample(model, noise, ALPHA_BAR, ts, eta=0.0, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    assert torch.equal(runs[0], runs[1])
    runs = [ddim_sample(model, noise, ALPHA_BAR, ts, eta=1.0, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    assert not torch.equal(runs[0], runs[1])


def test_callback_sees_every_step_with_named_intermediates():
    seen = []
    ts = make_timesteps(T, 5)
    ddim_sample(lambda z, t, c: z, torch.zeros(1, 1, 2, 2), ALPHA_BAR, ts, callback=seen.append)
    assert [s["step"] for s in seen] == list(range(5)) and [s["t"] for s in seen] == ts.tolist()
    assert [s["t_prev"] for s in seen] == ts.tolist()[1:] + [-1]
    assert set(seen[0]) == {"step", "t", "z_t", "x0_hat", "t_prev", "z_prev"}
    assert all(torch.equal(a["z_prev"], b["z_t"]) for a, b in zip(seen, seen[1:]))


def one_step(sampler, t, t_prev, eta=None):
    """Run the first step (t -> t_prev) of a sampler on a fixed state with a fixed eps; return its record."""
    z = torch.linspace(-2, 2, 12, dtype=torch.float64).view(3, 1, 2, 2)
    eps = torch.linspace(1, -1, 12, dtype=torch.float64).view(3, 1, 2, 2)
    seen = []
    kwargs = {} if eta is None else {"eta": eta}
    sampler(lambda z_t, t_, c: eps, z, ALPHA_BAR, torch.tensor([t, t_prev]), generator=torch.Generator().manual_seed(0),
            callback=seen.append, **kwargs)
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # the first draw
    return z, eps, noise, seen[0]


def test_ddpm_step_is_the_posterior_written_by_hand():
    t, t_prev = 600, 400  # a strided step: alpha_bar ratios, not single betas
    z, eps, noise, record = one_step(ddpm_sample, t, t_prev)
    a, a_prev = ALPHA_BAR[t].item(), ALPHA_BAR[t_prev].item()
    x0 = (z - (1 - a) ** 0.5 * eps) / a**0.5
    beta = 1 - a / a_prev
    # DDPM Eq. 7 with alpha_bar_{t-1} -> alpha_bar_{t_prev} and beta_t -> 1 - alpha_bar_t / alpha_bar_{t_prev}
    mean = a_prev**0.5 * beta / (1 - a) * x0 + (1 - beta) ** 0.5 * (1 - a_prev) / (1 - a) * z
    std = ((1 - a_prev) / (1 - a) * beta) ** 0.5
    torch.testing.assert_close(record["x0_hat"], x0)
    torch.testing.assert_close(record["z_prev"], mean + std * noise)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_is_equation_12_written_by_hand(eta):
    t, t_prev = 600, 400
    z, eps, noise, record = one_step(ddim_sample, t, t_prev, eta)
    a, a_prev = ALPHA_BAR[t].item(), ALPHA_BAR[t_prev].item()
    x0 = (z - (1 - a) ** 0.5 * eps) / a**0.5
    sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5  # Song et al. Eq. 16
    expected = a_prev**0.5 * x0 + (1 - a_prev - sigma**2) ** 0.5 * eps + sigma * noise
    torch.testing.assert_close(record["z_prev"], expected)


def test_classifier_free_guidance_endpoints():
    def model(z, t, cond):  # conditional part differs from the unconditional (label 10) part
        return z * cond.view(-1, 1).to(z.dtype)
    z, t, cond = torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), torch.tensor([1, 2, 3, 4])
    null = lambda B: torch.full((B,), 10)  # noqa: E731
    torch.testing.assert_close(classifier_free_guidance(model, 1.0, null)(z, t, cond), model(z, t, cond))
    torch.testing.assert_close(classifier_free_guidance(model, 0.0, null)(z, t, cond), model(z, t, null(4)))
    s = 3.0
    expected = model(z, t, null(4)) + s * (model(z, t, cond) - model(z, t, null(4)))
    torch.testing.assert_close(classifier_free_guidance(model, s, null)(z, t, cond), expected)
    batches = []
    counting = lambda z, t, cond: batches.append(len(z)) or model(z, t, cond)  # noqa: E731
    classifier_free_guidance(counting, 0.0, null)(z, t, cond)
    classifier_free_guidance(counting, s, null)(z, t, cond)
    assert batches == [4, 8], "scale 0 needs only the unconditional half; other scales one call on both"


def test_slerp_endpoints_and_norm_on_the_sphere():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(4, 2, 8, 8, generator=generator, dtype=torch.float64)
    b = torch.randn(4, 2, 8, 8, generator=generator, dtype=torch.float64)
    b = b - (a.flatten() @ b.flatten()) / (a.flatten() @ a.flatten()) * a  # orthogonal to a
    b = b * a.norm() / b.norm()  # with the same norm: the arc is a quarter circle of radius |a|
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    middle = slerp(a, b, 0.5)
    torch.testing.assert_close(middle.norm(), a.norm())  # stays on the sphere
    torch.testing.assert_close(middle, (a + b) / 2 ** 0.5)  # cos(pi/4) a + sin(pi/4) b
    with pytest.raises(ValueError, match="same shape"):
        slerp(a, b[:2], 0.5)


def test_slerp_refuses_antiparallel_noise_and_is_a_line_for_parallel_noise():
    a = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="opposite directions"):
        slerp(a, -a, 0.5)
    torch.testing.assert_close(slerp(a, 2 * a, 0.5), 1.5 * a)  # theta = 0: the arc is the straight line
