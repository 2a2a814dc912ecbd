"""The executors of the latency benchmark, how one configuration is measured, and its ratios.

Split from ``latency.py`` (the command line, grid and reporting) so each file stays readable.
Every executor runs the whole sampling loop and returns the final latents; ``run_config`` measures
them in order on the same inputs, so their ratios are comparable.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from common import append_text, sync

import l2c_compile
from l2c_compile.compiler import reference
from l2c_compile.compiler.guidance import GuidedDenoiser, timestep_vector
from l2c_compile.metrics.macs import trajectory_macs
from l2c_compile.models.registry import ModelSpec
from l2c_compile.runtime.sampler import CompiledSampler
from l2c_compile.samplers import execute_plan
from l2c_compile.samplers.base import SamplerPlan
from l2c_compile.schedule import Schedule

UNCACHED = (
    "eager-uncached",
    "compiled-uncached",
    "inductor-uncached",
    "inductor+graph-uncached",
    "regional-uncached",
    "torch-compile-default-uncached",
    "torch-compile-reduce-overhead-uncached",
)


# ── executors ────────────────────────────────────────────────────────────────────────────────
@dataclass
class Executor:
    """One way to run the whole sampling loop; ``after`` frees what it pinned (a CUDA graph)."""

    name: str
    run: Callable[[], torch.Tensor]
    build_s: float | None = None
    after: Callable[[], None] | None = None


@dataclass
class Group:
    """What one (model, dtype, sampler, NFE) cell shares across batch sizes: built once."""

    spec: ModelSpec
    model: torch.nn.Module
    plan: SamplerPlan
    sched: Schedule
    dtype: str
    cfg_scale: float | None
    samplers: dict[str, CompiledSampler] = field(default_factory=dict)
    build_s: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = field(
        default_factory=dict
    )


def torch_compiled_loop(
    model: torch.nn.Module, plan: SamplerPlan, cfg_scale: float | None, mode: str | None
):
    """torch.compile of the uncached denoiser driven by the eager sampler loop (the baseline users pick)."""
    den = torch.compile(
        GuidedDenoiser(model, cfg=cfg_scale is not None), mode=mode, fullgraph=True, dynamic=False
    )
    dtype = next(model.parameters()).dtype

    def run(noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        scale = torch.full((), cfg_scale or 1.0, device=noise.device)

        def eps_fn(call, x_in):
            t = timestep_vector(call.timestep, x_in.shape[0], x_in.device)
            # Always a copy: reduce-overhead replays overwrite their outputs, and DPM-Solver-2
            # still needs the previous call's ε when the next call has run.
            return den(x_in.to(dtype), t, labels, scale).to(noise.dtype, copy=True)

        with torch.no_grad():
            return execute_plan(plan, noise, eps_fn)

    return run


def build_group(
    spec: ModelSpec,
    model: torch.nn.Module,
    plan: SamplerPlan,
    sched: Schedule,
    dtype: str,
    cfg_scale: float | None,
    opts: argparse.Namespace,
) -> Group:
    """Compile the samplers of one cell (passes once; inductor wraps the same generated source)."""
    g = Group(spec, model, plan, sched, dtype, cfg_scale)
    regional_model = None
    for label, s in (("uncached", None), ("l2c", sched)):
        t0 = time.perf_counter()
        cs = l2c_compile.compile(model, plan, s, cfg=cfg_scale is not None)
        g.build_s[label] = time.perf_counter() - t0
        g.samplers[f"compiled-{label}"] = cs
        if getattr(opts, "hoist_ab", False):  # the same sampler without the prologue (passes/hoist.py)
            t0 = time.perf_counter()
            plain = l2c_compile.compile(model, plan, s, cfg=cfg_scale is not None, hoist=False)
            g.build_s[f"nohoist-{label}"] = time.perf_counter() - t0
            g.samplers[f"compiled-nohoist-{label}"] = plain
            if opts.inductor:
                g.samplers[f"inductor-nohoist-{label}"] = CompiledSampler(
                    model, plain.source, plain.record, backend="inductor"
                )
        if opts.inductor or (opts.cuda_graph and not getattr(opts, "no_inductor_graph", False)):
            g.samplers[f"inductor-{label}"] = CompiledSampler(
                model, cs.source, cs.record, backend="inductor"
            )
        if getattr(opts, "regional", False):
            # regional compiles sublayer modules in place: a private model shared by both twins
            if regional_model is None:
                regional_model = copy.deepcopy(cs.model)
            g.samplers[f"regional-{label}"] = CompiledSampler(
                regional_model, cs.source, dataclasses.replace(cs.record, backend="regional"), backend="regional"
            )
    if opts.torch_compile:
        for mode in [None] + (["reduce-overhead"] if opts.device.startswith("cuda") else []):
            g.baselines[f"torch-compile-{mode or 'default'}-uncached"] = torch_compiled_loop(
                model, plan, cfg_scale, mode
            )
    return g


def _sampler_call(
    cs: CompiledSampler, graph: bool, noise, labels, scale
) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        if cs.cuda_graph != graph:  # the setter drops any captured graph, so only flip on change
            cs.cuda_graph = graph
        return cs(noise, labels, scale)

    return run


def executors_for(
    g: Group, opts: argparse.Namespace, noise: torch.Tensor, labels: torch.Tensor
) -> list[Executor]:
    """The executors of one configuration, in the order they are measured."""
    m, p, s, scale = g.model, g.plan, g.sched, g.cfg_scale
    out: list[Executor] = []
    if not opts.skip_eager:
        out += [
            Executor(
                "eager-uncached", lambda: reference.sample_uncached(m, p, noise, labels, scale)
            ),
            Executor("eager-l2c", lambda: reference.sample(m, p, s, noise, labels, scale)),
        ]

    def sampler(backend: str, label: str, graph: bool, variant: str = "") -> Executor:
        """l2c-compile's sampler: ``backend`` "compiled" (eager step graphs), "regional" or
        "inductor", with or without the whole trajectory in one CUDA graph; ``variant``
        "nohoist": compiled with ``hoist=False`` (``--hoist-ab``)."""
        key = f"{variant}-{label}" if variant else label
        cs = g.samplers[f"{backend}-{key}"]
        return Executor(
            f"{backend}{'+graph' if graph else ''}-{key}",
            _sampler_call(cs, graph, noise, labels, scale),
            g.build_s[key],
            after=cs.reset_cuda_graph if graph else None,
        )

    labels_ = ("uncached", "l2c")
    hoist_ab = getattr(opts, "hoist_ab", False)
    out += [sampler("compiled", label, False) for label in labels_]
    if hoist_ab:
        out += [sampler("compiled", label, False, "nohoist") for label in labels_]
    if opts.cuda_graph:  # eager step graphs in one CUDA graph: no inductor compile to wait for
        out += [sampler("compiled", label, True) for label in labels_]
        if hoist_ab:
            out += [sampler("compiled", label, True, "nohoist") for label in labels_]
    # torch.compile of the uncached model (the peer a user would pick) before the inductor step
    # graphs, whose many compiles are the first thing a time limit cuts.
    for name, run in g.baselines.items():
        out.append(Executor(name, lambda run=run: run(noise, labels)))
    for label in labels_:
        if f"regional-{label}" in g.samplers:
            out.append(sampler("regional", label, False))
    if opts.cuda_graph:  # the regional sublayers (inductor) inside the whole-trajectory graph
        out += [sampler("regional", label, True) for label in labels_ if f"regional-{label}" in g.samplers]
    inductor_graph = opts.cuda_graph and not getattr(opts, "no_inductor_graph", False)
    for label in labels_:
        if f"inductor-{label}" not in g.samplers:
            continue
        if opts.inductor:
            out.append(sampler("inductor", label, False))
            if hoist_ab:
                out.append(sampler("inductor", label, False, "nohoist"))
        if inductor_graph:
            out.append(sampler("inductor", label, True))
    keep = getattr(opts, "executors", None)
    if keep:  # --executors: a subset, in the usual order
        wanted = {name.strip() for name in keep.split(",") if name.strip()}
        out = [ex for ex in out if ex.name in wanted]
    return out


# ── measurement ──────────────────────────────────────────────────────────────────────────────
_STATUS = "/proc/self/status"


def reset_peak_rss() -> int | None:
    """Reset the process's peak resident set (Linux: ``/proc/self/clear_refs``); return the
    current resident bytes, or None where the kernel offers no reset."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset VmHWM (the peak RSS) to the current RSS
        return _status_bytes("VmRSS")
    except OSError:
        return None


