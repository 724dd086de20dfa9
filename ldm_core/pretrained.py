"""The factories: every model the book trains, at a budget, trained or loaded from the artifact cache.

A chapter asks, say, for "the f=4 autoencoder at this budget": :func:`autoencoder` loads it from the cache
(:mod:`ldm_core.cache`) if it is there and trains it with its recipe (:mod:`ldm_core.recipes`) if not.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import torch
import torch.nn as nn

from .autoencoder import Autoencoder, PixelSpace, latent_scale_factor
from .budget import get_device
from .cache import Artifact, Checkpoint, load_or_train
from .conditioning import ClassEmbedder, TextEncoder, Tokenizer
from .data import CAPTION_TEMPLATES, caption, load_mnist, two_digit_canvases
from .flows import BUILDERS, Flow, digits_to_flow_space
from .inpainting import draw_masks, inpainting_condition, mask_bank
from .losses import PatchDiscriminator, PerceptualLoss, autoencoder_loss, digit_feature_layers
from .metrics import DigitClassifier, random_shift
from .pipeline import LatentDiffusion
from .recipes import (AutoencoderRecipe, ClassifierRecipe, DiffusionRecipe, FlowRecipe, budget_table, ddpm_recipe,
                      diffusion_recipe, flow_recipes, inpainting_recipe, superres_recipe, text_recipe)
from .schedules import rng_device
from .superres import downsample, regression_timestep
from .train import Batches, fit_diffusion, train
from .unet import Denoiser, UNet, widen_input


def _seeded(seed: int, make: Callable[[], nn.Module]) -> nn.Module:
    """``make()`` with the global RNG seeded (initial weights), restoring the caller's RNG afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


@contextlib.contextmanager
def _channels_last(*models: nn.Module | None) -> Iterator[None]:
    """The models' convolution weights in channels-last memory for the block, contiguous again after it.

    Used while the autoencoders, their discriminators and the classifiers train: on the book's 2-core CPU a training
    step then costs 12-15% less (measured for the book's autoencoder, its adversarial variant and the classifier;
    the diffusion UNet gains nothing, chapter 2's throughput table). A layout, not a change of the computation: the
    numbers agree to float rounding, and the cached weights are saved contiguous.
    """
    present = [model for model in models if model is not None]
    for model in present:
        model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for model in present:
            model.to(memory_format=torch.contiguous_format)


def build_denoiser(recipe: DiffusionRecipe, conditioner: Callable[[], nn.Module] | None = None) -> Denoiser:
    """A fresh denoiser for the recipe, its initial weights from the recipe's seed: the UNet, then the
    conditioner, made by ``conditioner()`` if given, else the label embedder of a class-conditional recipe."""
    if conditioner is None and recipe.conditional:
        conditioner = functools.partial(ClassEmbedder, 10, recipe.unet.d_context)

    def make() -> Denoiser:
        unet = UNet(recipe.unet)  # first: the order of construction decides the initial weights
        return Denoiser(unet, conditioner() if conditioner else None)

    return _seeded(recipe.seed, make)


def autoencoder(budget: str | None = None, recipe: AutoencoderRecipe | None = None) -> Artifact:
    """An autoencoder trained on the training split: the book's (KL, f = 4) at ``budget`` by default, or the one
    ``recipe`` describes.

    Its ``scale_factor`` buffer is set from the training latents after training (:func:`latent_scale_factor`).

    Raises:
        ValueError: for an unknown budget.
    """
    recipe = recipe or budget_table(budget).autoencoder
    device = get_device()

    def fit(model: Autoencoder, checkpoint: Checkpoint) -> dict:
        x, _ = load_mnist("train")
        x = x.to(device)
        generator = torch.Generator(device).manual_seed(recipe.seed)
        batches = Batches(x, batch_size=recipe.batch_size, seed=recipe.seed)
        weight = recipe.kl_weight if recipe.config.regularizer == "kl" else 1.0
        perceptual = (PerceptualLoss(digit_feature_layers(classifier(recipe=recipe.perceptual).model)).to(device)
                      if recipe.perceptual is not None else None)
        discriminator = (_seeded(recipe.seed, lambda: PatchDiscriminator(recipe.config.in_channels)).to(device)
                         if recipe.adversarial_weight > 0 else None)

        def loss_fn(step: int):
            active = discriminator if step >= recipe.discriminator_start else None
            return autoencoder_loss(model, batches(step)[0], weight, generator, perceptual, recipe.perceptual_weight,
                                    active, recipe.adversarial_weight)

        with _channels_last(model, perceptual, discriminator):
            history = train(model, loss_fn, steps=recipe.steps, lr=recipe.lr, desc="autoencoder",
                            generator=generator, discriminator=discriminator, checkpoint=checkpoint)
        model.scale_factor.fill_(latent_scale_factor(model, x, generator))
        return history

    def build() -> Autoencoder:
        return _seeded(recipe.seed, lambda: Autoencoder(recipe.config))

    return load_or_train("autoencoder", recipe, build, fit, device)


