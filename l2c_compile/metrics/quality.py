"""Sample quality for the Fashion-MNIST models: FID, precision/recall, class accuracy, PSNR.

Features come from the classifier trained in this repository (:mod:`l2c_compile.fmnist.classifier`),
not from Inception, so the FID here is labelled "FID (Fashion-MNIST features)" everywhere and is
not comparable with published numbers. Precision and recall follow Kynkäänniemi et al. (2019):
each set's manifold is the union of balls reaching every point's k-th nearest neighbour in that
set; precision is the share of generated samples inside the real manifold, recall the share of
real samples inside the generated one. PSNR compares each cached sample with the same-seed
uncached sample (images in [-1, 1], so the peak-to-peak range is 2).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from l2c_compile.errors import L2CError

metric_names: dict[str, str] = {
    "fid": "FID (Fashion-MNIST features)",
    "precision": "precision (k-NN, Fashion-MNIST features)",
    "recall": "recall (k-NN, Fashion-MNIST features)",
    "class_accuracy": "class accuracy (Fashion-MNIST classifier)",
    "psnr": "PSNR vs. uncached sample (dB)",
}


def frechet_distance(
    mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor
) -> float:
    """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½) of two Gaussians, in float64."""
    from scipy import linalg

    a, b = cov1.double().numpy(), cov2.double().numpy()
    diff = (mu1.double() - mu2.double()).numpy()
    covmean = linalg.sqrtm(a @ b)
    if not np.isfinite(covmean).all():
        # Near-singular product (few samples): regularise as pytorch-fid does.
        eps = np.eye(a.shape[0]) * 1e-6
        covmean = linalg.sqrtm((a + eps) @ (b + eps))
    covmean = covmean.real  # sqrtm of a PSD product can pick up tiny imaginary parts
    value = float(diff @ diff + np.trace(a) + np.trace(b) - 2.0 * np.trace(covmean))
    return max(value, 0.0)  # rounding can push an exact match a hair below zero


def fid(features: torch.Tensor, ref_mean: torch.Tensor, ref_cov: torch.Tensor) -> float:
    """FID of (N, D) features against reference statistics (mean (D,), covariance (D, D))."""
    if features.dim() != 2 or features.shape[1] != ref_mean.shape[0]:
        raise L2CError(f"FID needs (N, {ref_mean.shape[0]}) features, got {tuple(features.shape)}")
    if features.shape[0] < 2:
        raise L2CError("FID needs at least 2 samples")
    f = features.double()
    return frechet_distance(f.mean(0), torch.cov(f.T), ref_mean, ref_cov)


def _kth_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of x (N, D) to its k-th nearest other row: (N,)."""
    d = torch.cdist(x, x)  # (N, N); the diagonal (self, 0) is the 0-th neighbour
    return d.kthvalue(k + 1, dim=1).values  # (N,)


def _coverage(
    points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 1024
) -> float:
    """Share of ``points`` (M, D) inside any ball (centres (N, D), radii (N,))."""
    inside = []
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i : i + chunk], centres)  # (m, N)
        inside.append((d <= radii[None]).any(dim=1))
    return torch.cat(inside).float().mean().item()


def precision_recall(
    features: torch.Tensor, ref_features: torch.Tensor, k: int = 3
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds."""
    if features.dim() != 2 or ref_features.dim() != 2 or features.shape[1] != ref_features.shape[1]:
        raise L2CError(
            f"precision/recall needs (N, D) feature sets of equal D, got "
            f"{tuple(features.shape)} and {tuple(ref_features.shape)}"
        )
    if min(len(features), len(ref_features)) <= k:
        raise L2CError(f"precision/recall with k={k} needs more than {k} samples in each set")
    gen, ref = features.double(), ref_features.double()
    precision = _coverage(gen, ref, _kth_radius(ref, k))
    recall = _coverage(ref, gen, _kth_radius(gen, k))
    return precision, recall


def psnr(a: torch.Tensor, b: torch.Tensor, reduction: str = "mean") -> float | torch.Tensor:
    """PSNR in dB of images in [-1, 1], per image then averaged (``reduction="none"``: (N,)).

    Identical images give ``inf``; the mean is then ``inf`` too.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    if a.shape != b.shape or a.dim() < 2:
        raise L2CError(
            f"PSNR needs two image batches of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    dims = tuple(range(1, a.dim()))
    mse = (a - b).pow(2).mean(dim=dims)  # (N,)
    # torchmetrics gives the finite values; exact matches are inf by definition.
    per = peak_signal_noise_ratio(a, b, data_range=2.0, reduction="none", dim=dims)  # (N,)
    per = torch.where(mse == 0, torch.full_like(per, math.inf), per)
    if reduction == "none":
        return per
    if reduction != "mean":
        raise L2CError(f"unknown PSNR reduction {reduction!r}; choose mean or none")
    return per.mean().item()


def classifier_features(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, 32, 32) images in [-1, 1] -> (N, 128) features of the shipped classifier."""
    from l2c_compile.fmnist.classifier import batched, check_images, load_classifier

    return batched(load_classifier().features, check_images(images))


def class_accuracy(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images the shipped classifier assigns to their intended class."""
    from torchmetrics.functional import accuracy

    from l2c_compile.fmnist.classifier import batched, check_images, load_classifier

    images = check_images(images)
    if labels.shape != images.shape[:1]:
        raise L2CError(
            f"class accuracy needs one label per image, got {tuple(labels.shape)} for {len(images)} images"
        )
    logits = batched(load_classifier(), images)  # (N, 10)
    return accuracy(
        logits, labels.long().cpu(), task="multiclass", num_classes=logits.shape[1]
    ).item()


def evaluate(
    images: torch.Tensor,
    labels: torch.Tensor,
    reference_images: torch.Tensor | None = None,
    k: int = 3,
) -> dict[str, float]:
    """All quality metrics of generated ``images`` (N, 1, 32, 32) in [-1, 1]; labels (N,).

    Keys: ``fid``, ``precision``, ``recall``, ``class_accuracy`` and, when ``reference_images``
    (the same-seed uncached samples) is given, ``psnr``. ``metric_names`` holds display labels.
    """
    from l2c_compile.fmnist.classifier import reference_stats

    stats = reference_stats()
    feats = classifier_features(images).double()  # (N, 128)
    # k-NN radii shrink as a set grows: compare against as many reference features as samples
    # (the stored ones are a random subset, so any prefix is one too).
    ref = stats["features"][: max(len(feats), k + 1)]
    precision, recall = precision_recall(feats, ref, k=k)
    out = {
        "fid": fid(feats, stats["mean"], stats["cov"]),
        "precision": precision,
        "recall": recall,
        "class_accuracy": class_accuracy(images, labels),
    }
    if reference_images is not None:
        out["psnr"] = psnr(images, reference_images)
    return out
