"""The benchmark: every number the book quotes, measured one way, written to JSON.

    python -m ldm_core.bench --budget {smoke,book,full} --out PATH
    python -m ldm_core.bench --budget book --study --out bench/study-book.json
    python -m ldm_core.bench --budget book --tradeoff --out bench/tradeoff-book.json

The second form is the study of quality per CPU-second (chapter 2): the class-conditional model trained with one
change at a time from the book's recipe, measured along each run, and the cost of a training step under each
CPU option (:func:`study`, :func:`throughput`). The third is the compression trade-off (chapter 3, paper Sec. 4.1):
the unconditional model on pixels and in the latent spaces f = 2, 4, 8, measured along each run (:func:`tradeoff`).

Runs every chapter at the budget (which trains and caches the models; a warm cache is reused), then measures
the cached models, one function per chapter, each through the calls the chapter itself makes
(:mod:`ldm_core.evaluate`) with the sample counts of the budget table (:mod:`ldm_core.recipes`). The keys are
documented in README.md ("The benchmark").
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import re
import resource
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from . import __version__, pretrained
from .budget import BUDGETS, get_device
from .cache import cache_dir, check_writable, write_text_atomic
from .evaluate import (INPAINTING_METHODS, SUPERRES_METHODS, Judge, completion_diversity, generative_table,
                       inpainting_inputs, inpainting_table, measure_captions, measure_samples, naive_table,
                       superres_table)
from .metrics import reconstruction_scores
from .recipes import Budget, DiffusionRecipe, autoencoder_study, budget_table, diffusion_recipe
from .superres import DEGRADATIONS
from .train import adamw, diffusion_loss

BOOK = Path(__file__).resolve().parents[1] / "book"


def run_chapters(budget: str, keep: Path | None = None,
                 save: Callable[[dict, dict], None] = lambda seconds, errors: None) -> tuple[dict, dict]:
    """Execute each chapter in a fresh kernel at ``budget``, in order, sharing the artifact cache.

    Args:
        keep: if set, write each executed notebook there (outputs included), to read what the chapter printed.
        save: called with (seconds, errors) so far after each chapter.

    Returns:
        ({notebook stem: seconds}, {notebook stem: the end of the error of a chapter that failed}); a failed
        chapter does not stop the others.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    chapters = sorted(BOOK.glob("[0-9][0-9]_*.ipynb")) + sorted(BOOK.glob("appendix_*.ipynb"))  # the book's order
    if not chapters:
        raise FileNotFoundError(f"no chapters in {BOOK}; run the benchmark from a clone of the repository")
    os.environ["LDM_BUDGET"] = budget  # the kernels inherit it
    seconds, errors = {}, {}
    for path in chapters:
        notebook = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        try:
            NotebookClient(notebook, timeout=3600, kernel_name="python3",
                           resources={"metadata": {"path": str(BOOK)}}).execute()
        except CellExecutionError as error:
            errors[path.stem] = re.sub(r"\x1b\[[0-9;]*m", "", str(error))[-2000:]  # without the terminal's colours
        seconds[path.stem] = round(time.perf_counter() - start, 1)
        print(f"{path.stem}: {seconds[path.stem]} s{' FAILED' if path.stem in errors else ''}", flush=True)
        save(seconds, errors)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            nbformat.write(notebook, keep / path.name)
    return seconds, errors


def train_ms_per_step(model: nn.Module, z0: torch.Tensor, cond=None, steps: int = 10, bf16: bool = False,
                      channels_last: bool = False) -> float:
    """Mean wall time (ms) of one training step (forward, backward, AdamW) of ``model`` on the batch ``z0``, after
    two warm-up steps; ``bf16``: the forward pass under bf16 autocast; ``channels_last``: model and input in that
    memory format."""
    device = z0.device
    if channels_last:
        model, z0 = model.to(memory_format=torch.channels_last), z0.contiguous(memory_format=torch.channels_last)
    optimizer = adamw(model.parameters(), 1e-4)
    alpha_bar = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion_loss(model, z0, alpha_bar, cond)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * sum(times[2:]) / steps