def classifier(budget: str | None = None, recipe: ClassifierRecipe | None = None) -> Artifact:
    """The domain classifier of the digits, trained on the training split with random shifts of up to 2 pixels
    (the budget's recipe unless ``recipe`` is given).

    Raises:
        ValueError: for an unknown budget.
    """
    recipe = recipe or budget_table(budget).classifier
    device = get_device()

    def build() -> DigitClassifier:
        return _seeded(recipe.seed, lambda: DigitClassifier(width=recipe.width))

    def fit(model: DigitClassifier, checkpoint: Checkpoint) -> dict:
        x, y = load_mnist("train")
        generator = torch.Generator(device).manual_seed(recipe.seed)
        batches = Batches(x.to(device), y.to(device), batch_size=recipe.batch_size, seed=recipe.seed)

        def loss_fn(step: int) -> torch.Tensor:
            xb, yb = batches(step)
            return nn.functional.cross_entropy(model(random_shift(xb, recipe.max_shift, generator)), yb)

        with _channels_last(model):
            return train(model, loss_fn, steps=recipe.steps, lr=recipe.lr, desc="classifier", generator=generator,
                         checkpoint=checkpoint)

    return load_or_train("classifier", recipe, build, fit, device)


def latent_diffusion(budget: str | None = None, conditional: bool = False,
                     space: str = "kl_f4") -> tuple[LatentDiffusion, Artifact]:
    """The latent diffusion model of the book: v-prediction (the recipe's) on scaled latents of :func:`autoencoder`.

    Args:
        budget: smoke | book | full; default :func:`~ldm_core.budget.get_budget`.
        conditional: class-conditional (cross-attention to a label token, 10% condition dropout), started from the
            unconditional model (trained first if it is not cached; :func:`warm_start`).
        space: ``"kl_f4"`` (the book's), ``"pixel"`` or another KL autoencoder; see
            :func:`~ldm_core.recipes.diffusion_recipe`.

    Returns:
        (pipeline, artifact of the denoiser). Trains and caches the autoencoder too if it is missing.

    Raises:
        ValueError: for an unknown budget or space.
    """
    return _latent_diffusion(diffusion_recipe(budget, conditional, space))


def _latent_diffusion(recipe: DiffusionRecipe) -> tuple[LatentDiffusion, Artifact]:
    """The model a diffusion recipe describes, from the cache or trained now (after its warm start's model)."""
    device = get_device()
    first_stage = PixelSpace() if recipe.autoencoder is None else autoencoder(recipe=recipe.autoencoder).model
    first_stage = first_stage.to(device)

    def fit(model: Denoiser, checkpoint: Checkpoint) -> dict:
        if recipe.warm_start is not None:  # (a resumed run then loads its checkpoint over these weights)
            warm_start(model.unet, _latent_diffusion(recipe.warm_start)[0].denoiser.unet)
        x, y = load_mnist("train")
        desc = "pixel diffusion" if recipe.autoencoder is None else "latent diffusion"
        return fit_diffusion(model, first_stage, x, y, recipe, desc=desc, checkpoint=checkpoint)

    artifact = load_or_train("conditional-ldm" if recipe.conditional else "ldm", recipe,
                             lambda: build_denoiser(recipe), fit, device)
    return LatentDiffusion(first_stage, artifact.model, recipe.alpha_bar().to(device),
                           prediction=recipe.prediction), artifact


