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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
    kinds: tuple[str, ...]

    def reused(self, kind: str) -> Sequence[int]: ...


class _Schedule(Protocol):
    nfe: int

    @property
    def calls(self) -> Iterable[_Call]: ...


@dataclass(frozen=True)
class MacCount:
    """thop-style MACs of one forward pass for one image.

    ``per_kind``: one block's MACs per sublayer kind (e.g. attention: qkv + proj; MLP: fc1 + fc2),
    where every block that has the kind costs the same; ``per_key``: each sublayer's own MACs,
    ``{(kind, block): MACs}``, where blocks differ (block groups of different widths or kinds);
    ``trunk``: every block's MACs together (what a call that reuses the trunk saves).
    """

    total: int
    per_kind: Mapping[str, int] = field(default_factory=dict, hash=False)
    per_key: Mapping[tuple[str, int], int] | None = field(default=None, hash=False)
    trunk: int | None = None

    def of(self, kind: str, block: int | None = None) -> int:
        """MACs of sublayer ``kind`` of ``block`` (of any block, where all cost the same)."""
        if self.per_key is not None and block is not None and (kind, block) in self.per_key:
            return self.per_key[(kind, block)]
        if kind not in self.per_kind:
            raise ValueError(f"no single MAC count for {kind} sublayers; blocks differ (ask per block)")
        return self.per_kind[kind]


