"""Concatenation conditioning, the widened first convolution, and inpainting masks (chapter 7)."""

import pytest
import torch

from ldm_core.autoencoder import Autoencoder, AutoencoderConfig
from ldm_core.conditioning import ClassEmbedder
from ldm_core.inpainting import MASK_KINDS, hole_fraction, latent_mask, masked_image, random_masks
from ldm_core.pipeline import LatentDiffusion
from ldm_core.schedules import alpha_bar_from_betas, linear_beta_schedule
from ldm_core.unet import Denoiser, UNet, UNetConfig, widen_input


def trained_looking_unet(**config) -> UNet:
    """A tiny UNet with every weight random, including the zero-initialised ones (as after training)."""
    unet = UNet(UNetConfig.tiny(**config))
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    return unet


def test_the_widened_unet_computes_what_the_old_one_did_whatever_the_new_channels_hold():
    unet = trained_looking_unet(d_context=8).eval()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    wide = widen_input(unet, 5).eval()
    assert wide.config.concat_channels == 5 and wide.conv_in.in_channels == 4 + 5
    z, t, context = torch.randn(3, 4, 8, 8), torch.tensor([0, 500, 999]), torch.randn(3, 1, 8)
    with torch.no_grad():
        old = unet(z, t, context)
        for concat in (torch.zeros(3, 5, 8, 8), torch.randn(3, 5, 8, 8)):
            torch.testing.assert_close(wide(z, t, context, concat), old, rtol=0, atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items()), "the source is not changed"
    # the new weights are zero but not stuck: the loss has a gradient with respect to them
    wide(z, t, context, torch.randn(3, 5, 8, 8)).pow(2).mean().backward()
    assert wide.conv_in.weight.grad[:, 4:].abs().sum() > 0
    with pytest.raises(ValueError, match="concat must be"):
        wide(z, t, context)
    with pytest.raises(ValueError, match="concat must be"):
        wide(z, t, context, torch.zeros(3, 5, 4, 4))
    with pytest.raises(ValueError, match="concat must be"):
        unet(z, t, context, torch.zeros(3, 5, 8, 8))
    with pytest.raises(ValueError, match="extra_channels"):
        widen_input(unet, 0)


def test_the_latent_mask_keeps_a_one_pixel_stroke_that_nearest_sampling_loses():
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 5] = 1  # a vertical stroke one pixel wide, in no f x f cell's first column
    nearest = mask[..., ::4, ::4]
    assert nearest.sum() == 0, "nearest sampling reads one pixel per cell and misses the stroke"
    latent = latent_mask(mask, 4)
    assert latent.shape == (1, 1, 8, 8)
    assert torch.equal(latent[0, 0, :, 1], torch.ones(8)) and latent.sum() == 8, "exactly the cells it crosses"
    # every hole pixel lies in a hole cell (upsampled back, the latent mask covers the mask)
    for kind in MASK_KINDS:
        m = random_masks(16, kind, generator=torch.Generator().manual_seed(0))
        covered = latent_mask(m, 4).repeat_interleave(4, 2).repeat_interleave(4, 3)
        assert (covered >= m).all(), kind
    with pytest.raises(ValueError, match="divisible by f = 4"):
        latent_mask(torch.zeros(1, 1, 30, 30), 4)


