"""The rows of benchmarks/quality.py's tables: which schedules each compares, resolved up front.

Building rows is cheap (router files and heuristics only, nothing is sampled), so ``--list`` can
show every row's MACs and removal before hours of sampling. Matching follows the paper: a
fewer-step sampler at the L2C router's MACs (Tables 1, 2), and every baseline of Table 5 at the
L2C router's number of removed sublayers — exactly for learning-to-drop, whose router is
thresholded at the score that removes that many.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from l2c_compile.apps import demo
from l2c_compile.errors import L2CError
from l2c_compile.metrics.macs import trajectory_macs
from l2c_compile.models.registry import get_spec, num_blocks
from l2c_compile.models.select import make_spec_plan, spec_layout
from l2c_compile.samplers.base import SamplerPlan
from l2c_compile.schedule import Schedule, default_threshold, heuristic, import_router
from l2c_compile.schedule.baselines import deepcache, fora, step_mask
from l2c_compile.schedule.router_files import load_router

TABLES = ("1", "9", "5", "2", "6")  # run order: later tables reuse earlier samples
FRONT = "F"  # the Pareto-front rows of one (model, NFE): front_rows
FRONT_THETAS = {"dit": (0.1, 0.5, 0.9, 0.95), "uvit": (0.5, 0.9, 0.95, 0.99)}
TITLES = {
    "1": "Table 1 — DiT-FMNIST, DDIM: L2C vs. fewer-step DDIM at matched MACs",
    "9": "Table 9 — the λ sweep at the sweep NFE (DiT-FMNIST DDIM, U-ViT-FMNIST DPM-Solver-2)",
    "5": "Table 5 — DiT-FMNIST, DDIM-20: dropping vs. caching, heuristics, at matched removal",
    "2": "Table 2 — U-ViT-FMNIST, DPM-Solver-2: L2C vs. fewer steps at matched MACs",
    "6": "Table 6 — U-ViT-FMNIST, DPM-Solver-2-20: cache every layer, shifted or not",
}


@dataclass(frozen=True)
class Row:
    """One configuration of one table."""

    table: str
    model: str
    method: str
    plan: SamplerPlan
    schedule: Schedule | None  # None: uncached
    ref_nfe: int  # PSNR compares with the uncached run at this NFE (same seeds)
    headline: bool = False

    @property
    def key(self) -> str:
        """Identity for --resume: table, model, method, sampler, NFE, options."""
        opts = ",".join(f"{k}={v}" for k, v in self.plan.options)
        return f"{self.table}|{self.model}|{self.method}|{self.plan.sampler}|{self.plan.nfe}|{opts}"


# ---------------------------------------------------------------------------------------------
# Building the tables (cheap: routers and heuristics only, nothing sampled)
# ---------------------------------------------------------------------------------------------


def router_schedule(spec: Any, plan: SamplerPlan, path: Path) -> Schedule:
    """A shipped router thresholded at its family's θ; L2CError naming the file when missing."""
    if not path.is_file():
        raise L2CError(
            f"router {path.name} not found in {path.parent}; run train_fmnist_routers.py"
        )
    depth = _depth(spec)
    return import_router(
        path, plan, model=spec.name, depth=depth, threshold=default_threshold(spec.family)
    )


def at_removal(spec: Any, plan: SamplerPlan, path: Path, removed: int) -> Schedule:
    """A router thresholded so that exactly its ``removed`` lowest-scoring sublayers are skipped."""
    router = load_router(path)
    rows = sorted({c.router_index for c in plan.calls if c.role == "cache"})
    scores = torch.sigmoid(router.logits[rows].float()).flatten().sort().values
    theta = float(scores[removed - 1]) if removed > 0 else 0.0
    sched = Schedule.from_router(
        router.logits,
        plan,
        model=spec.name,
        depth=_depth(spec),
        threshold=theta,
        source={"kind": "router", "file": path.name, "matched_removal": removed},
        mode=router.meta.get("mode", "cache"),
    )
    return sched


