"""Quality metrics: PSNR, Fréchet distance, k-NN precision/recall, and the shipped feature network."""

from __future__ import annotations

import math

import pytest
import torch

from l2c_compile.errors import L2CError
from l2c_compile.fmnist import data
from l2c_compile.fmnist.classifier import CLASSIFIER_PATH, STATS_PATH
from l2c_compile.metrics import quality
from l2c_compile.metrics.quality import (
    SampleQuality,
    evaluate,
    fid,
    fid_metric,
    precision_recall,
    psnr,
)

needs_assets = pytest.mark.skipif(
    not (CLASSIFIER_PATH.is_file() and STATS_PATH.is_file()), reason="classifier assets not built"
)
needs_data = pytest.mark.skipif(
    not data.available(), reason="dataset-fashion-mnist is not installed"
)


# ----------------------------------------------------------------------------- PSNR


def test_psnr_of_identical_images_is_infinite() -> None:
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    assert psnr(x, x.clone()) == math.inf
    assert torch.isinf(psnr(x, x, reduction="none")).all()


def test_psnr_known_values() -> None:
    a = torch.zeros(2, 1, 4, 4)
    # Range 2 (images in [-1, 1]): an error of 0.2 everywhere is 10·log10(4 / 0.04) = 20 dB.
    assert psnr(a, a + 0.2) == pytest.approx(20.0, abs=1e-4)
    # Error 2 (black vs white) is the worst case: 0 dB.
    assert psnr(a - 1, a + 1) == pytest.approx(0.0, abs=1e-4)
    # Per image, then averaged: 20 dB and 40 dB average to 30 dB.
    b = torch.cat([a[:1] + 0.2, a[1:] + 0.02])
    assert psnr(a, b, reduction="none").tolist() == pytest.approx([20.0, 40.0], abs=1e-4)
    assert psnr(a, b) == pytest.approx(30.0, abs=1e-4)


def test_psnr_rejects_bad_input() -> None:
    with pytest.raises(L2CError, match="same shape"):
        psnr(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))
    with pytest.raises(L2CError, match="reduction"):
        psnr(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), reduction="sum")


# ----------------------------------------------------------------------------- FID


def _exact_gaussian_sample(n: int, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """(n, D) float64 points whose sample mean and unbiased covariance are exactly mean, cov."""
    x = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x = x - x.mean(0)
    x = x @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(x.T))).T  # sample covariance = I
    return x @ torch.linalg.cholesky(cov).T + mean


def test_fid_known_values() -> None:
    d = 6
    eye = torch.eye(d, dtype=torch.float64)
    mu = torch.zeros(d, dtype=torch.float64)
    same = _exact_gaussian_sample(50, mu, eye)
    assert fid(same, mu, eye) == pytest.approx(0.0, abs=1e-9)
    # Mean shift only: the squared distance of the means.
    assert fid(same, mu + 0.5, eye) == pytest.approx(d * 0.25, rel=1e-9)
    # Σ = I vs 4I: tr(I + 4I − 2·2I) = d.
    assert fid(same, mu, 4 * eye) == pytest.approx(float(d), rel=1e-9)
    assert fid(_exact_gaussian_sample(50, mu, 4 * eye), mu, eye) == pytest.approx(float(d), rel=1e-9)


