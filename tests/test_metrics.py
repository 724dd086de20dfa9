import math

import numpy as np
import pytest
import torch

from ldm_core.evaluate import accuracy_gap, fid_gap, seconds_to_reach
from ldm_core.metrics import (DigitClassifier, accuracy, fid, fid_bootstrap_se, frechet_distance, kid, psnr, random_shift,
                              reconstruction_scores, ssim)


def test_psnr_of_known_mse():
    x = torch.zeros(2, 1, 4, 4)
    y = torch.full((2, 1, 4, 4), 0.1)  # MSE = 0.01 -> 20 dB at data range 1
    torch.testing.assert_close(psnr(x, y), torch.tensor([20.0, 20.0]))
    assert psnr(x, y, data_range=2.0)[0].item() == pytest.approx(20 + 20 * math.log10(2), rel=1e-6)
    assert psnr(x, x)[0].item() == math.inf
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, y[:1])


def test_classifier_shapes_and_accuracy_definition():
    model = DigitClassifier(width=4)
    x = torch.randn(6, 1, 32, 32)
    assert model(x).shape == (6, 10) and model.features(x).shape == (6, 128)
    predicted = model(x).argmax(1)
    assert accuracy(model, x, predicted) == 1.0
    assert accuracy(model, x, (predicted + 1) % 10) == 0.0
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32\)"):
        model(torch.randn(2, 1, 28, 28))


def test_random_shift_moves_content_and_keeps_background():
    x = torch.full((1, 1, 8, 8), -1.0)
    x[0, 0, 4, 4] = 1.0
    shifted = random_shift(x.repeat(50, 1, 1, 1), 2, torch.Generator().manual_seed(0))
    assert shifted.shape == (50, 1, 8, 8) and (shifted == 1).flatten(1).sum(1).eq(1).all()
    assert len({int(s.argmax()) for s in shifted}) > 5


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ssim(x, x), torch.ones(3))
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert (ssim(x, noisy) < 0.9).all()


def test_ssim_of_black_against_a_faint_gray_is_its_luminance_term():
    """Closed form (Wang et al. 2004; C1 = (0.01 * range)^2): two constant images 0 and h have no contrast,
    so SSIM = C1 / (h^2 + C1); a haze of 1% of the range halves it, which PSNR (40 dB) hardly registers."""
    black = torch.zeros(1, 1, 32, 32)
    for h in (0.003, 0.01, 0.03):
        expected = 1e-4 / (h ** 2 + 1e-4)
        assert ssim(black, torch.full_like(black, h)).item() == pytest.approx(expected, rel=1e-5)
    assert psnr(torch.full_like(black, 0.01), black).item() == pytest.approx(40.0, rel=1e-5)


def test_fid_of_a_set_with_itself_is_zero():
    a = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    assert abs(fid(a, a)) < 1e-6


def test_frechet_distance_between_known_gaussians_matches_the_closed_form():
    # For commuting (here diagonal) covariances, tr((S1 S2)^(1/2)) = sum sqrt(s1_i s2_i), so
    # FD = ||mu1 - mu2||^2 + sum (sqrt(s1_i) - sqrt(s2_i))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)  # 5 + 1 + 1 + 0.25
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    # and a non-diagonal case against an independent eigen-decomposition: sqrt of a PSD product via S1^(1/2)
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    S1, S2 = A @ A.T + np.eye(4), B @ B.T + np.eye(4)
    w, V = np.linalg.eigh(S1)
    root1 = V @ np.diag(np.sqrt(w)) @ V.T
    w2 = np.linalg.eigvalsh(root1 @ S2 @ root1)  # tr((S1 S2)^(1/2)) = tr((S1^(1/2) S2 S1^(1/2))^(1/2))
    expected = np.trace(S1) + np.trace(S2) - 2 * np.sum(np.sqrt(w2))
    assert frechet_distance(np.zeros(4), S1, np.zeros(4), S2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_agrees_with_scipy_sqrtm_on_singular_covariances():
    # the book's case: ReLU features, some never firing, fewer samples than dimensions (rank-deficient covariances)
    import scipy.linalg

    rng = np.random.default_rng(1)
    a, b = np.maximum(rng.normal(size=(40, 64)), 0), np.maximum(rng.normal(0.3, 1, size=(300, 64)), 0)
    a[:, :5] = 0  # dead features
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with pytest.warns(scipy.linalg.LinAlgWarning):  # singular, as the book's covariances are; still defined
        root = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def test_fid_bootstrap_se_is_deterministic_and_shrinks_like_one_over_sqrt_n():
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(2000, 8, generator=generator)
    small, large = torch.randn(100, 8, generator=generator) + 0.5, torch.randn(1600, 8, generator=generator) + 0.5
    se_small = fid_bootstrap_se(small, reference, resamples=100)
    assert se_small == fid_bootstrap_se(small, reference, resamples=100) > 0
    # 16x the samples: about a quarter of the standard error (a wide margin: the estimate itself is noisy)
    assert 0.1 < fid_bootstrap_se(large, reference, resamples=100) / se_small < 0.5
    with pytest.raises(ValueError, match="resamples"):
        fid_bootstrap_se(small, reference, resamples=1)


def test_fid_estimates_the_gaussian_distance_from_samples():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 2, generator=generator, dtype=torch.float64)
    b = torch.randn(20000, 2, generator=generator, dtype=torch.float64) * 2 + torch.tensor([3.0, 0.0], dtype=torch.float64)
    # ||(3, 0)||^2 + 2 (1 - 2)^2 = 9 + 2
    assert fid(a, b) == pytest.approx(11.0, rel=0.03)