def _fresh_batch(recipe: DiffusionRecipe) -> tuple[nn.Module, torch.Tensor, torch.Tensor | None]:
    """A fresh denoiser of the recipe and a random batch of its inputs (latents, labels) on the device."""
    device = get_device()
    f = recipe.autoencoder.config.f if recipe.autoencoder is not None else 1
    z0 = torch.randn(recipe.batch_size, recipe.unet.in_channels, 32 // f, 32 // f, device=device)
    cond = torch.arange(recipe.batch_size, device=device) % 10 if recipe.conditional else None
    return pretrained.build_denoiser(recipe).to(device), z0, cond


def measure_autoencoders(row: Budget, judge: Judge) -> dict:
    """Chapters 1 and 3: every autoencoder of the study on the test digits; the book's (kl_f4) with its latent scaling."""
    result = {}
    for name, recipe in autoencoder_study(row.name).items():
        model = pretrained.autoencoder(recipe=recipe).model
        result[name] = reconstruction_scores(model.reconstruct(judge.x_test), judge.x_test, judge.classifier)
        if name == "kl_f4":
            with torch.no_grad():
                z = model.encode(judge.x_test.to(get_device())).sample(torch.Generator(get_device()).manual_seed(0))
            result[name].update(scale_factor=model.scale_factor.item(),
                                scaled_latent_std=(model.scale_factor * z).std().item())
    return result


def measure_unconditional(row: Budget, judge: Judge) -> dict:
    """Chapter 2: the unconditional latent model (``samples``); chapter 3: its race against the same UNet on pixels,
    trained with equal FLOPs (``sweep_samples`` each: the pixel model samples many times slower)."""
    ldm = {}
    for space, suffix in [("kl_f4", "latent_f4"), ("pixel", "pixel")]:
        model, run = pretrained.latent_diffusion(row.name, conditional=False, space=space)
        if space == "kl_f4":
            m = measure_samples(model, judge, row.samples, sampler="ddim", steps=50)
            ldm["fid"], ldm["fid_se"], ldm["kid"] = m["fid"], m["fid_se"], m["kid"]
        m = measure_samples(model, judge, row.sweep_samples, sampler="ddim", steps=50)
        ldm[f"race_fid_{suffix}"], ldm[f"race_fid_{suffix}_se"] = m["fid"], m["fid_se"]
        ldm[f"samples_per_s_{suffix}"] = m["per_s"]
        ldm[f"train_steps_{suffix}"], ldm[f"train_seconds_{suffix}"] = run.recipe.steps, run.history["seconds"]
    # cost per training step: the same UNet on latents and on pixels, same batch size, fresh weights
    for space, suffix in [("kl_f4", "latent_f4"), ("pixel", "pixel")]:
        ldm[f"train_ms_per_step_{suffix}"] = train_ms_per_step(*_fresh_batch(diffusion_recipe(row.name, False, space)))
    return ldm


def measure_conditional(row: Budget, judge: Judge) -> dict:
    """Chapter 4 (guidance 1 and 3, and guidance 1 with DDIM's eta = 1) and chapter 5 (DDIM 50 against DDPM 1000,
    guidance 1): the class-conditional model, ``samples`` each."""
    model, _ = pretrained.latent_diffusion(row.name, conditional=True)
    ldm, by_scale = {}, {}
    for scale in (1, 3):
        by_scale[scale] = measure_samples(model, judge, row.samples, sampler="ddim", steps=50,
                                          guidance_scale=float(scale))
        ldm[f"cond_accuracy_guidance_{scale}"] = by_scale[scale]["accuracy"]
    m = measure_samples(model, judge, row.samples, sampler="ddim", steps=50, eta=1.0)  # fresh noise at each step
    ldm["cond_accuracy_guidance_1_eta_1"] = m["accuracy"]
    ddim = by_scale[1]  # chapter 5's DDIM 50 with eta 0 is chapter 4's guidance 1: the same call
    ddpm = measure_samples(model, judge, row.samples, sampler="ddpm", steps=model.T)
    ldm["fid_ddim_50"], ldm["fid_ddim_50_se"], ldm["ddim_50_samples_per_s"] = ddim["fid"], ddim["fid_se"], ddim["per_s"]
    ldm["fid_ddpm_1000"], ldm["fid_ddpm_1000_se"] = ddpm["fid"], ddpm["fid_se"]
    ldm["ddpm_1000_samples_per_s"], ldm["cond_accuracy_ddpm_1000"] = ddpm["per_s"], ddpm["accuracy"]
    return ldm


def measure_text(row: Budget, judge: Judge) -> dict:
    """Chapter 6: captions of seen and of held-out digit pairs, guidance 3, DDIM 50, ``samples`` each."""
    text_ldm, _ = pretrained.text_diffusion(row.name)
    result = {"samples": row.samples}
    for pairs, key in [("seen", "both_correct_seen"), ("held_out", "both_correct_heldout")]:
        result[key] = measure_captions(text_ldm, judge, pairs, row.samples, guidance_scale=3.0)["both_correct"]
    return result


def measure_inpainting(row: Budget, judge: Judge) -> dict:
    """Chapter 7: every inpainting method on ``samples`` test digits per mask kind, with and without the label
    (:func:`~ldm_core.evaluate.inpainting_table`), and the diversity of 8 completions of ``samples`` / 8 half-masked
    digits (:func:`~ldm_core.evaluate.completion_diversity`)."""
    conditional, _ = pretrained.latent_diffusion(row.name, conditional=True)
    inpainting, _ = pretrained.inpainting_diffusion(row.name)
    models = {"concat": inpainting, "blended": conditional, "repaint": conditional}
    numbers = ("accuracy", "hole_mse", "seam", "fid", "fid_se")
    table = inpainting_table(models, judge, row.samples)
    fid_floor = table.pop("fid_floor")
    result = {kind: {method: {flag: {key: m[key] for key in numbers} for flag, m in by_flag.items()}
                     for method, by_flag in by_method.items()} for kind, by_method in table.items()}
    result["hole_fraction"] = {kind: by_method["concat"]["with_label"]["hole"] for kind, by_method in table.items()}
    result["fid_floor"] = fid_floor
    x, labels, mask = inpainting_inputs(max(row.samples // 8, 1), "half", seed=5)
    result["diversity_half"] = {method: {key: value for key, value in completion_diversity(
        models[method], judge, x, labels, mask, k=8, **settings).items() if key != "x"}
        for method, settings in INPAINTING_METHODS.items()}
    result["samples"] = row.samples
    return result


def measure_superres(row: Budget, judge: Judge) -> dict:
    """Chapter 8: bicubic, regression and diffusion from 8x8 to 32x32 on ``samples`` test digits, for inputs made
    by each degradation, and the autoencoder's reconstructions of the originals, a mark neither latent method can be
    expected to pass by much (:func:`~ldm_core.evaluate.superres_table`)."""
    models = {"regression": pretrained.superres_regression(row.name)[0],
              "diffusion": pretrained.superres_diffusion(row.name)[0]}
    table = superres_table(models, judge, row.samples)

    def numbers(measured: dict) -> dict:
        return {key: measured[key] for key in ("psnr", "ssim", "fid", "fid_se", "accuracy", "consistency")}

    result = {kind: {method: numbers(table[kind][method]) for method in SUPERRES_METHODS} for kind in DEGRADATIONS}
    return {**result, "autoencoder": numbers(table["autoencoder"]), "samples": row.samples}


def measure_naive(row: Budget, judge: Judge) -> dict:
    """Appendix A: every row of the naive latent diffusion's repair (:func:`~ldm_core.evaluate.naive_table`),
    ``samples`` generated digits a row, without its images and models (its naive models train again: seconds)."""
    table = naive_table(judge, row.name)
    rows = {name: {key: value for key, value in numbers.items() if key != "x"} for name, numbers in table["rows"].items()}
    return {**rows, "alpha_bar_0": table["alpha_bar_0"], "samples": table["samples"]}


def measure_generative(row: Budget, judge: Judge) -> dict:
    """Appendix B: every model of :func:`~ldm_core.evaluate.generative_table` (flows, pixel DDPM and its DDIM, the
    LDM), ``generative_samples`` samples and test digits each, without images and loss histories."""
    table = generative_table(judge, row.name)
    rows = {name: {key: value for key, value in numbers.items() if key not in ("x", "loss")}
            for name, numbers in table["rows"].items()}
    return {**rows, "ddpm_bpd_parts": table["bpd_parts"], "samples": table["samples"]}


def measure(budget: str, result: dict, save: Callable[[dict], None] = lambda result: None) -> dict:
    """Every model-quality and cost number of the benchmark, from the cached models of ``budget``, added to
    ``result`` part by part, calling ``save(result)`` after each part (so a failure later keeps the earlier ones)."""
    row = budget_table(budget)
    judge = Judge(pretrained.classifier(budget).model, row.kid_subset, row.bootstrap)
    floor, floor_se = judge.floor(row.samples)
    sweep_floor, sweep_floor_se = judge.floor(row.sweep_samples)
    result.update({"classifier_test_accuracy": judge.accuracy(judge.x_test, judge.y_test),
                   "fid_floor_train_vs_test": floor, "fid_floor_train_vs_test_se": floor_se,
                   "fid_floor_sweep_samples": sweep_floor, "fid_floor_sweep_samples_se": sweep_floor_se})
    parts = [("autoencoder", lambda: measure_autoencoders(row, judge)),
             ("ldm", lambda: {**measure_unconditional(row, judge), **measure_conditional(row, judge),
                              "samples": row.samples, "sweep_samples": row.sweep_samples}),
             ("text2img", lambda: measure_text(row, judge)),
             ("inpaint", lambda: measure_inpainting(row, judge)),
             ("superres", lambda: measure_superres(row, judge)),
             ("naive", lambda: measure_naive(row, judge)),
             ("generative", lambda: measure_generative(row, judge))]
    save(result)
    for key, measure_part in parts:
        result[key] = measure_part()
        save(result)
    return result


# The study's runs, each as its change from the book's recipe (``chosen``: v-prediction with plain v-MSE, AdamW
# at 4e-3 after 100 warm-up steps with a cosine decay, EMA with warm-up, linear schedule, batch 64, width 32).
# ``before`` is version 0.3.0's recipe; ``eps_lr_2e-3`` the first calibration of issue 15 (eps, Min-SNR-5, 2e-3),
# from which the first round changed one thing at a time; the second round changed lr, weighting, batch and
# schedule of v-prediction; ``v_logit_normal`` draws t from the logit-normal (train.timestep_probabilities).
# A run with another batch size takes as many steps as see the same number of examples.
_EPS = dict(prediction="eps", lr=2e-3, min_snr_gamma=5.0)
_MIN_SNR = dict(min_snr_gamma=5.0)
STUDY = {
    "chosen": {},
    "before": dict(prediction="eps", lr=5e-4, warmup_steps=0, lr_decay="constant", min_snr_gamma=None,
                   ema_warmup=False),
    "eps_lr_2e-3": _EPS,
    "eps_uniform_weighting": {**_EPS, "min_snr_gamma": None},
    "eps_lr_1e-3": {**_EPS, "lr": 1e-3},
    "eps_lr_4e-3": {**_EPS, "lr": 4e-3},
    "eps_batch_32": {**_EPS, "batch_size": 32},
    "eps_batch_128": {**_EPS, "batch_size": 128},
    "eps_width_48": {**_EPS, "width": 48},
    "eps_schedule_cosine": {**_EPS, "schedule": "cosine"},
    "eps_schedule_scaled_linear": {**_EPS, "schedule": "scaled_linear"},
    "v_min_snr_5": _MIN_SNR,
    "v_min_snr_5_lr_2e-3": {**_MIN_SNR, "lr": 2e-3},
    "v_min_snr_5_batch_32": {**_MIN_SNR, "batch_size": 32},
    "v_min_snr_5_schedule_scaled_linear": {**_MIN_SNR, "schedule": "scaled_linear"},
    "v_logit_normal": dict(t_sampling="logit_normal"),
}


def study_recipe(budget: str, change: dict) -> DiffusionRecipe:
    """The class-conditional recipe with one change of :data:`STUDY` (``width``: the UNet's first width and the
    label token's), trained from scratch for the budget table's ``study_steps`` at the book's batch size: a run
    with another batch size takes as many steps as see the same number of examples."""
    row = budget_table(budget)
    base = dataclasses.replace(diffusion_recipe(budget, conditional=True), steps=row.study_steps, warm_start=None)
    change = dict(change)
    if "width" in change:
        width = change.pop("width")
        base = dataclasses.replace(base, unet=dataclasses.replace(base.unet, channels=width, d_context=width))
    recipe = dataclasses.replace(base, **change)
    return dataclasses.replace(recipe, steps=round(base.steps * base.batch_size / recipe.batch_size))  # validated


def study_record(recipe: DiffusionRecipe) -> dict:
    """The fields of a study run's recipe that the study varies, as JSON (the first stage is the book's)."""
    fields = ("steps", "batch_size", "lr", "warmup_steps", "lr_decay", "ema_decay", "ema_warmup", "schedule",
              "prediction", "min_snr_gamma", "t_sampling")
    return {"unet": dataclasses.asdict(recipe.unet), **{name: getattr(recipe, name) for name in fields}}


def study(budget: str, names: list[str] | None = None,
          save: Callable[[dict], None] = lambda runs: None) -> dict:
    """Quality per CPU-second: for each run of :data:`STUDY` (or those named), train the class-conditional model
    from scratch (not cached) and measure it at four points along the run: conditional accuracy and FID of
    ``sweep_samples`` samples (DDIM 50, guidance 1, the judge of every chapter) against training seconds.

    Returns:
        {name: dict(change, recipe (:func:`study_record`), steps, batch_size, seconds,
        curve=[dict(step, seconds, accuracy, fid, fid_se)])}, also passed to ``save`` after each run.
    """
    from .data import load_mnist
    from .train import fit_diffusion

    row = budget_table(budget)
    judge = Judge(pretrained.classifier(budget).model, row.kid_subset, row.bootstrap)
    device = get_device()
    first_stage = pretrained.autoencoder(budget).model.to(device)
    x, y = load_mnist("train")
    result = {}
    for name in list(STUDY) if names is None else names:
        recipe = study_recipe(budget, STUDY[name])
        model = pretrained.build_denoiser(recipe).to(device)
        history = fit_diffusion(model, first_stage, x, y, recipe, desc=f"study: {name}",
                                monitor=_quality_monitor(first_stage, recipe, judge, row.sweep_samples),
                                monitor_every=-(-recipe.steps // 4))  # four points: 3 multiples and the last
        result[name] = {"change": STUDY[name], "recipe": study_record(recipe), "steps": recipe.steps,
                        "batch_size": recipe.batch_size, "seconds": history["seconds"], "curve": history["monitor"]}
        last = history["monitor"][-1]
        print(f"{name}: {recipe.steps} steps in {history['seconds']:.0f} s, accuracy {last['accuracy']:.3f}, "
              f"FID {last['fid']:.1f} +- {last['fid_se']:.1f}", flush=True)
        save(result)
    return result


def _quality_monitor(first_stage: nn.Module, recipe: DiffusionRecipe, judge: Judge, n: int) -> Callable:
    """The study's and the trade-off's measurement along a run: FID (and, for a class-conditional model,
    accuracy) of n samples, DDIM 50, guidance 1, of the denoiser being trained (its EMA)."""
    from .pipeline import LatentDiffusion

    device = get_device()

    def monitor(denoiser: nn.Module) -> dict:
        ldm = LatentDiffusion(first_stage, denoiser, recipe.alpha_bar().to(device), prediction=recipe.prediction)
        m = measure_samples(ldm, judge, n, sampler="ddim", steps=50)
        return {key: m[key] for key in ("accuracy", "fid", "fid_se") if key in m}

    return monitor


# The compression trade-off (chapter 3; paper Sec. 4.1, Fig. 6): the unconditional model of chapter 2 on pixels and
# on the latents of the f = 2, 4, 8 autoencoders of chapter 3. Each latent run gets the training FLOPs of the book's
# f = 4 run (:func:`~ldm_core.recipes.diffusion_recipe` sets its steps); the pixel run, TRADEOFF_PIXEL_COMPUTE times
# as much, so that its curve gets far enough to compare with. Each is measured at these fractions of its steps.
TRADEOFF_PIXEL_COMPUTE = 3
TRADEOFF_POINTS = {"latent": (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1), "pixel": (1 / 3, 2 / 3, 1)}


def tradeoff_recipe(budget: str, space: str) -> DiffusionRecipe:
    """The trade-off's run in ``space`` (one of :data:`~ldm_core.recipes.SPACES`): chapter 2's unconditional recipe,
    the pixel one TRADEOFF_PIXEL_COMPUTE times as long (its warm-up a tenth of its steps, at most the table's)."""
    recipe = diffusion_recipe(budget, conditional=False, space=space)
    if space != "pixel":
        return recipe
    steps = recipe.steps * TRADEOFF_PIXEL_COMPUTE
    return dataclasses.replace(recipe, steps=steps,
                               warmup_steps=min(budget_table(budget).warmup_steps, steps // 10))


def tradeoff(budget: str, save: Callable[[dict], None] = lambda runs: None, judge: Judge | None = None) -> dict:
    """Quality against training seconds for the unconditional model in every space: FID of ``sweep_samples``
    samples (DDIM 50) at the fractions :data:`TRADEOFF_POINTS` of each run (checkpoints along one run, from scratch,
    not cached), with the judge of every chapter.

    Returns:
        {space: dict(f, steps, seconds, flops_per_example, curve=[dict(step, seconds, fid, fid_se)])} for the spaces
        pixel, kl_f2, kl_f4, kl_f8, also passed to ``save`` after each run. ``judge`` defaults to the budget's.
    """
    from .autoencoder import PixelSpace
    from .data import load_mnist
    from .recipes import _flops
    from .train import fit_diffusion

    row = budget_table(budget)
    judge = judge or Judge(pretrained.classifier(budget).model, row.kid_subset, row.bootstrap)
    device = get_device()
    x, y = load_mnist("train")
    result = {}
    for space in ("pixel", "kl_f2", "kl_f4", "kl_f8"):
        recipe = tradeoff_recipe(budget, space)
        first_stage = (PixelSpace() if recipe.autoencoder is None else
                       pretrained.autoencoder(recipe=recipe.autoencoder).model).to(device)
        f = 1 if recipe.autoencoder is None else recipe.autoencoder.config.f
        points = TRADEOFF_POINTS["pixel" if space == "pixel" else "latent"]
        model = pretrained.build_denoiser(recipe).to(device)
        history = fit_diffusion(model, first_stage, x, y, recipe, desc=f"trade-off: {space}",
                                monitor=_quality_monitor(first_stage, recipe, judge, row.sweep_samples),
                                monitor_every={max(1, round(share * recipe.steps)) for share in points})
        result[space] = {"f": f, "steps": recipe.steps, "seconds": history["seconds"],
                         "flops_per_example": _flops(recipe, 32 // f), "curve": history["monitor"]}
        last = history["monitor"][-1]
        print(f"{space}: {recipe.steps} steps in {history['seconds']:.0f} s, FID {last['fid']:.1f} "
              f"+- {last['fid_se']:.1f}", flush=True)
        save(result)
    return result


def _earlier_runs(path: Path, budget: str, names: list[str] | None) -> dict:
    """With ``--runs``, the other runs of an earlier study at ``path`` that are still valid: same budget and
    version, still in :data:`STUDY`, with the recipe the code makes now. Without ``--runs``, nothing."""
    if names is None or not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    if earlier.get("budget") != budget or earlier.get("ldm_core_version") != __version__:
        return {}
    return {name: run for name, run in earlier.get("study", {}).items()
            if name in STUDY and name not in names
            and run.get("recipe") == json.loads(json.dumps(study_record(study_recipe(budget, STUDY[name]))))}


def throughput(budget: str, repeats: int = 3) -> dict:
    """ms per training step of the class-conditional denoiser at the budget's batch size under each CPU option:
    fp32 with torch's default threads (the book's), with one thread, bf16 autocast, channels-last memory, and
    ``torch.compile``. The options take turns, ``repeats`` rounds of 10 timed steps each (a fresh model per
    round), so that a slow spell of the machine does not fall on one option alone.

    Returns:
        dict(threads_default, and per option dict(median, min, max) in ms, or a string saying why it failed).
    """
    recipe = diffusion_recipe(budget, conditional=True)
    threads = torch.get_num_threads()

    def one_thread(model, z0, cond):
        torch.set_num_threads(1)
        try:
            return train_ms_per_step(model, z0, cond)
        finally:
            torch.set_num_threads(threads)

    options = {"fp32": train_ms_per_step, "fp32_one_thread": one_thread,
               "bf16_autocast": functools.partial(train_ms_per_step, bf16=True),
               "channels_last": functools.partial(train_ms_per_step, channels_last=True),
               "compile": lambda model, z0, cond: train_ms_per_step(torch.compile(model), z0, cond)}
    times: dict[str, list | str] = {name: [] for name in options}
    for _ in range(repeats):
        for name, measure_one in options.items():
            if isinstance(times[name], str):
                continue
            try:
                times[name].append(measure_one(*_fresh_batch(recipe)))
            except Exception as error:  # a missing compiler, an unsupported platform: a fact about this machine
                times[name] = f"failed: {type(error).__name__}: {str(error)[:200]}"
    result = {"threads_default": threads}
    for name, values in times.items():
        result[name] = values if isinstance(values, str) else {
            "median": statistics.median(values), "min": min(values), "max": max(values)}
    return result


def partial_path(out: Path) -> Path:
    """Where the benchmark keeps what it has measured so far, until ``out`` is written at the end."""
    return out.with_name(out.name + ".partial")


def machine() -> str:
    """The machine in words: architecture, CPU model (where the OS names it), the SIMD level PyTorch's CPU kernels
    use, CPU count, Python. They are part of a result's identity: the same seed can train other models on another
    CPU (its kernels round differently), and then the quality numbers move as they would with another seed."""
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:  # Linux: platform.processor() gives the architecture only
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{platform.machine()}, {cpu or 'CPU model unknown'}, {torch.backends.cpu.get_cpu_capability()}, "
            f"{os.cpu_count()} CPUs, "
            f"{platform.python_implementation()} {platform.python_version()}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=BUDGETS, required=True)
    parser.add_argument("--out", type=Path, required=True,
                        help="where to write the JSON (what is measured so far goes to OUT.partial meanwhile)")
    parser.add_argument("--skip-chapters", action="store_true", help="measure the cached models only")
    parser.add_argument("--keep", type=Path, help="write the executed chapters to this folder")
    parser.add_argument("--study", action="store_true", help="run the study of quality per CPU-second instead")
    parser.add_argument("--tradeoff", action="store_true",
                        help="run the compression trade-off instead (pixels and f = 2, 4, 8 along training)")
    parser.add_argument("--runs", nargs="*", choices=list(STUDY),
                        help="with --study: only these runs (none: the throughput only), kept beside the still valid "
                             "runs of an earlier --out")
    args = parser.parse_args(argv)
    if (args.study or args.tradeoff) and (args.skip_chapters or args.keep):
        parser.error("--skip-chapters and --keep are for the chapters' run, not --study or --tradeoff")
    if args.study and args.tradeoff:
        parser.error("--study and --tradeoff are two runs: give one")
    if args.out.exists() and not args.out.is_file():
        parser.error(f"--out {args.out} exists and is not a file; give the path of a JSON file")
    try:  # before an hour of measuring, not after it
        check_writable(args.out.parent.resolve(), "the folder of --out")
    except OSError as error:
        parser.error(str(error))
    partial = partial_path(args.out)

    def save(result: dict) -> None:
        write_text_atomic(json.dumps({**result, "partial": True}, indent=2) + "\n", partial)

    torch.manual_seed(0)
    start = time.perf_counter()
    result = {"budget": args.budget, "device": str(get_device()), "torch_version": torch.__version__,
              "ldm_core_version": __version__, "machine": machine()}
    save(result)
    if args.study:
        earlier = _earlier_runs(args.out, args.budget, args.runs)
        result["throughput_ms_per_step"] = throughput(args.budget)
        result["study"] = earlier
        save(result)
        result["study"] = {**earlier, **study(args.budget, args.runs,
                                              lambda runs: save({**result, "study": {**earlier, **runs}}))}
    elif args.tradeoff:
        row = budget_table(args.budget)
        judge = Judge(pretrained.classifier(args.budget).model, row.kid_subset, row.bootstrap)
        result["samples"] = row.sweep_samples
        result["fid_floor"], result["fid_floor_se"] = judge.floor(row.sweep_samples)
        result["tradeoff"] = tradeoff(args.budget, lambda runs: save({**result, "tradeoff": runs}), judge)
    else:
        # with an empty cache the chapter times include training every model; with a warm one, only loading them
        result["cache_was_empty"] = not any(p for p in cache_dir().glob("*.pt") if ".partial" not in p.name
                                            and ".set-aside-" not in p.name)
        result["chapter_seconds"], errors = ({}, {}) if args.skip_chapters else run_chapters(
            args.budget, args.keep, lambda seconds, errors: save({**result, "chapter_seconds": seconds,
                                                                  "chapter_errors": errors}))
        if errors:
            result["chapter_errors"] = errors
        measure(args.budget, result, save)
    result["bench_seconds"] = round(time.perf_counter() - start, 1)
    rss_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    result["peak_rss_mb"] = round(rss_kb / 1024, 1)  # Linux reports kB
    text = json.dumps(result, indent=2) + "\n"
    print(text, flush=True)  # first: if the write below fails, the result is still on the screen
    write_text_atomic(text, args.out)
    partial.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
