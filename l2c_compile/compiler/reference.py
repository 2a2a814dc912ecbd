"""The reference executor: eager sampling under any Schedule, with the official L2C semantics.

This is the oracle every compiled sampler is tested against, and the engine router training runs
on. It keeps the model pristine: for the duration of a run, each block's declared sublayers
(the kinds its family declares, :mod:`l2c_compile.families`) are swapped for a
:class:`CachedSublayer` that computes, reuses or blends the sublayer's *ungated* output (all of
them, for a sublayer with several outputs); the block's own forward still applies the current step's gate and
the residual (spec §1, §4.2, §4.3).

Cache semantics (the official code's, written generically): the cache entry of a sublayer is its
most recently *computed* output. A call that reuses a sublayer reads that entry; every computed
sublayer overwrites its entry (unless recording is off, as for the teacher/student passes of
router training).

Trunk reuse (a free-form schedule's ``reuse_trunk`` call): the last block returns the trunk output
of the latest call that ran the blocks (the cached value of its return) instead of its own; the
blocks before it still run in this eager oracle, but record nothing, so the call leaves every
cache entry as it found it, exactly as a trunk-reusing compiled step that runs no block at all.

Drop mode (``schedule.mode == "drop"``, the learning-to-drop baseline): a skipped sublayer is not
computed and contributes zeros, so the residual add keeps only the stream; nothing is read.
"""

from __future__ import annotations

import contextlib
import functools
import operator
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from l2c_compile.compiler.guidance import GuidedDenoiser, timestep_vector
from l2c_compile.errors import L2CError
from l2c_compile.families import family_of, model_dtype
from l2c_compile.families.vocabulary import CacheMode, SublayerKey
from l2c_compile.samplers.base import ModelCall, SamplerPlan, execute_plan

if TYPE_CHECKING:
    from l2c_compile.schedule import Schedule


@dataclass
class CacheState:
    """What the swapped-in sublayers read and write during one call.

    ``reuse``: keys whose cached output (``mode="drop"``: zeros) replaces the computation.
    ``weights``: per-key fresh weight w (tensor scalar) for soft routing: out = w·fresh + (1−w)·other,
    where ``other`` is the cached output (``mode="cache"``) or zero (``mode="drop"``).
    ``record``: whether computed outputs overwrite the cache.
    """

    cache: dict[SublayerKey, torch.Tensor] = field(default_factory=dict)
    reuse: frozenset[SublayerKey] = frozenset()
    weights: dict[SublayerKey, torch.Tensor] | None = None
    mode: CacheMode = "cache"
    record: bool = True
    computed: int = 0  # sublayers actually computed in this call (for tests and reports)
    reused: int = 0
    trunk: bool = False  # this call reuses the trunk output
    trunk_cache: Any = None  # the last block's most recently computed output (a tensor or tuple)

    def set_call(self, reuse: Mapping[str, Iterable[int]] | None = None, *, record: bool = True,
                 trunk: bool = False) -> None:
        """Configure the next model call: which sublayers (``{kind: block ids}``) reuse the cache,
        or (``trunk``) whether the call reuses the trunk output and records nothing."""
        self.reuse = frozenset((kind, int(i)) for kind, ids in (reuse or {}).items() for i in ids)
        self.weights = None
        self.record = record and not trunk
        self.trunk = trunk
        self.computed = self.reused = 0

    def clear(self) -> None:
        """Forget every cached output."""
        self.cache.clear()
        self.trunk_cache = None


