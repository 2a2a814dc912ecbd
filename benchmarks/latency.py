"""Latency of the executors side by side, with the schedule's ideal MACs ratio beside them.

    python benchmarks/latency.py --model DiT-S/2 --nfe 20 --batch 1 --heuristic random --fraction 0.44
    python benchmarks/latency.py --matrix --list                    # the grid, nothing run
    python benchmarks/latency.py --matrix --only DiT-XL/2 --dtypes bfloat16 --samplers ddim-20 \\
        --batches 8 --inductor --cuda-graph --torch-compile --deadline 540

Executors (one run measures all of them, so ratios are comparable):
  eager-uncached      the plain sampler loop, eager PyTorch
  eager-l2c           the reference executor applying the schedule at run time (official semantics)
  compiled-uncached   l2c-compile's module for the all-compute schedule (eager step graphs)
  compiled-l2c        l2c-compile's module for the schedule (eager step graphs)
  compiled-nohoist-*  the same two compiled with ``hoist=False`` (``--hoist-ab``): every step graph
                      computes its own timestep embedding and adaLN modulation (the A/B of the
                      prologue, passes/hoist.py); ``+graph`` and ``inductor-`` twins likewise
  inductor-*          the same two with ``backend="inductor"`` (``--inductor``): whole step graphs
                      through inductor, linears through oneDNN on CPU (l2c_compile/runtime/backends.py)
  regional-*          the same two with ``backend="regional"`` (``--regional``): each sublayer kind
                      compiled once, the glue eager
  compiled+graph-*    eager step graphs, whole trajectory in one CUDA graph (``--cuda-graph``, CUDA)
  inductor+graph-*    inductor steps, whole trajectory in one CUDA graph (``--cuda-graph``, CUDA)
  regional+graph-*    regional sublayers, whole trajectory in one CUDA graph (``--regional
                      --cuda-graph``, CUDA)
  torch-compile-{default,reduce-overhead}-uncached   torch.compile of the uncached denoiser driven
                      by the eager loop (``--torch-compile``; reduce-overhead on CUDA only)

``--matrix`` runs the issue's grid in one process: on CUDA DiT-S/2, DiT-XL/2 (256, 512), DiT-L/2 and U-ViT-H/2
with random weights × batch 1, 8, 32 (with CFG) × float32 (TF32) and bfloat16 × DDIM and
DPM-Solver-2 at 20 and 50 NFE; on CPU the tiny models at 10 NFE. Released routers (``--routers-dir``)
serve DiT-XL/2 DDIM-20/50 and U-ViT-H/2 DPM-Solver-2-20/50; every other cell gets a random heuristic
schedule with the skipped fraction of the released router for its sampler and NFE. Filters
(``--only``, ``--batches``, ``--dtypes``, ``--samplers``) cut the grid into chunks that fit a
10-minute device command; ``--deadline`` stops starting work after that many seconds. The whole
GPU grid does not fit one device session (inductor compiles one graph per distinct step mask and
batch size): run the chunks that matter first (DiT-XL/2 · bf16 · DDIM-20 · batch 8, then 1).

Columns: median seconds per loop and spread (min–max), first call, compile time (l2c passes +
first call − median), peak memory on CUDA (absolute, and above what was allocated before the
executor started: the comparable one, as pools pinned earlier stay in the absolute), the expected
cache bytes (peak live entries × rows × tokens × width × element size), speedups. Writes JSON lines
to ``benchmarks/results/latency.jsonl`` (matrix: ``latency-matrix.jsonl``) and markdown beside them.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, append_text, environment, markdown_table
from latency_exec import build_group, run_config

from l2c_compile.models.registry import (
    ModelSpec,
    build_model,
    get_spec,
    init_random,
    load_checkpoint,
)
from l2c_compile.samplers import make_plan
from l2c_compile.samplers.base import SamplerPlan
from l2c_compile.schedule import Schedule, heuristic, import_router

ROOT = Path(__file__).resolve().parents[1]
GPU_GRID = {
    "models": ["DiT-S/2", "DiT-XL/2", "DiT-XL/2-512", "DiT-L/2", "U-ViT-H/2"],
    "batches": [1, 8, 32],
    "dtypes": ["float32", "bfloat16"],
    "samplers": ["ddim-20", "ddim-50", "dpm-solver-2-20", "dpm-solver-2-50"],
}
CPU_GRID = {
    "models": ["DiT-Tiny", "U-ViT-Tiny"],
    "batches": [1, 4],
    "dtypes": ["float32", "bfloat16"],
    "samplers": ["ddim-10", "dpm-solver-2-10"],
}
# (model, sampler, NFE) → (released router file, documented θ); see shared/data/routers/README.md.
RELEASED = {
    ("DiT-XL/2", "ddim", 20): ("DDIM20_router.pt", 0.1),
    ("DiT-XL/2", "ddim", 50): ("DDIM50_router.pt", 0.1),
    ("U-ViT-H/2", "dpm-solver-2", 20): ("dpm20_router.pth", 0.9),
    ("U-ViT-H/2", "dpm-solver-2", 50): ("dpm50_router.pth", 0.9),
}
# Skipped fraction of cache-step sublayers of those routers at θ (same README): what a synthetic
# schedule for another model copies, so every cell of a column saves a comparable share.
RELEASED_FRACTION = {
    ("ddim", 20): 248 / 560,
    ("ddim", 50): 664 / 1400,
    ("dpm-solver-2", 20): 333 / 522,
    ("dpm-solver-2", 50): 1304 / 1392,
}


# ── schedules ────────────────────────────────────────────────────────────────────────────────
def build_schedule(
    args: argparse.Namespace, spec: ModelSpec, plan: SamplerPlan, depth: int
) -> Schedule:
    """Single-run mode: ``--router``, else ``--schedule``, else a ``--heuristic`` schedule."""
    if args.router:
        theta = (
            args.threshold if args.threshold is not None else (0.1 if spec.family == "dit" else 0.9)
        )
        return import_router(args.router, plan, model=spec.name, depth=depth, threshold=theta)
    if args.schedule:
        return Schedule.load(args.schedule)
    return heuristic(
        args.heuristic, plan, model=spec.name, depth=depth, fraction=args.fraction, seed=args.seed
    )


def find_routers_dir(given: str | None) -> Path | None:
    """``--routers-dir``, else ``shared/data/routers`` inside or beside the checkout, else None."""
    if given:
        return Path(given)
    for candidate in (
        ROOT / "shared" / "data" / "routers",
        ROOT.parent / "shared" / "data" / "routers",
    ):
        if candidate.is_dir():
            return candidate
    return None


def matrix_schedule(
    spec: ModelSpec,
    plan: SamplerPlan,
    depth: int,
    routers: Path | None,
    default_fraction: float,
    seed: int,
) -> Schedule:
    """The released router for this cell when there is one, else a matching random schedule."""
    released = RELEASED.get((spec.name, plan.sampler, plan.nfe))
    if released and routers is not None and (routers / released[0]).is_file():
        return import_router(
            routers / released[0], plan, model=spec.name, depth=depth, threshold=released[1]
        )
    fraction = RELEASED_FRACTION.get((plan.sampler, plan.nfe), default_fraction)
    return heuristic("random", plan, model=spec.name, depth=depth, fraction=fraction, seed=seed)


# ── reporting ────────────────────────────────────────────────────────────────────────────────
COLUMNS = [
    ("executor", "executor"),
    ("median_s", "median s"),
    ("min_s", "min s"),
    ("max_s", "max s"),
    ("first_s", "first call s"),
    ("compile_s", "compile s"),
    ("peak_mib", "peak MiB"),
    ("extra_mib", "above weights MiB"),
    ("over_uncached_mib", "over same-backend uncached MiB"),
    ("speedup_vs_eager-uncached", "× eager uncached"),
    ("speedup_vs_eager-l2c", "× eager reference L2C"),
    ("speedup_vs_torch-compile-default-uncached", "× torch.compile uncached"),
    ("speedup_vs_same_uncached", "× same-backend uncached"),
    ("speedup_vs_best_uncached", "× best uncached"),
    ("share_of_ideal", "share of ideal"),
    ("ideal_speedup", "ideal ×"),
    ("gflops", "GFLOP/s"),
    ("note", "note"),
]


def config_title(rows: list[dict[str, Any]]) -> str:
    """One line naming the configuration, machine and schedule."""
    r = rows[0]
    s = r["schedule"]
    return (
        f"{r['model']} · {r['sampler']}-{r['nfe']} · batch {r['batch']}{' + CFG' if r['cfg'] else ''} · "
        f"{r['dtype']}{' (TF32)' if r['tf32'] else ''} · {r['device_name']} · torch {r['torch']} · "
        f"git {r['git']} — schedule {s['source'].get('file') or s['source'].get('kind')} · skipped "
        f"{s['skipped_fraction']:.1%} of cache-step sublayers · ideal {r['ideal_speedup']:.3f}× · "
        f"expected cache {r['cache_bytes_expected'] / 2**20:.1f} MiB"
    )


def config_table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of one configuration."""
    shown = []
    for r in rows:
        r = dict(r)
        for key, col in (
            ("peak_mem_bytes", "peak_mib"),
            ("peak_extra_bytes", "extra_mib"),
            ("mem_over_uncached_bytes", "over_uncached_mib"),
        ):
            if r.get(key) is not None:
                r[col] = r[key] / 2**20
        r["note"] = r.get("skipped") or r.get("error")
        shown.append(r)
    return markdown_table(shown, COLUMNS)


