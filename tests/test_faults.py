"""Bad input and faults, as a new user meets them: every bad argument fails at once with an error that names what
was expected, and no fault loses a finished run or makes a wrong model look right (issue 16)."""

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ldm_core import bench, cache, pretrained, recipes
from ldm_core.autoencoder import Autoencoder, AutoencoderConfig
from ldm_core.budget import get_budget
from ldm_core.data import load_mnist
from ldm_core.evaluate import Judge, measure_samples
from ldm_core.metrics import DigitClassifier
from ldm_core.pipeline import LatentDiffusion
from ldm_core.pretrained import build_denoiser, caption_tokenizer
from ldm_core.samplers import classifier_free_guidance, ddim_sample, make_timesteps, slerp
from ldm_core.schedules import alpha_bar_from_betas, linear_beta_schedule, q_sample
from ldm_core.train import Batches, lr_factor, train

ROOT = Path(__file__).resolve().parents[1]


def _pipeline(conditional: bool) -> LatentDiffusion:
    """An untrained smoke-sized latent diffusion model: enough for every check at the entry of ``sample``."""
    recipe = recipes.diffusion_recipe("smoke", conditional)
    autoencoder = Autoencoder(AutoencoderConfig.tiny())
    return LatentDiffusion(autoencoder, build_denoiser(recipe), recipe.alpha_bar(), prediction=recipe.prediction)


COND, UNCOND = _pipeline(True), _pipeline(False)
LABELS = torch.tensor([1, 2])
RECIPE = recipes.diffusion_recipe("smoke", True)
ALPHA_BAR = alpha_bar_from_betas(linear_beta_schedule(1000))
TOKENIZER = caption_tokenizer()


def _eps_model(z, t, cond):
    return torch.zeros_like(z)


def _replace(**change):
    return lambda: dataclasses.replace(RECIPE, **change)


