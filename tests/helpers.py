"""Small builders shared by the compiler, runtime and CLI tests."""

from __future__ import annotations

import random

import torch

from l2c_compile.models.dit import DiT
from l2c_compile.models.registry import init_random
from l2c_compile.models.uvit import UViT
from l2c_compile.samplers.base import SamplerPlan
from l2c_compile.schedule import CallSchedule, Schedule


def tiny_dit(seed: int = 0, **overrides) -> DiT:
    """A random, non-degenerate DiT small enough for exhaustive tests."""
    kwargs = dict(
        input_size=8,
        patch_size=2,
        in_channels=4,
        hidden_size=32,
        depth=2,
        num_heads=2,
        num_classes=5,
        learn_sigma=True,
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = DiT(**kwargs)
    init_random(model, seed)
    return model.eval()


def tiny_uvit(seed: int = 0, **overrides) -> UViT:
    """A random U-ViT small enough for exhaustive tests."""
    kwargs = dict(
        img_size=8, patch_size=2, in_chans=4, embed_dim=32, depth=2, num_heads=2, num_classes=6
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = UViT(**kwargs)
    init_random(model, seed)
    return model.eval()


def random_schedule(
    plan: SamplerPlan, depth: int, rng: random.Random, p: float = 0.5, model: str = "test"
) -> Schedule:
    """Each sublayer of each cache call reused with probability p."""
    calls = []
    for c in plan.calls:
        attn = tuple(i for i in range(depth) if c.role == "cache" and rng.random() < p)
        mlp = tuple(i for i in range(depth) if c.role == "cache" and rng.random() < p)
        calls.append(CallSchedule(c.index, c.timestep, c.role, c.router_index, attn, mlp))
    return Schedule(
        model=model,
        depth=depth,
        sampler=plan.sampler,
        nfe=plan.nfe,
        threshold=None,
        source={"kind": "test"},
        calls=tuple(calls),
    )


def inputs(model, batch: int = 2, seed: int = 0):
    """Seeded noise and labels for ``model``."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, model.in_channels, model.input_size, model.input_size, generator=g)
    labels = torch.randint(0, model.null_class, (batch,), generator=g)
    return noise, labels


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b| (norm-wise relative error, robust near zero entries)."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