def partial_path(out: Path) -> Path:
    """Where rows go one by one while a configuration runs: a killed run keeps what it measured."""
    return out.with_suffix(".partial.jsonl")


def report(rows: list[dict[str, Any]], out: Path) -> None:
    """Print one configuration's table and append it (JSON lines + markdown) to the results."""
    title, table = config_title(rows), config_table(rows)
    print(f"\n### {title}\n\n{table}", flush=True)
    append_text(out, "".join(json.dumps(r, default=str) + "\n" for r in rows))
    append_text(out.with_suffix(".md"), f"\n### {title}\n\n{table}\n")
    partial_path(out).unlink(missing_ok=True)  # the finished rows (with ratios) replace it


# ── driver ───────────────────────────────────────────────────────────────────────────────────
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (single run and ``--matrix``)."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="DiT-S/2")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--sampler", default=None)
    p.add_argument("--nfe", type=int, default=20)
    p.add_argument("--batch", type=int, default=1, help="images (CFG doubles the rows)")
    p.add_argument("--no-cfg", action="store_true")
    p.add_argument("--cfg-scale", type=float, default=None)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--router", default=None, help="router file to import (released or trained)")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--schedule", default=None, help="schedule JSON")
    p.add_argument(
        "--heuristic", default="random", help="random|top|bottom|all when no router/schedule"
    )
    p.add_argument("--fraction", type=float, default=0.44)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--interleave",
        action="store_true",
        help="time the executors round-robin (robust to load drift on a shared CPU; no peak memory)",
    )
    p.add_argument("--inductor", action="store_true", help="also time backend='inductor'")
    p.add_argument("--regional", action="store_true", help="also time backend='regional'")
    p.add_argument(
        "--hoist-ab",
        action="store_true",
        help="also time the compiled samplers built with hoist=False (compiled-nohoist-*; with "
        "--cuda-graph compiled+graph-nohoist-*, with --inductor inductor-nohoist-*)",
    )
    p.add_argument(
        "--executors",
        default=None,
        help="only these executors (comma-separated names, e.g. eager-l2c,regional-l2c)",
    )
    p.add_argument(
        "--cuda-graph", action="store_true", help="also time inductor + whole-trajectory CUDA graph"
    )
    p.add_argument(
        "--no-inductor-graph",
        action="store_true",
        help="with --cuda-graph: graph the eager step graphs only (no inductor compiles)",
    )
    p.add_argument("--torch-compile", action="store_true", help="also time torch.compile uncached")
    p.add_argument(
        "--skip-eager", action="store_true", help="skip the eager executors (slow on big models)"
    )
    p.add_argument(
        "--matrix", action="store_true", help="run the grid (filters below) in one process"
    )
    p.add_argument("--list", action="store_true", help="with --matrix: print the grid and exit")
    p.add_argument("--only", default=None, help="matrix: comma-separated model names")
    p.add_argument("--batches", default=None, help="matrix: e.g. 1,8,32")
    p.add_argument("--dtypes", default=None, help="matrix: e.g. float32,bfloat16")
    p.add_argument("--samplers", default=None, help="matrix: e.g. ddim-20,dpm-solver-2-50")
    p.add_argument("--routers-dir", default=None, help="folder with the released router files")
    p.add_argument(
        "--executor-budget",
        type=float,
        default=None,
        help="seconds of timed repeats per executor (default 60 CUDA, 20 CPU); at least one run",
    )
    p.add_argument(
        "--time-limit", type=float, default=480.0, help="seconds per configuration before skipping"
    )
    p.add_argument(
        "--deadline", type=float, default=None, help="seconds for the whole run before skipping"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)"
    )
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.cuda_graph and not args.device.startswith("cuda"):
        p.error("--cuda-graph needs --device cuda")
    if args.executor_budget is None:
        args.executor_budget = 60.0 if args.device.startswith("cuda") else 20.0
    if args.out is None:
        args.out = str(RESULTS / ("latency-matrix.jsonl" if args.matrix else "latency.jsonl"))
    return args


