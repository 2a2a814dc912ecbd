"""MACs per image in the L2C paper's convention (pytorch-OpCounter / thop), spec §5.3.

Counted: every ``nn.Linear`` (``in_features`` × output elements) and ``nn.Conv*``
(``in_channels / groups`` × kernel size × output elements); biases, norms, activations, embedding
look-ups and the attention matmuls QKᵀ/AV are not. One image, one network evaluation: classifier-free
guidance is not doubled. Counts come from one forward pass on the meta device with hooks, so they
follow the real module structure (DiT-XL/2-256: 114.394 G; U-ViT-H/2: 128.749 G) and allocate nothing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from l2c_compile.errors import L2CError
from l2c_compile.models.registry import (
    MODELS,
    ModelSpec,
    build_model,
    count_params,
    depth_units,
    get_spec,
    num_blocks,
    with_depth_units,
)


class _Call(Protocol):
    reuse_attn: Sequence[int]
    reuse_mlp: Sequence[int]


class _Schedule(Protocol):
    nfe: int

    @property
    def calls(self) -> Iterable[_Call]: ...


@dataclass(frozen=True)
class MacCount:
    """thop-style MACs of one forward pass for one image."""

    total: int
    attn: int  # one block's attention sublayer (qkv + proj)
    mlp: int  # one block's MLP sublayer (fc1 + fc2)


def _module_macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features * out.numel()
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.in_channels // module.groups * math.prod(module.kernel_size) * out.numel()
    return 0


def measure_macs(spec: ModelSpec) -> MacCount:
    """Count one forward pass of the whole model for one image (meta device, hooks on Linear/Conv)."""
    model = build_model(spec, device="meta")
    per_module: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):

            def hook(mod: nn.Module, args: object, out: torch.Tensor, name: str = name) -> None:
                per_module[name] = per_module.get(name, 0) + _module_macs(mod, out)

            handles.append(module.register_forward_hook(hook))
    x = torch.empty(1, *spec.latent_shape, device="meta")  # (1, C, H, W)
    t = torch.empty(1, device="meta")  # (1,)
    y = torch.zeros(1, dtype=torch.long, device="meta")  # (1,)
    with torch.no_grad():
        model(x, t, y)
    for h in handles:
        h.remove()

    names = {id(m): n for n, m in model.named_modules()}

    def under(sub: nn.Module) -> int:
        prefix = names[id(sub)] + "."
        return sum(v for k, v in per_module.items() if k.startswith(prefix))

    blocks = model.transformer_blocks()
    attn = {under(b.attn) for b in blocks}
    mlp = {under(b.mlp) for b in blocks}
    if len(attn) != 1 or len(mlp) != 1:
        raise ValueError(
            f"{spec.name}: blocks differ in size, per-block sublayer MACs are ambiguous"
        )
    return MacCount(sum(per_module.values()), attn.pop(), mlp.pop())


@functools.cache
def count_macs(spec: ModelSpec) -> MacCount:
    """:func:`measure_macs`, but fast: meta forwards run in Python, so measure the model with one
    and two repeating units and extrapolate (every unit costs the same)."""
    one, two = measure_macs(with_depth_units(spec, 1)), measure_macs(with_depth_units(spec, 2))
    total = one.total + (depth_units(spec) - 1) * (two.total - one.total)
    return MacCount(total, one.attn, one.mlp)


def _spec(spec: str | ModelSpec) -> ModelSpec:
    return spec if isinstance(spec, ModelSpec) else get_spec(spec)


def forward_macs(spec: str | ModelSpec) -> int:
    """MACs of one network evaluation for one image."""
    return count_macs(_spec(spec)).total


def sublayer_macs(spec: str | ModelSpec) -> tuple[int, int]:
    """(attention, MLP) MACs of one block: what caching that sublayer saves per image."""
    c = count_macs(_spec(spec))
    return c.attn, c.mlp


def trajectory_macs(
    spec: str | ModelSpec, schedule: _Schedule | None, nfe: int | None = None
) -> tuple[int, int]:
    """(uncached, cached) MACs of a whole trajectory per image.

    ``schedule`` has ``.nfe`` and ``.calls`` (each with ``reuse_attn`` / ``reuse_mlp`` block ids);
    with ``schedule=None``, ``nfe`` alone gives the uncached baseline twice.
    """
    spec = _spec(spec)
    if schedule is None:
        if nfe is None:
            raise L2CError("trajectory_macs needs a schedule or an nfe")
        n = nfe
    else:
        n = schedule.nfe if nfe is None else nfe
        if n != schedule.nfe:
            raise L2CError(f"nfe {n} does not match the schedule's {schedule.nfe} model calls")
    if n < 0:
        raise L2CError(f"nfe must be positive, got {n}")
    count = count_macs(spec)
    full = n * count.total
    if schedule is None:
        return full, full
    depth = num_blocks(spec)
    saved = 0
    for call in schedule.calls:
        attn, mlp = set(call.reuse_attn), set(call.reuse_mlp)
        out_of_range = sorted(i for i in attn | mlp if not 0 <= int(i) < depth)
        if out_of_range:
            raise L2CError(
                f"schedule reuses block {out_of_range[0]}, but {spec.name} has {depth} blocks"
            )
        saved += len(attn) * count.attn + len(mlp) * count.mlp
    return full, full - saved


def model_table(names: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per registered model (or per name in ``names``): sizes, params, MACs per image."""
    rows = []
    for spec in (get_spec(n) for n in (names if names is not None else MODELS)):
        c, h, w = spec.latent_shape
        rows.append(
            {
                "name": spec.name,
                "family": spec.family,
                "depth": num_blocks(spec),
                "hidden": spec.hidden,
                "heads": spec.heads,
                "patch": spec.patch,
                "tokens": spec.tokens,
                "params": count_params(spec),
                "macs_per_forward": forward_macs(spec),
                "latent": f"{c}x{h}x{w}",
                "description": spec.description,
            }
        )
    return rows


def timing_note(measured: float, ideal: float | None, slack: float = 1.10) -> str | None:
    """A warning when a measured speedup is beyond what the schedule can give (its MACs ratio).

    A schedule cannot make sampling faster than it makes the arithmetic smaller, so a measured
    speedup above ``slack × ideal`` means the machine's load changed while the executors were
    timed; None when the measurement is plausible.
    """
    if ideal is not None and measured > slack * ideal:
        return (
            f"measured speedup {measured:.2f}× exceeds the schedule's ideal {ideal:.2f}× (MACs): "
            "the machine's load changed while timing; rerun on a quiet machine before reading the latency"
        )
    return None
