import dataclasses

import pytest
import torch

from ldm_core.schedules import alpha_bar_from_betas, linear_beta_schedule
from ldm_core.cache import save_atomic
import math

from ldm_core.pipeline import LatentDiffusion
from ldm_core.recipes import DiffusionRecipe, diffusion_recipe
from ldm_core.schedules import log_snr, v_from_eps_x0
from ldm_core.train import (Batches, adamw, diffusion_loss, ema_decay_at, loss_weight, lr_factor, make_ema,
                            sample_timesteps, timestep_probabilities, train, training_flops)


def test_batches_cover_each_epoch_once_and_depend_only_on_the_step():
    x = torch.arange(10)
    batches = Batches(x, batch_size=3, seed=0)
    first_epoch = torch.cat([batches(step)[0] for step in range(3)])  # 3 batches of 3; one example dropped
    assert len(set(first_epoch.tolist())) == 9
    assert not torch.equal(batches(0)[0], batches(3)[0]), "a new permutation each epoch"
    fresh = Batches(x, batch_size=3, seed=0)
    assert torch.equal(fresh(4)[0], batches(4)[0]), "step 4 without having seen steps 0-3"
    with pytest.raises(ValueError, match="batch_size"):
        Batches(x, batch_size=11)


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
    history = train(model, lambda step: ((model(x) - 3 * x) ** 2).mean(), steps=200, lr=0.05, desc="fit")
    assert len(history["loss"]) == 200 and history["loss"][-1] < 1e-3 < history["loss"][0]
    assert not model.training
    with pytest.raises(FloatingPointError):
        train(model, lambda step: torch.tensor(float("nan"), requires_grad=True), steps=1, lr=0.1, desc="nan")


