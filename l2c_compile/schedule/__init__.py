"""Schedules: the static cache plan, the router files it is made from, and views of it for people.

* :mod:`~l2c_compile.schedule.format`: :class:`Schedule` and its JSON document, the threshold
  rule, the official-router import (:func:`import_router`), the heuristic baselines;
* :mod:`~l2c_compile.schedule.router_files`: reading and writing router *files* (the two official
  Learning-to-Cache layouts and ``l2c-router``); training a router is :mod:`l2c_compile.router`;
* :mod:`~l2c_compile.schedule.render`: the text grid, the rich table and the heatmap;
* :mod:`~l2c_compile.schedule.summary`: the numbers the CLI reports for a schedule (counts, MACs, ideal speedup).

The names below are the package's public surface: ``from l2c_compile.schedule import Schedule``.
"""

from __future__ import annotations

from l2c_compile.families.vocabulary import MODES, Mask
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
from l2c_compile.schedule.render import render_grid, rich_grid, save_heatmap
from l2c_compile.schedule.router_files import RouterFile, export_official, load_router, save_router
from l2c_compile.schedule.summary import schedule_summary

__all__ = [
    "DEFAULT_THRESHOLDS",
    "HEURISTICS",
    "MODES",
    "CallSchedule",
    "Mask",
    "RouterFile",
    "Schedule",
    "default_threshold",
    "export_official",
    "heuristic",
    "import_router",
    "load_router",
    "render_grid",
    "rich_grid",
    "router_target",
    "save_heatmap",
    "save_router",
    "schedule_summary",
]
