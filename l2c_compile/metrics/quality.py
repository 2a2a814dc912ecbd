"""Sample quality for the Fashion-MNIST models: FID, precision/recall, class accuracy, PSNR.

Features come from the classifier trained in this repository (:mod:`l2c_compile.fmnist.classifier`),
not from Inception, so the FID here is labelled "FID (Fashion-MNIST features)" everywhere and is
not comparable with published numbers. Precision and recall follow Kynkäänniemi et al. (2019):
each set's manifold is the union of balls reaching every point's k-th nearest neighbour in that
set; precision is the share of generated samples inside the real manifold, recall the share of
real samples inside the generated one. PSNR compares each cached sample with the same-seed
uncached sample (images in [-1, 1], so the peak-to-peak range is 2).

FID is torchmetrics' ``FrechetInceptionDistance`` with the classifier as its feature network and
the test set's stored statistics as its real side; :class:`SampleQuality` wraps every metric in
one torchmetrics ``Metric`` so that several ranks can each score a share of the samples.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from l2c_compile.errors import L2CError
from l2c_compile.fmnist.classifier import FEATURE_DIM

try:
    from torchmetrics import Metric
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.utilities import dim_zero_cat
except ImportError:  # an optional dependency: say how to get it, in one line
    raise L2CError("quality metrics need torchmetrics: pip install 'l2c-compile[metrics]'") from None

metric_names: dict[str, str] = {
    "fid": "FID (Fashion-MNIST features)",
    "precision": "precision (k-NN, Fashion-MNIST features)",
    "recall": "recall (k-NN, Fashion-MNIST features)",
    "class_accuracy": "class accuracy (Fashion-MNIST classifier)",
    "psnr": "PSNR vs. uncached sample (dB)",
}


class GivenFeatures(nn.Module):
    """A pass-through "feature network" for FID of features computed elsewhere: (N, D) -> (N, D)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features  # torchmetrics reads the width from here

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) -> the same features in float64 (so FID is computed and returned in float64)."""
        return features.double()


class ClassifierFeatures(nn.Module):
    """The shipped classifier's 128-d features as torchmetrics' FID feature network.

    Holds no weights itself (the classifier is loaded once and cached), so copying the metric
    does not copy the classifier. Output in float64, so FID is computed and returned in float64.
    """

    num_features = FEATURE_DIM

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, 32, 32) images in [-1, 1] -> (N, 128) features, float64."""
        return classifier_features(images).double()


def set_gaussian(
    metric: FrechetInceptionDistance, mean: torch.Tensor, cov: torch.Tensor, count: int
) -> None:
    """Make the real side of ``metric`` the Gaussian (mean (D,), unbiased cov (D, D)) of ``count`` samples.

    torchmetrics keeps sums (Σx, Σxxᵀ, n) so that ranks can add them up; these are the sums that
    give back exactly this mean and covariance.
    """
    if count < 2:
        raise L2CError(f"reference statistics need at least 2 samples, got {count}")
    mean, cov = mean.double().to(metric.device), cov.double().to(metric.device)
    metric.real_features_sum = mean * count
    metric.real_features_cov_sum = cov * (count - 1) + count * torch.outer(mean, mean)
    metric.real_features_num_samples = torch.tensor(count, device=metric.device)


def reference_count() -> int:
    """How many test images the shipped reference statistics summarise (their metadata ``n``)."""
    from safetensors import safe_open

    from l2c_compile.fmnist import classifier

    stats = classifier.reference_stats()
    with safe_open(str(classifier.STATS_PATH), "pt") as f:
        n = (f.metadata() or {}).get("n")
    return int(n) if n is not None else len(stats["features"])


def fid_metric(reference: bool = True, **kwargs: Any) -> FrechetInceptionDistance:
    """torchmetrics' FID with the shipped classifier as feature network.

    The real side is the Fashion-MNIST test set's stored statistics (``reference=False`` leaves it
    empty: in a multi-rank run only rank 0 holds it, since ranks' sums are added up). Update it
    with generated images, ``metric.update(images, real=False)``; ``kwargs`` go to
    torchmetrics' ``Metric`` (``process_group``, ``sync_on_compute``, …).
    """
    from l2c_compile.fmnist.classifier import reference_stats

    metric = FrechetInceptionDistance(
        feature=ClassifierFeatures(), reset_real_features=False, **kwargs
    )
    if reference:
        stats = reference_stats()
        set_gaussian(metric, stats["mean"], stats["cov"], reference_count())
    return metric


def fid(
    features: torch.Tensor, ref_mean: torch.Tensor, ref_cov: torch.Tensor, ref_count: int = 10_000
) -> float:
    """FID of (N, D) features against reference statistics (mean (D,), covariance (D, D)).

    Computed by torchmetrics (‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½) in float64); ``ref_count``,
    the number of samples behind the reference statistics, only matters to rounding.
    """
    if features.dim() != 2 or features.shape[1] != ref_mean.shape[0]:
        raise L2CError(f"FID needs (N, {ref_mean.shape[0]}) features, got {tuple(features.shape)}")
    if features.shape[0] < 2:
        raise L2CError("FID needs at least 2 samples")
    metric = FrechetInceptionDistance(
        feature=GivenFeatures(features.shape[1]), sync_on_compute=False
    )
    set_gaussian(metric, ref_mean, ref_cov, ref_count)
    metric.update(features.detach().cpu(), real=False)
    return _fid_value(metric)