def module_macs(model: nn.Module, *inputs: Any, **kwargs: Any) -> MacCount:
    """thop-style MACs of ``model(*inputs, **kwargs)`` (one image's inputs) with each declared
    sublayer's MACs (its family's declaration, :mod:`l2c_compile.families`); works for any model
    with a family, e.g. diffusers' PixArt. Kinds whose blocks all cost the same also get one
    per-kind count (``MacCount.per_kind``)."""
    from l2c_compile.families import family_of

    family = family_of(model)
    per_module: dict[str, int] = {}
    widths: dict[str, int] = {}  # a projected branch's module path → the width it hands its projection
    branches = {f"{block}.{k.path}" for block, k in family.sublayers(model) if k.projection is not None}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):

            def hook(mod: nn.Module, args: object, out: torch.Tensor, name: str = name) -> None:
                per_module[name] = per_module.get(name, 0) + _module_macs(mod, out)

            handles.append(module.register_forward_hook(hook))
        if name in branches:

            def width(mod: nn.Module, args: object, out: torch.Tensor, name: str = name) -> None:
                widths[name] = int(out.shape[-1])

            handles.append(module.register_forward_hook(width))
    try:
        with torch.no_grad():
            model(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()

    def under(path: str) -> int:
        return sum(v for k, v in per_module.items() if k == path or k.startswith(path + "."))

    ids = {path: i for i, (path, _) in enumerate(family.blocks(model))}
    sublayers = family.sublayers(model)
    per_key: dict[tuple[str, int], int] = {}
    for block, k in sublayers:
        per_key[(k.kind, ids[block])] = under(f"{block}.{k.path}")
        if k.projection is not None:  # plus its share of the projection, by input columns
            total = sum(widths[f"{b}.{o.path}"] for b, o in sublayers if b == block and o.projection == k.projection)
            share = per_module.get(f"{block}.{k.projection}", 0) * widths[f"{block}.{k.path}"]
            per_key[(k.kind, ids[block])] += share // total
    per_kind: dict[str, set[int]] = {}
    for (kind, _), macs in per_key.items():
        per_kind.setdefault(kind, set()).add(macs)
    same = {k: next(iter(v)) for k, v in per_kind.items() if len(v) == 1}
    blocks = tuple(f"{path}." for path, _ in family.blocks(model))
    trunk = sum(v for k, v in per_module.items() if k.startswith(blocks))
    return MacCount(sum(per_module.values()), same, per_key, trunk)


def _module_macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features * out.numel()
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.in_channels // module.groups * math.prod(module.kernel_size) * out.numel()
    return 0


def measure_macs(spec: ModelSpec) -> MacCount:
    """Count one forward pass of the whole model for one image (meta device, hooks on Linear/Conv)."""
    model = build_model(spec, device="meta")
    x = torch.empty(1, *spec.latent_shape, device="meta")  # (1, C, H, W)
    t = torch.empty(1, device="meta")  # (1,)
    y = torch.zeros(1, dtype=torch.long, device="meta")  # (1,)
    count = module_macs(model, x, t, y)
    if set(count.per_kind) != {kind for kind, _ in count.per_key or {}}:
        raise ValueError(f"{spec.name}: blocks differ in size, per-block sublayer MACs are ambiguous")
    return MacCount(count.total, count.per_kind, trunk=count.trunk)


@functools.cache
def count_macs(spec: ModelSpec) -> MacCount:
    """:func:`measure_macs`, but fast: meta forwards run in Python, so measure the model with one
    and two repeating units and extrapolate (every unit costs the same)."""
    one, two = measure_macs(with_depth_units(spec, 1)), measure_macs(with_depth_units(spec, 2))
    extra = depth_units(spec) - 1
    total = one.total + extra * (two.total - one.total)
    trunk = one.trunk + extra * (two.trunk - one.trunk) if one.trunk is not None and two.trunk is not None else None
    return MacCount(total, one.per_kind, trunk=trunk)


def _spec(spec: str | ModelSpec) -> ModelSpec:
    return spec if isinstance(spec, ModelSpec) else get_spec(spec)


def forward_macs(spec: str | ModelSpec) -> int:
    """MACs of one network evaluation for one image."""
    return count_macs(_spec(spec)).total


def sublayer_macs(spec: str | ModelSpec) -> dict[str, int]:
    """``{kind: MACs}`` of one block's sublayers: what caching each saves per image."""
    return dict(count_macs(_spec(spec)).per_kind)


def trajectory_macs(
    spec: str | ModelSpec | tuple[MacCount, int], schedule: _Schedule | None, nfe: int | None = None
) -> tuple[int, int]:
    """(uncached, cached) MACs of a whole trajectory per image.

    ``schedule`` has ``.nfe`` and ``.calls`` (each with ``kinds`` and ``reused(kind)``, the
    reused block ids of each kind, and ``trunk``: the call reuses every block); with ``schedule=None``, ``nfe`` alone
    gives the uncached baseline twice. ``spec``: a registry name or spec, or a :class:`MacCount`
    with the model's block count as ``(count, depth)`` (e.g. from :func:`module_macs`).
    """
    if isinstance(spec, tuple):
        count, depth = spec
        name = "the model"
    else:
        spec = _spec(spec)
        count, depth, name = count_macs(spec), num_blocks(spec), spec.name
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
    full = n * count.total
    if schedule is None:
        return full, full
    saved = 0
    for call in schedule.calls:
        if getattr(call, "trunk", False):
            if count.trunk is None:
                raise L2CError(f"no MAC count of {name}'s blocks as a whole, which a trunk reuse saves")
            saved += count.trunk
            continue
        reused = {k: set(call.reused(k)) for k in call.kinds}
        out_of_range = sorted(i for ids in reused.values() for i in ids if not 0 <= int(i) < depth)
        if out_of_range:
            raise L2CError(
                f"schedule reuses block {out_of_range[0]}, but {name} has {depth} blocks"
            )
        saved += sum(count.of(k, int(b)) for k, ids in reused.items() for b in ids)
    return full, full - saved


def block_macs(count: MacCount, layout: Any) -> list[int]:
    """Each block's MACs per image, summed over the sublayers it has: ``[MACs of block 0, …]``.

    ``layout``: the model's :class:`~l2c_compile.families.vocabulary.Layout` (``family.layout``),
    whose ``kinds_of(block)`` says which kinds each block has; blocks that lack a kind (SD3.5's
    ``attn2`` outside ``dual_attention_layers``, the last SD3 block's text MLP) or whose kinds cost
    differently (FLUX.1's double- and single-stream blocks) are counted as they are. This is what
    skipping a whole block saves (cache-dit's DBCache), adaLN and norms aside (not sublayers).
    """
    return [sum(count.of(kind, block) for kind in layout.kinds_of(block)) for block in range(layout.depth)]


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
