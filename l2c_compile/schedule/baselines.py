"""Static caching baselines as free-form (version 2) schedules, for any family and sampler plan.

* :func:`fora`: FORA (Selvaraju et al. 2024, "Fast-Forward Caching in Diffusion Transformer
  Acceleration"): every ``interval``-th model call (calls 0, N, 2N, …) computes every sublayer;
  the calls in between reuse every block's attention and MLP outputs (every declared kind: PixArt's
  cross-attention and a text MLP too), each re-gated with the current call's adaLN. FORA itself
  leaves the last call to the cadence; SmoothCache's shipped ``*-N-2-fora.json`` force it to
  compute, which ``compute_last=True`` reproduces.
* :func:`step_mask`: a cache-dit-style step mask: the first ``first`` and the last ``last`` calls
  compute, and between them every ``every``-th call (the ``every − 1`` calls before it are cached);
  a cached call reuses the trunk (the last block's output of the latest computed call; cache-dit
  itself adds a middle-block residual instead, see :mod:`~l2c_compile.schedule.interop`).
* :func:`deepcache`: DeepCache-style block ranges (Ma et al. 2024): every ``interval``-th call
  computes everything; the calls in between reuse every sublayer of blocks ``[start, stop)`` and
  compute the others (DeepCache keeps a U-Net's shallow branch and reuses its deep features; on a
  transformer the cached range is contiguous blocks, each reused sublayer re-gated as above).

Each returns a :class:`~l2c_compile.schedule.format.Schedule` of version 2 with ``source =
{"kind": "baseline", "baseline": <name>, <its parameters>}``; ``L2CError`` for bad parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from l2c_compile.errors import L2CError, suggest
from l2c_compile.families.vocabulary import Layout
from l2c_compile.samplers.base import SamplerPlan
from l2c_compile.schedule.format import CallSchedule, Schedule

__all__ = ["BASELINES", "baseline", "deepcache", "fora", "step_mask"]


def _positive(name: str, value: object, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise L2CError(f"{name} must be an integer ≥ {low}, got {value!r}")
    return value


def _schedule(plan: SamplerPlan, layout: Layout, model: str, source: dict[str, Any],
              call: Callable[[int], tuple[dict[str, tuple[int, ...]], bool]]) -> Schedule:
    """A version 2 schedule whose call ``i`` reuses ``call(i) = ({kind: block ids}, trunk)``."""
    calls = []
    for c in plan.calls:
        reuse, trunk = call(c.index)
        calls.append(CallSchedule(c.index, float(c.timestep), c.role, c.router_index,
                                  reuse={k: reuse.get(k, ()) for k in layout.kinds}, trunk=trunk))
    return Schedule(model=model, depth=layout.depth, sampler=plan.sampler, nfe=plan.nfe, threshold=None,
                    source=source, calls=tuple(calls), version=2, kinds=layout.kinds, groups=layout)


def fora(plan: SamplerPlan, layout: Layout, *, interval: int, model: str, compute_last: bool = False) -> Schedule:
    """FORA-``interval``: calls ``i % interval == 0`` (and the last, if ``compute_last``) compute;
    the others reuse every sublayer of every block."""
    n = _positive("FORA interval", interval)
    every = {k: layout.blocks(k) for k in layout.kinds}

    def call(i: int) -> tuple[dict[str, tuple[int, ...]], bool]:
        computes = i % n == 0 or (compute_last and i == plan.nfe - 1)
        return ({} if computes else every), False

    source = {"kind": "baseline", "baseline": "fora", "interval": n, "compute_last": compute_last}
    return _schedule(plan, layout, model, source, call)


def step_mask(plan: SamplerPlan, layout: Layout, *, first: int, last: int, every: int, model: str) -> Schedule:
    """Calls ``< first`` and ``≥ nfe − last`` compute, and in between call ``i`` computes iff
    ``(i − first + 1) % every == 0``; every other call reuses the trunk."""
    f, k, m = _positive("first", first), _positive("last", last, 0), _positive("every", every)

    def call(i: int) -> tuple[dict[str, tuple[int, ...]], bool]:
        computes = i < f or i >= plan.nfe - k or (i - f + 1) % m == 0
        return {}, not computes

    source = {"kind": "baseline", "baseline": "step-mask", "first": f, "last": k, "every": m}
    return _schedule(plan, layout, model, source, call)


def deepcache(plan: SamplerPlan, layout: Layout, *, interval: int, start: int, stop: int, model: str) -> Schedule:
    """Calls ``i % interval == 0`` compute; the others reuse every sublayer of blocks ``[start, stop)``."""
    n = _positive("DeepCache interval", interval)
    if not 0 <= start < stop <= layout.depth or isinstance(start, bool) or isinstance(stop, bool):
        raise L2CError(f"DeepCache blocks [{start}, {stop}) must be a non-empty range inside the model's "
                       f"{layout.depth} blocks (0 ≤ start < stop ≤ {layout.depth})")
    ranged = {k: tuple(b for b in layout.blocks(k) if start <= b < stop) for k in layout.kinds}

    def call(i: int) -> tuple[dict[str, tuple[int, ...]], bool]:
        return ({} if i % n == 0 else ranged), False

    source = {"kind": "baseline", "baseline": "deepcache", "interval": n, "blocks": [start, stop]}
    return _schedule(plan, layout, model, source, call)


BASELINES: dict[str, Callable[..., Schedule]] = {"fora": fora, "step-mask": step_mask, "deepcache": deepcache}


def baseline(name: str, plan: SamplerPlan, layout: Layout, *, model: str, **params: Any) -> Schedule:
    """The baseline ``name`` (``fora``, ``step-mask``, ``deepcache``) with its keyword ``params``."""
    if name not in BASELINES:
        raise L2CError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}" + suggest(name, tuple(BASELINES)))
    return BASELINES[name](plan, layout, model=model, **params)