def layers(kind: str, plan: SamplerPlan, model: str, depth: int, removed: int) -> Schedule:
    """Cache exactly ``removed`` sublayers: the last (``"top"``) or first (``"bottom"``) ones of
    each cache call, spread evenly over the calls (earlier calls take the remainder).

    :func:`~l2c_compile.schedule.heuristic` takes the same share of every call, which cannot
    match an arbitrary count when a call has only 2·depth sublayers.
    """
    cache = [c for c in plan.calls if c.role == "cache"]
    width = 2 * depth
    base, extra = divmod(removed, len(cache))
    logits = torch.ones(plan.nfe, width)  # (nfe, 2·depth): +1 computes, −1 skips at θ = 0.5
    for j, call in enumerate(cache):
        k = min(width, base + (j < extra))
        span = slice(width - k, width) if kind == "top" else slice(0, k)
        logits[call.router_index, span] = -1.0
    source = {"kind": "heuristic", "heuristic": kind, "removed": removed}
    sched = Schedule.from_router(
        logits, plan, model=model, depth=depth, threshold=0.5, source=source
    )
    return replace(sched, threshold=None)  # no router was thresholded


def fewer_steps(plan: SamplerPlan, ratio: float) -> int:
    """The NFE below this plan's whose uncached MACs come closest to ``ratio`` × its MACs.

    Always strictly fewer steps (a baseline equal to the uncached row says nothing) and even for
    DPM-Solver-2, whose steps take two model calls each.
    """
    step = 2 if plan.sampler == "dpm-solver-2" else 1
    return max(step, min(plan.nfe - step, step * round(plan.nfe * ratio / step)))


def _depth(spec: Any) -> int:
    return num_blocks(spec)


def _router(model: str, sampler: str, nfe: int, tag: str = "") -> Path:
    return demo.ROUTERS / (  # looked up at call time: tests point it elsewhere
        f"{model}-{sampler}-{nfe}" + (f"-{tag}" if tag else "") + ".safetensors"
    )


def macs(spec: Any, sched: Schedule | None, nfe: int) -> int:
    """MACs per image of a whole trajectory (thop convention); ``sched=None`` is uncached."""
    return trajectory_macs(spec, sched, None if sched is not None else nfe)[1]


