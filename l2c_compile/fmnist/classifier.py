"""The Fashion-MNIST classifier whose features stand in for Inception in FID.

Inception-v3 weights are not available here, so sample quality is measured in the feature space
of a small CNN trained in this repository on 32×32 Fashion-MNIST (the models' own resolution
and range). Its 128-d penultimate layer (before the ReLU, so the features are roughly Gaussian
rather than half zeros) plays the role of Inception's pool3 features; its logits give the class
accuracy of class-conditional samples. Numbers computed this way are *not* comparable with
published Inception FIDs and are always labelled "FID (Fashion-MNIST features)".

    python -m l2c_compile.fmnist.classifier --minutes 15

trains it on one thread, then writes ``assets/fmnist-classifier.safetensors`` and the test set's
reference statistics ``assets/fmnist-test-stats.safetensors`` (feature mean, covariance, and a
fixed sample of features for precision/recall).
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from l2c_compile.errors import L2CError
from l2c_compile.fmnist.data import NUM_CLASSES, load_tensors
from l2c_compile.fmnist.specs import ASSETS
from l2c_compile.io import atomic_path, write_text_atomic

CLASSIFIER_PATH = ASSETS / "fmnist-classifier.safetensors"
STATS_PATH = ASSETS / "fmnist-test-stats.safetensors"
CARD_PATH = ASSETS / "fmnist-classifier.md"
FEATURE_DIM = 128
PR_SAMPLE = 5000  # reference features kept for precision/recall


class FMNISTClassifier(nn.Module):
    """Three conv stages (32, 64, 128 channels, 32→4 px), a 128-d feature layer, 10 logits."""

    def __init__(self, num_classes: int = NUM_CLASSES, feature_dim: int = FEATURE_DIM) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.conv = nn.Sequential(stage(1, 32), stage(32, 64), stage(64, 128))
        self.fc = nn.Linear(128 * 4 * 4, feature_dim)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 1, 32, 32) in [-1, 1] -> (N, 128) pre-activation features."""
        h = self.conv(x)  # (N, 128, 4, 4)
        return self.fc(h.flatten(1))  # (N, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 1, 32, 32) in [-1, 1] -> (N, 10) logits."""
        return self.head(self.dropout(F.relu(self.features(x))))  # (N, 10)


def check_images(images: torch.Tensor) -> torch.Tensor:
    """Validate (N, 1, 32, 32) images; returns them as float32 on the CPU."""
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, 32, 32):
        raise L2CError(
            f"Fashion-MNIST metrics need images of shape (N, 1, 32, 32), got {tuple(images.shape)}"
        )
    return images.detach().float().cpu()