# (what is wrong, the call, the error's type, a pattern its message must contain: what was expected)
BAD_INPUTS = [
    # budgets: one of three names, never a silent fallback to another budget
    ("budget 'Smoke'", lambda: recipes.budget_table("Smoke"), ValueError, r"budget must be one of \('smoke'"),
    ("budget 'tiny' for a recipe", lambda: recipes.diffusion_recipe("tiny", False), ValueError, "budget must be one of"),
    ("budget 3", lambda: recipes.budget_table(3), ValueError, "budget must be one of"),
    ("budget for the latent model", lambda: pretrained.latent_diffusion("Book"), ValueError, "budget must be one of"),
    ("budget for the classifier", lambda: pretrained.classifier("tiny"), ValueError, "budget must be one of"),
    ("budget for the autoencoder", lambda: pretrained.autoencoder("tiny"), ValueError, "budget must be one of"),
    ("budget for the text model", lambda: recipes.text_recipe("large"), ValueError, "budget must be one of"),
    ("conditional as a string", lambda: recipes.diffusion_recipe("smoke", "yes"), TypeError, "conditional must be True or False"),
    ("unknown space", lambda: recipes.diffusion_recipe("smoke", False, "kl_f16"), ValueError, "space must be one of"),
    # recipes: numbers of their kind and range
    ("recipe steps 2.5", _replace(steps=2.5), TypeError, "steps must be an integer >= 1"),
    ("recipe steps 0", _replace(steps=0), ValueError, "steps must be an integer >= 1"),
    ("batch_size 0", _replace(batch_size=0), ValueError, "batch_size must be an integer >= 1"),
    ("lr NaN", _replace(lr=math.nan), ValueError, "lr must be a finite number > 0"),
    ("lr 0", _replace(lr=0.0), ValueError, "lr must be a finite number > 0"),
    ("ema_decay 1.5", _replace(ema_decay=1.5), ValueError, r"ema_decay must be a finite number in \[0.0, 1.0\]"),
    ("p_uncond -0.1", _replace(p_uncond=-0.1), ValueError, r"p_uncond must be a finite number in \[0.0, 1.0\]"),
    ("unknown schedule", _replace(schedule="cosinus"), ValueError, "schedule must be one of"),
    ("unknown prediction", _replace(prediction="x0"), ValueError, r"prediction must be one of \('eps', 'v'\)"),
    ("min_snr_gamma 0", _replace(min_snr_gamma=0.0), ValueError, "min_snr_gamma .or None. must be a finite number > 0"),
    ("warm-up as long as the run", _replace(warmup_steps=RECIPE.steps), ValueError,
     rf"warmup_steps must lie in \[0, steps={RECIPE.steps}\)"),
    ("classifier batch 0", lambda: recipes.ClassifierRecipe(width=8, steps=10, batch_size=0), ValueError,
     "batch_size must be an integer"),
    ("autoencoder lr -1", lambda: recipes.AutoencoderRecipe(AutoencoderConfig.tiny(), 10, 8, lr=-1.0), ValueError,
     "lr must be a finite number > 0"),
    # sampling: guidance, eta, steps, labels, n and noise checked at the entry
    ("guidance NaN", lambda: COND.sample(LABELS, guidance_scale=math.nan), ValueError, "guidance_scale must be a finite number >= 0"),
    ("guidance inf", lambda: COND.sample(LABELS, guidance_scale=math.inf), ValueError, "guidance_scale must be a finite number"),
    ("guidance -1", lambda: COND.sample(LABELS, guidance_scale=-1.0), ValueError, "guidance_scale must be a finite number >= 0"),
    ("eta 1.5", lambda: COND.sample(LABELS, eta=1.5), ValueError, r"eta must be a finite number in \[0.0, 1.0\]"),
    ("eta NaN", lambda: COND.sample(LABELS, eta=math.nan), ValueError, "eta must be a finite number"),
    ("steps 0", lambda: COND.sample(LABELS, steps=0), ValueError, r"steps must be an integer in \[1, 1000\]"),
    ("steps 2.5", lambda: COND.sample(LABELS, steps=2.5), TypeError, r"steps must be an integer in \[1, 1000\]"),
    ("steps T + 1", lambda: COND.sample(LABELS, steps=1001), ValueError, r"steps must be an integer in \[1, 1000\]"),
    ("unknown sampler", lambda: COND.sample(LABELS, sampler="euler"), ValueError, "sampler must be one of"),
    ("labels as a list", lambda: COND.sample([1, 2]), TypeError, "labels must be a tensor"),
    ("the null label", lambda: COND.sample(torch.tensor([3, 10])), ValueError, "null label 10.*guidance_scale=0"),
    ("label 11", lambda: COND.sample(torch.tensor([11])), ValueError, r"labels must lie in \[0, 10\]"),
    ("float labels", lambda: COND.sample(torch.tensor([1.0])), ValueError, "y must be int64 labels"),
    ("labels for an unconditional model", lambda: UNCOND.sample(LABELS), ValueError, "give labels for a conditional"),
    ("n 2.5", lambda: UNCOND.sample(n=2.5), TypeError, "n must be an integer >= 1"),
    ("n 0", lambda: UNCOND.sample(n=0), ValueError, "n must be an integer >= 1"),
    ("noise of another shape", lambda: UNCOND.sample(n=2, noise=torch.zeros(2, 4, 4, 4)), ValueError,
     r"noise must be \(B, c, h, w\)"),
    # images: float, (B, C, H, W), in [-1, 1]
    ("uint8 images", lambda: COND.encode(torch.zeros(2, 1, 32, 32, dtype=torch.uint8)), TypeError,
     r"floating-point tensor of images in \[-1, 1\].*127.5"),
    ("images in [0, 255]", lambda: COND.encode(torch.full((2, 1, 32, 32), 255.0)), ValueError, r"must lie in \[-1, 1\]"),
    ("images with a NaN", lambda: COND.encode(torch.full((2, 1, 32, 32), math.nan)), ValueError, r"must lie in \[-1, 1\]"),
    ("RGB images", lambda: COND.encode(torch.zeros(2, 3, 32, 32)), ValueError, r"must be images \(B, 1, H, W\)"),
    ("one image without a batch", lambda: COND.encode(torch.zeros(1, 32, 32)), ValueError, r"must be images \(B, 1, H, W\)"),
    # the tokenizer: a list of strings
    ("one caption as a string", lambda: TOKENIZER("three left of five"), TypeError, r"list of strings.*\[text\]"),
    ("captions as numbers", lambda: TOKENIZER([3, 5]), TypeError, "list of strings"),
    ("a word outside the vocabulary", lambda: TOKENIZER(["three left of eleven"]), ValueError, "not in the vocabulary"),
    ("a caption too long", lambda: TOKENIZER(["three " * 9]), ValueError, "at most max_tokens=8"),
    # schedules, samplers and training
    ("sampler steps 50.0", lambda: make_timesteps(1000, 50.0), TypeError, "n .sampler steps. must be an integer"),
    ("sampler steps 0", lambda: make_timesteps(1000, 0), ValueError, r"n .sampler steps. must be an integer in \[1, 1000\]"),
    ("float timesteps", lambda: q_sample(torch.zeros(2, 4), torch.tensor([1.0, 2.0]), torch.zeros(2, 4), ALPHA_BAR),
     ValueError, r"t must be int64 timesteps \(2,\)"),
    ("timestep T", lambda: q_sample(torch.zeros(1, 4), torch.tensor([1000]), torch.zeros(1, 4), ALPHA_BAR),
     ValueError, r"t must lie in \[0, 999\]"),
    ("guidance NaN in the wrapper", lambda: classifier_free_guidance(_eps_model, math.nan, None), ValueError,
     "guidance_scale must be a finite number"),
    ("DDIM eta -0.1", lambda: ddim_sample(_eps_model, torch.zeros(1, 2), ALPHA_BAR, make_timesteps(1000, 2), eta=-0.1),
     ValueError, "eta must be a finite number"),
    ("slerp weight 2", lambda: slerp(torch.ones(3), torch.ones(3), 2.0), ValueError, r"weight must be a finite number in \[0.0, 1.0\]"),
    ("train steps 0", lambda: train(torch.nn.Linear(1, 1), None, steps=0, lr=0.1, desc="x"), ValueError, "steps must be an integer >= 1"),
    ("train lr NaN", lambda: train(torch.nn.Linear(1, 1), None, steps=1, lr=math.nan, desc="x"), ValueError, "lr must be a finite number > 0"),
    ("checkpoint_every 0", lambda: train(torch.nn.Linear(1, 1), None, steps=1, lr=0.1, desc="x", checkpoint_every=0),
     ValueError, "checkpoint_every must be an integer >= 1"),
    ("batch size 2.5", lambda: Batches(torch.zeros(8, 1), batch_size=2.5), TypeError, "batch_size must be an integer"),
    ("unknown decay", lambda: lr_factor(0, 10, 0, "linear"), ValueError, "decay must be one of"),
    ("unknown split", lambda: load_mnist("validation"), ValueError, "split must be one of"),
    ("a FID of one sample", lambda: measure_samples(COND, None, 1), ValueError, "n must be an integer >= 2"),
    ("a recipe that is not a dataclass", lambda: cache.made_by("ldm", {"steps": 1}), TypeError,
     "recipe must be a dataclass instance"),
]


