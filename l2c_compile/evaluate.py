"""Sample-quality evaluation of a schedule, behind `l2c-compile eval` and `benchmarks/quality.py`.

One evaluation draws K class-balanced, seeded samples twice — with the compiled sampler for the
schedule and with the compiled uncached sampler, from the *same* noise and labels — and reports
FID, precision, recall and class accuracy of both, the PSNR of each cached sample against its
uncached twin, the MACs of both trajectories (thop convention, spec §5.3), the sublayers the
schedule removes, and the measured time per image on this machine.

FID and precision/recall use the Fashion-MNIST classifier's features (see
:mod:`l2c_compile.metrics.quality`), so only models that draw 1×32×32 Fashion-MNIST images in 10
classes can be evaluated; the numbers are labelled "FID (Fashion-MNIST features)" everywhere.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from l2c_compile import progress as bars
from l2c_compile.errors import L2CError

ROUTER_SUFFIXES = (".safetensors", ".pt", ".pth")
Progress = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Inputs: model, plan, schedule, seeded noise
# ---------------------------------------------------------------------------------------------


def has_feature_network(spec: Any) -> bool:
    """Whether the quality metrics apply: pixel-space 1×32×32 images in Fashion-MNIST's 10 classes."""
    return (
        bool(spec.pixel_space)
        and tuple(spec.latent_shape) == (1, 32, 32)
        and spec.num_classes == 10
    )


def require_feature_network(spec: Any) -> None:
    """L2CError unless :func:`has_feature_network` holds for ``spec``."""
    if not has_feature_network(spec):
        raise L2CError(
            f"{spec.name} has no feature network for FID: only models drawing 1x32x32 "
            f"Fashion-MNIST images in 10 classes can be evaluated (e.g. DiT-FMNIST, U-ViT-FMNIST), "
            f"got {'x'.join(map(str, spec.latent_shape))} with {spec.num_classes} classes"
        )


def load_model(spec: Any) -> nn.Module:
    """The spec's model with its shipped weights, in eval mode; L2CError when it ships none."""
    from l2c_compile.models.registry import build_model, load_checkpoint

    ckpt = getattr(spec, "checkpoint", None)
    if not ckpt or not Path(ckpt).is_file():
        raise L2CError(f"{spec.name} ships no weights; evaluation needs a trained model")
    model = build_model(spec)
    load_checkpoint(model, ckpt)
    return model.eval().requires_grad_(False)


def make_spec_plan(spec: Any, sampler: str | None, nfe: int, **options: object):
    """The sampler plan for ``spec`` (its noise schedule and time convention)."""
    from l2c_compile.samplers import make_plan

    return make_plan(
        sampler or spec.default_sampler,
        nfe,
        noise_schedule=spec.noise_schedule,
        time_input=spec.time_input,
        **options,
    )


def resolve_schedule(
    spec: Any, plan: Any, depth: int, schedule: Path | None, threshold: float | None = None
):
    """The schedule to evaluate: a schedule JSON, a router file, or (None) the shipped router."""
    from l2c_compile.demo import shipped_router
    from l2c_compile.schedule import Schedule, default_threshold, import_router

    theta = threshold if threshold is not None else default_threshold(spec.family)
    if schedule is None:
        router = shipped_router(spec.name, plan.sampler, plan.nfe)
        if router is None:
            raise L2CError(
                f"no shipped router for {spec.name} {plan.sampler} NFE {plan.nfe}; "
                "pass --schedule FILE (a schedule JSON or a router file)"
            )
        return import_router(router, plan, model=spec.name, depth=depth, threshold=theta)
    path = Path(schedule)
    if path.suffix in ROUTER_SUFFIXES:
        return import_router(path, plan, model=spec.name, depth=depth, threshold=theta)
    sched = Schedule.load(path)
    sched.validate_for(spec.name, depth, plan)
    return sched


