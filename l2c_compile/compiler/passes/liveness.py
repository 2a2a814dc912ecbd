"""Pass — cache liveness: which cached tensor each call writes, reads, keeps and drops.

A cache entry read at call m is written by the latest earlier call that computed that sublayer
(the official semantics: the cache holds the most recently computed output). So each entry lives
from its writer to its last reader and no longer; a call exports only entries that some later call
reads. Step graphs are shared between calls with the same mask, so a graph exports the union of
what its calls need; the emitted loop drops what a given call does not need at once.

Also decides the graph ids: one graph per distinct step mask (the empty mask is the full step).

A call that reuses the trunk (a free-form schedule's ``reuse_trunk``) reads the trunk's cache
slots, written by the latest call that ran the blocks, and computes no sublayer: every sublayer
entry keeps its writer across it. It runs its own graph (the empty mask, blocks gone).

In drop mode (``mode="drop"``) a masked sublayer contributes nothing, so no call reads the cache
and nothing is exported or kept: every step graph is self-contained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from l2c_compile.compiler.passes.base import CompileError
from l2c_compile.families.vocabulary import (
    DEFAULT_KINDS,
    MODES,
    Layout,
    Mask,
    SublayerKey,
    all_keys,
    key_order,
    mask_keys,
)


@dataclass(frozen=True)
class CallCache:
    """Cache traffic of one model call."""

    index: int
    graph: int  # id of the step graph this call runs
    reads: tuple[SublayerKey, ...]  # cache inputs, in key_order
    keeps: tuple[SublayerKey, ...]  # exported entries some later call reads
    drops_after: tuple[SublayerKey, ...]  # entries whose last reader is this call


@dataclass(frozen=True)
class CachePlan:
    """The whole trajectory's cache traffic and the distinct step graphs."""

    masks: tuple[Mask, ...]  # graph id -> mask
    exports: tuple[tuple[SublayerKey, ...], ...]  # graph id -> exported keys (key_order)
    calls: tuple[CallCache, ...]
    peak_live_entries: int
    kinds: tuple[str, ...] = DEFAULT_KINDS  # what each mask's sets stand for, in order
    layout: Layout | None = None  # which kinds each block has (None: all of them)
    trunk: tuple[bool, ...] = ()  # graph id -> whether it reuses the trunk (empty: none does)

    def reuses_trunk(self, graph: int) -> bool:
        """Whether step graph ``graph`` skips every block and reads the trunk from the cache."""
        return bool(self.trunk) and self.trunk[graph]

    def graph_calls(self, graph: int) -> list[int]:
        """Indices of the calls that run graph ``graph``."""
        return [c.index for c in self.calls if c.graph == graph]

    def peak_bytes(self, entry_bytes: Mapping[SublayerKey, int]) -> int:
        """The most bytes the cache holds at once over the trajectory, given each slot's size
        (``entry_bytes``: slot → bytes, per image or for a whole batch). The same walk as
        :attr:`peak_live_entries`: a call's kept entries are live while it runs, next to the
        ones it reads; an entry goes after its last reader. KeyError for a slot without a size."""
        live = peak = 0
        for call in self.calls:
            live += sum(entry_bytes[k] for k in call.keeps)
            peak = max(peak, live)
            live -= sum(entry_bytes[k] for k in call.drops_after)
        return peak


def plan_cache(call_masks: list[Mask], depth: int, mode: str = "cache",
               kinds: tuple[str, ...] = DEFAULT_KINDS, *, layout: Layout | None = None,
               slots: Mapping[SublayerKey, tuple[SublayerKey, ...]] | None = None,
               trunk: Sequence[bool] = (), trunk_slots: tuple[SublayerKey, ...] = ()) -> CachePlan:
    """Compute the cache plan for per-call masks (reused — or, in drop mode, dropped — block ids,
    one set per kind of ``kinds``). ``layout``: which kinds each block has (default: all
    ``kinds`` in every block); ``slots``: the cache slots of sublayers with several outputs (the
    plan's reads, keeps and drops are slots; a one-output sublayer is its own slot).
    ``trunk``: per call, whether it reuses the trunk (empty: no call does), whose cache slots are
    ``trunk_slots`` (``(TRUNK, j)``, one per tensor the last block hands on)."""
    if mode not in MODES:
        raise CompileError(f"unknown cache mode {mode!r}; expected cache or drop")
    slots = slots or {}

    def expand(keys: list[SublayerKey]) -> list[SublayerKey]:
        return [s for k in keys for s in slots.get(k, (k,))]

    everything = expand(all_keys(depth, kinds, layout))
    try:
        reads = [expand(mask_keys(m, kinds)) for m in call_masks]
    except ValueError as exc:
        raise CompileError(str(exc)) from None
    if mode == "drop":
        reads = [[] for _ in call_masks]  # dropped keys are not reads
    trunk = list(trunk) or [False] * len(call_masks)
    if len(trunk) != len(call_masks) or (any(trunk) and (mode != "cache" or not trunk_slots)):
        raise CompileError("trunk reuse needs one flag per call, cache mode and the trunk's slots")
    for i, t in enumerate(trunk):
        if t and reads[i]:
            raise CompileError(f"call {i} reuses the trunk and sublayers at once")
        if t:
            reads[i] = list(trunk_slots)
    writer: dict[SublayerKey, int] = {}
    keeps: list[set[SublayerKey]] = [set() for _ in call_masks]
    last_read: dict[tuple[int, SublayerKey], int] = {}  # (writer, key) -> last reader
    for i, keys in enumerate(reads):
        for k in keys:
            if k not in writer:
                raise CompileError(f"call {i} reuses {k[0]} of block {k[1]}, which no earlier call computed")
            keeps[writer[k]].add(k)
            last_read[(writer[k], k)] = i
        computed = set() if trunk[i] else set(everything) - set(keys) | set(trunk_slots)
        for k in computed:
            writer[k] = i

    steps: list[tuple[Mask, bool]] = []  # graph id -> (mask, reuses the trunk)
    graph_of: list[int] = []
    for mask, t in zip(call_masks, trunk, strict=True):
        norm = (tuple(frozenset(ids) for ids in mask), t)
        if norm not in steps:
            steps.append(norm)
        graph_of.append(steps.index(norm))
    masks = [m for m, _ in steps]
    exports = []
    for g in range(len(masks)):
        union = set().union(*(keeps[i] for i in range(len(call_masks)) if graph_of[i] == g))
        exports.append(tuple(sorted(union, key=key_order)))

    drops: list[list[SublayerKey]] = [[] for _ in call_masks]
    for (_, k), reader in last_read.items():
        drops[reader].append(k)
    live = peak = 0
    for i in range(len(call_masks)):
        live += len(keeps[i])
        peak = max(peak, live)
        live -= len(drops[i])
    calls = tuple(
        CallCache(i, graph_of[i], tuple(reads[i]), tuple(sorted(keeps[i], key=key_order)),
                  tuple(sorted(drops[i], key=key_order)))
        for i in range(len(call_masks))
    )
    flags = tuple(t for _, t in steps) if any(trunk) else ()
    return CachePlan(tuple(masks), tuple(exports), calls, peak, tuple(kinds), layout, flags)
