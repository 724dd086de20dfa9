import dataclasses

import pytest
import torch

from ldm_core import pretrained, recipes
from ldm_core.cache import cache_dir, cache_path
from ldm_core.budget import budget_reason, get_budget


def test_budget_switch(monkeypatch):
    monkeypatch.setenv("LDM_BUDGET", "book")
    assert get_budget() == "book"
    monkeypatch.delenv("LDM_BUDGET")
    assert get_budget() == "book", "a GPU alone does not select the untimed full budget"
    assert budget_reason().startswith("budget: book (the default")
    monkeypatch.setenv("LDM_BUDGET", "huge")
    with pytest.raises(ValueError, match="LDM_BUDGET must be one of"):
        get_budget()


@pytest.mark.parametrize("bad", ["Smoke", "tiny", ""])
def test_an_unknown_budget_is_refused_not_replaced(bad):
    for make in (recipes.budget_table, lambda b: recipes.diffusion_recipe(b, True), recipes.text_recipe,
                 recipes.autoencoder_study, pretrained.classifier, pretrained.autoencoder):
        with pytest.raises(ValueError, match="budget must be one of"):
            make(bad)


def test_the_budget_table_has_one_row_per_budget_of_one_shape():
    rows = [recipes.budget_table(b) for b in ("smoke", "book", "full")]
    assert [row.name for row in rows] == ["smoke", "book", "full"]
    assert all(row.kid_subset <= row.sweep_samples <= row.samples for row in rows)  # KID subsets fit every set
    assert [row.text_steps for row in rows] == sorted(row.text_steps for row in rows)
    assert not rows[0].claims and rows[1].claims and rows[2].claims


def test_budgets_change_sizes_not_code_path():
    made = [recipes.diffusion_recipe(b, conditional=True) for b in ("smoke", "book", "full")]
    assert [type(r) for r in made] == [recipes.DiffusionRecipe] * 3
    assert made[0].steps < made[1].steps < made[2].steps
    assert all(r.conditional and r.unet.d_context for r in made)


@pytest.mark.parametrize("budget", ["smoke", "book", "full"])
def test_autoencoder_study_changes_one_thing_per_model(budget):
    study = recipes.autoencoder_study(budget)
    base = recipes.budget_table(budget).autoencoder
    assert study["kl_f4"] == base  # the book's autoencoder is the study's baseline
    assert {name: r.config.f for name, r in study.items() if name.startswith("kl_f") and name[4:].isdigit()} == {
        "kl_f1": 1, "kl_f2": 2, "kl_f4": 4, "kl_f8": 8}

    def changed(recipe):  # the fields (of the recipe and of its config) that differ from the baseline
        fields = {k for k in vars(base) if getattr(recipe, k) != getattr(base, k)} - {"config"}
        return fields | {f"config.{k}" for k in vars(base.config) if getattr(recipe.config, k) != getattr(base.config, k)}

    assert changed(study["kl_f8"]) == {"config.channel_mult"} and changed(study["vq_f4"]) == {"config.regularizer"}
    assert changed(study["kl_f4_perceptual"]) == {"perceptual"}
    assert study["kl_f4_perceptual"].perceptual.seed != recipes.budget_table(budget).classifier.seed  # not the judge
    assert changed(study["kl_f4_perceptual_adversarial"]) == {"perceptual", "adversarial_weight", "discriminator_start"}
    assert len({r.steps for r in study.values()}) == 1


