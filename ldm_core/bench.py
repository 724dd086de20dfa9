"""The benchmark: every number the book quotes, measured one way, written to JSON.

    python -m ldm_core.bench --budget {smoke,book,full} --out PATH

Runs every chapter at the budget (which trains and caches the models; a warm cache is reused), then measures
the cached models, one function per chapter, each through the calls the chapter itself makes
(:mod:`ldm_core.evaluate`) with the sample counts of the budget table (:mod:`ldm_core.recipes`). The keys are
documented in README.md ("The benchmark").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch

from . import __version__, pretrained
from .budget import BUDGETS, get_device
from .cache import cache_dir
from .evaluate import Judge, measure_captions, measure_samples
from .metrics import reconstruction_scores
from .recipes import Budget, autoencoder_study, budget_table, diffusion_recipe
from .train import diffusion_loss
from .unet import UNet

BOOK = Path(__file__).resolve().parents[1] / "book"


def run_chapters(budget: str) -> dict:
    """Execute each chapter in a fresh kernel at ``budget``; returns {notebook stem: seconds}."""
    import nbformat
    from nbclient import NotebookClient

    chapters = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
    if not chapters:
        raise FileNotFoundError(f"no chapters in {BOOK}; run the benchmark from a clone of the repository")
    os.environ["LDM_BUDGET"] = budget  # the kernels inherit it
    seconds = {}
    for path in chapters:
        notebook = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        NotebookClient(notebook, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(BOOK)}}).execute()
        seconds[path.stem] = round(time.perf_counter() - start, 1)
        print(f"{path.stem}: {seconds[path.stem]} s", flush=True)
    return seconds


def train_ms_per_step(unet_config, shape: tuple, batch_size: int, steps: int = 5) -> float:
    """Mean wall time (ms) of one training step (forward, backward, AdamW) of a fresh UNet on random data."""
    device = get_device()
    unet = UNet(unet_config).to(device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    alpha_bar = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    z0 = torch.randn(batch_size, *shape, device=device)
    times = []
    for i in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        loss = diffusion_loss(lambda z, t, c: unet(z, t), z0, alpha_bar)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * sum(times[2:]) / steps


def measure_autoencoders(row: Budget, judge: Judge) -> dict:
    """Chapter 1: every autoencoder of the study on the test digits; the book's (kl_f4) with its latent scaling."""
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
    """Chapter 2: the unconditional model on latents and the same UNet on pixels, trained with equal FLOPs."""
    ldm = {}
    for space, suffix in [("kl_f4", "latent_f4"), ("pixel", "pixel")]:
        model, run = pretrained.latent_diffusion(row.name, conditional=False, space=space)
        m = measure_samples(model, judge, row.samples, sampler="ddim", steps=50)
        key = "fid" if space == "kl_f4" else "fid_pixel"
        ldm[key], ldm[f"{key}_se"], ldm[f"samples_per_s_{suffix}"] = m["fid"], m["fid_se"], m["per_s"]
        if space == "kl_f4":
            ldm["kid"] = m["kid"]
        ldm[f"train_steps_{suffix}"], ldm[f"train_seconds_{suffix}"] = run.recipe.steps, run.history["seconds"]
    # cost per training step: the same UNet (no cross-attention) on latents and on pixels, same batch size
    recipe = diffusion_recipe(row.name, conditional=False)
    f = recipe.autoencoder.config.f
    shape = (recipe.unet.in_channels, 32 // f, 32 // f)
    ldm["train_ms_per_step_latent_f4"] = train_ms_per_step(recipe.unet, shape, recipe.batch_size)
    pixel_unet = dataclasses.replace(recipe.unet, in_channels=1)
    ldm["train_ms_per_step_pixel"] = train_ms_per_step(pixel_unet, (1, 32, 32), recipe.batch_size)
    return ldm


def measure_conditional(row: Budget, judge: Judge) -> dict:
    """Chapter 3 (guidance 1 and 3, ``samples`` each) and chapter 4 (DDIM 50 against DDPM 1000, guidance 1,
    ``sweep_samples`` each): the class-conditional model."""
    model, _ = pretrained.latent_diffusion(row.name, conditional=True)
    ldm = {}
    for scale in (1, 3):
        m = measure_samples(model, judge, row.samples, sampler="ddim", steps=50, guidance_scale=float(scale))
        ldm[f"cond_accuracy_guidance_{scale}"] = m["accuracy"]
    ddim = measure_samples(model, judge, row.sweep_samples, sampler="ddim", steps=50)
    ddpm = measure_samples(model, judge, row.sweep_samples, sampler="ddpm", steps=model.T)
    ldm["fid_ddim_50"], ldm["fid_ddim_50_se"], ldm["ddim_50_samples_per_s"] = ddim["fid"], ddim["fid_se"], ddim["per_s"]
    ldm["fid_ddpm_1000"], ldm["fid_ddpm_1000_se"] = ddpm["fid"], ddpm["fid_se"]
    ldm["ddpm_1000_samples_per_s"], ldm["cond_accuracy_ddpm_1000"] = ddpm["per_s"], ddpm["accuracy"]
    return ldm


def measure_text(row: Budget, judge: Judge) -> dict:
    """Chapter 5: captions of seen and of held-out digit pairs, guidance 3, DDIM 50, ``samples`` each."""
    text_ldm, _ = pretrained.text_diffusion(row.name)
    result = {"samples": row.samples}
    for pairs, key in [("seen", "both_correct_seen"), ("held_out", "both_correct_heldout")]:
        result[key] = measure_captions(text_ldm, judge, pairs, row.samples, guidance_scale=3.0)["both_correct"]
    return result


def measure(budget: str) -> dict:
    """Every model-quality and cost number of the benchmark, from the cached models of ``budget``."""
    row = budget_table(budget)
    judge = Judge(pretrained.classifier(budget).model, row.kid_subset, row.bootstrap)
    floor, floor_se = judge.floor(row.samples)
    result = {"classifier_test_accuracy": judge.accuracy(judge.x_test, judge.y_test),
              "fid_floor_train_vs_test": floor, "fid_floor_train_vs_test_se": floor_se,
              "autoencoder": measure_autoencoders(row, judge)}
    result["ldm"] = {**measure_unconditional(row, judge), **measure_conditional(row, judge),
                     "samples": row.samples, "sweep_samples": row.sweep_samples}
    result["text2img"] = measure_text(row, judge)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=BUDGETS, required=True)
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    parser.add_argument("--skip-chapters", action="store_true", help="measure the cached models only")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    start = time.perf_counter()
    result = {"budget": args.budget, "device": str(get_device()), "torch_version": torch.__version__,
              "ldm_core_version": __version__, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
              f"{platform.python_implementation()} {platform.python_version()}"}
    # with an empty cache the chapter times include training every model; with a warm one, only loading them
    result["cache_was_empty"] = not any(cache_dir().glob("*.pt"))
    result["chapter_seconds"] = {} if args.skip_chapters else run_chapters(args.budget)
    result.update(measure(args.budget))
    result["bench_seconds"] = round(time.perf_counter() - start, 1)
    rss_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    result["peak_rss_mb"] = round(rss_kb / 1024, 1)  # Linux reports kB
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