def eval_inputs(
    n: int, latent_shape: tuple[int, ...], num_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded noise (n, C, H, W) and class-balanced labels (n,): class i % num_classes, shuffled."""
    if n < 2:
        raise L2CError(f"evaluation needs at least 2 samples, got {n}")
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, *latent_shape, generator=gen)  # (n, C, H, W)
    # Every class gets ⌊n/C⌋ or ⌈n/C⌉ samples; the shuffle only decides which noise each gets.
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]  # (n,)
    return noise, labels


# ---------------------------------------------------------------------------------------------
# Sampling and metrics
# ---------------------------------------------------------------------------------------------


@dataclass
class Samples:
    """Images drawn by one sampler, with the wall time it took per image."""

    images: torch.Tensor  # (N, C, H, W), clamped to [-1, 1]
    seconds_per_image: float  # median over batches of (batch time / batch size)


@torch.no_grad()
def draw(
    sampler: Callable[..., torch.Tensor],
    noise: torch.Tensor,
    labels: torch.Tensor,
    cfg_scale: float | None,
    batch: int = 250,
) -> Samples:
    """Run ``sampler(noise, labels, cfg_scale)`` batch by batch; images and time per image."""
    if batch < 1:
        raise L2CError(f"batch must be >= 1, got {batch}")
    outs, per_image = [], []
    for i in range(0, len(noise), batch):
        t0 = time.perf_counter()
        out = sampler(noise[i : i + batch], labels[i : i + batch], cfg_scale)  # (b, C, H, W)
        per_image.append((time.perf_counter() - t0) / len(out))
        outs.append(out.float().clamp(-1, 1))
    # The median shrugs off a batch slowed by other work on a shared machine.
    return Samples(torch.cat(outs), statistics.median(per_image))


def quality(
    images: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor | None = None
) -> dict[str, float]:
    """FID, precision, recall, class accuracy (+ PSNR against ``reference``), all as floats."""
    from l2c_compile.metrics.quality import evaluate

    return {k: float(v) for k, v in evaluate(images, labels, reference).items()}


# ---------------------------------------------------------------------------------------------
# One evaluation
# ---------------------------------------------------------------------------------------------


@dataclass
class EvalConfig:
    """What `l2c-compile eval` evaluates."""

    model: str
    nfe: int
    sampler: str | None = None
    schedule: Path | None = None  # None: the shipped router for (model, sampler, NFE)
    threshold: float | None = None  # θ when a router is thresholded (None: the family's)
    samples: int = 1000
    seed: int = 0
    cfg_scale: float | None = None  # None: the model's default
    batch: int = 250


def run_eval(cfg: EvalConfig, progress: Progress = lambda _: None) -> dict[str, Any]:
    """Evaluate one schedule against the uncached sampler at the same seeds; return the report."""
    import l2c_compile
    from l2c_compile.metrics.quality import metric_names
    from l2c_compile.models.registry import get_spec
    from l2c_compile.schedule_summary import schedule_summary

    spec = get_spec(cfg.model)
    require_feature_network(spec)
    model = load_model(spec)
    plan = make_spec_plan(spec, cfg.sampler, cfg.nfe)
    depth = len(model.transformer_blocks())
    sched = resolve_schedule(spec, plan, depth, cfg.schedule, cfg.threshold)
    scale = spec.default_cfg_scale if cfg.cfg_scale is None else cfg.cfg_scale
    noise, labels = eval_inputs(cfg.samples, spec.latent_shape, spec.num_classes, cfg.seed)

    progress("compiling the cached and the uncached sampler")
    cached = l2c_compile.compile(model, plan, sched, model_info=spec.to_dict())
    full = l2c_compile.compile(model, plan, None, model_info=spec.to_dict())
    calls = -(-cfg.samples // max(cfg.batch, 1)) * plan.nfe  # every batch runs the whole plan
    progress(f"sampling {cfg.samples} images, uncached")
    with (
        bars.task(f"{cfg.samples} images, uncached", calls, "model calls"),
        bars.counting_model_calls(full),
    ):
        ref = draw(full, noise, labels, scale, cfg.batch)
    progress(f"sampling {cfg.samples} images with the schedule")
    with (
        bars.task(f"{cfg.samples} images, schedule", calls, "model calls"),
        bars.counting_model_calls(cached),
    ):
        got = draw(cached, noise, labels, scale, cfg.batch)
    progress("scoring")
    q_full = quality(ref.images, labels)
    q = quality(got.images, labels, ref.images)

    summary = schedule_summary(sched)
    stats = sched.stats()
    return {
        "model": spec.name,
        "sampler": plan.sampler,
        "nfe": plan.nfe,
        "samples": cfg.samples,
        "seed": cfg.seed,
        "cfg_scale": scale,
        "schedule": {"mode": sched.mode, "threshold": sched.threshold, "source": sched.source},
        **q,
        **{f"{k}_full": v for k, v in q_full.items()},
        "macs_cached": summary["macs_cached"],
        "macs_full": summary["macs_full"],
        "removed": stats["skipped_total"],
        "removable": stats["total_cache_sublayers"],
        "latency_per_image_s": got.seconds_per_image,
        "latency_per_image_full_s": ref.seconds_per_image,
        "speedup": ref.seconds_per_image / got.seconds_per_image,
        "metric_names": metric_names,
        "machine": machine(),
    }


def machine() -> dict[str, Any]:
    """Where the latency was measured (CPU model, threads, torch)."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:  # platform gives only the architecture on Linux; the model name is in /proc/cpuinfo
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "device": "cpu",
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