def build_rows(
    tables: list[str],
    dit: str,
    uvit: str,
    dit_nfes: list[int],
    uvit_nfes: list[int],
    sweep_nfe: int,
) -> list[Row]:
    """Every row of the requested tables, schedules resolved."""
    rows: list[Row] = []
    for table in TABLES:
        if table not in tables:
            continue
        if table in ("1", "2"):
            name = dit if table == "1" else uvit
            spec = get_spec(name)
            for nfe in dit_nfes if table == "1" else uvit_nfes:
                plan = make_spec_plan(spec, None, nfe)
                l2c = router_schedule(spec, plan, _router(name, plan.sampler, nfe))
                full, cached = macs(spec, None, nfe), macs(spec, l2c, nfe)
                few = make_spec_plan(spec, None, fewer_steps(plan, cached / full))
                base = "DDIM" if plan.sampler == "ddim" else "DPM-Solver-2"
                rows += [
                    Row(table, name, base, plan, None, nfe, headline=True),
                    Row(table, name, f"{base}, fewer steps (matched MACs)", few, None, nfe),
                    Row(table, name, "L2C", plan, l2c, nfe, headline=True),
                ]
        elif table == "9":
            for name in (dit, uvit):  # the λ sweep of each model at the sweep NFE
                spec = get_spec(name)
                plan = make_spec_plan(spec, None, sweep_nfe)
                base = "DDIM" if plan.sampler == "ddim" else "DPM-Solver-2"
                rows.append(
                    Row(table, name, f"λ = 0 ({base})", plan, None, sweep_nfe, headline=True)
                )
                paths = [
                    _router(name, plan.sampler, sweep_nfe),
                    *sorted(
                        demo.ROUTERS.glob(f"{name}-{plan.sampler}-{sweep_nfe}-lam*.safetensors")
                    ),
                ]
                scheds = [router_schedule(spec, plan, p) for p in paths]
                for p, s in sorted(
                    zip(paths, scheds, strict=True), key=lambda ps: ps[1].stats()["skipped_total"]
                ):
                    lam = load_router(p).meta.get("lam")
                    rows.append(Row(table, name, f"L2C λ = {lam:g}", plan, s, sweep_nfe))
        elif table == "5":
            spec = get_spec(dit)
            plan = make_spec_plan(spec, None, sweep_nfe)
            l2c = router_schedule(spec, plan, _router(dit, "ddim", sweep_nfe))
            stats = l2c.stats()
            removed, frac = stats["skipped_total"], stats["skipped_fraction"]
            depth = _depth(spec)
            h = {"model": dit, "depth": depth, "fraction": frac}
            drop_router = _router(dit, "ddim", sweep_nfe, "drop")
            rows += [
                Row(table, dit, "DDIM (uncached)", plan, None, sweep_nfe, headline=True),
                Row(
                    table,
                    dit,
                    "Random drop",
                    plan,
                    heuristic("random", plan, **h, mode="drop"),
                    sweep_nfe,
                ),
                Row(
                    table,
                    dit,
                    "Learning-to-drop",
                    plan,
                    at_removal(spec, plan, drop_router, removed),
                    sweep_nfe,
                ),
                Row(table, dit, "Random cache", plan, heuristic("random", plan, **h), sweep_nfe),
                Row(
                    table,
                    dit,
                    "Cache top layers",
                    plan,
                    layers("top", plan, dit, depth, removed),
                    sweep_nfe,
                ),
                Row(
                    table,
                    dit,
                    "Cache bottom layers",
                    plan,
                    layers("bottom", plan, dit, depth, removed),
                    sweep_nfe,
                ),
                Row(table, dit, "Learning-to-cache", plan, l2c, sweep_nfe, headline=True),
                Row(
                    table,
                    dit,
                    "Cache all, every other step",
                    plan,
                    heuristic("all", plan, model=dit, depth=depth, fraction=1.0),
                    sweep_nfe,
                ),
            ]
        elif table == "6":
            spec = get_spec(uvit)
            nfe = sweep_nfe
            shifted = make_spec_plan(spec, None, nfe)
            unshifted = make_spec_plan(spec, None, nfe, shifted=False)
            depth = _depth(spec)
            rows += [
                Row(table, uvit, "DPM-Solver-2", shifted, None, nfe, headline=True),
                Row(
                    table,
                    uvit,
                    "Cache all (unshifted)",
                    unshifted,
                    heuristic("all", unshifted, model=uvit, depth=depth, fraction=1.0),
                    nfe,
                ),
                Row(
                    table,
                    uvit,
                    "Cache all (shifted)",
                    shifted,
                    heuristic("all", shifted, model=uvit, depth=depth, fraction=1.0),
                    nfe,
                ),
                Row(
                    table,
                    uvit,
                    "L2C (shifted)",
                    shifted,
                    router_schedule(spec, shifted, _router(uvit, shifted.sampler, nfe)),
                    nfe,
                ),
            ]
    return rows


