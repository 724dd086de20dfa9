import json
import os
import platform
import shutil
from pathlib import Path

import pytest
import torch

from ldm_core import bench, pretrained
from ldm_core.bench import main
from ldm_core.evaluate import GENERATIVE_ROWS, NAIVE_ROWS, Judge, random_test_digits
from ldm_core.metrics import psnr
from ldm_core.recipes import budget_table
from ldm_core.superres import downsample

KEYS = {"budget", "device", "torch_version", "peak_rss_mb", "chapter_seconds", "classifier_test_accuracy",
        "fid_floor_train_vs_test", "fid_floor_train_vs_test_se", "fid_floor_sweep_samples", "autoencoder", "ldm", "text2img",
        "inpaint", "superres", "naive", "generative"}
AUTOENCODERS = {"kl_f1", "kl_f2", "kl_f4", "kl_f8", "vq_f4", "kl_f4_perceptual", "kl_f4_perceptual_adversarial"}
SCORES = {"psnr", "ssim", "rfid"}
UNCONDITIONAL_KEYS = {"fid", "fid_se", "kid", "train_ms_per_step_latent_f4", "train_ms_per_step_pixel",
                      "race_fid_latent_f4", "race_fid_pixel", "race_fid_latent_f4_se", "race_fid_pixel_se",
                      "samples_per_s_latent_f4", "samples_per_s_pixel", "train_steps_latent_f4", "train_steps_pixel",
                      "train_seconds_latent_f4", "train_seconds_pixel"}
CONDITIONAL_KEYS = {"cond_accuracy_guidance_1", "cond_accuracy_guidance_3", "cond_accuracy_guidance_1_eta_1",
                    "fid_ddim_50", "fid_ddim_50_se", "fid_ddpm_1000", "fid_ddpm_1000_se", "ddim_50_samples_per_s",
                    "ddpm_1000_samples_per_s"}


@pytest.fixture
def smoke_models():
    """`make test` sets LDM_SMOKE_CACHE to the models its nbval run of the chapters trained: start from a copy of
    them, so that the benchmark measures rather than trains again (alone, it trains them itself, the same way)."""
    if os.environ.get("LDM_SMOKE_CACHE"):
        shutil.copytree(os.environ["LDM_SMOKE_CACHE"], os.environ["LDM_CACHE"], dirs_exist_ok=True)


def test_bench_writes_the_run_and_every_part_once_in_order(tmp_path, monkeypatch, smoke_models):
    # the parts stand in for themselves here (each is measured for real below): what main adds, and how it joins them
    called = []
    for name in PARTS:
        monkeypatch.setattr(bench, name, lambda row, judge, name=name: called.append(name) or {name: row.name})
    out = tmp_path / "bench.json"
    main(["--budget", "smoke", "--out", str(out), "--skip-chapters"])
    result = json.loads(out.read_text())
    assert called == list(PARTS), "each part once, in the documented order"
    assert KEYS <= set(result) and result["budget"] == "smoke" and not bench.partial_path(out).exists()
    assert result["ldm"] == {"measure_unconditional": "smoke", "measure_conditional": "smoke",
                             "samples": budget_table("smoke").samples, "sweep_samples": budget_table("smoke").sweep_samples}
    assert all(result[key] == {name: "smoke"} for key, name in [
        ("autoencoder", "measure_autoencoders"), ("text2img", "measure_text"), ("inpaint", "measure_inpainting"),
        ("superres", "measure_superres"), ("naive", "measure_naive"), ("generative", "measure_generative")])
    assert 0 <= result["classifier_test_accuracy"] <= 1


def check_autoencoders(result):
    assert set(result) == AUTOENCODERS
    assert all(SCORES <= set(scores) for scores in result.values())
    assert {"scale_factor", "scaled_latent_std"} <= set(result["kl_f4"])


def check_unconditional(result):
    assert UNCONDITIONAL_KEYS <= set(result)
    # the cost claim the book makes: a step on 4x8x8 latents is cheaper than on 1x32x32 pixels
    assert result["train_ms_per_step_pixel"] > result["train_ms_per_step_latent_f4"]


def check_conditional(result):
    assert CONDITIONAL_KEYS <= set(result)


def check_text(result):
    assert {"both_correct_seen", "both_correct_heldout"} <= set(result)


def check_inpainting(inpainting):
    for kind in ("strokes", "boxes", "half", "whole"):
        assert set(inpainting[kind]) == {"concat", "blended", "repaint"}
        assert all(set(flags) == {"with_label", "without_label"} and
                   all({"accuracy", "hole_mse", "seam", "fid", "fid_se"} <= set(m) for m in flags.values())
                   for flags in inpainting[kind].values())
    assert inpainting["hole_fraction"]["whole"] == 1.0 and inpainting["samples"] == budget_table("smoke").samples
    assert all(1 <= d["distinct"] <= 8 and 0 <= d["right"] <= 1 for d in inpainting["diversity_half"].values())


def check_superres(result):
    for kind in ("bicubic", "blur", "noise"):
        assert set(result[kind]) == {"bicubic", "regression", "diffusion"}
        assert all({"psnr", "ssim", "fid", "fid_se", "accuracy", "consistency"} <= set(m)
                   for m in result[kind].values())
    assert set(result["autoencoder"]) == {"psnr", "ssim", "fid", "fid_se", "accuracy", "consistency"}
    # the autoencoder's row is the first stage's reconstruction of the same digits (superres_table's default seed 0,
    # the budget's samples), its consistency against their bicubic downsampling: the scale factor in and out cancels
    ae = pretrained.autoencoder("smoke").model
    x = random_test_digits(budget_table("smoke").samples, torch.Generator().manual_seed(0))[0]
    with torch.no_grad():
        reconstructions = ae.decode(ae.encode(x.to(next(ae.parameters()).device)).mode()).clamp(-1, 1).cpu()
    assert result["autoencoder"]["psnr"] == pytest.approx(psnr((reconstructions + 1) / 2, (x + 1) / 2).mean().item(),
                                                          rel=1e-4)
    assert result["autoencoder"]["consistency"] == pytest.approx(
        ((downsample(reconstructions) - downsample(x)) ** 2).mean().item(), rel=1e-4)


