"""Every model's recipe, and ONE table of everything that differs between the budgets.

A recipe is a frozen dataclass that says how a model is made: its architecture, its data, its optimiser, its
seed. It also keys the artifact cache (:mod:`ldm_core.cache`), so a changed recipe never loads a stale model.

:data:`BUDGET_TABLE` holds, for each budget (smoke | book | full), every number that differs between them: model
sizes and step counts, the sample counts that chapters and the benchmark measure with, and those thresholds of the
chapters' Checks that differ between budgets. Nothing else in the package or the book picks a number by budget; read one row with
:func:`budget_table`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .autoencoder import AutoencoderConfig
from .budget import BUDGETS, get_budget
from .schedules import SCHEDULES, alpha_bar_from_betas
from .checks import check_finite, check_int
from .flows import BUILDERS
from .train import PREDICTIONS, check_t_sampling, lr_factor
from .unet import UNetConfig


@dataclass(frozen=True)
class ClassifierRecipe:
    width: int  # channels of the first convolution (the domain classifier, metrics.DigitClassifier)
    steps: int  # optimiser steps
    batch_size: int
    lr: float = 1e-3
    max_shift: int = 2  # augmentation: random translation by up to this many pixels
    seed: int = 0

    def __post_init__(self):
        _check_optimisation(self)


def _check_optimisation(recipe) -> None:
    """The fields every recipe has: steps and batch_size positive integers, lr a positive finite number."""
    check_int("steps", recipe.steps, 1)
    check_int("batch_size", recipe.batch_size, 1)
    check_finite("lr", recipe.lr, low=0.0, open_low=True)


@dataclass(frozen=True)
class AutoencoderRecipe:
    config: AutoencoderConfig
    steps: int  # optimiser steps
    batch_size: int
    lr: float = 1e-3
    kl_weight: float = 1e-6  # the paper's "slight" KL weight, with the per-image-sum reduction (VQ: weight 1)
    perceptual: ClassifierRecipe | None = None  # the network whose features define the perceptual loss; None: off
    perceptual_weight: float = 1.0
    adversarial_weight: float = 0.0  # weight of the patch discriminator's term, times the adaptive weight; 0: off
    discriminator_start: int = 0  # the step at which the discriminator and its term switch on
    seed: int = 0

    def __post_init__(self):
        _check_optimisation(self)


@dataclass(frozen=True)
class DiffusionRecipe:
    autoencoder: AutoencoderRecipe | None  # the first stage the latents come from; None: pixel space
    unet: UNetConfig
    steps: int
    batch_size: int
    lr: float
    ema_decay: float  # the sampled model is this exponential moving average of the weights
    conditional: bool = False  # class-conditional through cross-attention to a label token
    p_uncond: float = 0.1  # condition dropout: the fraction of conditions replaced by the null condition
    T: int = 1000  # diffusion steps
    schedule: str = "linear"  # a name of schedules.SCHEDULES, with its default endpoints (linear: DDPM's)
    # the objective and the optimisation, chosen by the study of quality per CPU-second (`python -m ldm_core.bench
    # --study`, chapter 2): see train.diffusion_loss, train.lr_factor and train.ema_decay_at
    prediction: str = "v"  # the denoiser's output: "v" or "eps"
    min_snr_gamma: float | None = None  # Min-SNR-gamma loss weighting; None: uniform (plain v-MSE, or L_simple)
    t_sampling: str = "uniform"  # how t is drawn (train.T_SAMPLINGS): in expectation a loss weight T P(t)
    warmup_steps: int = 0  # linear learning-rate warm-up (the budget table's, in every recipe it makes)
    lr_decay: str = "cosine"  # then "cosine" decay to 0 or "constant"
    ema_warmup: bool = True  # the EMA's decay min(ema_decay, (1 + n) / (10 + n)) at update n
    # the model whose weights start this one's wherever names and shapes agree (pretrained.warm_start): the
    # class-conditional model starts from chapter 2's unconditional one (all but its cross-attention is shared), the
    # text and inpainting models from the class-conditional one
    warm_start: DiffusionRecipe | None = None
    seed: int = 0

    def __post_init__(self):
        _check_optimisation(self)
        check_finite("ema_decay", self.ema_decay, 0.0, 1.0)
        check_finite("p_uncond", self.p_uncond, 0.0, 1.0)
        check_int("T", self.T, 1)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {tuple(SCHEDULES)}, got {self.schedule!r}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        check_t_sampling(self.t_sampling)
        if self.min_snr_gamma is not None:
            check_finite("min_snr_gamma (or None)", self.min_snr_gamma, low=0.0, open_low=True)
        lr_factor(0, self.steps, check_int("warmup_steps", self.warmup_steps, 0), self.lr_decay)  # the schedule

    def alpha_bar(self) -> torch.Tensor:
        """The recipe's schedule alpha_bar_t, float64 (T,): ``SCHEDULES[schedule](T)``."""
        return alpha_bar_from_betas(SCHEDULES[self.schedule](self.T))