def test_pixel_space_gets_the_same_training_flops_as_latent_space():
    from ldm_core.train import training_flops
    from ldm_core.unet import Denoiser, UNet

    latent, pixel = (recipes.diffusion_recipe("smoke", False, space) for space in ("kl_f4", "pixel"))
    assert pixel.autoencoder is None and pixel.unet.in_channels == 1
    assert dataclasses.replace(pixel.unet, in_channels=latent.unet.in_channels) == latent.unet  # the same UNet
    f = latent.autoencoder.config.f
    per_step = [training_flops(Denoiser(UNet(r.unet)), torch.zeros(1, r.unet.in_channels, size, size))
                for r, size in [(latent, 32 // f), (pixel, 32)]]
    assert per_step[1] > per_step[0]  # a pixel step costs more ...
    # ... and the same total, up to rounding the number of steps
    assert pixel.steps * per_step[1] == pytest.approx(latent.steps * per_step[0], rel=1 / pixel.steps)
    with pytest.raises(ValueError, match="space must be one of"):
        recipes.diffusion_recipe("smoke", False, "vq_f4")


@pytest.mark.parametrize("budget", ["smoke", "book", "full"])
def test_appendix_bs_ddpm_is_the_ldms_unet_below_with_levels_on_top_and_the_same_flops(budget):
    from ldm_core.recipes import _flops

    latent, pixel = recipes.diffusion_recipe(budget, False), recipes.ddpm_recipe(budget)
    f = latent.autoencoder.config.f
    levels = len(pixel.unet.channel_mult) - len(latent.unet.channel_mult)
    assert pixel.autoencoder is None and pixel.unet.in_channels == 1 and 2 ** levels == f
    widths = [pixel.unet.channels * m for m in pixel.unet.channel_mult]
    assert widths[levels:] == [latent.unet.channels * m for m in latent.unet.channel_mult], "the LDM's widths below"
    assert widths[:levels] == sorted(widths[:levels]) and widths[levels - 1] < latent.unet.channels
    assert pixel.steps * _flops(pixel, 32) == pytest.approx(latent.steps * _flops(latent, 32 // f), rel=1 / pixel.steps)
    assert dataclasses.replace(pixel, unet=latent.unet, autoencoder=latent.autoencoder, steps=latent.steps,
                               warmup_steps=latent.warmup_steps) == latent, "otherwise chapter 2's recipe"


def test_pixel_space_is_the_identity_first_stage():
    from ldm_core.autoencoder import PixelSpace

    x = torch.rand(3, 1, 32, 32) * 2 - 1
    posterior = PixelSpace().encode(x)
    assert torch.equal(posterior.mode(), x) and torch.equal(posterior.sample(), x) and (posterior.std == 0).all()
    assert torch.equal(PixelSpace().decode(x), x) and PixelSpace().config.f == 1


def test_training_is_deterministic_on_cpu(tmp_path, monkeypatch):
    first = pretrained.classifier()
    monkeypatch.setenv("LDM_CACHE", str(tmp_path / "other"))
    second = pretrained.classifier()
    assert not second.from_cache and second.history["loss"] == first.history["loss"]


def test_corrupt_cache_file_is_retrained_not_trusted():
    recipe = recipes.budget_table("smoke").classifier
    path = cache_path("classifier", recipe)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="cannot be loaded.*set aside"):
        artifact = pretrained.classifier()
    assert not artifact.from_cache
    assert path.with_name(path.stem + ".set-aside-1.pt").read_bytes() == b"not a checkpoint", "nothing is deleted"
    assert pretrained.classifier().from_cache


def test_cache_key_changes_with_the_recipe():
    a = cache_path("ldm", recipes.diffusion_recipe("smoke", False))
    b = cache_path("ldm", recipes.diffusion_recipe("smoke", True))
    assert a != b and a.parent == b.parent == cache_dir()


def test_the_cache_trains_once_and_latent_models_reuse_it_start_from_each_other_and_sample():
    ae = pretrained.autoencoder()
    assert not ae.from_cache and ae.model.scale_factor.item() > 0
    again = pretrained.autoencoder()  # the cache trains once, then loads the same weights and history
    assert again.from_cache and again.history == ae.history
    for a, b in zip(ae.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    ldm, artifact = pretrained.latent_diffusion(conditional=True)
    assert not artifact.from_cache
    source = pretrained.latent_diffusion(conditional=False)[1]
    assert source.from_cache, "the unconditional model it starts from was trained first"
    # started from a trained model (the new cross-attention adds little at first), its first loss is the end of the
    # unconditional run's, far below the first loss of a model started from scratch
    assert artifact.history["loss"][0] < 0.8 * source.history["loss"][0]
    assert torch.equal(ldm.autoencoder.scale_factor, ae.model.scale_factor)
    labels = torch.tensor([0, 1, 2])
    x = ldm.sample(labels, steps=3, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 32, 32) and torch.isfinite(x).all()
    again = ldm.sample(labels, steps=3, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, again)
    with pytest.raises(ValueError, match="give labels for a conditional denoiser"):
        ldm.sample(n=3)
    # the inpainting model starts from this one (in this test: its models are already trained once)
    from ldm_core.data import load_mnist
    from ldm_core.inpainting import inpaint, random_masks

    inpainting, inpainting_artifact = pretrained.inpainting_diffusion()
    recipe = recipes.inpainting_recipe()
    assert recipe.diffusion.warm_start == recipes.diffusion_recipe(None, True)
    assert inpainting.denoiser.unet.config.concat_channels == recipe.diffusion.unet.in_channels + 1
    # widened from the trained conditional model, its first loss is near the end of that run, not a fresh model's
    assert inpainting_artifact.history["loss"][0] < 0.8 * source.history["loss"][0]
    x, y = load_mnist("test")
    x, y = x[:6], y[:6]
    mask = random_masks(6, "boxes", generator=torch.Generator().manual_seed(0))
    out = inpaint(inpainting, x, mask, y, steps=5, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    known = mask.expand_as(x) == 0
    assert out["x"].shape == x.shape and torch.isfinite(out["raw"]).all()
    assert torch.equal(out["x"][known], x[known]), "the known pixels are pasted back"
    assert out["seam"].shape == (6,) and ((out["seam"] >= 0) & (out["seam"] <= 2)).all()
    # chapter 8's two models start from the unconditional one, widened by the low-resolution image's channel
    from ldm_core.superres import downsample, regress, super_resolve

    for make in (pretrained.superres_diffusion, pretrained.superres_regression):
        model, run = make()
        assert not run.from_cache and model.denoiser.unet.config.concat_channels == 1
        assert model.denoiser.conditioner is None
    low = downsample(x)
    assert pretrained.superres_diffusion()[1].history["loss"][0] < 0.8 * source.history["loss"][0]
    assert super_resolve(pretrained.superres_diffusion()[0], low, steps=3).shape == x.shape
    assert regress(pretrained.superres_regression()[0], low).shape == x.shape
    # the training-free baselines on the model that never saw a mask: the same contract
    for extra in ({}, {"resample": 3}):
        base = inpaint(ldm, x, mask, y, steps=5, generator=torch.Generator().manual_seed(0), **extra)
        assert torch.equal(base["x"][known], x[known]) and torch.isfinite(base["raw"]).all()


def test_warm_start_copies_what_matches_and_leaves_the_rest():
    from ldm_core.pretrained import warm_start
    from ldm_core.unet import UNet, UNetConfig

    torch.manual_seed(0)
    source = UNet(UNetConfig.tiny(d_context=16))
    target = UNet(UNetConfig.tiny(d_context=32))  # wider context: the cross-attention's keys and values differ
    before = {name: value.clone() for name, value in target.state_dict().items()}
    skipped = warm_start(target, source)
    assert skipped and all(("to_k" in name or "to_v" in name) for name in skipped), skipped
    for name, value in target.state_dict().items():
        expected = before[name] if name in skipped else source.state_dict()[name]
        assert torch.equal(value, expected), name
    with pytest.raises(ValueError, match="no parameter"):
        warm_start(torch.nn.Linear(3, 3), torch.nn.Linear(2, 2))


def test_the_class_conditional_model_starts_from_the_unconditional_recipe():
    for budget in ("smoke", "book", "full"):
        assert recipes.diffusion_recipe(budget, True).warm_start == recipes.diffusion_recipe(budget, False)
        assert recipes.diffusion_recipe(budget, True, "pixel").warm_start is None  # no such model to start from


def test_the_text_model_starts_from_the_class_conditional_recipe():
    recipe = recipes.text_recipe("smoke")
    assert recipe.diffusion.warm_start == recipes.diffusion_recipe("smoke", conditional=True)
    assert recipe.diffusion.lr == recipes.budget_table("smoke").text_lr