def peak_rss() -> int | None:
    """Peak resident bytes since the last :func:`reset_peak_rss` (Linux), else None."""
    try:
        return _status_bytes("VmHWM")
    except OSError:
        return None


def _status_bytes(field_name: str) -> int:
    with open(_STATUS) as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise OSError(f"{field_name} not in {_STATUS}")


def measure(fn: Callable[[], Any], device: str, repeats: int, budget_s: float) -> dict[str, Any]:
    """First call apart, then up to ``repeats`` timed calls while ``budget_s`` lasts (at least one)."""
    cuda = device.startswith("cuda")
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        gc.collect()
        base = reset_peak_rss()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    row: dict[str, Any] = {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "first_s": first,
        "repeats": len(times),
    }
    if cuda:
        row["peak_mem_bytes"] = torch.cuda.max_memory_allocated()
        row["peak_extra_bytes"] = row["peak_mem_bytes"] - base  # above weights and inputs
    elif base is not None:  # CPU: resident set, first call (compiles) included
        peak = peak_rss()
        if peak is not None:
            row["peak_mem_bytes"] = peak
            row["peak_extra_bytes"] = peak - base
    return row


def cache_bytes(g: Group, batch: int) -> int:
    """Bytes of the schedule's peak live cache: entries × rows × tokens × width × element size."""
    entries = g.samplers["compiled-l2c"].info["peak_live_cache_entries"]
    rows = batch * (2 if g.cfg_scale is not None else 1)
    itemsize = torch.empty((), dtype=getattr(torch, g.dtype)).element_size()
    return entries * rows * g.spec.tokens * g.spec.hidden * itemsize


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Speedups vs every uncached baseline, vs the same backend's, vs the best; share of ideal."""
    by = {r["executor"]: r for r in rows if "median_s" in r}
    best = min((by[n]["median_s"] for n in UNCACHED if n in by), default=None)
    for r in by.values():
        macs = r.get("macs_per_image", {}).get("l2c" if r["executor"].endswith("-l2c") else "uncached")
        if macs:  # achieved GFLOP/s of the work the executor does (2 FLOP per MAC, CFG rows)
            rows_ = r["batch"] * (2 if r["cfg"] else 1)
            r["gflops"] = 2.0 * macs * rows_ / r["median_s"] / 1e9
        if "eager-l2c" in by:  # the official semantics: the reference a user of L2C runs today
            r["speedup_vs_eager-l2c"] = by["eager-l2c"]["median_s"] / r["median_s"]
        for base in UNCACHED:
            if base in by:
                r[f"speedup_vs_{base}"] = by[base]["median_s"] / r["median_s"]
        if best is not None:
            r["speedup_vs_best_uncached"] = best / r["median_s"]
        if r["executor"].endswith("-l2c"):
            twin = by.get(r["executor"].removesuffix("-l2c") + "-uncached")
            if twin is not None:
                r["speedup_vs_same_uncached"] = twin["median_s"] / r["median_s"]
                r["share_of_ideal"] = r["speedup_vs_same_uncached"] / r["ideal_speedup"]
                if "peak_extra_bytes" in r and "peak_extra_bytes" in twin:
                    r["mem_over_uncached_bytes"] = r["peak_extra_bytes"] - twin["peak_extra_bytes"]


