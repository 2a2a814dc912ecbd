"""What compiling costs a user, and what a second ``load`` of the same artifact costs.

    python benchmarks/compile_cost.py --model DiT-S/2 --nfe 20 --batch 1
    python benchmarks/compile_cost.py --model DiT-XL/2 --router DDIM20_router.pt --threshold 0.1

One artifact is compiled per backend (l2c-compile's passes, timed), saved, then loaded and run in
fresh processes, so nothing is shared through Python's memory:

  cold   an empty inductor cache folder (``TORCHINDUCTOR_CACHE_DIR``): dynamo traces and inductor
         compiles every distinct step graph
  warm   a second process on the same artifact and cache folder: dynamo still traces each step
         graph (its bytecode cache lives in memory only), inductor's FX graph and AOTAutograd
         caches answer the rest

Per process: ``load`` (read, check, regenerate ``sampler.py``), the first call, one more call; the
compile cost is first − second call. The ratio warm/cold is the issue's "≤ 20 % of the cold
compile". JSON lines to ``benchmarks/results/compile-cost.jsonl`` (machine named) and markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, append_text, environment, markdown_table

ROOT = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    """Runs in the fresh process: load, first call, second call; prints one JSON line."""
    from torch._dynamo.utils import counters

    import l2c_compile
    from l2c_compile.runtime.verify import seeded_inputs

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    sampler = l2c_compile.load(args.child)
    load_s = time.perf_counter() - t0
    noise, labels = seeded_inputs(sampler, args.batch, 0, "cpu")
    scale = 4.0 if sampler.cfg else None
    calls = []
    for _ in range(2):
        t0 = time.perf_counter()
        sampler(noise, labels, scale)
        calls.append(time.perf_counter() - t0)
    inductor = counters["inductor"]
    print(json.dumps({
        "load_s": load_s,
        "first_call_s": calls[0],
        "call_s": calls[1],
        "compile_s": max(0.0, calls[0] - calls[1]),
        "fxgraph_cache_hit": inductor.get("fxgraph_cache_hit", 0),
        "fxgraph_cache_miss": inductor.get("fxgraph_cache_miss", 0),
        "aotautograd_cache_hit": counters["aot_autograd"].get("autograd_cache_hit", 0),
        "distinct_graphs": sampler.info["distinct_graphs"],
    }))


def run_child(art: Path, cache: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, __file__, "--child", str(art), "--batch", str(args.batch),
           "--threads", str(args.threads)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"child failed:\n{done.stderr[-2000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["process_wall_s"] = wall
    return row


def build_artifact(args: argparse.Namespace, backend: str, out: Path) -> float:
    """Compile and save one artifact; return the seconds l2c-compile's passes took."""
    from latency import build_schedule  # this folder is on sys.path (module top)

    import l2c_compile
    from l2c_compile.models.registry import build_model, get_spec, init_random, num_blocks
    from l2c_compile.samplers import make_plan

    spec = get_spec(args.model)
    model = init_random(build_model(spec), args.seed)
    sampler = args.sampler or spec.default_sampler
    plan = make_plan(sampler, args.nfe, noise_schedule=spec.noise_schedule, time_input=spec.time_input)
    sched = build_schedule(args, spec, plan, num_blocks(spec))
    t0 = time.perf_counter()
    compiled = l2c_compile.compile(model, plan, sched, dtype=args.dtype, backend=backend,
                                   model_info=spec.to_dict())
    passes_s = time.perf_counter() - t0
    compiled.save(out)
    return passes_s


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="DiT-S/2")
    p.add_argument("--sampler", default=None)
    p.add_argument("--nfe", type=int, default=20)
    p.add_argument("--batch", type=int, default=1, help="images (CFG doubles the rows)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--backends", default="eager,inductor")
    p.add_argument("--router", default=None)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--schedule", default=None)
    p.add_argument("--heuristic", default="random")
    p.add_argument("--fraction", type=float, default=0.44)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", default=str(RESULTS / "compile-cost.jsonl"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.child:
        child(args)
        return []
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="l2c-compile-cost-") as tmp:
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            art = Path(tmp) / f"art-{backend}"
            passes_s = build_artifact(args, backend, art)
            cache = Path(tmp) / f"cache-{backend}"
            for trial in ("cold", "warm"):
                row = run_child(art, cache, args)
                row.update(model=args.model, nfe=args.nfe, batch=args.batch, dtype=args.dtype,
                           backend=backend, trial=trial, l2c_passes_s=passes_s,
                           **environment("cpu"))
                rows.append(row)
                print(json.dumps(row), flush=True)
    for row in rows:
        cold = next(r for r in rows if r["backend"] == row["backend"] and r["trial"] == "cold")
        row["warm_over_cold_compile"] = (row["compile_s"] / cold["compile_s"]
                                         if cold["compile_s"] > 0 else None)
    out = Path(args.out)
    append_text(out, "".join(json.dumps(r, default=str) + "\n" for r in rows))
    cols = [("backend", "backend"), ("trial", "trial"), ("l2c_passes_s", "l2c passes s"),
            ("load_s", "load s"), ("first_call_s", "first call s"), ("call_s", "call s"),
            ("compile_s", "compile s"), ("warm_over_cold_compile", "÷ cold compile"),
            ("fxgraph_cache_hit", "FX cache hits"), ("fxgraph_cache_miss", "FX cache misses"),
            ("distinct_graphs", "step graphs")]
    title = (f"\n### {args.model} · {args.dtype} · NFE {args.nfe} · batch {args.batch} · "
             f"{rows[0]['device_name']} · torch {torch.__version__} · git {rows[0]['git']}\n\n")
    append_text(out.with_suffix(".md"), title + markdown_table(rows, cols) + "\n")
    return rows


if __name__ == "__main__":
    main()
