"""The benchmark: every number the book quotes, measured one way, written to JSON.

    python -m ldm_core.bench --budget {smoke,book,full} --out PATH

Runs every chapter at the budget (which trains and caches the models; a warm cache is reused), then measures
the cached models. The keys are documented in README.md ("The benchmark").
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
from .data import load_mnist, random_captions
from .metrics import accuracy, both_digits_correct, features, fid, kid, reconstruction_scores
from .train import diffusion_loss
from .unet import UNet

BOOK = Path(__file__).resolve().parents[1] / "book"
# samples per generated set: FID grows as N shrinks, so all generated sets use the same N; the floor and rFID
# compare 1,000-image sets (training digits, reconstructions) with the 1,000 test digits
SAMPLES = {"smoke": 30, "book": 500, "full": 1000}
KID_SUBSET = {"smoke": 30, "book": 250, "full": 500}


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


def timed_samples(ldm, labels: torch.Tensor | None = None, n: int | None = None, **kwargs) -> tuple[torch.Tensor, float]:
    """Samples in batches of 100 (for ``labels``, or ``n`` unconditional ones) in [-1, 1], and samples per second."""
    generator = torch.Generator().manual_seed(0)
    batches = labels.split(100) if labels is not None else torch.arange(n).split(100)
    start = time.perf_counter()
    x = torch.cat([ldm.sample(batch, generator=generator, **kwargs) if labels is not None
                   else ldm.sample(n=len(batch), generator=generator, **kwargs) for batch in batches])
    return x.clamp(-1, 1), len(x) / (time.perf_counter() - start)


def measure(budget: str) -> dict:
    """Every model-quality and cost number of the benchmark, from the cached models of ``budget``."""
    n = SAMPLES[budget]
    x_train, _ = load_mnist("train")
    x_test, y_test = load_mnist("test")
    judge = pretrained.classifier(budget).model
    test_features = features(judge, x_test)
    subset = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))[:len(x_test)]

    def fid_kid(x: torch.Tensor) -> tuple[float, float]:
        f = features(judge, x)
        return fid(f, test_features), kid(f, test_features, subset_size=min(KID_SUBSET[budget], len(f)))

    result = {"classifier_test_accuracy": accuracy(judge, x_test, y_test),
              "fid_floor_train_vs_test": fid(features(judge, x_train[subset]), test_features)}

    # chapter 1's autoencoders on the test digits; the book's one (kl_f4) also reports its latent scaling
    result["autoencoder"], models = {}, {}
    for name, recipe in pretrained.autoencoder_study(budget).items():
        models[name] = pretrained.autoencoder(recipe=recipe).model
        result["autoencoder"][name] = reconstruction_scores(models[name].reconstruct(x_test), x_test, judge)
    ae = models["kl_f4"]  # the book's autoencoder
    with torch.no_grad():
        z = ae.encode(x_test.to(get_device())).sample(torch.Generator(get_device()).manual_seed(0))
    result["autoencoder"][f"kl_f{ae.config.f}"].update(scale_factor=ae.scale_factor.item(),
                                                        scaled_latent_std=(ae.scale_factor * z).std().item())

    conditional, artifact = pretrained.latent_diffusion(budget, conditional=True)
    labels = torch.arange(n) % 10
    ldm = {}
    # chapter 2: the unconditional model on latents and the same UNet on pixels, trained with equal FLOPs
    for space, suffix in [("kl_f4", f"latent_f{ae.config.f}"), ("pixel", "pixel")]:
        model, run = pretrained.latent_diffusion(budget, conditional=False, space=space)
        x, ldm[f"samples_per_s_{suffix}"] = timed_samples(model, n=n, sampler="ddim", steps=50)
        if space == "pixel":
            ldm["fid_pixel"] = fid_kid(x)[0]
        else:
            ldm["fid"], ldm["kid"] = fid_kid(x)
        ldm[f"train_steps_{suffix}"], ldm[f"train_seconds_{suffix}"] = run.recipe.steps, run.history["seconds"]
    for scale in (1, 3):
        x, per_s = timed_samples(conditional, labels, sampler="ddim", steps=50, guidance_scale=float(scale))
        ldm[f"cond_accuracy_guidance_{scale}"] = accuracy(judge, x, labels)
        if scale == 1:
            ldm["fid_ddim_50"], ldm["ddim_50_samples_per_s"] = fid_kid(x)[0], per_s
    x, ldm["ddpm_1000_samples_per_s"] = timed_samples(conditional, labels, sampler="ddpm", steps=conditional.T)
    ldm["fid_ddpm_1000"] = fid_kid(x)[0]
    ldm["cond_accuracy_ddpm_1000"] = accuracy(judge, x, labels)

    # cost per training step: the same UNet (no cross-attention) on latents and on pixels, same batch size
    recipe = artifact.recipe
    unet = dataclasses.replace(recipe.unet, d_context=None)
    ldm[f"train_ms_per_step_latent_f{ae.config.f}"] = train_ms_per_step(unet, conditional.latent_shape, recipe.batch_size)
    pixel_unet = dataclasses.replace(unet, in_channels=1)
    ldm["train_ms_per_step_pixel"] = train_ms_per_step(pixel_unet, (1, 32, 32), recipe.batch_size)
    ldm["samples"] = n
    result["ldm"] = ldm

    # chapter 5: captions of seen and of held-out digit pairs, guidance 3, DDIM 50
    text_ldm, _ = pretrained.text_diffusion(budget)
    tokenizer = text_ldm.denoiser.conditioner.tokenizer
    result["text2img"] = {"samples": n}
    for pairs, key in [("seen", "both_correct_seen"), ("held_out", "both_correct_heldout")]:
        digits, captions = random_captions(pairs, n, seed=0)
        x, _ = timed_samples(text_ldm, tokenizer(captions), sampler="ddim", steps=50, guidance_scale=3.0)
        result["text2img"][key] = both_digits_correct(judge, x, digits)
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
    result["cache_was_empty"] = not any(pretrained.cache_dir().glob("*.pt"))
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