@pytest.mark.parametrize("call, error, expected", [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_fails_at_once_naming_what_was_expected(call, error, expected):
    with pytest.raises(error, match=expected):
        call()


def test_there_are_at_least_forty_bad_input_cases():
    assert len(BAD_INPUTS) >= 40 and len({case[0] for case in BAD_INPUTS}) == len(BAD_INPUTS)


def test_ldm_budget_outside_the_three_names_is_refused(monkeypatch):
    for bad in ("tiny", "Smokes", "none"):
        monkeypatch.setenv("LDM_BUDGET", bad)
        with pytest.raises(ValueError, match=r"LDM_BUDGET must be one of \('smoke', 'book', 'full'\)"):
            get_budget()


def test_the_judge_refuses_images_outside_the_book_range():
    judge = Judge(DigitClassifier(width=4), kid_subset=10, bootstrap=2)
    x, _ = load_mnist("test")
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        judge.scores((x[:20] + 1) * 127.5)


# ----------------------------------------------------------------------------------------------- faults

# One small deterministic training run, shared by this process and the subprocess that is killed mid-write.
TOY = textwrap.dedent("""
    import torch
    from ldm_core.train import Batches, train

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def toy(checkpoint, steps=12, lr=0.01, calls=None):
        model = make()
        x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
        batches = Batches(x, x[:, :1] - x[:, 1:], batch_size=16, seed=0)
        generator = torch.Generator().manual_seed(2)

        def loss_fn(step):
            if calls is not None:
                calls.append(step)
            xb, yb = batches(step)
            return ((model(xb) - yb - 0.01 * torch.randn(yb.shape, generator=generator)) ** 2).mean()

        history = train(model, loss_fn, steps=steps, lr=lr, desc="toy", generator=generator, ema_decay=0.9,
                        checkpoint=checkpoint, checkpoint_every=3)
        return model, history
""")
_namespace: dict = {}
exec(TOY, _namespace)
toy, make = _namespace["toy"], _namespace["make"]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_kill_during_a_checkpoint_write_resumes_bit_identically_and_leaves_no_orphan(tmp_path):
    reference, history = toy(None)
    checkpoint = tmp_path / "toy.partial.pt"
    # the second checkpoint write (after step 6) writes half its bytes, then the process dies: no cleanup runs
    killed = TOY + textwrap.dedent(f"""
        import os
        real_save, writes = torch.save, []

        def dying_save(payload, path):
            writes.append(path)
            if len(writes) < 2:
                return real_save(payload, path)
            real_save(payload, path)
            with open(path, "r+b") as handle:
                handle.truncate(os.path.getsize(path) // 2)
            os._exit(9)

        torch.save = dying_save
        toy({str(checkpoint)!r})
    """)
    run = subprocess.run([sys.executable, "-c", killed], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 9, run.stderr
    orphans = list(tmp_path.glob("*.tmp"))
    assert len(orphans) == 1, "the killed write left its temporary file behind"
    assert len(torch.load(checkpoint, weights_only=True)["loss"]) == 3, "the checkpoint is the intact one of step 3"
    calls: list[int] = []
    resumed, resumed_history = toy(checkpoint, calls=calls)
    assert calls[0] == 3 and resumed_history["loss"] == history["loss"] and _same_weights(resumed, reference)
    assert not list(tmp_path.glob("*.tmp")), "the next write removed the orphan"


def test_a_foreign_or_unreadable_checkpoint_is_set_aside_and_training_starts_over(tmp_path):
    reference, history = toy(None)
    checkpoint = tmp_path / "toy.partial.pt"
    toy(checkpoint, steps=6)  # a finished run of fewer steps: not the first 6 steps of this run's schedule
    calls: list[int] = []
    with pytest.warns(UserWarning, match="made by another run.*set aside as toy.partial.set-aside-1.pt"):
        model, resumed = toy(checkpoint, calls=calls)
    assert calls == list(range(12)) and resumed["loss"] == history["loss"] and _same_weights(model, reference)
    with pytest.warns(UserWarning, match="made by another run"):  # the same steps, another learning rate
        toy(checkpoint, lr=0.1, calls=(calls := []))
    assert calls[0] == 0
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match=r"toy.partial.pt: cannot be loaded.*set aside as toy.partial.set-aside-3"):
        toy(checkpoint, lr=0.1, calls=(calls := []))
    assert calls[0] == 0 and len(list(tmp_path.glob("*.set-aside-*.pt"))) == 3, "nothing is deleted"


def _toy_artifact(recipe, calls=None):
    """load_or_train of the toy run, keyed by a recipe."""
    return cache.load_or_train("toy", recipe, make,
                               lambda model, checkpoint: _fit_toy(model, checkpoint, calls))


def _fit_toy(model, checkpoint, calls):
    trained, history = toy(checkpoint, calls=calls)
    model.load_state_dict(trained.state_dict())
    return history


def test_a_failed_final_write_loses_no_training(monkeypatch):
    recipe = recipes.ClassifierRecipe(width=1, steps=12, batch_size=16)
    real = cache.save_atomic

    def disk_full(payload, path):
        if Path(path) == cache.cache_path("toy", recipe):
            raise OSError(28, "No space left on device")
        return real(payload, path)

    monkeypatch.setattr(cache, "save_atomic", disk_full)
    with pytest.raises(OSError, match="No space left"):
        _toy_artifact(recipe)
    monkeypatch.setattr(cache, "save_atomic", real)
    calls: list[int] = []
    artifact = _toy_artifact(recipe, calls)
    assert calls == [], "the finished checkpoint was resumed: no step trained again"
    reference, history = toy(None)
    assert artifact.history["loss"] == history["loss"] and _same_weights(artifact.model, reference)
    assert not list(cache.cache_dir().glob("*.partial.pt")), "removed once the cache file is written"
    assert _toy_artifact(recipe).from_cache


def test_a_foreign_cache_file_is_not_trusted():
    ours, theirs = (recipes.ClassifierRecipe(width=1, steps=12, batch_size=b) for b in (16, 32))
    _toy_artifact(theirs)
    shutil.copy(cache.cache_path("toy", theirs), cache.cache_path("toy", ours))  # renamed from another recipe
    with pytest.warns(UserWarning, match="made by another recipe or version.*set aside"):
        artifact = _toy_artifact(ours)
    assert not artifact.from_cache and _toy_artifact(ours).from_cache


def test_an_unwritable_cache_fails_before_training(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LDM_CACHE", str(blocker))
    calls: list[int] = []
    with pytest.raises(OSError, match=r"the artifact cache \(LDM_CACHE\) .*a_file must be a folder this process can write"):
        _toy_artifact(recipes.ClassifierRecipe(width=1, steps=12, batch_size=16), calls)
    assert calls == []


def test_the_benchmark_checks_out_before_measuring_and_keeps_partial_results(tmp_path, capsys, monkeypatch):
    for bad, expected in [(tmp_path, "is not a file"), (tmp_path / "a_file" / "bench.json", "must be a folder")]:
        (tmp_path / "a_file").write_text("")
        with pytest.raises(SystemExit):
            bench.main(["--budget", "smoke", "--out", str(bad), "--skip-chapters"])
        assert expected in capsys.readouterr().err
    # a failure half-way keeps what was measured so far, in OUT.partial
    monkeypatch.setattr(bench, "measure_conditional", lambda row, judge: 1 / 0)
    monkeypatch.setattr(bench, "measure_autoencoders", lambda row, judge: {"kl_f4": {"psnr": 1.0}})
    monkeypatch.setattr(bench, "measure_unconditional", lambda row, judge: {})
    monkeypatch.setattr(pretrained, "classifier", lambda budget: cache.Artifact(DigitClassifier(width=4), None))
    out = tmp_path / "bench.json"
    with pytest.raises(ZeroDivisionError):
        bench.main(["--budget", "smoke", "--out", str(out), "--skip-chapters"])
    partial = json.loads(bench.partial_path(out).read_text())
    assert partial["partial"] and partial["autoencoder"] == {"kl_f4": {"psnr": 1.0}} and not out.exists()


def test_a_checkpoint_without_the_random_state_this_run_needs_is_not_resumed(tmp_path):
    checkpoint = tmp_path / "run.partial.pt"
    model = torch.nn.Linear(1, 1)
    x = torch.linspace(-1, 1, 8)[:, None]
    train(model, lambda step: ((model(x) - x) ** 2).mean(), steps=4, lr=0.1, desc="a", checkpoint=checkpoint)
    with pytest.warns(UserWarning, match="made by another run"):  # saved without a generator; this run has one
        train(model, lambda step: ((model(x) - x) ** 2).mean(), steps=4, lr=0.1, desc="b", checkpoint=checkpoint,
              generator=torch.Generator().manual_seed(0))


def test_a_checkpoint_of_another_recipe_with_the_same_settings_is_not_resumed(tmp_path):
    path = tmp_path / "ldm.partial.pt"
    toy(cache.Checkpoint(path, made_by="recipe A"))  # the same architecture, steps and optimiser: only the recipe differs
    with pytest.warns(UserWarning, match="made by another run"):
        toy(cache.Checkpoint(path, made_by="recipe B"), calls=(calls := []))
    assert calls[0] == 0