def _scipy_fid(features: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> float:
    """The hand-written FID torchmetrics replaced (scipy.linalg.sqrtm, pytorch-fid's ε fallback)."""
    import numpy as np
    from scipy import linalg

    f = features.double()
    a, b = torch.cov(f.T).numpy(), cov.double().numpy()
    diff = (f.mean(0) - mean.double()).numpy()
    covmean = linalg.sqrtm(a @ b)
    if not np.isfinite(covmean).all():
        eps = np.eye(a.shape[0]) * 1e-6
        covmean = linalg.sqrtm((a + eps) @ (b + eps))
    return float(diff @ diff + np.trace(a) + np.trace(b) - 2.0 * np.trace(covmean.real))


@pytest.mark.parametrize("n", [20, 100, 300, 1000])
def test_torchmetrics_fid_agrees_with_the_scipy_implementation(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    d = 32
    ref = torch.randn(2000, d, generator=gen, dtype=torch.float64) @ torch.randn(
        d, d, generator=gen, dtype=torch.float64
    )
    mean, cov = ref.mean(0), torch.cov(ref.T)
    feats = torch.randn(n, d, generator=gen, dtype=torch.float64) * 1.5 + 0.3
    # n < d: the sample covariance is singular; both still agree to rounding.
    assert fid(feats, mean, cov) == pytest.approx(_scipy_fid(feats, mean, cov), rel=1e-6)


@needs_assets
@pytest.mark.parametrize("n", [100, 1000])
def test_fid_against_the_shipped_statistics_agrees_with_scipy(n: int) -> None:
    """The stored test-set statistics stay usable: torchmetrics and sqrtm agree on them."""
    from l2c_compile.fmnist.classifier import reference_stats

    stats = reference_stats()
    feats = stats["features"][:n]  # real test features: a small FID, the hard case for rounding
    expected = _scipy_fid(feats, stats["mean"], stats["cov"])
    assert fid(feats, stats["mean"], stats["cov"]) == pytest.approx(expected, rel=1e-6)


def test_fid_of_gaussian_samples_matches_their_parameters() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(20000, 4, generator=gen, dtype=torch.float64) + 1.0
    # Same law: ≈ 0; against a reference shifted by 1 in each of 4 dims: ≈ 4.
    eye = torch.eye(4, dtype=torch.float64)
    assert fid(feats, torch.ones(4, dtype=torch.float64), eye) < 0.01
    assert fid(feats, torch.zeros(4, dtype=torch.float64), eye) == pytest.approx(4.0, rel=0.02)


def test_fid_rejects_wrong_feature_width() -> None:
    with pytest.raises(L2CError, match="features"):
        fid(torch.zeros(10, 3), torch.zeros(4), torch.eye(4))
    with pytest.raises(L2CError, match="at least 2"):
        fid(torch.zeros(1, 4), torch.zeros(4), torch.eye(4))


# ----------------------------------------------------------------------------- precision / recall


def test_precision_recall_identical_sets_are_one() -> None:
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(1))
    assert precision_recall(x, x.clone(), k=3) == (1.0, 1.0)


def test_precision_recall_disjoint_sets_are_zero() -> None:
    x = torch.randn(100, 8, generator=torch.Generator().manual_seed(2))
    assert precision_recall(x + 100.0, x, k=3) == (0.0, 0.0)


def test_precision_recall_mode_collapse_keeps_precision_loses_recall() -> None:
    gen = torch.Generator().manual_seed(3)
    real = torch.randn(400, 2, generator=gen)
    # Generated samples all sit near one real point: realistic (precision 1) but not diverse.
    collapsed = real[:1] + 0.01 * torch.randn(400, 2, generator=gen)
    precision, recall = precision_recall(collapsed, real, k=3)
    assert precision == 1.0
    assert recall < 0.1


def test_precision_recall_rejects_bad_input() -> None:
    with pytest.raises(L2CError, match="equal D"):
        precision_recall(torch.zeros(10, 3), torch.zeros(10, 4))
    with pytest.raises(L2CError, match="more than 3"):
        precision_recall(torch.zeros(3, 4), torch.zeros(10, 4))


# ----------------------------------------------------------------------------- the shipped feature network


def test_metric_names_are_honest() -> None:
    assert quality.metric_names["fid"] == "FID (Fashion-MNIST features)"
    assert set(quality.metric_names) == {"fid", "precision", "recall", "class_accuracy", "psnr"}


def test_metrics_reject_images_of_the_wrong_shape() -> None:
    with pytest.raises(L2CError, match=r"\(N, 1, 32, 32\)"):
        quality.class_accuracy(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))


@needs_assets
@needs_data
def test_test_set_scores_near_zero_fid_and_noise_scores_far() -> None:
    from l2c_compile.fmnist.classifier import reference_stats

    images, labels = data.load_tensors("test")
    images, labels = images[:1000], labels[:1000]
    stats = reference_stats()
    real = fid(quality.classifier_features(images), stats["mean"], stats["cov"])
    noise = torch.rand(500, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fake = fid(quality.classifier_features(noise), stats["mean"], stats["cov"])
    # A 1000-image subset of the reference set differs from it only by sampling noise.
    assert real < 0.02 * fake
    assert fake > 100 * max(real, 1e-3)
    assert quality.class_accuracy(images, labels) >= 0.9


@needs_assets
@needs_data
def test_evaluate_reports_every_metric() -> None:
    images, labels = data.load_tensors("test")
    images, labels = images[-300:], labels[-300:]
    out = quality.evaluate(images, labels, reference_images=images)
    assert set(out) == {"fid", "precision", "recall", "class_accuracy", "psnr"}
    assert out["psnr"] == math.inf
    assert out["class_accuracy"] >= 0.85
    # Real test images lie on the real manifold and cover it.
    assert out["precision"] > 0.6 and out["recall"] > 0.6
    assert "psnr" not in quality.evaluate(images, labels)


# ----------------------------------------------------------------------------- torchmetrics forms


@pytest.fixture()
def random_feature_net(tmp_path, monkeypatch):
    from l2c_compile.fmnist import classifier
    from tests.fmnist_stand_ins import install_feature_net

    install_feature_net(tmp_path, monkeypatch)
    yield classifier
    classifier.load_classifier.cache_clear()
    classifier.reference_stats.cache_clear()


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_fid_metric_uses_the_classifier_as_feature_network(random_feature_net) -> None:
    stats = random_feature_net.reference_stats()
    images = _images(40, 0) * 0.5  # not the law of the stand-in statistics: FID > 0
    metric = fid_metric()
    metric.update(images, real=False)
    expected = fid(quality.classifier_features(images), stats["mean"], stats["cov"], 300)
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-9) and expected > 0.01
    assert int(metric.real_features_num_samples) == 300  # no metadata: the stored features' count
    assert int(fid_metric(reference=False).real_features_num_samples) == 0


def test_sample_quality_in_batches_equals_all_at_once(random_feature_net) -> None:
    images, twins = _images(30, 1), _images(30, 2)
    labels = torch.arange(30) % 10
    whole = evaluate(images, labels, twins)
    metric = SampleQuality()
    for i in (0, 7, 19):  # uneven batches
        j = {0: 7, 7: 19, 19: 30}[i]
        metric.update(images[i:j], labels[i:j], twins[i:j])
    parts = metric.compute()
    assert set(whole) == {"fid", "precision", "recall", "class_accuracy", "psnr"}
    for key, value in whole.items():  # features of other batch sizes differ in float32 rounding
        assert parts[key] == pytest.approx(value, rel=1e-6), key
    assert math.isfinite(whole["psnr"]) and 0 <= whole["class_accuracy"] <= 1
    with pytest.raises(L2CError, match="one label per image"):
        metric.update(images[:3], labels[:2])