@dataclass(frozen=True)
class TextDiffusionRecipe:
    # UNet (d_context = the text width), schedule, optimiser, first stage; its warm_start is chapter 4's model,
    # whose UNet weights start the text model's wherever names and shapes agree (all but the cross-attention's keys
    # and values, whose context is wider)
    diffusion: DiffusionRecipe
    canvases: int  # two-digit training canvases, made once from the training digits (seen pairs only)
    text_layers: int = 3  # transformer blocks of tau_theta
    max_tokens: int = 8  # L, caption length in words
    seed: int = 0


@dataclass(frozen=True)
class InpaintingRecipe:
    # the class-conditional recipe with the UNet reading c + 1 more channels (the masked image's latent and the
    # latent mask), started from the class-conditional model with its first convolution widened (unet.widen_input)
    diffusion: DiffusionRecipe
    # the training masks ({kind: fraction} of inpainting.MASK_KINDS): mostly LaMa-like holes, and some whole-image
    # masks so that the model still generates without any known pixel
    mask_mix: tuple[tuple[str, float], ...] = (("strokes", 0.35), ("boxes", 0.35), ("half", 0.2), ("whole", 0.1))
    mask_bank: int = 8000  # masks drawn once, then sampled per training example
    seed: int = 0


@dataclass(frozen=True)
class SuperResolutionRecipe:
    # the unconditional recipe with the UNet reading the low-resolution image beside z_t (concat_channels = the
    # image's channels), started from chapter 2's unconditional model with its first convolution widened; the
    # regression baseline trains the same UNet, from the same start, for as many steps
    diffusion: DiffusionRecipe
    factor: int = 4  # high / low resolution: the autoencoder's f, so the low-resolution image lies on the latent grid

    def __post_init__(self):
        f = self.diffusion.autoencoder.config.f
        if self.factor != f:
            raise ValueError(f"factor must be the autoencoder's f = {f} (the image then lies on the latent grid), "
                             f"got {self.factor}")


FLOW_KINDS = tuple(BUILDERS)  # nice, realnvp, glow: the builders of ldm_core.flows


@dataclass(frozen=True)
class FlowRecipe:
    kind: str  # one of FLOW_KINDS: the builder in ldm_core.flows
    width: int  # hidden channels of the coupling networks (NICE's MLPs: 8 times this)
    steps: int  # optimiser steps of maximum likelihood on dequantised training digits
    batch_size: int
    lr: float = 1e-3
    grad_clip: float | None = None  # maximum likelihood's gradients are not clipped (see train.train)
    seed: int = 0

    def __post_init__(self):
        if self.kind not in FLOW_KINDS:
            raise ValueError(f"kind must be one of {FLOW_KINDS}, got {self.kind!r}")
        check_int("width", self.width, 1)
        _check_optimisation(self)


