import json

from ldm_core.bench import main

KEYS = {"budget", "device", "torch_version", "peak_rss_mb", "chapter_seconds", "classifier_test_accuracy",
        "fid_floor_train_vs_test", "autoencoder", "ldm"}
AUTOENCODER_KEYS = {"psnr", "ssim", "rfid", "scale_factor", "scaled_latent_std"}
LDM_KEYS = {"fid", "kid", "cond_accuracy_guidance_1", "cond_accuracy_guidance_3", "fid_ddim_50", "fid_ddpm_1000",
            "ddim_50_samples_per_s", "ddpm_1000_samples_per_s", "train_ms_per_step_latent_f4", "train_ms_per_step_pixel"}


def test_bench_writes_every_documented_key(tmp_path):
    out = tmp_path / "bench.json"
    main(["--budget", "smoke", "--out", str(out), "--skip-chapters"])
    result = json.loads(out.read_text())
    assert KEYS <= set(result) and result["budget"] == "smoke"
    assert AUTOENCODER_KEYS <= set(result["autoencoder"]["kl_f4"])
    assert LDM_KEYS <= set(result["ldm"])
    assert 0 <= result["classifier_test_accuracy"] <= 1
    # the cost claim the book makes: a step on 4x8x8 latents is cheaper than on 1x32x32 pixels
    assert result["ldm"]["train_ms_per_step_pixel"] > result["ldm"]["train_ms_per_step_latent_f4"]
