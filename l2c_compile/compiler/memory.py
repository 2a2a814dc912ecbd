"""What a compiled sampler will hold in memory, known before it is compiled or run, and whether it fits.

A schedule's cache is the one memory cost the uncached run does not have: each kept sublayer output
lives from the call that computes it to its last reader (the liveness plan,
:func:`~l2c_compile.compiler.passes.liveness.plan_cache`). For a video model the entries are large
(Wan 2.1 14B at 480p: 32,760 tokens × 5,120 channels, 320 MiB per entry and CFG row in bf16), so a
schedule that keeps many of them alive can need more memory than the weights. This module plans it
from the schedule and the model's structure alone (no capture, no weights copied):

* :func:`planned_cache` — the liveness plan of a schedule on a model, and its peak in bytes per
  sample from the model's ``cache_entry_shape`` (the compiler measures the same peak from the
  captured graph's shapes: ``CompileRecord.peak_cache_bytes_per_image``);
* :func:`weights_bytes` — what the sampler's private copy of the weights holds
  (:func:`~l2c_compile.compiler.driver.private_copy`: every compile makes one);
* :func:`free_memory` — the free memory of a device: ``torch.cuda.mem_get_info`` plus what torch's
  caching allocator holds unused on CUDA, ``MemAvailable`` of ``/proc/meminfo`` on a Linux CPU,
  None where neither is known;
* :func:`check_memory` — one L2CError line when the planned bytes exceed the budget;
  :func:`check_sampler_memory` — the same for a compiled (or loaded) sampler about to draw.

Not counted: the step's activations (one uncached call's worth, which the uncached run needs too),
the hoisted prologue (``CompileRecord.hoisted``'s ``bytes_per_image``) and the pipeline's own
encoders and VAE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from l2c_compile.compiler.driver import copied_dtype
from l2c_compile.compiler.passes.liveness import CachePlan, plan_cache
from l2c_compile.compiler.passes.sublayers import cache_slots
from l2c_compile.errors import L2CError
from l2c_compile.families import family_of, fp32_kept, model_dtype
from l2c_compile.families.vocabulary import TRUNK, SublayerKey, empty_mask
from l2c_compile.runtime.sampler import CompiledSampler
from l2c_compile.samplers.base import SamplerPlan
from l2c_compile.schedule import Schedule

__all__ = ["PlannedCache", "check_memory", "check_sampler_memory", "free_memory", "planned_cache", "weights_bytes"]

MIB = 2**20


@dataclass(frozen=True)
class PlannedCache:
    """A schedule's cache on a model: the liveness plan, each slot's bytes per sample (CFG rows
    included), and the peak."""

    plan: CachePlan
    entry_bytes: dict[SublayerKey, int]

    @property
    def peak_entries(self) -> int:
        """The most cache entries alive at once."""
        return self.plan.peak_live_entries

    @property
    def peak_bytes_per_sample(self) -> int:
        """The most bytes the cache holds at once, per sample (one video or image of the batch)."""
        return self.plan.peak_bytes(self.entry_bytes)


def planned_cache(model: nn.Module, plan: SamplerPlan, schedule: Schedule | None, *, cfg: bool = True,
                  dtype: torch.dtype | None = None) -> PlannedCache:
    """The cache ``schedule`` keeps on ``model`` under ``plan``: the liveness plan the compiler
    makes (the same masks, kinds, layout and output slots) and each slot's bytes per sample,
    ``(2 if cfg else 1) × prod(model.cache_entry_shape(slot)) × itemsize`` in ``dtype`` (default:
    the model's, :func:`~l2c_compile.families.model_dtype`). A trunk reuse's slots are taken as
    one tensor of the residual stream's shape (Wan's blocks hand on one). L2CError when the
    schedule does not fit the model or plan, or the model declares no ``cache_entry_shape``.
    Source of the liveness rules: :mod:`l2c_compile.compiler.passes.liveness`."""
    shape_of = getattr(model, "cache_entry_shape", None)
    if shape_of is None:
        raise L2CError(f"{type(model).__name__} declares no cache_entry_shape: its cache cannot be planned "
                       "before it is compiled")
    family = family_of(model)
    layout = family.layout(model)
    kinds = layout.kinds
    if schedule is None:
        masks, trunk = [empty_mask(kinds) for _ in plan.calls], []
        mode = "cache"
    else:
        schedule.check_fits(layout, plan)
        masks = [c.mask for c in schedule.calls]
        trunk = [c.trunk for c in schedule.calls] if any(c.trunk for c in schedule.calls) else []
        mode = schedule.mode
    slots = cache_slots(family.outputs(model))
    trunk_slots = ((TRUNK, 0),) if trunk else ()
    cache = plan_cache(masks, layout.depth, mode, kinds, layout=None if layout.is_uniform else layout, slots=slots,
                       trunk=trunk, trunk_slots=trunk_slots)
    itemsize = torch.empty((), dtype=dtype or model_dtype(model)).element_size()
    rows = 2 if cfg else 1
    keys = {s for ss in slots.values() for s in ss} | set(trunk_slots)
    entry = {k: rows * math.prod(shape_of(k)) * itemsize for k in keys}
    return PlannedCache(cache, entry)


def weights_bytes(model: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of the copy of ``model``'s parameters and buffers a compile makes
    (:func:`~l2c_compile.compiler.driver.private_copy`): floating-point tensors in ``dtype``
    (None: as they are), those the model keeps in float32 never narrower than float32."""
    kept = fp32_kept(model) if dtype is not None else {}
    total, seen = 0, set()
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * torch.empty((), dtype=copied_dtype(t, dtype, kept)).element_size()
    return total