@dataclass(frozen=True)
class Budget:
    """One row of the budget table: every number that differs between smoke, book and full."""

    name: str
    # the models
    classifier: ClassifierRecipe  # the domain classifier: the judge of every FID and accuracy
    autoencoder: AutoencoderRecipe  # the book's first stage (KL, f = 4 at every budget)
    unet: UNetConfig  # the diffusion UNet's widths; in_channels and d_context are set per model
    steps_unconditional: int  # chapter 2's latent model
    steps_conditional: int  # chapter 4's class-conditional model, after chapter 2's model that it starts from
    batch_size: int  # of every diffusion model
    lr: float  # peak learning rate, after `warmup_steps` of linear warm-up, then a cosine decay
    warmup_steps: int
    ema_decay: float
    text_steps: int  # chapter 6's text-to-image model: two digits and their order are more to learn
    text_lr: float  # its peak learning rate: tau_theta's transformer does not take the UNet's
    # its training canvases (seen pairs), made once: at the book budget 8,000 left held-out pairs at guidance 3
    # to the seed (91% and 100% both correct, seeds 0 and 1), 16,000 did not (99.5% and 97.5%; chapter 6)
    text_canvases: int
    inpaint_steps: int  # chapter 7's inpainting model, fine-tuned from chapter 4's
    superres_steps: int  # chapter 8's super-resolution model and its regression baseline, from chapter 2's model
    naive_epochs: tuple[int, int]  # appendix A's repaired naive VAE and MLP denoiser (the reproduction: 5 and 10)
    flow_width: int  # appendix B's flows: hidden channels of their coupling networks
    flow_steps: int  # appendix B's flows: optimiser steps each (batch_size digits a step)
    # what is measured, by the chapters and the benchmark alike (ldm_core.evaluate)
    samples: int  # generated images per FID / accuracy (chapters 2, 4, 6, chapter 5's samplers, their benchmark keys)
    sweep_samples: int  # per setting of chapter 5's sweeps over steps and guidance, and of chapter 3's race
    generative_samples: int  # appendix B: samples per model, and test digits for bits/dim (DDPM samples T steps)
    kid_subset: int  # KID's subset size (at most the number of samples)
    bootstrap: int  # resamples of a FID's bootstrap standard error
    study_steps: int  # steps of each run of the benchmark's study (`python -m ldm_core.bench --study`)
    # the chapters' Checks
    claims: bool  # assert the chapters' quality claims; the smoke models train for seconds and claim nothing
    min_psnr: float  # chapter 1: the book's autoencoder on the test digits, dB
    min_classifier_accuracy: float  # chapter 4: the judge on the test digits
    min_cond_accuracy: float  # chapter 4: guidance 3
    min_both_correct: float  # chapter 6: guidance 3, seen and held-out pairs


