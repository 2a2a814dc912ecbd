"""cache-dit as a peer of ``benchmarks/peers.py``: whether it is importable, which blocks its
DBCache skips on a cached step, the MACs a trajectory of such steps removes (counted like an l2c
schedule by ``l2c_compile.metrics.macs.trajectory_macs``), the static step mask that removes about
what the l2c schedule removes, and the pipeline copy it runs on (modules copied, weights shared).

Sources: cache-dit 1.5.3 ``caching/block_adapters/adapters.py`` (the block lists of each pipeline:
SD3 ``transformer_blocks``; FLUX.1 ``transformer_blocks + single_transformer_blocks`` as one list of
"dummy blocks" by default, two lists with ``CACHE_DIT_FLUX_ENABLE_DUMMY_BLOCKS=0``) and
``caching/cache_blocks/pattern_base.py`` (``_Fn_blocks``/``_Mn_blocks``/``_Bn_blocks``: on a cached
step each list computes its first Fn and last Bn blocks and reuses the residual of the rest).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

__all__ = ["BlockSkips", "CacheDiTTrajectory", "cache_dit_version", "matched_mask", "shared_copy",
           "skipped_blocks"]


def cache_dit_version() -> str | None:
    """cache-dit's version, or None when it cannot be imported here."""
    try:
        import cache_dit
    except Exception:  # any import failure (missing, wrong diffusers) means: no cache-dit rows
        return None
    return str(getattr(cache_dit, "__version__", "unknown"))


def skipped_blocks(lists: tuple[int, ...], fn: int = 8, bn: int = 0) -> tuple[int, ...]:
    """The block ids (counted over all lists, in order) a cached cache-dit step skips: in each block
    list its adapter walks (``lists``: their sizes; SD3 one list of 24; FLUX.1 one of 19 + 38, or
    19 double- then 38 single-stream blocks as two), all but the first ``fn`` and the last ``bn``
    (DBCache's F``fn``B``bn``)."""
    out: list[int] = []
    start = 0
    for n in lists:
        out += range(start + min(fn, n), start + max(min(fn, n), n - bn))
        start += n
    return tuple(out)


@dataclass(frozen=True)
class BlockSkips:
    """One model call in which cache-dit reuses ``blocks`` whole, read by ``trajectory_macs``:
    ``reused(kind)`` is the skipped blocks that have ``kind`` (``layout.kinds_of``)."""

    layout: Any  # l2c_compile.families.vocabulary.Layout
    blocks: tuple[int, ...]

    @property
    def kinds(self) -> tuple[str, ...]:
        """Every kind some block has."""
        return self.layout.kinds

    def reused(self, kind: str) -> tuple[int, ...]:
        """The skipped blocks whose ``kind`` sublayer is therefore not computed in this call."""
        return tuple(b for b in self.blocks if kind in self.layout.kinds_of(b))


@dataclass(frozen=True)
class CacheDiTTrajectory:
    """The blocks cache-dit skips per call (:func:`skipped_blocks` on its cached steps);
    ``trajectory_macs`` counts it like a schedule, each block with the sublayers it has."""

    nfe: int
    layout: Any  # l2c_compile.families.vocabulary.Layout
    lists: tuple[int, ...]
    cached_steps: tuple[int, ...]
    fn: int = 8
    bn: int = 0

    @property
    def calls(self) -> list[BlockSkips]:
        """One entry per model call."""
        skipped = skipped_blocks(self.lists, self.fn, self.bn)
        return [BlockSkips(self.layout, skipped if i in self.cached_steps else ()) for i in range(self.nfe)]


def matched_mask(nfe: int, step_macs: int, removed_macs: int) -> list[int]:
    """cache-dit's ``steps_computation_mask`` (1 compute, 0 cached) whose cached steps remove about
    ``removed_macs`` (per image and trajectory), each cached step removing ``step_macs`` (the sum of
    :func:`~l2c_compile.metrics.macs.block_macs` over its :func:`skipped_blocks`). The first fifth
    of the steps and the last one compute (as cache-dit's own masks do); round(removed / step)
    cached steps, at least one and at most every free step, spread evenly over the rest."""
    lead = max(1, round(0.2 * nfe))
    candidates = list(range(lead, nfe - 1))
    k = max(1, min(len(candidates), round(removed_macs / max(1, step_macs))))
    cached = {candidates[int((i + 0.5) * len(candidates) / k)] for i in range(k)}
    return [0 if i in cached else 1 for i in range(nfe)]


def shared_copy(pipe: Any) -> Any:
    """A copy of ``pipe`` whose modules are copies and whose parameters and buffers are ``pipe``'s
    own tensors: hooks and attributes set on the copy's modules (cache-dit's) leave ``pipe``'s
    alone, at no weight memory."""
    from torch import nn

    memo: dict[int, Any] = {}
    for component in vars(pipe).values():
        if isinstance(component, nn.Module):
            memo.update((id(t), t) for t in (*component.parameters(), *component.buffers()))
    return copy.deepcopy(pipe, memo)