def ddpm(budget: str | None = None) -> tuple[LatentDiffusion, Artifact]:
    """Appendix B's DDPM on pixels (:func:`~ldm_core.recipes.ddpm_recipe`): the pipeline with the identity first
    stage, and the denoiser's artifact.

    Raises:
        ValueError: for an unknown budget.
    """
    return _latent_diffusion(ddpm_recipe(budget))


def flow(kind: str, budget: str | None = None, recipe: FlowRecipe | None = None) -> Artifact:
    """Appendix B's normalising flow of ``kind`` (nice | realnvp | glow), trained by maximum likelihood on the
    training digits' 784 real pixels, dequantised afresh each step (:func:`~ldm_core.flows.digits_to_flow_space`);
    the loss is the negative log-likelihood in nats per dimension. Its actnorm layers are initialised from 1,000
    training digits, not from the first batch alone: a pixel that a batch of 64 never inks would get a scale that
    its first ink elsewhere multiplies into a huge code length. ``recipe`` overrides the budget's.

    Raises:
        ValueError: for an unknown budget or kind.
    """
    recipe = recipe or flow_recipes(budget).get(kind)
    if recipe is None:
        raise ValueError(f"kind must be one of {tuple(BUILDERS)}, got {kind!r}")
    device = get_device()

    def build() -> Flow:
        return _seeded(recipe.seed, lambda: BUILDERS[recipe.kind](recipe.width))

    def fit(model: Flow, checkpoint: Checkpoint) -> dict:
        x, _ = load_mnist("train")
        generator = torch.Generator(device).manual_seed(recipe.seed)
        batches = Batches(x.to(device), batch_size=recipe.batch_size, seed=recipe.seed)

        def loss_fn(step: int) -> torch.Tensor:
            y = digits_to_flow_space(batches(step)[0], generator)
            return -model.log_prob(y).mean() / y[0].numel()

        with torch.no_grad():  # actnorm's data-dependent initialisation (a resumed run loads its state over it)
            model.train()(digits_to_flow_space(x[:1000].to(device), generator))

        return train(model, loss_fn, steps=recipe.steps, lr=recipe.lr, desc=recipe.kind, grad_clip=recipe.grad_clip,
                     generator=generator, checkpoint=checkpoint)

    return load_or_train("flow", recipe, build, fit, device)


def warm_start(target: nn.Module, source: nn.Module) -> list[str]:
    """Copy into ``target`` every parameter and buffer of ``source`` with the same name and shape; the rest of
    ``target`` keeps its initial values. Returns the names of ``target`` that were not copied.

    Raises:
        ValueError: if nothing matches (the two are not the same architecture).
    """
    theirs = source.state_dict()
    ours = target.state_dict()
    copied = {name: value for name, value in theirs.items() if name in ours and ours[name].shape == value.shape}
    if not copied:
        raise ValueError("no parameter of the source matches the target in name and shape")
    target.load_state_dict({**ours, **copied})
    return sorted(set(ours) - set(copied))


def caption_tokenizer(max_tokens: int = 8) -> Tokenizer:
    """The word-level tokenizer over every word the caption templates can produce."""
    words = {word for a in range(10) for b in range(10) for t in range(len(CAPTION_TEMPLATES))
             for word in caption(a, b, t).split()}
    return Tokenizer(words, max_tokens)