def _split(value: str | None, default: list, cast=str) -> list:
    return default if value is None else [cast(v.strip()) for v in value.split(",") if v.strip()]


def grid(args: argparse.Namespace) -> list[tuple[str, str, str, int, list[int]]]:
    """Matrix cells in run order: (model, dtype, sampler, NFE, batches); batches share compiled code."""
    base = GPU_GRID if args.device.startswith("cuda") else CPU_GRID
    cells = []
    for model in _split(args.only, base["models"]):
        get_spec(model)  # unknown names fail before anything runs
        for dtype in _split(args.dtypes, base["dtypes"]):
            for entry in _split(args.samplers, base["samplers"]):
                sampler, _, nfe = entry.rpartition("-")
                if not sampler or not nfe.isdigit():
                    raise SystemExit(
                        f"--samplers entry {entry!r} is not SAMPLER-NFE (e.g. ddim-20)"
                    )
                cells.append(
                    (model, dtype, sampler, int(nfe), _split(args.batches, base["batches"], int))
                )
    return cells


def prepare_model(spec: ModelSpec, dtype: str, args: argparse.Namespace) -> torch.nn.Module:
    """The registry model with a checkpoint or seeded random weights, on the device in ``dtype``."""
    model = build_model(spec)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    elif getattr(spec, "checkpoint", None):
        load_checkpoint(model, spec.checkpoint)
    else:
        init_random(model, args.seed)
    return model.to(device=args.device, dtype=getattr(torch, dtype)).eval()


