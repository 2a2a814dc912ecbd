"""Small builders shared by the compiler, runtime and CLI tests."""

from __future__ import annotations

import contextlib
import importlib.util
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

from l2c_compile.families.vocabulary import Layout
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
    plan: SamplerPlan, depth: int, rng: random.Random, p: float = 0.5, model: str = "test",
    layout: Layout | None = None,
) -> Schedule:
    """Each sublayer of each cache call reused with probability p (``layout``: the blocks' kinds,
    default attention and MLP in every block)."""
    layout = layout or Layout.uniform(depth)
    calls = []
    for c in plan.calls:
        reuse = {k: tuple(i for i in layout.blocks(k) if c.role == "cache" and rng.random() < p)
                 for k in layout.kinds}
        calls.append(CallSchedule(c.index, c.timestep, c.role, c.router_index, reuse=reuse))
    return Schedule(
        model=model,
        depth=depth,
        sampler=plan.sampler,
        nfe=plan.nfe,
        threshold=None,
        source={"kind": "test"},
        calls=tuple(calls),
        kinds=layout.kinds,
        groups=layout,
    )


def free_form_schedule(
    plan: SamplerPlan, depth: int, rng: random.Random, p: float = 0.5, p_trunk: float = 0.2,
    model: str = "test", layout: Layout | None = None,
) -> Schedule:
    """A free-form (version 2) schedule: every call after the first reuses the trunk with
    probability ``p_trunk``, else each sublayer with probability ``p``, whatever its role (a
    reuse reads the latest call that computed it, possibly several calls back)."""
    layout = layout or Layout.uniform(depth)
    calls = []
    for c in plan.calls:
        trunk = c.index > 0 and rng.random() < p_trunk
        reuse = {k: tuple(i for i in layout.blocks(k) if c.index > 0 and not trunk and rng.random() < p)
                 for k in layout.kinds}
        calls.append(CallSchedule(c.index, c.timestep, c.role, c.router_index, reuse=reuse, trunk=trunk))
    return Schedule(model=model, depth=depth, sampler=plan.sampler, nfe=plan.nfe, threshold=None,
                    source={"kind": "test"}, calls=tuple(calls), kinds=layout.kinds, groups=layout)


def inputs(model, batch: int = 2, seed: int = 0):
    """Seeded noise and labels for ``model``."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, model.in_channels, model.input_size, model.input_size, generator=g)
    labels = torch.randint(0, model.null_class, (batch,), generator=g)
    return noise, labels


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b| (norm-wise relative error, robust near zero entries)."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@contextlib.contextmanager
def bench_script(filename: str, module_name: str, leaks: tuple[str, ...] = ()) -> Iterator[ModuleType]:
    """``benchmarks/<filename>`` imported as ``module_name`` with ``benchmarks/`` on ``sys.path``;
    on exit the module and the plain-named modules it imported (``leaks``: ``common``, ``latency``…)
    are forgotten, the path entry removed and torch's thread count restored (``--threads`` sets a
    process-wide value)."""
    threads = torch.get_num_threads()
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / filename)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(module)
        yield module
    finally:
        for name in (module_name, *leaks):
            sys.modules.pop(name, None)
        sys.path.remove(str(BENCHMARKS))
        torch.set_num_threads(threads)