def text_diffusion(budget: str | None = None) -> tuple[LatentDiffusion, Artifact]:
    """The text-conditional LDM of chapter 6: 32x64 canvases of two digits, captioned in several phrasings,
    encoded by the book's autoencoder (4x8x16 latents); the UNet, started from the class-conditional model's
    (:func:`warm_start`; that model is trained first if it is not cached), cross-attends to the tokens of a
    jointly trained :class:`~ldm_core.conditioning.TextEncoder`. Captions are drawn per step (a random phrasing
    per canvas), 10% of them replaced by the empty caption, the null condition.

    Returns:
        (pipeline with ``image_size=(32, 64)``, artifact); ``pipeline.denoiser.conditioner.tokenizer`` turns
        captions into the ``labels`` that ``pipeline.sample`` takes.

    Raises:
        ValueError: for an unknown budget.
    """
    recipe = text_recipe(budget)
    d = recipe.diffusion
    device = get_device()
    first_stage = autoencoder(recipe=d.autoencoder).model.to(device)
    tokenizer = caption_tokenizer(recipe.max_tokens)

    def build() -> Denoiser:
        return build_denoiser(d, lambda: TextEncoder(tokenizer, d.unet.d_context, recipe.text_layers))

    def captions(digits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Tokens of one caption per (left, right) pair, each in a random phrasing."""
        phrasing = torch.randint(len(CAPTION_TEMPLATES), (len(digits),), generator=generator,
                                 device=rng_device(generator, device)).tolist()
        return tokenizer([caption(a, b, p) for (a, b), p in zip(digits.tolist(), phrasing)]).to(device)

    def fit(model: Denoiser, checkpoint: Checkpoint) -> dict:
        if d.warm_start is not None:  # (a resumed run then loads its checkpoint over these weights)
            warm_start(model.unet, _latent_diffusion(d.warm_start)[0].denoiser.unet)
        x, digits = two_digit_canvases("train", recipe.canvases, "seen", seed=recipe.seed)
        return fit_diffusion(model, first_stage, x, digits, d, desc="text-to-image diffusion", checkpoint=checkpoint,
                             to_condition=captions)

    artifact = load_or_train("text-ldm", recipe, build, fit, device)
    return LatentDiffusion(first_stage, artifact.model, d.alpha_bar().to(device), image_size=(32, 64),
                           prediction=d.prediction), artifact


def _start_widened(model: Denoiser, recipe: DiffusionRecipe, what: str) -> None:
    """Start ``model`` from its recipe's ``warm_start`` model (trained first if not cached) with the first
    convolution widened (:func:`~ldm_core.unet.widen_input`) by the recipe's extra concatenated channels. A resumed
    run then loads its checkpoint over these weights.

    Raises:
        ValueError: if any weight was not copied: the recipe changed the architecture beyond the first
            convolution, and this would not be a fine-tune any more.
    """
    source = _latent_diffusion(recipe.warm_start)[0].denoiser
    extra = recipe.unet.concat_channels - source.unet.config.concat_channels
    skipped = warm_start(model, Denoiser(widen_input(source.unet, extra), source.conditioner))
    if skipped:
        raise ValueError(f"the {what} model must start from every weight of its source; not copied: {skipped}")


def inpainting_diffusion(budget: str | None = None) -> tuple[LatentDiffusion, Artifact]:
    """The inpainting LDM (for chapter 7; paper Sec. 4.5) at ``budget`` (default
    :func:`~ldm_core.budget.get_budget`): the class-conditional model, its first convolution widened
    (:func:`~ldm_core.unet.widen_input`) to read the masked image's latent and the latent mask beside z_t
    (:func:`~ldm_core.inpainting.inpainting_condition`), fine-tuned on the training digits with masks drawn from the
    recipe's bank, one per example and step; labels still dropped 10% of the time, so guidance works. The
    class-conditional model is trained first if it is not cached.

    Returns:
        (pipeline, artifact); sample with ``pipeline.sample(labels, concat=inpainting_condition(...))``, or
        :func:`~ldm_core.inpainting.inpaint`.

    Raises:
        ValueError: for an unknown budget.
    """
    recipe = inpainting_recipe(budget)
    d = recipe.diffusion
    device = get_device()
    first_stage = autoencoder(recipe=d.autoencoder).model.to(device)

    def fit(model: Denoiser, checkpoint: Checkpoint) -> dict:
        _start_widened(model, d, "inpainting")
        bank = mask_bank(recipe.mask_bank, dict(recipe.mask_mix), seed=recipe.seed).to(device)
        x, y = load_mnist("train")

        def to_concat(x_batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            return inpainting_condition(first_stage, x_batch, draw_masks(bank, len(x_batch), generator))

        return fit_diffusion(model, first_stage, x, y, d, desc="inpainting diffusion", checkpoint=checkpoint,
                             to_concat=to_concat)

    artifact = load_or_train("inpainting-ldm", recipe, lambda: build_denoiser(d), fit, device)
    return LatentDiffusion(first_stage, artifact.model, d.alpha_bar().to(device), prediction=d.prediction), artifact


def _superres(kind: str, budget: str | None) -> tuple[LatentDiffusion, Artifact]:
    """Chapter 8's models, ``kind`` ``"superres-ldm"`` or ``"superres-regression"``: chapter 2's unconditional
    model with its first convolution widened to read the low-resolution image, fine-tuned by the recipe."""
    recipe = superres_recipe(budget)
    d = recipe.diffusion
    device = get_device()
    first_stage = autoencoder(recipe=d.autoencoder).model.to(device)

    def fit(model: Denoiser, checkpoint: Checkpoint) -> dict:
        _start_widened(model, d, "super-resolution")
        x, y = load_mnist("train")
        if kind == "superres-ldm":
            return fit_diffusion(model, first_stage, x, y, d, desc="super-resolution diffusion", checkpoint=checkpoint,
                                 to_concat=lambda x_batch, generator: downsample(x_batch, recipe.factor))
        # the regression baseline: the UNet's output at z_t = 0 and t = T - 1 is the latent itself, MSE to the
        # posterior mean of the image's latent (scaled), with the same optimiser, schedule, EMA and batches
        x = x.to(device)
        with torch.no_grad():
            z0 = torch.cat([first_stage.scale_factor * first_stage.encode(chunk).mean for chunk in x.split(500)])
        batches = Batches(z0, x, batch_size=d.batch_size, seed=d.seed)
        t = torch.full((d.batch_size,), regression_timestep(d.T), dtype=torch.int64, device=device)

        def loss_fn(step: int) -> torch.Tensor:
            z0_b, x_b = batches(step)
            low = downsample(x_b, recipe.factor)
            return torch.nn.functional.mse_loss(model(torch.zeros_like(z0_b), t, None, low), z0_b)

        return train(model, loss_fn, steps=d.steps, lr=d.lr, desc="super-resolution regression",
                     ema_decay=d.ema_decay, ema_warmup=d.ema_warmup, warmup_steps=d.warmup_steps,
                     lr_decay=d.lr_decay, checkpoint=checkpoint)

    artifact = load_or_train(kind, recipe, lambda: build_denoiser(d), fit, device)
    return LatentDiffusion(first_stage, artifact.model, d.alpha_bar().to(device), prediction=d.prediction), artifact


def superres_diffusion(budget: str | None = None) -> tuple[LatentDiffusion, Artifact]:
    """The super-resolution LDM (chapter 8; paper Sec. 4.4) at ``budget`` (default
    :func:`~ldm_core.budget.get_budget`): chapter 2's unconditional model, its first convolution widened to read the
    8x8 low-resolution image beside z_t (:func:`~ldm_core.superres.downsample` of each training digit), fine-tuned
    with chapter 2's objective. Chapter 2's model is trained first if it is not cached.

    Returns:
        (pipeline, artifact); sample with :func:`~ldm_core.superres.super_resolve`.

    Raises:
        ValueError: for an unknown budget.
    """
    return _superres("superres-ldm", budget)


def superres_regression(budget: str | None = None) -> tuple[LatentDiffusion, Artifact]:
    """The regression baseline of chapter 8 (the paper's "image regression", Tab. 5): the same widened UNet, from
    the same start, trained for as many steps to output the scaled latent of the high-resolution image directly
    (mean squared error), from z_t = 0 at t = T - 1 and the low-resolution image.

    Returns:
        (pipeline, artifact): the pipeline holds the UNet and the decoder; use it with
        :func:`~ldm_core.superres.regress` (its ``sample`` would treat the regressor as a denoiser).

    Raises:
        ValueError: for an unknown budget.
    """
    return _superres("superres-regression", budget)