@torch.no_grad()
def batched(fn, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Apply ``fn`` to ``images`` in chunks (bounded memory) and concatenate the results."""
    return torch.cat([fn(images[i : i + batch]) for i in range(0, len(images), batch)])


@functools.cache
def load_classifier(path: str | None = None) -> FMNISTClassifier:
    """The shipped classifier (cached), in eval mode; L2CError if its weights are missing."""
    from safetensors.torch import load_file

    weights = Path(path) if path is not None else CLASSIFIER_PATH
    if not weights.is_file():
        raise L2CError(
            f"classifier weights {weights} not found; train them with "
            "`python -m l2c_compile.fmnist.classifier`"
        )
    model = FMNISTClassifier()
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval().requires_grad_(False)


@functools.cache
def reference_stats(path: str | None = None) -> dict[str, torch.Tensor]:
    """Test-set feature statistics: ``mean`` (128,), ``cov`` (128, 128), ``features`` (5000, 128)."""
    from safetensors.torch import load_file

    stats = Path(path) if path is not None else STATS_PATH
    if not stats.is_file():
        raise L2CError(
            f"reference statistics {stats} not found; compute them with "
            "`python -m l2c_compile.fmnist.classifier`"
        )
    out = load_file(str(stats))
    return {k: v.double() if k in ("mean", "cov") else v for k, v in out.items()}


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    f = features.double()
    return f.mean(0), torch.cov(f.T)


def train_classifier(
    minutes: float,
    epochs: int,
    seed: int = 0,
    batch: int = 128,
    lr: float = 2e-3,
    log_every: int = 100,
) -> tuple[FMNISTClassifier, dict[str, float]]:
    """Train on the training split within ``minutes``; returns the model and a summary (test accuracy…)."""
    torch.manual_seed(seed)
    x, y = load_tensors("train")  # (60000, 1, 32, 32), (60000,)
    xt, yt = load_tensors("test")
    model = FMNISTClassifier()
    steps_total = epochs * (len(x) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)

    def batches() -> Iterator[torch.Tensor]:
        while True:  # epochs until the step or time budget ends
            order = torch.randperm(len(x), generator=gen)
            yield from (order[i : i + batch] for i in range(0, len(x) - batch + 1, batch))

    start = time.monotonic()
    step = 0
    model.train()
    for step, idx in enumerate(batches()):
        # Progress is steps or time, whichever is further along, so the learning rate has
        # annealed by the deadline even on a busy machine.
        progress = max(step / steps_total, (time.monotonic() - start) / (60 * minutes))
        if progress >= 1.0:
            break
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * progress))
        # Random ±2 px shifts: the generated garments are not always centred like the data.
        dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
        xb = torch.roll(x[idx], shifts=(dy, dx), dims=(2, 3))  # (B, 1, 32, 32)
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % log_every == 0:
            print(
                f"step {step + 1}/{steps_total} loss {loss.item():.4f} progress {progress:.2f}",
                flush=True,
            )
    model.eval()
    acc = (batched(model, xt).argmax(1) == yt).float().mean().item()
    print(f"test accuracy {acc:.4f}", flush=True)
    info = {
        "steps": step,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "test_accuracy": acc,
        "minutes": (time.monotonic() - start) / 60,
        "epochs": step * batch / len(x),
    }
    return model.requires_grad_(False), info


def write_assets(
    model: FMNISTClassifier,
    weights: Path = CLASSIFIER_PATH,
    stats: Path = STATS_PATH,
    seed: int = 0,
) -> None:
    """Save the classifier and the test set's feature statistics as safetensors (atomically)."""
    from safetensors.torch import save_file

    xt, _ = load_tensors("test")
    feats = batched(model.features, xt)  # (10000, 128)
    mean, cov = feature_stats(feats)
    keep = torch.randperm(len(feats), generator=torch.Generator().manual_seed(seed))[:PR_SAMPLE]
    with atomic_path(weights) as tmp:
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            str(tmp),
            metadata={"model": "fmnist-classifier"},
        )
    with atomic_path(stats) as tmp:
        save_file(
            {"mean": mean, "cov": cov, "features": feats[keep].contiguous()},
            str(tmp),
            metadata={"source": "Fashion-MNIST t10k, 32x32 in [-1, 1]", "n": str(len(feats))},
        )


def classifier_card(info: dict[str, float], args: argparse.Namespace) -> str:
    """The Markdown card shipped next to the classifier weights."""
    params = sum(p.numel() for p in FMNISTClassifier().parameters())
    return f"""# fmnist-classifier (the FID feature network)

A small CNN trained in this repository on the Fashion-MNIST training set at 32×32 in [-1, 1]
(the diffusion models' own format). Its 128-d penultimate layer, before the ReLU, replaces
Inception's pool3 features: scores computed with it are reported as "FID (Fashion-MNIST
features)" and are not comparable with Inception FIDs. Its logits give class accuracy.

| | |
|---|---|
| architecture | 3 × (conv 3×3, BatchNorm, ReLU, max-pool): 32, 64, 128 channels; linear 2048→128 (features); ReLU, dropout 0.3, linear 128→10 |
| parameters | {params:,} |
| training | AdamW lr {info["lr"]:g}, weight decay 1e-4, cosine over the step/time budget, batch {info["batch"]:.0f}, random ±2 px shifts |
| steps | {info["steps"]:,} ({info["epochs"]:.2f} epochs), {info["minutes"]:.1f} min wall on one thread |
| test accuracy | {100 * info["test_accuracy"]:.2f} % (10,000 test images) |
| reference statistics | `fmnist-test-stats.safetensors`: mean and covariance of the 10,000 test features, and {PR_SAMPLE} of them (random, seed {info["seed"]:.0f}) for precision/recall |

Retrain: `python -m l2c_compile.fmnist.classifier --minutes {args.minutes:g} --epochs {args.epochs} --seed {args.seed}`
"""


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m l2c_compile.fmnist.classifier``."""
    p = argparse.ArgumentParser(description="Train the Fashion-MNIST feature classifier")
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, info = train_classifier(args.minutes, args.epochs, args.seed)
    write_assets(model, seed=args.seed)
    write_text_atomic(CARD_PATH, classifier_card(info, args))


if __name__ == "__main__":
    main()
