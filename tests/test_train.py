import pytest
import torch

from ldm_core.schedules import alpha_bar_from_betas, linear_beta_schedule
from ldm_core.cache import save_atomic
from ldm_core.train import Batches, diffusion_loss, train, training_flops


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


def _toy_run(tmp_path, steps, checkpoint=None, ema_decay=None, interrupt_at=None):
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
                    checkpoint=checkpoint, checkpoint_every=10)
    return model, history


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path):
    model_a, history_a = _toy_run(tmp_path, steps=40, ema_decay=0.9)
    checkpoint = tmp_path / "run.partial.pt"
    with pytest.raises(KeyboardInterrupt):
        _toy_run(tmp_path, steps=40, checkpoint=checkpoint, ema_decay=0.9, interrupt_at=25)
    assert checkpoint.exists()
    assert len(torch.load(checkpoint, weights_only=True)["loss"]) == 20  # the last checkpoint before step 25
    model_b, history_b = _toy_run(tmp_path, steps=40, checkpoint=checkpoint, ema_decay=0.9)
    assert history_b["loss"] == history_a["loss"]
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        assert torch.equal(a, b)
    assert not checkpoint.exists(), "a finished run removes its checkpoint"


def test_ema_closed_forms(tmp_path):
    # decay 0 keeps only the latest weights; decay 1 keeps the first average, the weights after step 1
    plain, _ = _toy_run(tmp_path, steps=30)
    after_one, _ = _toy_run(tmp_path, steps=1)
    latest, _ = _toy_run(tmp_path, steps=30, ema_decay=0.0)
    first, _ = _toy_run(tmp_path, steps=30, ema_decay=1.0)
    for a, b in zip(plain.parameters(), latest.parameters()):
        torch.testing.assert_close(a, b)
    for a, b in zip(after_one.parameters(), first.parameters()):
        torch.testing.assert_close(a, b)
    halfway, _ = _toy_run(tmp_path, steps=30, ema_decay=0.5)
    assert not torch.allclose(halfway[0].weight, plain[0].weight)


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