def free_memory(device: torch.device | str) -> int | None:
    """Bytes free for new tensors on ``device``: on CUDA ``torch.cuda.mem_get_info``'s free bytes
    plus what torch's caching allocator reserved and holds unused; on CPU the kernel's
    ``MemAvailable`` (Linux ``/proc/meminfo``: free memory plus what it can reclaim without
    swapping). None where it is not known (another OS, another device type)."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        free, _ = torch.cuda.mem_get_info(index)
        unused = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
        return int(free + max(unused, 0))
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
        except (OSError, ValueError, IndexError):
            return None
    return None


def check_memory(need: dict[str, int], device: torch.device | str, budget: int | None = None,
                 *, advice: str = "") -> None:
    """L2CError (one line) when the bytes in ``need`` (what → bytes, e.g. the cache peak and the
    weights copy) add up to more than ``budget`` (None: :func:`free_memory` of ``device``; no
    check where that is unknown). ``advice``: what the caller can change, appended."""
    if budget is None:
        budget = free_memory(device)
        if budget is None:
            return
        where = f"free on {torch.device(device)}"
    else:
        where = "in the memory budget"
    total = sum(need.values())
    if total <= budget:
        return
    parts = " + ".join(f"{_size(v)} {k}" for k, v in need.items())
    raise L2CError(f"this call needs {_size(total)} ({parts}) but {_size(budget)} are {where}"
                   + (f": {advice}" if advice else ""))


def _size(n: int) -> str:
    """``n`` bytes for people: ``512 B``, ``3.4 KiB``, ``1,024.0 MiB``, ``2.5 GiB``."""
    for unit, scale in (("GiB", 2**30), ("MiB", MIB), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} B"


def check_sampler_memory(sampler: CompiledSampler, samples: int, device: torch.device | str) -> None:
    """L2CError (one line), before a compiled sampler draws ``samples`` at once on ``device``, when
    its cache at its peak (``CompileRecord.peak_cache_bytes_per_image`` × ``samples``; the weights
    are already there) exceeds the device's free memory (:func:`free_memory`; no check where that
    is unknown). ``sample`` and ``verify`` call it for every artifact."""
    need = {"cache peak": samples * int(sampler.record.peak_cache_bytes_per_image)}
    check_memory(need, device, advice="draw fewer samples at once, or compile a schedule that keeps fewer cache "
                                      "entries alive")