def _release() -> None:
    """Forget compiled code and cached memory between cells (dynamo caches per code object)."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run one configuration, or the grid with ``--matrix``; return every result row."""
    args = parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.threads is not None:  # on a shared CPU, more threads than free cores thrash
        torch.set_num_threads(args.threads)
    if cuda:  # fp32 means TF32 on tensor cores, as in PERFORMANCE.md
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    # One process compiles many cells; a low recompile cap would silently fall back to eager.
    torch._dynamo.config.recompile_limit = max(
        64, getattr(torch._dynamo.config, "recompile_limit", 8)
    )
    env = environment(args.device)
    out = Path(args.out)
    args.partial = partial_path(out)
    deadline = None if args.deadline is None else time.perf_counter() + args.deadline
    if not args.matrix:
        torch.manual_seed(args.seed)
        spec = get_spec(args.model)
        model = prepare_model(spec, args.dtype, args)
        plan = make_plan(
            args.sampler or spec.default_sampler,
            args.nfe,
            noise_schedule=spec.noise_schedule,
            time_input=spec.time_input,
        )
        sched = build_schedule(args, spec, plan, len(model.transformer_blocks()))
        scale = (
            None
            if args.no_cfg
            else (args.cfg_scale if args.cfg_scale is not None else spec.default_cfg_scale)
        )
        rows = run_config(
            build_group(spec, model, plan, sched, args.dtype, scale, args),
            args.batch,
            args,
            env,
            deadline,
        )
        report(rows, out)
        return rows

    cells = grid(args)
    routers = find_routers_dir(args.routers_dir)
    if routers is not None and not routers.is_dir():
        raise SystemExit(f"--routers-dir {routers} is not a folder")
    if args.list:
        for i, (model, dtype, sampler, nfe, batches) in enumerate(cells):
            released = RELEASED.get((model, sampler, nfe))
            kind = f"router {released[0]}" if released and routers else "synthetic"
            print(
                f"{i:3d}  {model:13s} {dtype:9s} {sampler}-{nfe:<3d} batches {batches}  schedule: {kind}"
            )
        print(f"routers dir: {routers or 'none found (synthetic schedules everywhere)'}")
        return []
    all_rows: list[dict[str, Any]] = []
    for model_name, dtype, sampler, nfe, batches in cells:
        if deadline is not None and time.perf_counter() > deadline:
            print(f"deadline reached: skipped {model_name} {dtype} {sampler}-{nfe}", flush=True)
            continue
        spec = get_spec(model_name)
        model = prepare_model(spec, dtype, args)
        plan = make_plan(
            sampler, nfe, noise_schedule=spec.noise_schedule, time_input=spec.time_input
        )
        sched = matrix_schedule(
            spec, plan, len(model.transformer_blocks()), routers, args.fraction, args.seed
        )
        scale = None if args.no_cfg else spec.default_cfg_scale
        group = build_group(spec, model, plan, sched, dtype, scale, args)
        print(f"{model_name} {dtype} {sampler}-{nfe}: compiled in {group.build_s}", flush=True)
        for batch in batches:
            rows = run_config(group, batch, args, env, deadline)
            report(rows, out)
            all_rows += rows
        del group, model
        _release()
    return all_rows


if __name__ == "__main__":
    main()
