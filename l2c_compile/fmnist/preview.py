"""Class-conditional samples of the Fashion-MNIST models, as tensors or a PNG grid.

    python -m l2c_compile.fmnist.preview --model DiT-FMNIST --out benchmarks/results/fmnist-dit-samples.png

One row per class (T-shirt/top … Ankle boot), sampled uncached with the model's default sampler
and CFG scale unless told otherwise; ``--metrics`` also prints class accuracy and FID
(Fashion-MNIST features) of the grid's samples.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from l2c_compile.errors import L2CError, suggest
from l2c_compile.fmnist.data import NUM_CLASSES


def load_model(name: str) -> tuple[object, nn.Module]:
    """The registered spec and its model with the shipped weights loaded."""
    from l2c_compile.fmnist.specs import checkpoint_path, fmnist_specs
    from l2c_compile.models.registry import build_model, load_checkpoint

    specs = fmnist_specs()
    if name not in specs:
        raise L2CError(f"unknown Fashion-MNIST model {name!r}{suggest(name, list(specs))}")
    spec = specs[name]
    model = build_model(spec)
    load_checkpoint(model, checkpoint_path(spec.name))
    return spec, model


def generate(
    spec: object,
    model: nn.Module,
    per_class: int,
    *,
    nfe: int = 20,
    cfg_scale: float | None = None,
    sampler: str | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` uncached samples of each class: images (10·per_class, 1, 32, 32) in [-1, 1], labels."""
    from l2c_compile.compiler.reference import sample_uncached
    from l2c_compile.samplers import make_plan

    plan = make_plan(
        sampler or spec.default_sampler,
        nfe,
        noise_schedule=spec.noise_schedule,
        time_input=spec.time_input,
    )
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)  # (N,) class-major rows
    noise = torch.randn(
        (len(labels), *spec.latent_shape), generator=torch.Generator().manual_seed(seed)
    )
    scale = spec.default_cfg_scale if cfg_scale is None else cfg_scale
    images = sample_uncached(model, plan, noise, labels, cfg_scale=scale if scale > 0 else None)
    return images.clamp(-1, 1), labels


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m l2c_compile.fmnist.preview``."""
    from l2c_compile.images import make_grid, save_png

    p = argparse.ArgumentParser(description="Sample a grid from a Fashion-MNIST model")
    p.add_argument("--model", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--nfe", type=int, default=20)
    p.add_argument("--cfg-scale", type=float, default=None)
    p.add_argument("--sampler", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--metrics", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec, model = load_model(args.model)
    images, labels = generate(
        spec,
        model,
        args.per_class,
        nfe=args.nfe,
        cfg_scale=args.cfg_scale,
        sampler=args.sampler,
        seed=args.seed,
    )
    save_png(make_grid(images, ncol=args.per_class, scale=2), args.out)
    if args.metrics:
        from l2c_compile.metrics.quality import evaluate, metric_names

        result = evaluate(images, labels)
        print(json.dumps({metric_names[k]: round(v, 4) for k, v in result.items()}))


if __name__ == "__main__":
    main()