def front_rows(
    model: str,
    nfe: int,
    *,
    thetas: tuple[float, ...] | None = None,
    extra: dict[str, Path] | None = None,
    heuristics: tuple[str, ...] = ("random", "top", "bottom"),
    baselines: bool = True,
) -> list[Row]:
    """The points of one (model, NFE) cost–quality front, all at the same seeds (issue 25).

    ``kind`` is the method name's first word: ``steps`` — the uncached sampler at every step
    count from about half the NFE up to the NFE (the last one is the PSNR reference); ``L2C`` —
    the shipped router at each θ of ``thetas`` (default: the family's :data:`FRONT_THETAS`),
    the λ-sweep routers (``-lam*`` files at this NFE) and each ``extra`` router (label → file)
    at the family's θ; ``heuristic`` — random / top / bottom layer caching at the removal of
    the shipped router at its θ; ``baseline`` — the static schedules other tools ship
    (:func:`baseline_rows`), unless ``baselines`` is false.
    """
    spec = get_spec(model)
    plan = make_spec_plan(spec, None, nfe)
    depth = _depth(spec)
    theta0 = default_threshold(spec.family)
    step = 2 if plan.sampler == "dpm-solver-2" else 1
    base = "DDIM" if plan.sampler == "ddim" else "DPM-Solver-2"
    rows = [
        Row(FRONT, model, f"steps {base}-{n}", make_spec_plan(spec, None, n), None, nfe, True)
        for n in range(step * -(-nfe // (2 * step)), nfe + 1, step)
    ]
    shipped = _router(model, plan.sampler, nfe)
    for theta in thetas or FRONT_THETAS[spec.family]:
        sched = import_router(shipped, plan, model=model, depth=depth, threshold=theta)
        rows.append(Row(FRONT, model, f"L2C θ={theta:g}", plan, sched, nfe, True))
    for path in sorted(demo.ROUTERS.glob(f"{model}-{plan.sampler}-{nfe}-lam*.safetensors")):
        lam = load_router(path).meta.get("lam")
        sched = router_schedule(spec, plan, path)
        rows.append(Row(FRONT, model, f"L2C λ={lam:g} θ={theta0:g}", plan, sched, nfe, True))
    for label, path in (extra or {}).items():
        meta = load_router(path).meta
        if meta.get("model") != model or meta.get("nfe") != nfe:
            continue  # a router for another front
        sched = router_schedule(spec, plan, path)
        rows.append(Row(FRONT, model, f"L2C {label} θ={theta0:g}", plan, sched, nfe, True))
    stats = router_schedule(spec, plan, shipped).stats()
    removed = stats["skipped_total"]
    for kind in heuristics:
        if kind == "random":
            frac = stats["skipped_fraction"]
            sched = heuristic("random", plan, model=model, depth=depth, fraction=frac)
        else:
            sched = layers(kind, plan, model, depth, removed)
        rows.append(Row(FRONT, model, f"heuristic {kind} cache", plan, sched, nfe, True))
    return rows + (baseline_rows(spec, plan, model) if baselines else [])


def baseline_rows(spec: Any, plan: SamplerPlan, model: str) -> list[Row]:
    """The static baselines of :mod:`l2c_compile.schedule.baselines` on one front (issues 23, 25):
    FORA every 2nd and 3rd call (the last call computes, as SmoothCache's FORA files), a
    cache-dit-style step mask (the first quarter, or half, of the calls and the last compute, in
    between every other call; the rest reuse the trunk) and DeepCache every 2nd call over all blocks but the
    first and the last (when there are more than two)."""
    layout, nfe = spec_layout(spec), plan.nfe
    scheds = {
        "FORA-2": fora(plan, layout, interval=2, model=model, compute_last=True),
        "FORA-3": fora(plan, layout, interval=3, model=model, compute_last=True),
    }
    for first in sorted({max(1, nfe // 4), max(1, nfe // 2)}):
        scheds[f"step-mask {first}/1/2"] = step_mask(plan, layout, first=first, last=1, every=2, model=model)
    if layout.depth > 2:
        stop = layout.depth - 1
        scheds[f"DeepCache-2 blocks 1:{stop}"] = deepcache(plan, layout, interval=2, start=1, stop=stop, model=model)
    return [Row(FRONT, model, f"baseline {name}", plan, sched, nfe, True) for name, sched in scheds.items()]


def front_kind(method: str) -> str:
    """``steps``, ``L2C``, ``heuristic`` or ``baseline``: the family of a front row (its method's first word)."""
    return method.split(" ", 1)[0]