def test_masks_are_holes_of_the_kind_asked_for_and_repeat_with_the_seed():
    masks = {kind: random_masks(64, kind, generator=torch.Generator().manual_seed(1)) for kind in MASK_KINDS}
    for kind, m in masks.items():
        assert m.shape == (64, 1, 32, 32) and m.dtype == torch.float32
        assert set(m.unique().tolist()) <= {0.0, 1.0}, kind
        assert torch.equal(m, random_masks(64, kind, generator=torch.Generator().manual_seed(1))), kind
    assert (hole_fraction(masks["whole"]) == 1).all()
    assert (hole_fraction(masks["half"]) == 0.5).all()
    # boxes: at most three 16x16 boxes, at least one 4x4 box
    assert ((hole_fraction(masks["boxes"]) >= 16 / 1024) & (hole_fraction(masks["boxes"]) <= 3 * 256 / 1024)).all()
    assert hole_fraction(masks["boxes"]).max() > 0.15 and hole_fraction(masks["boxes"]).min() < 0.05, "sizes vary"
    strokes = hole_fraction(masks["strokes"])
    assert (strokes > 0).all() and (strokes < 0.6).all() and strokes.std() > 0.01, "thin, and of varied size"
    with pytest.raises(ValueError, match="kind must be one of"):
        random_masks(2, "circles")
    from ldm_core.inpainting import mask_bank
    bank = mask_bank(5, {"strokes": 0.3, "boxes": 0.3, "half": 0.3, "whole": 0.1})
    assert bank.shape == (5, 1, 32, 32)
    # largest remainders: 5 x (.3, .3, .3, .1) -> 2, 2, 1, 0 masks, five in all
    assert sorted(hole_fraction(bank).tolist()).count(0.5) == 1
    with pytest.raises(ValueError, match="fractions summing to 1"):
        mask_bank(5, {"strokes": 0.5})


def test_the_masked_image_zeroes_the_hole_and_keeps_the_rest():
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    mask = random_masks(2, "boxes", generator=torch.Generator().manual_seed(0))
    out = masked_image(x, mask)
    assert (out[mask == 1] == 0).all() and torch.equal(out[mask == 0], x[mask == 0])
    with pytest.raises(ValueError, match="mask must be"):
        masked_image(x, mask[:, :, :16])


def test_sampling_passes_the_spatial_condition_through_guidance():
    torch.manual_seed(0)
    autoencoder = Autoencoder(AutoencoderConfig.tiny()).eval()
    unet = widen_input(trained_looking_unet(in_channels=2, d_context=8), 3)
    with torch.no_grad():
        unet.conv_in.weight[:, 2:].normal_()  # as if training had taught it to use the condition
    ldm = LatentDiffusion(autoencoder, Denoiser(unet, ClassEmbedder(10, 8)).eval(),
                          alpha_bar_from_betas(linear_beta_schedule(100)), prediction="v")
    labels, noise = torch.tensor([1, 2]), torch.randn(2, 2, 8, 8)
    a, b = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    for scale in (1.0, 3.0):
        x_a = ldm.sample(labels, steps=4, guidance_scale=scale, noise=noise, concat=a)
        assert not torch.allclose(x_a, ldm.sample(labels, steps=4, guidance_scale=scale, noise=noise, concat=b))
        for i in range(2):  # each example is paired with its own condition, in both halves of guidance's batch
            alone = ldm.sample(labels[i:i + 1], steps=4, guidance_scale=scale, noise=noise[i:i + 1], concat=a[i:i + 1])
            torch.testing.assert_close(alone[0], x_a[i], rtol=0, atol=1e-5)
    for bad in (None, a[:1], a[:, :2]):
        with pytest.raises(ValueError, match=r"concat must be \(B, concat_channels, h, w\) = \(2, 3, 8, 8\)"):
            ldm.sample(labels, steps=4, noise=noise, concat=bad)
    with pytest.raises(ValueError, match="known must be"):  # latents of one image for a batch of two
        ldm.sample(labels, steps=4, noise=noise, concat=a, known=(torch.zeros(1, 2, 8, 8), torch.ones(1, 1, 8, 8)))
    with pytest.raises(ValueError, match="give known as well"):  # resampling without a known region: a slow no-op
        ldm.sample(labels, steps=4, noise=noise, concat=a, resample=3)


