"""The sample size a schedule was made for (video frames, height, width), kept in its ``source``.

A schedule's masks do not depend on the sample size, but what it was tuned or trained for does: a
router trained on 81-frame 480p videos says nothing about 720p. Where the size is known (the CLI's
``schedule`` commands on a family whose size is not in its config: Wan) it is written to
``source["sample_size"]`` (``{"num_frames", "height", "width"}``, pixels), and a pipeline drop-in
or ``compile`` refuses the schedule for another size. A schedule without one (made in Python, or
for a family whose config fixes the size) fits every size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from l2c_compile.errors import L2CError
from l2c_compile.schedule.format import Schedule

__all__ = ["SIZE_KEY", "check_sample_size", "describe_size", "sample_size", "with_sample_size"]

SIZE_KEY = "sample_size"
_FIELDS = ("num_frames", "height", "width")


def with_sample_size(schedule: Schedule, size: Mapping[str, int]) -> Schedule:
    """``schedule`` with ``size`` (``num_frames``, ``height``, ``width``: whichever apply) recorded
    in its source; an empty ``size`` leaves it as it is."""
    if not size:
        return schedule
    clean = {k: int(size[k]) for k in _FIELDS if k in size}
    return dataclasses.replace(schedule, source={**schedule.source, SIZE_KEY: clean})


def sample_size(schedule: Schedule) -> dict[str, int] | None:
    """The sample size recorded in ``schedule``'s source (None: none, the schedule fits any)."""
    size = schedule.source.get(SIZE_KEY)
    if not isinstance(size, dict):
        return None
    return {k: v for k, v in size.items() if k in _FIELDS and isinstance(v, int) and not isinstance(v, bool)}


def describe_size(size: Mapping[str, int]) -> str:
    """``9 frames of 48×32`` (width × height, as video tools write it), or ``48×32`` for an image."""
    side = f"{size.get('width', '?')}×{size.get('height', '?')}"
    return f"{size['num_frames']} frames of {side}" if "num_frames" in size else side


def check_sample_size(schedule: Schedule | None, size: Mapping[str, int], what: str = "this call draws") -> None:
    """L2CError (one line) when ``schedule`` records a sample size other than ``size``."""
    made = sample_size(schedule) if schedule is not None else None
    if not made:
        return
    want = {k: int(size[k]) for k in made if k in size}
    if made != want:
        raise L2CError(f"the schedule was made for {describe_size(made)}, {what} {describe_size(size)}")
