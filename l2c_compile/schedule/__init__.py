"""Schedules: the static cache plan, the router files it is made from, and views of it for people.

* :mod:`~l2c_compile.schedule.format`: :class:`Schedule` and its JSON document, the threshold
  rule, the official-router import (:func:`import_router`), the heuristic baselines;
* :mod:`~l2c_compile.schedule.router_files`: reading and writing router *files* (the two official
  Learning-to-Cache layouts and ``l2c-router``); training a router is :mod:`l2c_compile.router`;
* :mod:`~l2c_compile.schedule.render`: the text grid, the rich table and the heatmap;
* :mod:`~l2c_compile.schedule.summary`: the numbers the CLI reports for a schedule (counts, MACs, ideal speedup);
* :mod:`~l2c_compile.schedule.interop`: other tools' files (SmoothCache, InvarDiff, cache-dit) in and out;
* :mod:`~l2c_compile.schedule.baselines`: static baselines (FORA, step masks, DeepCache block ranges).

The names below are the package's public surface: ``from l2c_compile.schedule import Schedule``.
"""

from __future__ import annotations

from l2c_compile.families.vocabulary import MODES, Mask
from l2c_compile.schedule.baselines import BASELINES, baseline, deepcache, fora, step_mask
from l2c_compile.schedule.format import (
    DEFAULT_THRESHOLDS,
    HEURISTICS,
    CallSchedule,
    Schedule,
    default_threshold,
    heuristic,
    import_router,
    router_target,
)
from l2c_compile.schedule.interop import (
    FORMATS,
    ImportTarget,
    export_schedule,
    import_schedule,
    save_export,
)
from l2c_compile.schedule.render import render_grid, rich_grid, save_heatmap
from l2c_compile.schedule.router_files import RouterFile, export_official, load_router, save_router
from l2c_compile.schedule.summary import schedule_summary

__all__ = [
    "BASELINES",
    "DEFAULT_THRESHOLDS",
    "FORMATS",
    "HEURISTICS",
    "MODES",
    "CallSchedule",
    "ImportTarget",
    "Mask",
    "RouterFile",
    "Schedule",
    "baseline",
    "deepcache",
    "default_threshold",
    "export_official",
    "export_schedule",
    "fora",
    "heuristic",
    "import_router",
    "import_schedule",
    "load_router",
    "render_grid",
    "rich_grid",
    "router_target",
    "save_export",
    "save_heatmap",
    "save_router",
    "schedule_summary",
    "step_mask",
]