def check_naive(naive):
    assert all({"active_units", "floor_fid", "fid", "fid_se"} <= set(naive[name]) for name in NAIVE_ROWS)
    assert all({"latent_fd", "z_std_ratio"} <= set(naive[name]) for name in NAIVE_ROWS[:-1])
    assert naive["samples"] == budget_table("smoke").samples and naive["alpha_bar_0"] < 1


def check_generative(generative):
    assert all({"train_seconds", "samples_per_s", "fid", "fid_se", "kid", "edge_ratio", "bpd", "bpd_se"}
               <= set(generative[name]) for name in GENERATIVE_ROWS)
    assert [generative[name]["bpd"] is None for name in GENERATIVE_ROWS] == [False] * 4 + [True] * 2
    assert set(generative["ddpm_bpd_parts"]) == {"prior", "diffusion", "decoder"}


# each part of bench.measure, in its order, and what its keys must be (README); one test each, so that two run at once
PARTS = {"measure_autoencoders": check_autoencoders, "measure_unconditional": check_unconditional,
         "measure_conditional": check_conditional, "measure_text": check_text, "measure_inpainting": check_inpainting,
         "measure_superres": check_superres, "measure_naive": check_naive, "measure_generative": check_generative}


@pytest.mark.parametrize("name", list(PARTS))
def test_each_part_of_the_bench_measures_its_documented_keys(name, smoke_models):
    row = budget_table("smoke")
    judge = Judge(pretrained.classifier("smoke").model, row.kid_subset, row.bootstrap)
    PARTS[name](getattr(bench, name)(row, judge))


def test_the_study_measures_each_run_along_its_training(tmp_path, smoke_models):
    runs = bench.study("smoke", ["chosen", "eps_batch_128"])
    for name, run in runs.items():
        steps = [point["step"] for point in run["curve"]]
        assert steps == sorted(steps) and len(steps) == 4 and steps[-1] == run["steps"]
        assert [p["seconds"] for p in run["curve"]] == sorted(p["seconds"] for p in run["curve"])
        assert all(0 <= p["accuracy"] <= 1 and p["fid"] > 0 for p in run["curve"])
    assert runs["eps_batch_128"]["steps"] * 128 == runs["chosen"]["steps"] * 32, "the same examples at batch 128"
    assert runs["eps_batch_128"]["recipe"]["prediction"] == "eps" and runs["chosen"]["recipe"]["prediction"] == "v"
    # a second invocation keeps the earlier runs whose recipe the code still makes, and only those
    path = tmp_path / "study.json"
    earlier = {name: json.loads(json.dumps(run)) for name, run in runs.items()}
    earlier["eps_batch_128"]["recipe"]["lr"] = 1.0  # made by other code: not kept
    path.write_text(json.dumps({"budget": "smoke", "ldm_core_version": bench.__version__, "study": earlier}))
    assert set(bench._earlier_runs(path, "smoke", ["v_min_snr_5"])) == {"chosen"}
    assert set(bench._earlier_runs(path, "smoke", [])) == {"chosen"}, "no runs: the throughput only"
    assert bench._earlier_runs(path, "book", ["v_min_snr_5"]) == {}


def test_the_tradeoff_measures_every_space_along_equal_compute(monkeypatch, smoke_models):
    monkeypatch.setattr(bench, "TRADEOFF_POINTS", {"latent": (1 / 2, 1), "pixel": (1,)})  # fewer points: faster
    saved = []
    runs = bench.tradeoff("smoke", saved.append)
    assert list(runs) == ["pixel", "kl_f2", "kl_f4", "kl_f8"] and len(saved) == 4
    assert [run["f"] for run in runs.values()] == [1, 2, 4, 8]
    for space, run in runs.items():
        steps = [point["step"] for point in run["curve"]]
        assert steps == ([run["steps"]] if space == "pixel" else [round(run["steps"] / 2), run["steps"]])
        assert all(point["fid"] > 0 and point["fid_se"] >= 0 for point in run["curve"])
    compute = {space: run["steps"] * run["flops_per_example"] for space, run in runs.items()}
    for space in ("kl_f2", "kl_f8"):  # equal training FLOPs, up to the rounding of a step
        assert abs(compute[space] / compute["kl_f4"] - 1) <= runs[space]["flops_per_example"] / compute["kl_f4"] + 1e-9
    assert abs(compute["pixel"] / compute["kl_f4"] - bench.TRADEOFF_PIXEL_COMPUTE) < 0.5, "pixels get 3x the compute"


def test_machine_names_the_cpu_model_count_and_python():
    """A result's `machine` names the CPU model (the same seed trains other models on another CPU)."""
    described = bench.machine()
    assert described.startswith(platform.machine() + ", ")
    assert f"{os.cpu_count()} CPUs" in described and platform.python_version() in described
    assert torch.backends.cpu.get_cpu_capability() in described  # the SIMD level of PyTorch's kernels
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        if names:
            assert names[0] in described
