"""The headline numbers of a Schedule: what it skips and what that saves (spec §5.1, §5.3).

Counts come from :meth:`Schedule.stats`; MACs are per image over the whole trajectory in the
thop convention of :mod:`l2c_compile.metrics.macs`, so the released routers reproduce the
README table (DDIM20: 2.288 T → 1.781 T).
"""

from __future__ import annotations

from typing import Any

from l2c_compile.errors import L2CError
from l2c_compile.schedule.format import Schedule


def schedule_summary(schedule: Schedule) -> dict[str, Any]:
    """Counts, skipped shares, whole-trajectory MACs per image and the ideal speedup.

    ``macs_full``, ``macs_cached`` and ``ideal_speedup`` are ``None`` when ``schedule.model`` is
    not a registry model (e.g. a hand-written schedule for a test network): the counts still hold.
    """
    from l2c_compile.metrics.macs import trajectory_macs
    from l2c_compile.models.registry import MODELS, get_spec, num_blocks

    summary: dict[str, Any] = {
        "model": schedule.model,
        "depth": schedule.depth,
        "sampler": schedule.sampler,
        "nfe": schedule.nfe,
        "threshold": schedule.threshold,
        "source": schedule.source,
        **schedule.stats(),
        "macs_full": None,
        "macs_cached": None,
        "ideal_speedup": None,
    }
    if schedule.model not in MODELS:
        return summary
    spec = get_spec(schedule.model)
    blocks = num_blocks(spec)
    if schedule.depth != blocks:
        raise L2CError(
            f"schedule is for {schedule.depth} blocks but {spec.name} has {blocks}; "
            "it was not made for this model"
        )
    full, cached = trajectory_macs(spec, schedule)
    summary["macs_full"] = full
    summary["macs_cached"] = cached
    # The stem, final layer and (U-ViT) skip linears always run, so cached > 0 for real models.
    summary["ideal_speedup"] = full / cached if cached > 0 else None
    return summary