def test_kid_is_unbiased_and_detects_a_shift():
    generator = torch.Generator().manual_seed(0)
    draws = [kid(torch.randn(200, 8, generator=generator), torch.randn(200, 8, generator=generator),
                 subsets=1, subset_size=200, seed=i) for i in range(100)]
    spread = np.std(draws) / np.sqrt(len(draws))
    assert abs(np.mean(draws)) < 3 * spread, "the mean over draws from one distribution is ~0"
    assert min(draws) < 0 < max(draws), "an unbiased estimator of 0 takes both signs"
    shifted = kid(torch.randn(400, 8, generator=generator), torch.randn(400, 8, generator=generator) + 1)
    assert shifted > 20 * spread


def test_reconstruction_scores_of_perfect_and_of_noisy_reconstructions():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 32, 32) * 2 - 1
    judge = DigitClassifier(width=8)
    perfect = reconstruction_scores(x, x, judge)
    assert perfect["psnr"] == float("inf") and perfect["ssim"] == pytest.approx(1.0) and abs(perfect["rfid"]) < 1e-6
    noisy = reconstruction_scores((x + 0.2 * torch.randn_like(x)).clamp(-1, 1), x, judge)
    assert noisy["psnr"] < 30 and noisy["ssim"] < 1 and noisy["rfid"] > perfect["rfid"]
    with pytest.raises(ValueError, match="same shape"):
        reconstruction_scores(x[:8], x, judge)


def test_seconds_to_reach_interpolates_or_bounds():
    curve = [{"seconds": 10.0, "fid": 300.0}, {"seconds": 20.0, "fid": 100.0}, {"seconds": 40.0, "fid": 50.0}]
    assert seconds_to_reach(curve, 200.0) == (15.0, True)  # half-way between the first two points
    assert seconds_to_reach(curve, 50.0) == (40.0, True)
    assert seconds_to_reach(curve, 400.0) == (10.0, False), "already there at the first point: an upper bound"
    with pytest.raises(ValueError, match="never reaches FID 10.0"):
        seconds_to_reach(curve, 10.0)


def test_fid_gap_is_the_difference_in_combined_standard_errors():
    a, b = {"fid": 100.0, "fid_se": 3.0}, {"fid": 110.0, "fid_se": 4.0}
    assert fid_gap(a, b) == 2.0 and fid_gap(b, a) == -2.0  # 10 / sqrt(9 + 16)


def test_accuracy_gap_is_the_difference_in_binomial_standard_errors():
    labels = torch.zeros(100, dtype=torch.int64)
    a, b = {"accuracy": 0.8, "labels": labels}, {"accuracy": 0.9, "labels": labels}
    se = (0.8 * 0.2 / 100 + 0.9 * 0.1 / 100) ** 0.5  # 0.05
    assert accuracy_gap(a, b) == pytest.approx(0.1 / se) and accuracy_gap(b, a) == pytest.approx(-0.1 / se)
    with pytest.raises(ValueError, match="no binomial spread"):
        accuracy_gap({"accuracy": 1.0, "labels": labels}, {"accuracy": 1.0, "labels": labels})