def test_training_feeds_the_spatial_condition_made_from_each_batch():
    """Given the clean image itself as the concatenated condition, the denoiser can read the answer off its input:
    after the same steps its loss must be far below the same model's without the condition."""
    import dataclasses

    from ldm_core.autoencoder import PixelSpace
    from ldm_core.data import load_mnist
    from ldm_core.recipes import DiffusionRecipe
    from ldm_core.train import fit_diffusion

    x, y = load_mnist("train")
    x, y = torch.nn.functional.avg_pool2d(x[:512], 2), y[:512]  # 16x16: quicker, and enough to tell
    losses = {}
    for concat_channels in (0, 1):
        unet = dataclasses.replace(UNetConfig.tiny(in_channels=1), concat_channels=concat_channels)
        recipe = DiffusionRecipe(autoencoder=None, unet=unet, steps=80, batch_size=16, lr=4e-3, ema_decay=0.9,
                                 warmup_steps=5)
        torch.manual_seed(0)
        model = Denoiser(UNet(unet))
        history = fit_diffusion(model, PixelSpace(), x, y, recipe, desc="test",
                                to_concat=(lambda x_b, generator: x_b) if concat_channels else None)
        losses[concat_channels] = sum(history["loss"][-20:]) / 20
    assert losses[1] < 0.5 * losses[0], losses



def test_blended_sampling_keeps_the_known_latent_and_changes_nothing_where_nothing_is_known():
    from ldm_core.samplers import ddim_sample, ddpm_sample, make_timesteps

    alpha_bar = alpha_bar_from_betas(linear_beta_schedule(1000)).float()
    z0 = torch.randn(3, 2, 4, 4)

    def oracle(z_t, t, cond):  # the exact noise, for a model that knows the clean latent is z0
        a = alpha_bar[t].view(-1, 1, 1, 1)
        return (z_t - a.sqrt() * z0) / (1 - a).sqrt()

    def learned(z_t, t, cond):  # any other model
        return 0.5 * z_t

    noise, timesteps = torch.randn(3, 2, 4, 4), make_timesteps(1000, 20)
    everything = (z0, torch.ones(1, 1, 4, 4))
    for sample in (ddim_sample, lambda *a, **k: ddpm_sample(*a, **k)):
        out = sample(oracle, noise, alpha_bar, timesteps, known=everything, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, z0, rtol=0, atol=1e-4)
    nothing = (z0, torch.zeros(1, 1, 4, 4))
    plain = ddim_sample(learned, noise, alpha_bar, timesteps)
    assert torch.equal(ddim_sample(learned, noise, alpha_bar, timesteps, known=nothing,
                                   generator=torch.Generator().manual_seed(0)), plain)


def gaussian_inpainting(resample: int, sampler) -> torch.Tensor:
    """Samples of x2 given x1 = 2 for data x ~ N(0, [[1, 0.9], [0.9, 1]]), the exact noise predictor of that
    Gaussian (E[eps | z_t] = sqrt(1 - a) (a Sigma + (1 - a) I)^-1 z_t) and x1 given through ``known``."""
    from ldm_core.samplers import make_timesteps

    alpha_bar = alpha_bar_from_betas(linear_beta_schedule(1000))
    sigma = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=torch.float64)

    def exact(z_t, t, cond):
        a = alpha_bar[t].view(-1, 1, 1)
        return (1 - a).sqrt() * torch.linalg.solve(a * sigma + (1 - a) * torch.eye(2, dtype=torch.float64), z_t)

    noise = torch.randn(4000, 2, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    known = (torch.tensor([2.0, 0.0], dtype=torch.float64).view(1, 2, 1).expand_as(noise),
             torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 2, 1))
    out = sampler(exact, noise, alpha_bar, make_timesteps(1000, 20), known=known, resample=resample,
                  generator=torch.Generator().manual_seed(1))
    return out[:, 1, 0]