class CachedSublayer(nn.Module):
    """Stands in for a block's declared sublayer while the reference executor runs.

    A sublayer with several outputs (a joint attention's image and text streams) caches, reuses
    and blends them together, as the tuple its module returns.
    """

    def __init__(self, inner: nn.Module, key: SublayerKey, state: CacheState, outputs: int = 1) -> None:
        super().__init__()
        self.outputs = outputs
        self.inner = inner
        self.key = key
        self.state = state

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The sublayer's own arguments, positional or by keyword (its first is the (N, T, D)
        input), passed on unchanged."""
        st = self.state
        if self.key in st.reuse:
            if st.mode == "drop":
                st.reused += 1
                if self.outputs > 1:  # each stream gets nothing; the shapes come from one evaluation
                    return tuple(torch.zeros_like(v) for v in self.inner(*args, **kwargs))
                h = args[0] if args else next(iter(kwargs.values()))
                return torch.zeros_like(h)  # (N, T, D): the branch adds nothing to the stream
            if self.key not in st.cache:
                raise L2CError(f"schedule reuses {self.key[0]} of block {self.key[1]} before it was ever computed")
            st.reused += 1
            return st.cache[self.key]
        out = self.inner(*args, **kwargs)  # (N, T, D) ungated sublayer output
        st.computed += 1
        if st.weights is not None and self.key in st.weights:
            w = st.weights[self.key]
            if isinstance(out, tuple):
                others = (0.0,) * len(out) if st.mode == "drop" else st.cache[self.key]
                return tuple(w * o + (1 - w) * c for o, c in zip(out, others, strict=True))
            other = 0.0 if st.mode == "drop" else st.cache[self.key]
            return w * out + (1 - w) * other
        if st.record:
            st.cache[self.key] = out
        return out


class ProjectedBranch(nn.Module):
    """Branch ``j``'s slice of a parallel block's shared linear projection: ``x · W[:, lo:hi]ᵀ``
    (plus the bias, for the first branch), where ``widths`` (filled in by
    :class:`SplitProjection` on every call) give ``lo`` and ``hi``."""

    def __init__(self, proj: nn.Linear, widths: list[int], j: int) -> None:
        super().__init__()
        self.proj, self.widths, self.j = proj, widths, j

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, T, width of branch j) → (N, T, D)."""
        lo = sum(self.widths[: self.j])
        w = self.proj.weight[:, lo : lo + self.widths[self.j]]
        return nn.functional.linear(x, w, self.proj.bias if self.j == 0 else None)


