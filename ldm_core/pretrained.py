"""Recipes for every model the book trains, and the artifact cache that shares them between chapters.

A chapter asks, say, for "the f=4 autoencoder at this budget": :func:`autoencoder` loads it from the cache if
it is there and trains it with its recipe if not. The cache lives in ``LDM_CACHE`` (default
``$XDG_CACHE_HOME/ldm_core`` or ``~/.cache/ldm_core``); each file's name is a hash of the recipe and the
package version, so a changed recipe never loads a stale model. Files are written atomically (temporary
file, then rename) and loaded with ``weights_only=True``; a file that fails to load is retrained, not trusted.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from . import __version__
from .autoencoder import Autoencoder, AutoencoderConfig, PixelSpace
from .budget import get_budget, get_device
from .conditioning import ClassEmbedder, TextEncoder, Tokenizer
from .data import CAPTION_TEMPLATES, caption, load_mnist, two_digit_canvases
from .metrics import DigitClassifier, random_shift
from .pipeline import LatentDiffusion
from .schedules import alpha_bar_from_betas, linear_beta_schedule, randn_like, rng_device
from .losses import PatchDiscriminator, PerceptualLoss, autoencoder_loss, digit_feature_layers
from .train import Batches, diffusion_loss, save_atomic, train, training_flops
from .unet import Denoiser, UNet, UNetConfig


@dataclass(frozen=True)
class ClassifierRecipe:
    width: int = 32
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    max_shift: int = 2  # augmentation: random translation by up to this many pixels
    seed: int = 0


@dataclass(frozen=True)
class AutoencoderRecipe:
    config: AutoencoderConfig = AutoencoderConfig()
    steps: int = 400  # optimiser steps
    batch_size: int = 32
    lr: float = 1e-3
    kl_weight: float = 1e-6  # the paper's "slight" KL weight, with the per-image-sum reduction (VQ: weight 1)
    perceptual: ClassifierRecipe | None = None  # the network whose features define the perceptual loss; None: off
    perceptual_weight: float = 1.0
    adversarial_weight: float = 0.0  # weight of the patch discriminator's term, times the adaptive weight; 0: off
    discriminator_start: int = 0  # the step at which the discriminator and its term switch on
    seed: int = 0


@dataclass(frozen=True)
class DiffusionRecipe:
    autoencoder: AutoencoderRecipe = AutoencoderRecipe()  # the first stage the latents come from
    unet: UNetConfig = UNetConfig(channels=32)
    conditional: bool = False  # class-conditional through cross-attention to a label token
    p_uncond: float = 0.1  # condition dropout: the fraction of labels replaced by the null label
    T: int = 1000  # diffusion steps
    beta_start: float = 1e-4  # DDPM linear schedule
    beta_end: float = 0.02
    steps: int = 2000
    batch_size: int = 64
    lr: float = 5e-4
    ema_decay: float = 0.995  # the sampled model is this exponential moving average of the weights
    seed: int = 0


@dataclass(frozen=True)
class TextDiffusionRecipe:
    diffusion: DiffusionRecipe  # UNet (d_context = the text width), schedule, optimiser, first stage
    text_layers: int = 3  # transformer blocks of tau_theta
    canvases: int = 8000  # two-digit training canvases, made once from the training digits (seen pairs only)
    max_tokens: int = 8  # L, caption length in words
    seed: int = 0


# The full budget has not run yet (no GPU was available when these were written): its sizes are a first guess.
_SMOKE_AE = AutoencoderRecipe(config=AutoencoderConfig.tiny(), steps=150, batch_size=32)
_FULL_AE = AutoencoderRecipe(config=AutoencoderConfig(channels=64, channel_mult=(1, 2, 2)), steps=8000, batch_size=128)
AUTOENCODER_RECIPES = {"smoke": _SMOKE_AE, "book": AutoencoderRecipe(), "full": _FULL_AE}
CLASSIFIER_RECIPES = {
    "smoke": ClassifierRecipe(width=8, steps=150, batch_size=32),
    "book": ClassifierRecipe(),
    "full": ClassifierRecipe(steps=4000, batch_size=128),
}


def autoencoder_study(budget: str) -> dict[str, AutoencoderRecipe]:
    """The autoencoders chapter 1 compares: the book's (``kl_f4``, pixel loss and KL) and variants that each
    change one thing, trained for the same number of steps on the same data with the same seed.

    - the f sweep ``kl_f1``, ``kl_f2``, ``kl_f4``, ``kl_f8``: one level fewer or more (same c, same widths);
    - ``vq_f4``: VQ regularisation instead of KL;
    - the ablation ``kl_f4_perceptual`` (+ perceptual loss in the features of a second digit classifier,
      trained with another seed so that the loss does not optimise the features rFID is measured in) and
      ``kl_f4_perceptual_adversarial`` (+ a patch discriminator from half-way through training).
    """
    base = AUTOENCODER_RECIPES[budget]
    mult = base.config.channel_mult

    def levels(n: int) -> AutoencoderRecipe:  # f = 2 ** (n - 1); deeper levels repeat the last width
        channel_mult = mult[:n] + (mult[-1],) * max(0, n - len(mult))
        return dataclasses.replace(base, config=dataclasses.replace(base.config, channel_mult=channel_mult))

    perceptual = dataclasses.replace(base, perceptual=dataclasses.replace(CLASSIFIER_RECIPES[budget], seed=1))
    study = {f"kl_f{2 ** (n - 1)}": levels(n) for n in (1, 2, 3, 4)}  # kl_f4 is the book's at every budget
    study["vq_f4"] = dataclasses.replace(base, config=dataclasses.replace(base.config, regularizer="vq"))
    study["kl_f4_perceptual"] = perceptual
    study["kl_f4_perceptual_adversarial"] = dataclasses.replace(perceptual, adversarial_weight=0.5,
                                                                discriminator_start=base.steps // 2)
    return study


SPACES = ("kl_f4", "pixel", "kl_f2", "kl_f8")  # where diffusion can run: the book's latent space first


def diffusion_recipe(budget: str, conditional: bool, space: str = "kl_f4") -> DiffusionRecipe:
    """The diffusion recipe for a budget and a space.

    ``space`` is ``"kl_f4"`` (the book's latent diffusion model), ``"pixel"`` (the same UNet on pixels, the
    paper's LDM-1) or another KL autoencoder of :func:`autoencoder_study`. The UNet's input channels are the
    space's channels; the conditional model attends to a label token of width d_context = the UNet's first width.
    Outside ``kl_f4`` the number of training steps is chosen for *equal training compute*: the kl_f4 recipe's
    steps times the ratio of FLOPs per step (:func:`ldm_core.train.training_flops`), so that every space gets
    the same budget of arithmetic (and, on one machine, about the same wall-clock time).

    Raises:
        ValueError: for an unknown space.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    if budget == "smoke":
        recipe = DiffusionRecipe(autoencoder=_SMOKE_AE, unet=UNetConfig.tiny(), steps=150, batch_size=32,
                                 ema_decay=0.9)
    elif budget == "book":
        recipe = DiffusionRecipe(steps=2000 if conditional else 1500)
    else:
        recipe = DiffusionRecipe(autoencoder=_FULL_AE, unet=UNetConfig(channels=128, channel_mult=(1, 2, 2)),
                                 steps=20000, batch_size=256, lr=2e-4, ema_decay=0.999)
    unet = dataclasses.replace(recipe.unet, in_channels=recipe.autoencoder.config.latent_channels,
                               d_context=recipe.unet.channels if conditional else None)
    recipe = dataclasses.replace(recipe, unet=unet, conditional=conditional)
    if space == "kl_f4":
        return recipe
    first_stage = None if space == "pixel" else autoencoder_study(budget)[space]
    channels, f = (1, 1) if first_stage is None else (first_stage.config.latent_channels, first_stage.config.f)
    other = dataclasses.replace(recipe, autoencoder=first_stage, unet=dataclasses.replace(unet, in_channels=channels))
    steps = round(recipe.steps * _flops(recipe, 32 // recipe.autoencoder.config.f) / _flops(other, 32 // f))
    return dataclasses.replace(other, steps=max(steps, 1))


def _denoiser(recipe: DiffusionRecipe, conditioner: Callable[[], nn.Module] | None = None) -> Denoiser:
    """A fresh denoiser for the recipe, its initial weights from the recipe's seed: the UNet, then the
    conditioner, made by ``conditioner()`` if given, else the label embedder of a class-conditional recipe."""
    if conditioner is None and recipe.conditional:
        conditioner = functools.partial(ClassEmbedder, 10, recipe.unet.d_context)

    def make() -> Denoiser:
        unet = UNet(recipe.unet)  # first: the order of construction decides the initial weights
        return Denoiser(unet, conditioner() if conditioner else None)

    return _seeded(recipe.seed, make)


def _flops(recipe: DiffusionRecipe, size: int) -> int:
    """Training FLOPs per example of the recipe's denoiser on (c, size, size) inputs."""
    model = _denoiser(recipe)
    cond = torch.zeros(1, dtype=torch.int64) if recipe.conditional else None
    return training_flops(model, torch.zeros(1, recipe.unet.in_channels, size, size), cond)


# ---------------------------------------------------------------------------------------------------- the cache

@dataclass
class Artifact:
    """A trained model and how it came to be."""

    model: nn.Module
    recipe: object
    history: dict = field(default_factory=dict)  # what training recorded: loss per step, seconds, ...
    from_cache: bool = False  # True when loaded, False when trained in this call


def cache_dir() -> Path:
    """``LDM_CACHE``, else ``$XDG_CACHE_HOME/ldm_core``, else ``~/.cache/ldm_core``."""
    if os.environ.get("LDM_CACHE"):
        return Path(os.environ["LDM_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "ldm_core"


def cache_path(kind: str, recipe) -> Path:
    """Where the artifact of ``kind`` trained with ``recipe`` lives: the name hashes recipe and version."""
    description = json.dumps({"kind": kind, "recipe": dataclasses.asdict(recipe), "version": __version__},
                             sort_keys=True)
    digest = hashlib.sha256(description.encode()).hexdigest()[:16]
    return cache_dir() / f"{kind}-{digest}.pt"


def load_or_train(kind: str, recipe, build: Callable[[], nn.Module],
                  fit: Callable[[nn.Module, Path], dict], device: torch.device | None = None) -> Artifact:
    """Load the artifact (kind, recipe) from the cache, or build it, ``fit`` it and cache it.

    Args:
        kind: a name like ``"autoencoder"``.
        recipe: a frozen dataclass; it and the package version key the cache.
        build: returns a fresh, untrained model.
        fit: ``fit(model, checkpoint)`` trains the model in place (on ``device``), checkpointing to the given
            path so that an interrupted run resumes, and returns its history (a dict of plain values).
        device: where the model lives; default :func:`get_device`.

    Returns:
        The :class:`Artifact`, its model in eval mode on ``device``.
    """
    device = device or get_device()
    path = cache_path(kind, recipe)
    model = build().to(device)
    if path.exists():
        try:
            payload = torch.load(path, map_location=device, weights_only=True)
            model.load_state_dict(payload["state_dict"])
            return Artifact(model.eval(), recipe, payload["history"], from_cache=True)
        except Exception as error:  # a corrupt or foreign file: retrain rather than trust it
            warnings.warn(f"ignoring unreadable cache file {path} ({error!r}); retraining")
            model = build().to(device)
    history = fit(model, path.with_suffix(".partial.pt"))
    save_atomic({"state_dict": model.state_dict(), "history": history}, path)
    return Artifact(model.eval(), recipe, history, from_cache=False)


# ---------------------------------------------------------------------------------------------------- the models

def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device).manual_seed(seed)


def _seeded(seed: int, make: Callable[[], nn.Module]) -> nn.Module:
    """``make()`` with the global RNG seeded (initial weights), restoring the caller's RNG afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


@torch.no_grad()
def latent_scale_factor(autoencoder: Autoencoder, x: torch.Tensor, generator: torch.Generator | None = None) -> float:
    """1 / std of latents z ~ q(z | x) over images x, one number over all elements (as the reference code
    computes it; the paper, Sec. 4.3.2 and Appendix G, speaks of the "component-wise standard deviation"), so
    that scale_factor * z has unit variance."""
    z = torch.cat([autoencoder.encode(chunk).sample(generator) for chunk in x.split(500)])
    return 1.0 / float(z.flatten().std())


def autoencoder(budget: str | None = None, recipe: AutoencoderRecipe | None = None) -> Artifact:
    """An autoencoder trained on the training split: the book's (KL, f = 4 at the book budget) by default, or
    the one ``recipe`` describes.

    Its ``scale_factor`` buffer is set from the training latents after training (:func:`latent_scale_factor`).
    """
    recipe = recipe or AUTOENCODER_RECIPES[budget or get_budget()]
    device = get_device()

    def fit(model: Autoencoder, checkpoint: Path) -> dict:
        x, _ = load_mnist("train")
        x = x.to(device)
        generator = _generator(recipe.seed, device)
        batches = Batches(x, batch_size=recipe.batch_size, seed=recipe.seed)
        weight = recipe.kl_weight if recipe.config.regularizer == "kl" else 1.0
        perceptual = (PerceptualLoss(digit_feature_layers(classifier(recipe=recipe.perceptual).model)).to(device)
                      if recipe.perceptual is not None else None)
        discriminator = (PatchDiscriminator(recipe.config.in_channels).to(device)
                         if recipe.adversarial_weight > 0 else None)

        def loss_fn(step: int):
            active = discriminator if step >= recipe.discriminator_start else None
            return autoencoder_loss(model, batches(step)[0], weight, generator, perceptual, recipe.perceptual_weight,
                                    active, recipe.adversarial_weight)

        history = train(model, loss_fn, steps=recipe.steps, lr=recipe.lr, desc="autoencoder", generator=generator,
                        discriminator=discriminator, checkpoint=checkpoint)
        model.scale_factor.fill_(latent_scale_factor(model, x, generator))
        return history

    def build() -> Autoencoder:
        return _seeded(recipe.seed, lambda: Autoencoder(recipe.config))

    return load_or_train("autoencoder", recipe, build, fit, device)


def classifier(budget: str | None = None, recipe: ClassifierRecipe | None = None) -> Artifact:
    """The domain classifier of the digits, trained on the training split with random shifts of up to 2 pixels
    (the budget's recipe unless ``recipe`` is given)."""
    recipe = recipe or CLASSIFIER_RECIPES[budget or get_budget()]
    device = get_device()

    def build() -> DigitClassifier:
        return _seeded(recipe.seed, lambda: DigitClassifier(width=recipe.width))

    def fit(model: DigitClassifier, checkpoint: Path) -> dict:
        x, y = load_mnist("train")
        generator = _generator(recipe.seed, device)
        batches = Batches(x.to(device), y.to(device), batch_size=recipe.batch_size, seed=recipe.seed)

        def loss_fn(step: int) -> torch.Tensor:
            xb, yb = batches(step)
            return nn.functional.cross_entropy(model(random_shift(xb, recipe.max_shift, generator)), yb)

        return train(model, loss_fn, steps=recipe.steps, lr=recipe.lr, desc="classifier", generator=generator,
                     checkpoint=checkpoint)

    return load_or_train("classifier", recipe, build, fit, device)


def latent_diffusion(budget: str | None = None, conditional: bool = False,
                     space: str = "kl_f4") -> tuple[LatentDiffusion, Artifact]:
    """The latent diffusion model of the book: eps-prediction on scaled latents of :func:`autoencoder`.

    Args:
        budget: smoke | book | full; default :func:`get_budget`.
        conditional: class-conditional (cross-attention to a label token, 10% condition dropout).
        space: ``"kl_f4"`` (the book's), ``"pixel"`` or another KL autoencoder; see :func:`diffusion_recipe`.

    Returns:
        (pipeline, artifact of the denoiser). Trains and caches the autoencoder too if it is missing.
    """
    budget = budget or get_budget()
    recipe = diffusion_recipe(budget, conditional, space)
    device = get_device()
    first_stage = PixelSpace() if recipe.autoencoder is None else autoencoder(recipe=recipe.autoencoder).model
    first_stage = first_stage.to(device)
    alpha_bar = alpha_bar_from_betas(linear_beta_schedule(recipe.T, recipe.beta_start, recipe.beta_end)).to(device)

    def build() -> Denoiser:
        return _denoiser(recipe)

    def fit(model: Denoiser, checkpoint: Path) -> dict:
        x, y = load_mnist("train")
        with torch.no_grad():
            posterior = [first_stage.encode(chunk.to(device)) for chunk in x.split(500)]
        mean = torch.cat([p.mean for p in posterior])  # (N, c, h, w)
        std = torch.cat([p.std for p in posterior])
        generator = _generator(recipe.seed, device)
        batches = Batches(mean, std, y.to(device), batch_size=recipe.batch_size, seed=recipe.seed)
        scale = first_stage.scale_factor

        def loss_fn(step: int) -> torch.Tensor:
            mean_b, std_b, y_b = batches(step)
            z0 = scale * (mean_b + std_b * randn_like(mean_b, generator))
            cond = model.conditioner.drop(y_b, recipe.p_uncond, generator) if conditional else None
            return diffusion_loss(model, z0, alpha_bar, cond, generator)

        return train(model, loss_fn, steps=recipe.steps, lr=recipe.lr, desc="latent diffusion",
                     ema_decay=recipe.ema_decay, generator=generator, checkpoint=checkpoint)

    artifact = load_or_train("conditional-ldm" if conditional else "ldm", recipe, build, fit, device)
    return LatentDiffusion(first_stage, artifact.model, alpha_bar), artifact


def text_recipe(budget: str) -> TextDiffusionRecipe:
    """The text-to-image recipe: the class-conditional recipe's UNet and first stage; tau_theta four times the
    UNet's first width, 3 blocks, and more steps (two digits and their order are more to learn than one label).
    At the book budget this is the smallest recipe measured that learns order in every phrasing (chapter 5's
    table of earlier versions)."""
    base = diffusion_recipe(budget, conditional=True)
    steps = {"smoke": 150, "book": 6000, "full": 30000}[budget]
    unet = dataclasses.replace(base.unet, d_context=4 * base.unet.channels)
    return TextDiffusionRecipe(diffusion=dataclasses.replace(base, steps=steps, unet=unet),
                               canvases={"smoke": 1000, "book": 8000, "full": 20000}[budget])


def caption_tokenizer(max_tokens: int = 8) -> Tokenizer:
    """The word-level tokenizer over every word the caption templates can produce."""
    words = {word for a in range(10) for b in range(10) for t in range(len(CAPTION_TEMPLATES))
             for word in caption(a, b, t).split()}
    return Tokenizer(words, max_tokens)


def text_diffusion(budget: str | None = None) -> tuple[LatentDiffusion, Artifact]:
    """The text-conditional LDM of chapter 5: 32x64 canvases of two digits, captioned in several phrasings,
    encoded by the book's autoencoder (4x8x16 latents); the UNet cross-attends to the tokens of a jointly trained
    :class:`~ldm_core.conditioning.TextEncoder`. Captions are drawn per step (a random phrasing per canvas),
    10% of them replaced by the empty caption, the null condition.

    Returns:
        (pipeline with ``image_size=(32, 64)``, artifact); ``pipeline.denoiser.conditioner.tokenizer`` turns
        captions into the ``labels`` that ``pipeline.sample`` takes.
    """
    recipe = text_recipe(budget or get_budget())
    d = recipe.diffusion
    first_stage = autoencoder(recipe=d.autoencoder).model
    device = get_device()
    alpha_bar = alpha_bar_from_betas(linear_beta_schedule(d.T, d.beta_start, d.beta_end)).to(device)
    tokenizer = caption_tokenizer(recipe.max_tokens)

    def build() -> Denoiser:
        return _denoiser(d, lambda: TextEncoder(tokenizer, d.unet.d_context, recipe.text_layers))

    def fit(model: Denoiser, checkpoint: Path) -> dict:
        x, digits = two_digit_canvases("train", recipe.canvases, "seen", seed=recipe.seed)
        with torch.no_grad():
            posterior = [first_stage.encode(chunk.to(device)) for chunk in x.split(500)]
        mean, std = torch.cat([p.mean for p in posterior]), torch.cat([p.std for p in posterior])
        generator = _generator(d.seed, device)
        batches = Batches(mean, std, digits, batch_size=d.batch_size, seed=d.seed)

        def loss_fn(step: int) -> torch.Tensor:
            mean_b, std_b, digits_b = batches(step)
            z0 = first_stage.scale_factor * (mean_b + std_b * randn_like(mean_b, generator))
            phrasing = torch.randint(len(CAPTION_TEMPLATES), (len(digits_b),), generator=generator,
                                     device=rng_device(generator, device)).tolist()
            tokens = tokenizer([caption(a, b, p) for (a, b), p in zip(digits_b.tolist(), phrasing)]).to(device)
            tokens = model.conditioner.drop(tokens, d.p_uncond, generator)
            return diffusion_loss(model, z0, alpha_bar, tokens, generator)

        return train(model, loss_fn, steps=d.steps, lr=d.lr, desc="text-to-image diffusion", ema_decay=d.ema_decay,
                     generator=generator, checkpoint=checkpoint)

    artifact = load_or_train("text-ldm", recipe, build, fit, device)
    return LatentDiffusion(first_stage, artifact.model, alpha_bar, image_size=(32, 64)), artifact