def _toy_run(tmp_path, steps, checkpoint=None, ema_decay=None, interrupt_at=None, ema_warmup=True, **kwargs):
    """A small regression trained with batches by step and noise from a generator."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    y = x[:, :1] * 2 - x[:, 1:]
    batches = Batches(x, y, batch_size=16, seed=0)
    generator = torch.Generator().manual_seed(2)

    def loss_fn(step):
        if step == interrupt_at:
            raise KeyboardInterrupt
        xb, yb = batches(step)
        noise = 0.01 * torch.randn(yb.shape, generator=generator)
        return ((model(xb) - yb - noise) ** 2).mean()

    history = train(model, loss_fn, steps=steps, lr=0.01, desc="toy", generator=generator, ema_decay=ema_decay,
                    ema_warmup=ema_warmup, checkpoint=checkpoint, checkpoint_every=10, **kwargs)
    return model, history


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path):
    schedule = dict(warmup_steps=5, lr_decay="cosine")  # a schedule of the step: the resumed run follows it
    model_a, history_a = _toy_run(tmp_path, steps=40, ema_decay=0.9, **schedule)
    checkpoint = tmp_path / "run.partial.pt"
    with pytest.raises(KeyboardInterrupt):
        _toy_run(tmp_path, steps=40, checkpoint=checkpoint, ema_decay=0.9, interrupt_at=25, **schedule)
    assert checkpoint.exists()
    state = torch.load(checkpoint, weights_only=True)
    assert len(state["loss"]) == 20  # the last checkpoint before step 25
    model_b, history_b = _toy_run(tmp_path, steps=40, checkpoint=checkpoint, ema_decay=0.9, **schedule)
    assert history_b["loss"] == history_a["loss"]
    assert history_b["seconds"] > state["seconds"] > 0, "training time adds up across the segments"
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        assert torch.equal(a, b)
    finished = torch.load(checkpoint, weights_only=True)
    assert finished["loss"] == history_a["loss"], "a finished run keeps its checkpoint until the caller is safe"
    model_c, history_c = _toy_run(tmp_path, steps=40, checkpoint=checkpoint, ema_decay=0.9, interrupt_at=0, **schedule)
    assert history_c["loss"] == history_a["loss"], "resuming a finished checkpoint runs no step"
    for a, c in zip(model_a.state_dict().values(), model_c.state_dict().values()):
        assert torch.equal(a, c)


def test_ema_closed_forms(tmp_path):
    # decay 0 keeps only the latest weights; decay 1 keeps the first average, the weights after step 1
    plain, _ = _toy_run(tmp_path, steps=30)
    after_one, _ = _toy_run(tmp_path, steps=1)
    latest, _ = _toy_run(tmp_path, steps=30, ema_decay=0.0)
    first, _ = _toy_run(tmp_path, steps=30, ema_decay=1.0, ema_warmup=False)
    for a, b in zip(plain.parameters(), latest.parameters()):
        torch.testing.assert_close(a, b)
    for a, b in zip(after_one.parameters(), first.parameters()):
        torch.testing.assert_close(a, b)
    halfway, _ = _toy_run(tmp_path, steps=30, ema_decay=0.5)
    assert not torch.allclose(halfway[0].weight, plain[0].weight)


def test_ema_warmup_has_the_closed_form_of_litema():
    # the weights after update 1 are 1, after every later update 0: the EMA is then the first weights' share of the
    # average, prod_{j=2..n} d_j, and with d_j = (1 + j) / (10 + j) (no cap) the product telescopes to
    # [(n + 1)! / 2] / [(n + 10)! / 11!]
    model = torch.nn.Linear(1, 1, bias=False)
    ema = make_ema(model, decay=1.0)
    shares = []
    for n in range(1, 61):
        model.weight.data.fill_(1.0 if n == 1 else 0.0)
        ema.update_parameters(model)
        shares.append(ema.module.weight.item())
    for n in (1, 2, 10, 60):
        closed = math.exp(math.lgamma(n + 2) - math.log(2) - math.lgamma(n + 11) + math.lgamma(12))
        assert shares[n - 1] == pytest.approx(closed, rel=1e-5)
    # the cap: from the update where (1 + n) / (10 + n) passes it, the decay is the configured one
    assert ema_decay_at(5, 0.995) == pytest.approx(6 / 15) and ema_decay_at(5000, 0.995) == 0.995
    assert ema_decay_at(5, 0.995, warmup=False) == 0.995
    assert shares[-1] < 1e-9, "after 60 updates the first weights have all but left the average"


def test_lr_factor_warms_up_linearly_then_decays_by_a_cosine():
    steps, warmup = 110, 10
    factors = [lr_factor(step, steps, warmup, "cosine") for step in range(steps)]
    assert factors[:warmup] == pytest.approx([(k + 1) / warmup for k in range(warmup)])
    assert factors[warmup] == 1.0 and factors[warmup + 50] == pytest.approx(0.5)
    assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1:]))
    assert lr_factor(50, steps, 0, "constant") == 1.0
    for bad in [dict(decay="linear"), dict(warmup_steps=steps)]:
        with pytest.raises(ValueError, match="decay|warmup_steps"):
            lr_factor(0, steps, **{"warmup_steps": 0, "decay": "cosine", **bad})


def test_train_follows_the_learning_rate_schedule():
    # loss = w (gradient 1 at every step): each AdamW step moves w by exactly lr_t (m_hat = v_hat = 1)
    model = torch.nn.Linear(1, 1, bias=False)
    model.weight.data.zero_()
    lr, steps = 0.01, 30
    train(model, lambda step: model.weight.sum(), steps=steps, lr=lr, desc="schedule", warmup_steps=5,
          lr_decay="cosine")
    moved = sum(lr * lr_factor(step, steps, 5, "cosine") for step in range(steps))
    assert model.weight.item() == pytest.approx(-moved, rel=1e-4)


def test_min_snr_weighting_is_the_same_x0_weighting_for_eps_and_v():
    # ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2 and ||v - v_hat||^2 = (SNR + 1) ||x0 - x0_hat||^2: with Min-SNR
    # weights, an eps-predictor and the v-predictor that implies the same x0_hat have the same loss
    alpha_bar = alpha_bar_from_betas(linear_beta_schedule(1000))
    z0 = torch.randn(64, 2, 4, 4, dtype=torch.float64)
    wrong = torch.randn(64, 2, 4, 4, dtype=torch.float64)

    def eps_model(z_t, t, cond):
        return 0.5 * z_t + wrong

    def v_model(z_t, t, cond):  # the v of the same prediction: v = sqrt(a) eps - sqrt(1 - a) x0_hat
        a = alpha_bar[t].view(-1, 1, 1, 1)
        eps = eps_model(z_t, t, cond)
        return v_from_eps_x0(eps, (z_t - (1 - a).sqrt() * eps) / a.sqrt(), t, alpha_bar)

    for gamma in (5.0, 1.0):
        losses = [diffusion_loss(m, z0, alpha_bar, None, torch.Generator().manual_seed(0), prediction, gamma)
                  for m, prediction in [(eps_model, "eps"), (v_model, "v")]]
        torch.testing.assert_close(losses[0], losses[1])
    t = torch.arange(0, 1000, 50)
    snr = log_snr(alpha_bar)[t].exp()
    torch.testing.assert_close(loss_weight(alpha_bar, t, "eps", 5.0) * snr, snr.clamp(max=5.0))
    assert torch.equal(loss_weight(alpha_bar, t, "eps"), torch.ones(len(t), dtype=torch.float64))
    with pytest.raises(ValueError, match="prediction"):
        loss_weight(alpha_bar, t, "x0")


def test_logit_normal_timestep_probabilities_have_their_closed_form():
    T = 1000
    assert torch.equal(timestep_probabilities(T), torch.full((T,), 1 / T, dtype=torch.float64))
    p = timestep_probabilities(T, "logit_normal")
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(p, p.flip(0), rtol=1e-6, atol=0)  # the logit of 1 - s is minus the logit of s
    # the middle (density phi(0) / (1/2 * 1/2) = 1.6 / T at t = T / 2), hardly the ends
    assert p.argmax().item() in (499, 500) and p[500] > 1.5 / T and p[0] < 1e-8

    def phi(u):  # the standard normal's distribution function, written out
        return 0.5 * (1 + math.erf(u / math.sqrt(2)))

    for t in (1, 37, 250, 700):  # P(t) = P(t <= T sigmoid(u) < t + 1) = Phi(logit((t + 1) / T)) - Phi(logit(t / T))
        expected = phi(math.log((t + 1) / (T - t - 1))) - phi(math.log(t / (T - t)))
        assert math.isclose(p[t].item(), expected, rel_tol=1e-9)
    # the first bin, below logit(1 / T): Phi's tail, 0.5 erfc(|u| / sqrt 2), where 1 - Phi would cancel to nothing
    assert math.isclose(p[0].item(), 0.5 * math.erfc(math.log(T - 1) / math.sqrt(2)), rel_tol=1e-4)  # torch: 8e-6
    assert torch.equal(timestep_probabilities(1, "logit_normal"), torch.ones(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="t_sampling"):
        timestep_probabilities(T, "lognormal")
    with pytest.raises(ValueError, match="T"):
        timestep_probabilities(0, "logit_normal")
    with pytest.raises(ValueError, match="t_sampling"):
        dataclasses.replace(diffusion_recipe("smoke", conditional=False), t_sampling="normal")


def test_sample_timesteps_draws_the_probabilities_and_diffusion_loss_uses_them():
    T, n = 10, 200_000
    for sampling in ("uniform", "logit_normal"):
        t = sample_timesteps(n, T, sampling, torch.Generator().manual_seed(0))
        assert t.dtype == torch.int64 and 0 <= t.min() and t.max() < T
        p = timestep_probabilities(T, sampling)
        frequency = torch.bincount(t, minlength=T).double() / n
        assert ((frequency - p).abs() < 5 * (p * (1 - p) / n).sqrt()).all(), (sampling, frequency, p)
    seen = []

    def model(z_t, t, cond):
        seen.append(t)
        return torch.zeros_like(z_t)

    alpha_bar = alpha_bar_from_betas(linear_beta_schedule(1000))
    z0 = torch.randn(256, 1, 2, 2)
    for sampling in ("uniform", "logit_normal"):
        diffusion_loss(model, z0, alpha_bar, generator=torch.Generator().manual_seed(3), t_sampling=sampling)
    assert torch.equal(seen[0], torch.randint(0, 1000, (256,), generator=torch.Generator().manual_seed(3)))
    assert torch.equal(seen[1], sample_timesteps(256, 1000, "logit_normal", torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="t_sampling"):
        sample_timesteps(4, T, "normal")
    with pytest.raises(ValueError, match="T"):
        sample_timesteps(4, 0, "logit_normal")  # not floor(0 * sigmoid(u)) clamped to -1


def test_fit_diffusion_draws_the_timesteps_its_recipe_names(monkeypatch):
    import ldm_core.train as train_module
    from ldm_core.autoencoder import PixelSpace
    from ldm_core.unet import Denoiser, UNet, UNetConfig

    drawn = []
    original = train_module.sample_timesteps
    monkeypatch.setattr(train_module, "sample_timesteps", lambda *args: drawn.append(args[2]) or original(*args))
    unet = UNetConfig.tiny(in_channels=1)
    recipe = DiffusionRecipe(autoencoder=None, unet=unet, steps=2, batch_size=4, lr=1e-3, ema_decay=0.9,
                             t_sampling="logit_normal")
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    train_module.fit_diffusion(Denoiser(UNet(unet)), PixelSpace(), x, torch.zeros(8), recipe, desc="test")
    assert drawn == ["logit_normal", "logit_normal"]


def test_a_v_prediction_pipeline_hands_the_samplers_eps():
    alpha_bar = alpha_bar_from_betas(linear_beta_schedule(100))
    z0, eps = torch.randn(8, 4, 2, 2, dtype=torch.float64), torch.randn(8, 4, 2, 2, dtype=torch.float64)
    t = torch.arange(8) * 12
    a = alpha_bar[t].view(-1, 1, 1, 1)
    z_t = a.sqrt() * z0 + (1 - a).sqrt() * eps

    class ExactV(torch.nn.Module):
        conditioner = None

        def forward(self, z, t, cond):
            return v_from_eps_x0(eps, z0, t, alpha_bar)

    ldm = LatentDiffusion(None, ExactV(), alpha_bar, prediction="v")
    torch.testing.assert_close(ldm.eps(z_t, t), eps)


def test_train_monitors_the_averaged_model_along_the_run():
    seen = []

    def monitor(model):
        seen.append(model.training)
        return {"weight": model.weight.item()}

    model = torch.nn.Linear(1, 1, bias=False)
    history = train(model, lambda step: model.weight.sum(), steps=20, lr=0.01, desc="watch", ema_decay=0.9,
                    monitor=monitor, monitor_every=8)
    assert [m["step"] for m in history["monitor"]] == [8, 16, 20] and seen == [False] * 3
    assert history["monitor"][-1]["weight"] == pytest.approx(model.weight.item()), "the last point is the result"
    times = [m["seconds"] for m in history["monitor"]]
    assert times == sorted(times) and times[-1] <= history["seconds"]


def test_train_steps_a_discriminator_with_its_own_loss_only():
    x = torch.linspace(-1, 1, 8)[:, None]

    def run(with_critic: bool):
        torch.manual_seed(0)
        model, critic = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
        before = critic.weight.detach().clone()

        def loss_fn(step):
            loss = ((model(x) - 2 * x) ** 2).mean()
            return (loss, {}, critic(model(x).detach()).pow(2).mean()) if with_critic else loss

        train(model, loss_fn, steps=5, lr=0.1, desc="gan", discriminator=critic if with_critic else None)
        return model, not torch.equal(critic.weight, before)

    plain, critic_moved_plain = run(False)
    adversarial, critic_moved = run(True)
    assert critic_moved and not critic_moved_plain
    for a, b in zip(plain.parameters(), adversarial.parameters()):
        torch.testing.assert_close(a, b)  # the discriminator's loss never reaches the model


def test_save_atomic_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "x" / "a.pt"
    save_atomic({"w": torch.ones(2)}, path)
    assert [p.name for p in path.parent.iterdir()] == ["a.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))


def test_training_flops_of_a_linear_layer_is_forward_plus_weight_gradient():
    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(8, 8, bias=False)

        def forward(self, z_t, t, cond):
            return self.layer(z_t)  # (B, 1, 8) -> (B, 1, 8)

    model = Linear()
    B = 5
    # forward: B * 8 * 8 multiply-adds, 2 FLOPs each; backward: the weight's gradient, as many again (the input
    # z_t needs no gradient)
    assert training_flops(model, torch.randn(B, 1, 8)) == 2 * (2 * B * 8 * 8)
    assert all(p.grad is None for p in model.parameters())  # it leaves no gradients behind


def test_adamw_is_adam_written_out():
    """The optimiser every model trains with against Adam's update written out (Kingma & Ba 2015, Algorithm 1,
    with AdamW's zero weight decay), over five steps of a small regression."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    x, y = torch.randn(32, 6), torch.randn(32, 1)
    optimizer = adamw(model.parameters(), lr=0.01)
    assert optimizer.defaults["weight_decay"] == 0.0
    theta = [p.detach().clone() for p in model.parameters()]
    m = [torch.zeros_like(p) for p in theta]
    v = [torch.zeros_like(p) for p in theta]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in range(1, 6):
        loss = (model(x) - y).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        optimizer.step()
        for i, g in enumerate(grads):
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            m_hat, v_hat = m[i] / (1 - beta1 ** step), v[i] / (1 - beta2 ** step)
            theta[i] = theta[i] - 0.01 * m_hat / (v_hat.sqrt() + eps)
        for p, expected in zip(model.parameters(), theta):
            torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)