@pytest.mark.parametrize("name", ["ddim", "ddpm"])
def test_repaint_resampling_moves_the_completion_towards_the_true_conditional(name):
    # x2 | x1 = 2 is N(1.8, 0.19). Blended latents only ever show the model a noised x1, never its consequence for
    # x2, and land far short of 1.8; each of RePaint's jumps back lets the generated x2 agree with the known x1
    # a little more. Measured here: mean 0.86 / 1.25 / 1.57 / 1.69 (DDIM), 1.12 / 1.42 / 1.63 / 1.71 (DDPM) at U = 1, 2, 5, 10.
    from ldm_core import samplers

    sampler = getattr(samplers, f"{name}_sample")
    errors = [abs(gaussian_inpainting(U, sampler).mean().item() - 1.8) for U in (1, 2, 5, 10)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.4 * errors[0], errors


def test_repaint_jump_back_is_the_forward_process_and_costs_u_model_calls_per_step():
    from ldm_core.samplers import _jump_back, ddim_sample, make_timesteps

    alpha_bar = alpha_bar_from_betas(linear_beta_schedule(1000))
    a, a_prev, x0 = float(alpha_bar[600]), float(alpha_bar[400]), 1.5
    generator = torch.Generator().manual_seed(0)
    z_prev = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * torch.randn(200_000, dtype=torch.float64, generator=generator)
    z_t = _jump_back(z_prev, a, a_prev, generator)  # q(z_t | z_t') composed with q(z_t' | x0) is q(z_t | x0)
    assert abs(z_t.mean().item() - a ** 0.5 * x0) < 0.01 and abs(z_t.var().item() - (1 - a)) < 0.01
    calls = []
    ddim_sample(lambda z, t, c: calls.append(int(t[0])) or 0 * z, torch.zeros(1, 1), alpha_bar,
                make_timesteps(1000, 4), resample=3, generator=generator)
    assert calls == [999] * 3 + [666] * 3 + [333] * 3 + [0], "U calls per step, one on the last"
    with pytest.raises(ValueError, match="resample must be an integer"):
        ddim_sample(lambda z, t, c: z, torch.zeros(1, 1), alpha_bar, make_timesteps(1000, 4), resample=0)


def test_inpainting_measurements_score_a_perfect_completion_as_the_original(monkeypatch):
    from ldm_core import evaluate
    from ldm_core.metrics import DigitClassifier

    torch.manual_seed(0)
    judge = evaluate.Judge(DigitClassifier(width=8).eval(), kid_subset=20, bootstrap=5)
    x, labels, mask = evaluate.inpainting_inputs(40, "half", seed=2)
    assert len(labels.unique()) > 5, "drawn across the classes (the test split is sorted by class)"
    assert torch.equal(evaluate.inpainting_inputs(40, "half", seed=2)[2], mask) and hole_fraction(mask).eq(0.5).all()
    calls = []

    def perfect(ldm, x_b, mask_b, labels_b, **kwargs):  # a method that restores the original exactly
        calls.append(kwargs["guidance_scale"] if "guidance_scale" in kwargs else 1.0)
        return dict(x=x_b.clone(), raw=x_b.clone(), seam=torch.zeros(len(x_b)))

    monkeypatch.setattr(evaluate, "inpaint", perfect)
    m = evaluate.measure_inpainting(None, judge, x, labels, mask, with_label=False, batch_size=16)
    assert m["hole_mse"] == 0 and m["seam"] == 0 and m["hole"] == 0.5 and calls == [0.0] * 3
    assert m["accuracy"] == judge.accuracy(x, labels) and m["fid"] == judge.scores(x)["fid"]

    def off_in_the_hole(ldm, x_b, mask_b, labels_b, **kwargs):  # and anything at all outside it
        return dict(x=x_b + 0.4 * mask_b - 0.3 * (1 - mask_b), raw=x_b, seam=torch.ones(len(x_b)))

    monkeypatch.setattr(evaluate, "inpaint", off_in_the_hole)
    m = evaluate.measure_inpainting(None, judge, x, labels, mask, with_label=True, batch_size=16)
    assert abs(m["hole_mse"] - 0.16) < 1e-6 and m["seam"] == 1, "the error per hole pixel, the known ones ignored"
    with pytest.raises(ValueError, match="guidance scale is 0"):
        evaluate.measure_inpainting(None, judge, x, labels, mask, with_label=False, guidance_scale=3.0)
    d = evaluate.completion_diversity(None, judge, x[:5], labels[:5], mask[:5], k=4)
    assert d["distinct"] == 1 and d["x"].shape == (5, 4, 1, 32, 32), "the same completion 4 times: one digit"
    assert d["right"] == judge.accuracy(x[:5], labels[:5])