# Why each number: smoke keeps `make test` within minutes (every chapter in well under a minute on 2 cores); book is
# what 2 CPU cores train while a reader reads, every chapter within 5 minutes (chapter 6 within 8) with the recipe
# the study of quality per CPU-second chose (`python -m ldm_core.bench --study`, chapter 2); full is a first
# guess for one GPU, not yet run (no GPU was lent when it was written), opt-in through LDM_BUDGET=full; its
# class-conditional steps were not lowered with the warm start (the book's were, measured), for want of a GPU run.
BUDGET_TABLE: dict[str, Budget] = {row.name: row for row in (
    Budget(
        name="smoke",
        classifier=ClassifierRecipe(width=8, steps=100, batch_size=32),
        autoencoder=AutoencoderRecipe(config=AutoencoderConfig.tiny(), steps=40, batch_size=32),
        unet=UNetConfig.tiny(),
        steps_unconditional=40, steps_conditional=40, batch_size=32, lr=2e-3, warmup_steps=5, ema_decay=0.9,
        text_steps=40, text_lr=2e-3, text_canvases=1000, inpaint_steps=40, superres_steps=40,
        naive_epochs=(5, 10), flow_width=8, flow_steps=40,
        samples=20, sweep_samples=20, generative_samples=10, kid_subset=20, bootstrap=10, study_steps=40,
        claims=False, min_psnr=0.0, min_classifier_accuracy=0.3, min_cond_accuracy=0.0, min_both_correct=0.0,
    ),
    Budget(
        name="book",
        classifier=ClassifierRecipe(width=32, steps=1000, batch_size=64),
        autoencoder=AutoencoderRecipe(config=AutoencoderConfig(), steps=400, batch_size=32),
        unet=UNetConfig(channels=32),
        steps_unconditional=1000, steps_conditional=1500, batch_size=64, lr=4e-3, warmup_steps=100, ema_decay=0.995,
        text_steps=1000, text_lr=1e-3, text_canvases=16000, inpaint_steps=600, superres_steps=600,
        naive_epochs=(30, 100), flow_width=32, flow_steps=400,
        samples=200, sweep_samples=100, generative_samples=50, kid_subset=100, bootstrap=50, study_steps=1000,
        claims=True, min_psnr=22.0, min_classifier_accuracy=0.97, min_cond_accuracy=0.98, min_both_correct=0.95,
    ),
    Budget(
        name="full",
        classifier=ClassifierRecipe(width=32, steps=4000, batch_size=128),
        autoencoder=AutoencoderRecipe(config=AutoencoderConfig(channels=64, channel_mult=(1, 2, 2)), steps=8000,
                                      batch_size=128),
        unet=UNetConfig(channels=128, channel_mult=(1, 2, 2)),
        steps_unconditional=20000, steps_conditional=20000, batch_size=256, lr=2e-4, warmup_steps=500, ema_decay=0.999,
        text_steps=30000, text_lr=2e-4, text_canvases=20000, inpaint_steps=10000, superres_steps=10000,
        naive_epochs=(100, 300), flow_width=128, flow_steps=10000,
        samples=1000, sweep_samples=500, generative_samples=500, kid_subset=500, bootstrap=50, study_steps=10000,
        claims=True, min_psnr=24.0, min_classifier_accuracy=0.98, min_cond_accuracy=0.9, min_both_correct=0.8,
    ),
)}


def budget_table(budget: str | None = None) -> Budget:
    """The row of :data:`BUDGET_TABLE` for ``budget``, default :func:`~ldm_core.budget.get_budget`.

    Raises:
        ValueError: if ``budget`` is not one of smoke | book | full (no silent fallback to another budget).
    """
    name = get_budget() if budget is None else budget
    if name not in BUDGET_TABLE:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
    return BUDGET_TABLE[name]


# --------------------------------------------------------------------------------------------- derived recipes