def _run_interleaved(
    executors: list[Executor], common: dict[str, Any], opts: argparse.Namespace
) -> list[dict[str, Any]]:
    """Round-robin timing: every executor's first call, then repeat r of each executor in turn.

    On a shared CPU the load drifts over minutes; interleaving puts every executor under the same
    drift, so the ratios stay honest. (No per-executor peak memory: that needs sequential runs.)
    """
    device = opts.device
    firsts: dict[str, float] = {}
    times: dict[str, list[float]] = {ex.name: [] for ex in executors}
    for ex in executors:
        sync(device)
        t0 = time.perf_counter()
        ex.run()
        sync(device)
        firsts[ex.name] = time.perf_counter() - t0
    for _ in range(opts.repeats):
        for ex in executors:
            t0 = time.perf_counter()
            ex.run()
            sync(device)
            times[ex.name].append(time.perf_counter() - t0)
    rows = []
    for ex in executors:
        ts = times[ex.name]
        row = {
            **common,
            "executor": ex.name,
            "interleaved": True,
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "max_s": max(ts),
            "first_s": firsts[ex.name],
            "repeats": len(ts),
        }
        if ex.build_s is not None:
            row["compile_s"] = ex.build_s + max(0.0, row["first_s"] - row["median_s"])
        if ex.after is not None:
            ex.after()
        rows.append(row)
    return rows


