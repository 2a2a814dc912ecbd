"""Latency of the four executors side by side, with the schedule's ideal MACs ratio beside them.

    python benchmarks/latency.py --model DiT-S/2 --nfe 20 --batch 1 --heuristic random --fraction 0.44

Executors (one run measures all of them, so ratios are comparable):
  eager-uncached     the plain sampler loop, eager PyTorch
  eager-l2c          the reference executor applying the schedule at run time (official semantics)
  compiled-uncached  l2c-compile's module for the all-compute schedule
  compiled-l2c       l2c-compile's module for the schedule
  inductor-*         the same two with ``backend="inductor"`` (``--inductor``)
  torch-compile-uncached   torch.compile of the uncached denoiser, eager loop (``--torch-compile``)
Writes JSON lines to ``benchmarks/results/latency.jsonl`` and a markdown table next to it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, environment, markdown_table, time_it, write_jsonl

import l2c_compile
from l2c_compile import reference
from l2c_compile.guidance import GuidedDenoiser, timestep_vector
from l2c_compile.metrics.macs import trajectory_macs
from l2c_compile.models.registry import build_model, get_spec, init_random, load_checkpoint
from l2c_compile.samplers import execute_plan, make_plan
from l2c_compile.schedule import Schedule, heuristic, import_router


def build_schedule(args, spec, plan, depth) -> Schedule:
    if args.router:
        theta = args.threshold if args.threshold is not None else (0.1 if spec.family == "dit" else 0.9)
        return import_router(args.router, plan, model=spec.name, depth=depth, threshold=theta)
    if args.schedule:
        return Schedule.load(args.schedule)
    return heuristic(args.heuristic, plan, model=spec.name, depth=depth, fraction=args.fraction, seed=args.seed)


def torch_compiled_loop(model, plan, cfg_scale, mode: str | None):
    """torch.compile of the uncached denoiser driven by the eager sampler loop (the baseline users pick)."""
    den = torch.compile(GuidedDenoiser(model, cfg=cfg_scale is not None), mode=mode, fullgraph=True)

    def run(noise, labels):
        scale = torch.tensor(cfg_scale or 1.0, device=noise.device)

        def eps_fn(call, x_in):
            t = timestep_vector(call.timestep, x_in.shape[0], x_in.device)
            return den(x_in.to(next(model.parameters()).dtype), t, labels, scale).to(noise.dtype)

        with torch.no_grad():
            return execute_plan(plan, noise, eps_fn)

    return run


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--heuristic", default="random", help="random|top|bottom|all when no router/schedule")
    p.add_argument("--fraction", type=float, default=0.44)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--inductor", action="store_true", help="also time backend='inductor'")
    p.add_argument("--torch-compile", action="store_true", help="also time torch.compile uncached")
    p.add_argument("--skip-eager", action="store_true", help="skip the eager executors (slow on big models)")
    p.add_argument("--out", default=str(RESULTS / "latency.jsonl"))
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    spec = get_spec(args.model)
    model = build_model(spec)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    elif getattr(spec, "checkpoint", None):
        load_checkpoint(model, spec.checkpoint)
    else:
        init_random(model, args.seed)
    dtype = getattr(torch, args.dtype)
    model = model.to(device=args.device, dtype=dtype).eval()
    plan = make_plan(args.sampler or spec.default_sampler, args.nfe, noise_schedule=spec.noise_schedule,
                     time_input=spec.time_input)
    depth = len(model.transformer_blocks())
    sched = build_schedule(args, spec, plan, depth)
    stats = sched.stats()
    macs_full, macs_cached = trajectory_macs(spec, sched)
    cfg_scale = None if args.no_cfg else (args.cfg_scale if args.cfg_scale is not None else spec.default_cfg_scale)

    g = torch.Generator().manual_seed(args.seed)
    c, h, w = spec.latent_shape
    noise = torch.randn(args.batch, c, h, w, generator=g).to(args.device)
    labels = torch.randint(0, spec.num_classes, (args.batch,), generator=g).to(args.device)

    executors: dict[str, object] = {}
    compile_s: dict[str, float] = {}
    if not args.skip_eager:
        executors["eager-uncached"] = lambda: reference.sample_uncached(model, plan, noise, labels, cfg_scale)
        executors["eager-l2c"] = lambda: reference.sample(model, plan, sched, noise, labels, cfg_scale)
    backends = ["eager"] + (["inductor"] if args.inductor else [])
    for backend in backends:
        prefix = "compiled" if backend == "eager" else "inductor"
        for label, s in (("uncached", None), ("l2c", sched)):
            t0 = time.perf_counter()
            cs = l2c_compile.compile(model, plan, s, cfg=cfg_scale is not None, backend=backend)
            compile_s[f"{prefix}-{label}"] = time.perf_counter() - t0
            executors[f"{prefix}-{label}"] = (lambda cs=cs: cs(noise, labels, cfg_scale))
    if args.torch_compile:
        modes = [None] + (["reduce-overhead"] if args.device.startswith("cuda") else [])
        for mode in modes:
            name = f"torch-compile-{mode or 'default'}-uncached"
            executors[name] = (lambda run=torch_compiled_loop(model, plan, cfg_scale, mode): run(noise, labels))

    env = environment(args.device)
    rows = []
    for name, fn in executors.items():
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        timing = time_it(fn, device=args.device, repeats=args.repeats)
        peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else None
        rows.append({
            "benchmark": "latency", **env, "model": spec.name, "sampler": plan.sampler, "nfe": plan.nfe,
            "batch": args.batch, "cfg": cfg_scale is not None, "dtype": args.dtype, "executor": name,
            **timing, "compile_s": compile_s.get(name), "peak_mem_bytes": peak,
            "schedule": {"source": sched.source, "skipped_fraction": stats["skipped_fraction"],
                         "cache_steps": stats["cache_steps"]},
            "ideal_speedup": macs_full / macs_cached,
        })
    by = {r["executor"]: r["median_s"] for r in rows}
    for r in rows:
        for base in ("eager-uncached", "compiled-uncached", "inductor-uncached"):
            if base in by:
                r[f"speedup_vs_{base}"] = by[base] / r["median_s"]
    write_jsonl(Path(args.out), rows)
    cols = [("executor", "executor"), ("median_s", "median s"), ("min_s", "min s"), ("max_s", "max s"),
            ("first_s", "first call s"), ("compile_s", "compile s"), ("speedup_vs_eager-uncached", "× eager uncached"),
            ("speedup_vs_compiled-uncached", "× compiled uncached"), ("ideal_speedup", "ideal ×")]
    title = (f"{spec.name} · {plan.sampler}-{plan.nfe} · batch {args.batch}{' + CFG' if cfg_scale is not None else ''}"
             f" · {args.dtype} · {env['device_name']} · torch {env['torch']} · git {env['git']}\n"
             f"schedule: {sched.source.get('kind')} · skipped {stats['skipped_fraction']:.1%} of cache-step "
             f"sublayers · ideal {macs_full / macs_cached:.3f}×")
    table = markdown_table(rows, cols)
    print(title)
    print(table)
    md = Path(args.out).with_suffix(".md")
    with md.open("a", encoding="utf-8") as f:
        f.write(f"\n### {title}\n\n{table}\n")
    return rows


if __name__ == "__main__":
    main()
