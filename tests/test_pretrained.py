import pytest
import torch

from ldm_core import pretrained
from ldm_core.budget import get_budget


def test_budget_switch(monkeypatch):
    monkeypatch.setenv("LDM_BUDGET", "book")
    assert get_budget() == "book"
    monkeypatch.delenv("LDM_BUDGET")
    assert get_budget() == ("full" if torch.cuda.is_available() else "book")
    monkeypatch.setenv("LDM_BUDGET", "huge")
    with pytest.raises(ValueError, match="LDM_BUDGET must be one of"):
        get_budget()


def test_budgets_change_sizes_not_code_path():
    recipes = [pretrained.diffusion_recipe(b, conditional=True) for b in ("smoke", "book", "full")]
    assert [type(r) for r in recipes] == [pretrained.DiffusionRecipe] * 3
    assert recipes[0].steps < recipes[1].steps < recipes[2].steps
    assert all(r.conditional and r.unet.d_context for r in recipes)


def test_cache_trains_once_then_loads_the_same_weights():
    first = pretrained.autoencoder()
    assert not first.from_cache and first.model.scale_factor.item() > 0
    second = pretrained.autoencoder()
    assert second.from_cache
    assert second.history == first.history
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)


def test_training_is_deterministic_on_cpu(tmp_path, monkeypatch):
    first = pretrained.classifier()
    monkeypatch.setenv("LDM_CACHE", str(tmp_path / "other"))
    second = pretrained.classifier()
    assert not second.from_cache and second.history["loss"] == first.history["loss"]


def test_corrupt_cache_file_is_retrained_not_trusted():
    recipe = pretrained.CLASSIFIER_RECIPES["smoke"]
    path = pretrained.cache_path("classifier", recipe)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="retraining"):
        artifact = pretrained.classifier()
    assert not artifact.from_cache
    assert pretrained.classifier().from_cache


def test_cache_key_changes_with_the_recipe():
    a = pretrained.cache_path("ldm", pretrained.diffusion_recipe("smoke", False))
    b = pretrained.cache_path("ldm", pretrained.diffusion_recipe("smoke", True))
    assert a != b and a.parent == b.parent == pretrained.cache_dir()


def test_latent_diffusion_reuses_the_autoencoder_and_samples():
    ae = pretrained.autoencoder()
    ldm, artifact = pretrained.latent_diffusion(conditional=True)
    assert not artifact.from_cache
    assert torch.equal(ldm.autoencoder.scale_factor, ae.model.scale_factor)
    labels = torch.tensor([0, 1, 2])
    x = ldm.sample(labels, steps=3, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 32, 32) and torch.isfinite(x).all()
    again = ldm.sample(labels, steps=3, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, again)
    with pytest.raises(ValueError, match="give labels for a conditional denoiser"):
        ldm.sample(n=3)