def run_config(
    g: Group, batch: int, opts: argparse.Namespace, env: dict[str, Any], deadline: float | None
) -> list[dict[str, Any]]:
    """Measure every executor of one (cell, batch); time limits turn the rest into 'skipped' rows."""
    gen = torch.Generator().manual_seed(opts.seed)
    c, h, w = g.spec.latent_shape
    noise = torch.randn(batch, c, h, w, generator=gen).to(opts.device)  # float32: the sampler state
    labels = torch.randint(0, g.spec.num_classes, (batch,), generator=gen).to(opts.device)
    macs_full, macs_cached = trajectory_macs(g.spec, g.sched)
    stats = g.sched.stats()
    common = {
        "benchmark": "latency",
        **env,
        "model": g.spec.name,
        "sampler": g.plan.sampler,
        "nfe": g.plan.nfe,
        "batch": batch,
        "cfg": g.cfg_scale is not None,
        "dtype": g.dtype,
        "tf32": g.dtype == "float32" and opts.device.startswith("cuda"),
        "schedule": {
            "source": g.sched.source,
            "skipped_fraction": stats["skipped_fraction"],
            "cache_steps": stats["cache_steps"],
            "distinct_masks": stats["distinct_masks"],
        },
        "ideal_speedup": macs_full / macs_cached,
        "macs_per_image": {"uncached": macs_full, "l2c": macs_cached},
        "cache_bytes_expected": cache_bytes(g, batch),
    }
    if getattr(opts, "interleave", False):
        rows = _run_interleaved(executors_for(g, opts, noise, labels), common, opts)
        add_ratios(rows)
        return rows
    started = time.perf_counter()
    rows = []
    for ex in executors_for(g, opts, noise, labels):
        row = {**common, "executor": ex.name}
        now = time.perf_counter()
        if now - started > opts.time_limit or (deadline is not None and now > deadline):
            rows.append({**row, "skipped": "time limit"})
            continue
        try:
            row.update(measure(ex.run, opts.device, opts.repeats, opts.executor_budget))
        # Broad on purpose: a failing executor (OOM, compile error) is a result to record, and
        # the other executors of the grid still deserve their measurement.
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        finally:
            if ex.after is not None:
                ex.after()
        if "median_s" in row and ex.build_s is not None:
            row["compile_s"] = ex.build_s + max(0.0, row["first_s"] - row["median_s"])
        elif "median_s" in row and ex.name.startswith("torch-compile"):
            row["compile_s"] = max(0.0, row["first_s"] - row["median_s"])
        done = (
            f"median {row['median_s']:.4f} s, first call {row['first_s']:.2f} s"
            if "median_s" in row
            else row["error"]
        )
        print(f"  n={batch} {ex.name}: {done}", flush=True)  # a killed run still shows progress
        if getattr(opts, "partial", None) is not None:
            append_text(opts.partial, json.dumps(row, default=str) + "\n")
        rows.append(row)
    add_ratios(rows)
    return rows
