import pytest
import torch

from ldm_core.superres import DEGRADATIONS, degrade, downsample, upsample_bicubic


def test_downsampling_averages_blocks_and_keeps_constants():
    x = torch.full((2, 1, 32, 32), 0.25)
    torch.testing.assert_close(downsample(x), torch.full((2, 1, 8, 8), 0.25))
    # a 4-pixel period is below the 8x8 grid's resolution: antialiased downsampling averages it away,
    # where reading every 4th pixel would alias it to a constant of one of its values
    stripes = torch.zeros(1, 1, 32, 32)
    stripes[..., ::4] = 1.0
    stripes = 2 * stripes - 1
    low = downsample(stripes)
    interior = low[..., 2:-2]  # away from the borders, where the filter's support is cut off
    torch.testing.assert_close(interior, torch.full_like(interior, stripes.mean().item()), atol=1e-3, rtol=0)
    assert stripes[..., ::4, ::4].eq(1).all(), "nearest sampling would see only the bright columns"
    with pytest.raises(ValueError, match="divisible by factor"):
        downsample(torch.zeros(1, 1, 30, 30))
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        downsample(torch.full((1, 1, 32, 32), 255.0))


def test_bicubic_upsampling_of_a_downsampled_smooth_image_is_close_and_consistent():
    rows, cols = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    smooth = (0.8 * torch.sin(rows * 1.5) * torch.cos(cols)).view(1, 1, 32, 32)
    up = upsample_bicubic(downsample(smooth))
    assert up.shape == smooth.shape and (up - smooth).abs().mean() < 0.05
    assert (downsample(up) - downsample(smooth)).abs().max() < 0.05, "consistent with its input"


def test_degradations_differ_as_described():
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    low = {kind: degrade(x, kind, generator=torch.Generator().manual_seed(1)) for kind in DEGRADATIONS}
    assert all(v.shape == (4, 1, 8, 8) and v.min() >= -1 and v.max() <= 1 for v in low.values())
    torch.testing.assert_close(low["bicubic"], downsample(x))
    # blurring first removes more detail: the blurred input varies less around its mean than the bicubic one
    assert low["blur"].std() < low["bicubic"].std()
    noise = low["noise"] - low["bicubic"]
    assert 0.1 < noise.std() < 0.25, "noise of std 0.2, a little less where it is clamped"
    torch.testing.assert_close(degrade(x, "noise", generator=torch.Generator().manual_seed(1)), low["noise"])
    with pytest.raises(ValueError, match="kind must be one of"):
        degrade(x, "jpeg")
    with pytest.raises(ValueError, match="sigma must be"):
        degrade(x, "blur", sigma=0.0)


def test_the_recipe_reads_the_low_resolution_image_on_the_latent_grid():
    import dataclasses

    from ldm_core import recipes

    for budget in recipes.BUDGET_TABLE:
        recipe = recipes.superres_recipe(budget)
        d = recipe.diffusion
        assert recipe.factor == d.autoencoder.config.f and d.unet.concat_channels == d.autoencoder.config.in_channels
        assert d.warm_start == recipes.diffusion_recipe(budget, False) and not d.conditional
        assert d.steps == recipes.budget_table(budget).superres_steps
    with pytest.raises(ValueError, match="factor must be the autoencoder's f"):
        dataclasses.replace(recipe, factor=2)
