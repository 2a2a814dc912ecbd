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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from l2c_compile.compiler.guidance import GuidedDenoiser, timestep_vector
from l2c_compile.compiler.passes.sublayers import sublayer_paths
from l2c_compile.errors import L2CError
from l2c_compile.families import family_of
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
    ``transformer_blocks.{i}.ff``, …) for a :class:`CachedSublayer` and hook the last block
    (:func:`trunk_hook`), all sharing one :class:`CacheState`."""
    state = CacheState()
    slots = []
    family = family_of(model)
    outputs = family.outputs(model)
    for key, path in sublayer_paths(model).items():
        parent, _, name = path.rpartition(".")
        owner = model.get_submodule(parent)
        slots.append((owner, name, getattr(owner, name), key))
    last = model.get_submodule(family.blocks(model)[-1][0])
    handle = None
    try:
        for owner, name, inner, key in slots:
            setattr(owner, name, CachedSublayer(inner, key, state, len(outputs[key])))
        handle = last.register_forward_hook(trunk_hook(state))
        yield state
    finally:
        if handle is not None:
            handle.remove()
        for owner, name, inner, _ in slots:
            setattr(owner, name, inner)


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
    return next(model.parameters()).dtype