class SplitProjection(nn.Module):
    """Stands in for a parallel block's shared projection ``proj(cat[branch, …])`` while the
    reference executor runs: the input splits by branch (widths: what each branch's module
    returned in this call), each branch is projected alone, cached, reused or blended as a
    :class:`CachedSublayer`, and the projected branches are summed (``KindDecl.projection``)."""

    def __init__(self, proj: nn.Linear, keys: list[SublayerKey], branches: list[nn.Module], state: CacheState) -> None:
        super().__init__()
        self.widths = [0] * len(keys)
        self.parts = nn.ModuleList(CachedSublayer(ProjectedBranch(proj, self.widths, j), key, state)
                                   for j, key in enumerate(keys))
        self.handles = [m.register_forward_hook(self._width(j)) for j, m in enumerate(branches)]

    def _width(self, j: int):
        def hook(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            self.widths[j] = int(out.shape[-1])
        return hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, T, Σ widths) → (N, T, D)."""
        if sum(self.widths) != x.shape[-1]:
            raise L2CError(f"the projection's input has width {x.shape[-1]}, its branches returned {self.widths}")
        values = [part(x_j) for part, x_j in zip(self.parts, x.split(self.widths, dim=-1), strict=True)]
        return functools.reduce(operator.add, values)

    def remove(self) -> None:
        """Take the width hooks off the branch modules."""
        for h in self.handles:
            h.remove()


def trunk_hook(state: CacheState):
    """A forward hook for the last block: records its output as the trunk cache, or, on a call
    that reuses the trunk, returns that cache in place of the output (the block itself stays in
    the model, so a forward that reads its attributes still finds them)."""

    def hook(module: nn.Module, args: Any, out: Any) -> Any:
        if state.trunk:
            if state.trunk_cache is None:
                raise L2CError("schedule reuses the trunk before any call ran the blocks")
            return state.trunk_cache
        if state.record:
            state.trunk_cache = out
        return out

    return hook


@contextlib.contextmanager
def instrument(model: nn.Module) -> Iterator[CacheState]:
    """Swap every declared sublayer (its family's module paths: ``blocks.{i}.attn``,
    ``transformer_blocks.{i}.ff``, …) for a :class:`CachedSublayer`, every shared projection of
    parallel branches for a :class:`SplitProjection`, and hook the last block
    (:func:`trunk_hook`), all sharing one :class:`CacheState`."""
    state = CacheState()
    slots = []
    family = family_of(model)
    outputs = family.outputs(model)
    ids = {path: i for i, (path, _) in enumerate(family.blocks(model))}
    splits: dict[tuple[str, str], list[tuple[SublayerKey, str]]] = {}
    for block, kind in family.sublayers(model):
        key = (kind.kind, ids[block])
        if kind.projection is not None:  # branches of a shared projection: one stand-in for all
            splits.setdefault((block, kind.projection), []).append((key, kind.path))
            continue
        parent, _, name = f"{block}.{kind.path}".rpartition(".")
        owner = model.get_submodule(parent)
        slots.append((owner, name, getattr(owner, name), CachedSublayer(getattr(owner, name), key, state,
                                                                         len(outputs[key]))))
    for (block, proj), branches in splits.items():
        parent, _, name = f"{block}.{proj}".rpartition(".")
        owner = model.get_submodule(parent)
        split = SplitProjection(getattr(owner, name), [k for k, _ in branches],
                                [model.get_submodule(f"{block}.{p}") for _, p in branches], state)
        slots.append((owner, name, getattr(owner, name), split))
    last = model.get_submodule(family.blocks(model)[-1][0])
    handle = None
    try:
        for owner, name, _, stand_in in slots:
            setattr(owner, name, stand_in)
        handle = last.register_forward_hook(trunk_hook(state))
        yield state
    finally:
        if handle is not None:
            handle.remove()
        for owner, name, inner, stand_in in slots:
            setattr(owner, name, inner)
            if isinstance(stand_in, SplitProjection):
                stand_in.remove()


@torch.no_grad()
def sample(
    model: nn.Module,
    plan: SamplerPlan,
    schedule: Schedule | None,
    noise: torch.Tensor,
    labels: torch.Tensor,
    cfg_scale: float | None = None,
) -> torch.Tensor:
    """Sample ``plan`` from ``noise`` under ``schedule`` (None = uncached); return final latents.

    ``cfg_scale=None`` disables classifier-free guidance; otherwise CFG is batched and combined by
    the model family's own convention. The sampler arithmetic runs in the dtype of ``noise``.
    L2CError (one line) when ``schedule`` does not fit the model or the plan
    (:meth:`~l2c_compile.schedule.Schedule.check_fits`).
    """
    if schedule is not None:
        schedule.check_fits(family_of(model).layout(model), plan)
    denoiser = GuidedDenoiser(model, cfg=cfg_scale is not None)
    scale = torch.tensor(cfg_scale if cfg_scale is not None else 1.0, device=noise.device)
    dtype = _param_dtype(model)
    # Uncached runs use the pristine model: no swapped modules, nothing recorded.
    ctx = instrument(model) if schedule is not None else contextlib.nullcontext(None)
    with ctx as state:
        if state is not None:
            state.mode = schedule.mode

        def eps_fn(call: ModelCall, x_in: torch.Tensor) -> torch.Tensor:
            if state is not None and schedule is not None:
                sc = schedule.calls[call.index]
                state.set_call(sc.reuse, trunk=sc.trunk)
            t = timestep_vector(call.timestep, x_in.shape[0], x_in.device)
            return denoiser(x_in.to(dtype), t, labels, scale).to(noise.dtype)

        return execute_plan(plan, noise, eps_fn)


def sample_uncached(model: nn.Module, plan: SamplerPlan, noise: torch.Tensor, labels: torch.Tensor,
                    cfg_scale: float | None = None) -> torch.Tensor:
    """The plain sampler without any caching (the baseline every schedule is compared against)."""
    return sample(model, plan, None, noise, labels, cfg_scale)


def _param_dtype(model: nn.Module) -> torch.dtype:
    return model_dtype(model)