def autoencoder_study(budget: str | None = None) -> dict[str, AutoencoderRecipe]:
    """The autoencoders chapters 1 and 3 compare: the book's (``kl_f4``, pixel loss and KL) and variants that each
    change one thing, trained for the same number of steps on the same data with the same seed.

    - the f sweep ``kl_f1``, ``kl_f2``, ``kl_f4``, ``kl_f8`` (chapter 3): one level fewer or more (same c, same widths);
    - ``vq_f4``: VQ regularisation instead of KL;
    - the ablation ``kl_f4_perceptual`` (+ perceptual loss in the features of a second digit classifier,
      trained with another seed so that the loss does not optimise the features rFID is measured in, and for a
      quarter of the judge's steps: the loss needs its features, not its last point of accuracy) and
      ``kl_f4_perceptual_adversarial`` (+ a patch discriminator from half-way through training).
    """
    row = budget_table(budget)
    base = row.autoencoder
    mult = base.config.channel_mult

    def levels(n: int) -> AutoencoderRecipe:  # f = 2 ** (n - 1); deeper levels repeat the last width
        channel_mult = mult[:n] + (mult[-1],) * max(0, n - len(mult))
        return dataclasses.replace(base, config=dataclasses.replace(base.config, channel_mult=channel_mult))

    perceptual = dataclasses.replace(base, perceptual=dataclasses.replace(row.classifier, seed=1,
                                                                          steps=row.classifier.steps // 4))
    study = {f"kl_f{2 ** (n - 1)}": levels(n) for n in (1, 2, 3, 4)}  # kl_f4 is the book's at every budget
    study["vq_f4"] = dataclasses.replace(base, config=dataclasses.replace(base.config, regularizer="vq"))
    study["kl_f4_perceptual"] = perceptual
    study["kl_f4_perceptual_adversarial"] = dataclasses.replace(perceptual, adversarial_weight=0.5,
                                                                discriminator_start=base.steps // 2)
    return study


SPACES = ("kl_f4", "pixel", "kl_f2", "kl_f8")  # where diffusion can run: the book's latent space first


def diffusion_recipe(budget: str | None, conditional: bool, space: str = "kl_f4") -> DiffusionRecipe:
    """The diffusion recipe for a budget and a space.

    ``space`` is ``"kl_f4"`` (the book's latent diffusion model), ``"pixel"`` (the same UNet on pixels, the
    paper's LDM-1) or another KL autoencoder of :func:`autoencoder_study`. The UNet's input channels are the
    space's channels; the conditional model attends to a label token of width d_context = the UNet's first width,
    and in ``kl_f4`` starts from the unconditional model (``warm_start``: every weight but the cross-attention's).
    Outside ``kl_f4`` the number of training steps is chosen for *equal training compute*: the kl_f4 recipe's
    steps times the ratio of FLOPs per step (:func:`ldm_core.train.training_flops`), so that every space gets
    the same budget of arithmetic (and, on one machine, about the same wall-clock time). (A conditional recipe
    outside ``kl_f4`` starts from scratch: its compute matches the kl_f4 recipe's own steps, not its warm start's.)

    Raises:
        TypeError: if conditional is not a bool.
        ValueError: for an unknown budget or space.
    """
    if not isinstance(conditional, bool):
        raise TypeError(f"conditional must be True or False, got {conditional!r}")
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    row = budget_table(budget)
    unet = dataclasses.replace(row.unet, in_channels=row.autoencoder.config.latent_channels,
                               d_context=row.unet.channels if conditional else None)
    recipe = DiffusionRecipe(autoencoder=row.autoencoder, unet=unet, conditional=conditional,
                             steps=row.steps_conditional if conditional else row.steps_unconditional,
                             batch_size=row.batch_size, lr=row.lr, warmup_steps=row.warmup_steps,
                             ema_decay=row.ema_decay)
    if space == "kl_f4":
        return dataclasses.replace(recipe, warm_start=diffusion_recipe(budget, False)) if conditional else recipe
    first_stage = None if space == "pixel" else autoencoder_study(row.name)[space]
    channels, f = (1, 1) if first_stage is None else (first_stage.config.latent_channels, first_stage.config.f)
    other = dataclasses.replace(recipe, autoencoder=first_stage, unet=dataclasses.replace(unet, in_channels=channels))
    return _with_equal_compute(other, recipe)


def _with_equal_compute(recipe: DiffusionRecipe, reference: DiffusionRecipe) -> DiffusionRecipe:
    """``recipe`` with as many steps (at least 1) as buy ``reference``'s training FLOPs, each recipe on 32x32 images
    through its own first stage, and its warm-up at most a tenth of them."""
    def size(r: DiffusionRecipe) -> int:
        return 32 if r.autoencoder is None else 32 // r.autoencoder.config.f

    steps = max(round(reference.steps * _flops(reference, size(reference)) / _flops(recipe, size(recipe))), 1)
    return dataclasses.replace(recipe, steps=steps, warmup_steps=min(reference.warmup_steps, steps // 10))


def _flops(recipe: DiffusionRecipe, size: int) -> int:
    """Training FLOPs per example of the recipe's denoiser on (c, size, size) inputs."""
    from .pretrained import build_denoiser  # at call time: the factories import this module
    from .train import training_flops

    cond = torch.zeros(1, dtype=torch.int64) if recipe.conditional else None
    return training_flops(build_denoiser(recipe), torch.zeros(1, recipe.unet.in_channels, size, size), cond)


def text_recipe(budget: str | None = None) -> TextDiffusionRecipe:
    """The text-to-image recipe: the class-conditional recipe's UNet and first stage, its UNet started from the
    trained class-conditional model's (``warm_start``); tau_theta four times the UNet's first width, 3 blocks,
    trained from scratch with a lower learning rate than the UNet's recipe (``text_lr``: at 4e-3 tau_theta did not
    learn the captions, chapter 6)."""
    row = budget_table(budget)
    base = diffusion_recipe(row.name, conditional=True)
    unet = dataclasses.replace(base.unet, d_context=4 * base.unet.channels)
    return TextDiffusionRecipe(diffusion=dataclasses.replace(base, steps=row.text_steps, lr=row.text_lr, unet=unet,
                                                             warm_start=base),
                               canvases=row.text_canvases)


def inpainting_recipe(budget: str | None = None) -> InpaintingRecipe:
    """The inpainting recipe (chapter 7): the class-conditional recipe, its UNet reading the latent's c channels of
    the masked image and one of the mask besides z_t (``concat_channels`` = c + 1), fine-tuned for the budget
    table's ``inpaint_steps`` from the class-conditional model (``warm_start``), condition dropout kept so that
    guidance still works."""
    row = budget_table(budget)
    base = diffusion_recipe(row.name, conditional=True)
    unet = dataclasses.replace(base.unet, concat_channels=base.unet.in_channels + 1)
    return InpaintingRecipe(diffusion=dataclasses.replace(base, unet=unet, steps=row.inpaint_steps, warm_start=base))


def superres_recipe(budget: str | None = None) -> SuperResolutionRecipe:
    """The super-resolution recipe (chapter 8): the unconditional recipe, its UNet reading the low-resolution image
    (1 channel, 8x8) beside z_t, fine-tuned for the budget table's ``superres_steps`` from chapter 2's model
    (``warm_start``). The regression baseline (:func:`ldm_core.pretrained.superres_regression`) uses the same
    recipe."""
    row = budget_table(budget)
    base = diffusion_recipe(row.name, conditional=False)
    unet = dataclasses.replace(base.unet, concat_channels=base.autoencoder.config.in_channels)
    return SuperResolutionRecipe(diffusion=dataclasses.replace(base, unet=unet, steps=row.superres_steps,
                                                               warm_start=base))


def flow_recipes(budget: str | None = None) -> dict[str, FlowRecipe]:
    """Appendix B's normalising flows, one of each kind in :data:`FLOW_KINDS`, with the budget table's width and
    steps and the diffusion models' batch size."""
    row = budget_table(budget)
    return {kind: FlowRecipe(kind=kind, width=row.flow_width, steps=row.flow_steps, batch_size=row.batch_size)
            for kind in FLOW_KINDS}


def ddpm_recipe(budget: str | None = None) -> DiffusionRecipe:
    """Appendix B's DDPM: diffusion on pixels with chapter 2's training compute.

    Its UNet is the LDM's, below: the same widths at the latent's resolutions (8x8 and 4x4 at the book budget,
    attention at the lowest), with log2(f) levels on top at 32x32 and 16x16 whose widths halve upwards (the LDM's
    first width / f, times 1, 2, ...), so that pixels reach the latent grid through learned, cheap levels instead
    of the autoencoder. Everything else is chapter 2's unconditional recipe (v-prediction of the same objective,
    the linear DDPM schedule, AdamW, cosine decay, EMA), with its number of steps set for equal training FLOPs,
    as :func:`diffusion_recipe` does for the other spaces.
    """
    latent = diffusion_recipe(budget, conditional=False)
    f = latent.autoencoder.config.f
    levels = f.bit_length() - 1  # log2(f)
    unet = dataclasses.replace(latent.unet, in_channels=latent.autoencoder.config.in_channels,
                               channels=latent.unet.channels // f,
                               channel_mult=tuple(2 ** k for k in range(levels))
                               + tuple(f * m for m in latent.unet.channel_mult))
    return _with_equal_compute(dataclasses.replace(latent, autoencoder=None, unet=unet), latent)