def _fid_value(metric: FrechetInceptionDistance) -> float:
    # torchmetrics takes Re √eig(Σ1 Σ2); rounding can push an exact match a hair below zero.
    return max(float(metric.compute()), 0.0)


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


class SampleQuality(Metric):
    """Every quality metric of generated Fashion-MNIST images, accumulated batch by batch.

    A torchmetrics ``Metric``: under torch.distributed each rank updates it with its own share of
    the samples and ``compute()`` combines the ranks (FID's feature sums are added; features,
    per-image correctness and PSNR are gathered), so K ranks score exactly the set one process
    would. ``distributed=True`` turns that on; only rank 0 then holds the reference side of FID,
    because the ranks' sums are added. ``kwargs`` go to ``Metric`` (``process_group``: a gloo
    group when the default one is NCCL, since the states stay on the CPU).
    """

    full_state_update = False

    def __init__(self, k: int = 3, distributed: bool = False, **kwargs: Any) -> None:
        import torch.distributed as dist

        kwargs.setdefault("sync_on_compute", distributed)
        super().__init__(**kwargs)
        self.k = k
        first = not (distributed and dist.is_initialized()) or dist.get_rank() == 0
        self.fid = fid_metric(reference=first, **kwargs)
        self.add_state("features", [], dist_reduce_fx="cat")  # (n, 128) per update
        self.add_state("correct", [], dist_reduce_fx="cat")  # (n,) 1.0 where the class is right
        self.add_state("psnr", [], dist_reduce_fx="cat")  # (n,) dB, only with reference images

    def update(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        reference_images: torch.Tensor | None = None,
    ) -> None:
        """Add (N, 1, 32, 32) images in [-1, 1] with their labels (N,) (+ same-seed uncached twins)."""
        from l2c_compile.fmnist.classifier import batched, check_images, load_classifier

        images = check_images(images)
        if labels.shape != images.shape[:1]:
            raise L2CError(
                f"class accuracy needs one label per image, got {tuple(labels.shape)} for {len(images)} images"
            )
        self.fid.update(images, real=False)
        # The classifier runs again here for the features precision/recall need: cheap next
        # to sampling, and it keeps torchmetrics' FID in charge of its own feature sums.
        self.features.append(classifier_features(images).double())
        logits = batched(load_classifier(), images)  # (N, 10)
        self.correct.append((logits.argmax(1) == labels.long().cpu()).double())
        if reference_images is not None:
            self.psnr.append(psnr(images, reference_images, reduction="none"))

    def compute(self) -> dict[str, float]:
        """``fid``, ``precision``, ``recall``, ``class_accuracy`` (+ ``psnr``) over every update."""
        from l2c_compile.fmnist.classifier import reference_stats

        feats = dim_zero_cat(self.features)
        if len(feats) < 2:
            raise L2CError("FID needs at least 2 samples")
        # k-NN radii shrink as a set grows: compare against as many reference features as
        # samples (the stored ones are a random subset, so any prefix is one too).
        ref = reference_stats()["features"][: max(len(feats), self.k + 1)]
        precision, recall = precision_recall(feats, ref, k=self.k)
        out = {
            "fid": _fid_value(self.fid),
            "precision": precision,
            "recall": recall,
            "class_accuracy": dim_zero_cat(self.correct).mean().item(),
        }
        # A list until the ranks are gathered, one tensor after (empty without reference images).
        psnrs = dim_zero_cat(self.psnr) if len(self.psnr) else torch.empty(0)
        if psnrs.numel():
            out["psnr"] = psnrs.mean().item()
        return out


def evaluate(
    images: torch.Tensor,
    labels: torch.Tensor,
    reference_images: torch.Tensor | None = None,
    k: int = 3,
) -> dict[str, float]:
    """All quality metrics of generated ``images`` (N, 1, 32, 32) in [-1, 1]; labels (N,).

    Keys: ``fid``, ``precision``, ``recall``, ``class_accuracy`` and, when ``reference_images``
    (the same-seed uncached samples) is given, ``psnr``. ``metric_names`` holds display labels.
    One process, all images at once; :class:`SampleQuality` is the batched, multi-rank form.
    """
    metric = SampleQuality(k=k)
    metric.update(images, labels, reference_images)
    return metric.compute()


def has_feature_network(spec: Any) -> bool:
    """Whether the quality metrics apply: pixel-space 1×32×32 images in Fashion-MNIST's 10 classes."""
    return (
        bool(spec.pixel_space)
        and tuple(spec.latent_shape) == (1, 32, 32)
        and spec.num_classes == 10
    )
