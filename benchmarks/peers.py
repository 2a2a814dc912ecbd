"""l2c-compile beside its peers on diffusers pipelines, measured side by side in one process.

    python benchmarks/peers.py --device cuda --dtype bfloat16 --pipeline dit --batches 8,1
    python benchmarks/peers.py --device cuda --dtype bfloat16 --pipeline pixart --batches 1
    python benchmarks/peers.py --pipeline dit --list              # the rows it would measure
    python benchmarks/peers.py --tiny --device cpu --executors pipeline-eager,l2c-l2c,cache-dit-static

Pipelines (random weights: latency does not depend on them): ``dit`` is diffusers' ``DiTPipeline``
with a DiT-XL/2 256 ``DiTTransformer2DModel`` and DDIM, ``pixart`` a ``PixArtAlphaPipeline`` with a
PixArt-α 512 ``PixArtTransformer2DModel`` (28 blocks, 64×64 latent) and DPM-Solver++, fed
``prompt_embeds`` (no T5). Both use a one-level random VAE and ``output_type="np"``, so every row
times the denoising loop plus a few small decoder kernels and the images' copy to the host, the
same in every row (diffusers' ``DiTPipeline`` always copies them).
``--tiny``: 12 blocks of width 64 at an 8×8 latent (CPU tests).

Executors, in the order they run (the ones without an inductor compile first, for every batch):
  pipeline-eager                    ``pipe(...)`` uncached, eager
  l2c-uncached, l2c-l2c             ``compile_pipeline(pipe, None | schedule)``, eager step graphs
  l2c+graph-uncached, l2c+graph-l2c the same with ``cuda_graph=True``: the whole trajectory in one
                                    CUDA graph (CUDA only)
  cache-dit-static                  cache-dit's DBCache with a static step mask that removes about
                                    the compute the l2c schedule removes (see ``matched_mask``)
  cache-dit-dynamic                 cache-dit's default DBCache (decided per step at run time)
then, per batch, the rows that compile with inductor (tens of seconds each on an H200), in order:
  torch-compile-default             ``torch.compile(pipe.transformer)`` of the uncached model
  cache-dit-static+compile          cache-dit's recipe: ``cache_dit.set_compile_configs()`` and
                                    ``torch.compile`` of the transformer (inductor settings restored after)
  torch-compile-reduce-overhead     (CUDA) ``mode="reduce-overhead"``
  cache-dit-dynamic+compile         cache-dit's default DBCache, compiled as above
  torch-compile-max-autotune-no-cudagraphs   last: its autotuning takes minutes

The l2c schedule: DiT-XL/2 gets the released DDIM20 router at θ = 0.1 (``--routers-dir``); any other
shape, or a missing router file, a random schedule skipping the same share of cache-step sublayers
(PixArt: self-attention, cross-attention and MLP). cache-dit runs on its own deep copy of the
pipeline, so its hooks never touch the other rows. Each row is written as it is measured (JSON lines,
and the markdown table rewritten), so a killed run keeps its rows; a compile row that would not fit
the ``--deadline`` is written as skipped, and ``--row-limit`` stops any row that runs too long.
Columns: median and spread of whole ``pipe(...)`` calls, first call (compile included), compile
time, peak memory above what was allocated before the row, the speedup over each peer, the
schedule's ideal MACs ratio and the share of it reached over the row's uncached twin.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, environment, markdown_table, write_jsonl

from l2c_compile.io import write_text_atomic

CHEAP = ("pipeline-eager", "l2c-uncached", "l2c-l2c", "l2c+graph-uncached", "l2c+graph-l2c",
         "cache-dit-static", "cache-dit-dynamic")
COMPILED = ("torch-compile-default", "cache-dit-static+compile", "torch-compile-reduce-overhead",
            "cache-dit-dynamic+compile", "torch-compile-max-autotune-no-cudagraphs")
CUDA_ONLY = ("l2c+graph-uncached", "l2c+graph-l2c", "torch-compile-reduce-overhead")
# The uncached row each cached row is compared with for its share of the ideal MACs ratio.
TWIN = {"l2c-l2c": "l2c-uncached", "l2c+graph-l2c": "l2c+graph-uncached",
        "cache-dit-static": "pipeline-eager", "cache-dit-dynamic": "pipeline-eager",
        "cache-dit-static+compile": "torch-compile-default",
        "cache-dit-dynamic+compile": "torch-compile-default"}
L2C_CACHED = ("l2c-l2c", "l2c+graph-l2c")


# ── arguments ────────────────────────────────────────────────────────────────────────────────
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", choices=("dit", "pixart"), default="dit")
    p.add_argument("--batches", default="8,1", help="images per call, comma-separated (CFG doubles the rows)")
    p.add_argument("--steps", type=int, default=20, help="num_inference_steps")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="bfloat16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="12 blocks of width 64, 8×8 latent (CPU tests)")
    p.add_argument("--routers-dir", default=None, help="folder with DDIM20_router.pt (DiT-XL/2 only)")
    p.add_argument("--threshold", type=float, default=0.1, help="θ of the released router")
    p.add_argument("--executors", default=None, help="only these rows (comma-separated names)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per row (after the first call)")
    p.add_argument("--executor-budget", type=float, default=3.0, help="seconds of timed calls per row (≥ 1 call)")
    p.add_argument("--deadline", type=float, default=None, help="seconds for the whole run")
    p.add_argument("--row-limit", type=float, default=150.0, help="seconds one row may take (hard stop)")
    p.add_argument("--compile-estimate", type=float, default=45.0,
                   help="seconds a compile row needs: not started with less left before the deadline")
    p.add_argument("--autotune-estimate", type=float, default=240.0,
                   help="the same for torch-compile-max-autotune-no-cudagraphs")
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--list", action="store_true", help="print the rows it would measure and exit")
    p.add_argument("--out", default=None, help="JSON lines (default results/peers-<pipeline>-<device>.jsonl)")
    args = p.parse_args(argv)
    try:
        args.batch_list = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batches takes whole numbers, got {args.batches!r}")
    if not args.batch_list or min(args.batch_list) < 1:
        p.error("--batches needs at least one batch size ≥ 1")
    if args.steps < 2:
        p.error("--steps must be at least 2")
    known = set(CHEAP) | set(COMPILED)
    args.only = None
    if args.executors:
        args.only = [n.strip() for n in args.executors.split(",") if n.strip()]
        unknown = sorted(set(args.only) - known)
        if unknown:
            p.error(f"unknown executor {unknown[0]!r}; choose from {', '.join(CHEAP + COMPILED)}")
    if args.out is None:
        args.out = str(RESULTS / f"peers-{args.pipeline}-{args.device.split(':')[0]}.jsonl")
    return args


def plan_rows(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(executor, batch) in run order: every batch's cheap rows, then every batch's compile rows."""
    cuda = args.device.startswith("cuda")

    def keep(name: str) -> bool:
        return (cuda or name not in CUDA_ONLY) and (args.only is None or name in args.only)

    return [(name, b) for group in (CHEAP, COMPILED) for b in args.batch_list for name in group if keep(name)]


def cache_dit_version() -> str | None:
    """cache-dit's version, or None when it cannot be imported here."""
    try:
        import cache_dit
    except Exception:  # any import failure (missing, wrong diffusers) means: no cache-dit rows
        return None
    return str(getattr(cache_dit, "__version__", "unknown"))


# ── cache-dit's step mask, matched to the l2c schedule ────────────────────────────────────────
@dataclass(frozen=True)
class BlockSkips:
    """One model call in which cache-dit reuses ``blocks`` whole, read by ``trajectory_macs``."""

    kinds: tuple[str, ...]
    blocks: tuple[int, ...]

    def reused(self, kind: str) -> tuple[int, ...]:
        """The blocks whose ``kind`` sublayer is not computed in this call."""
        return self.blocks


@dataclass(frozen=True)
class CacheDiTTrajectory:
    """The blocks cache-dit skips per call: on a cached step, all but the first ``fn`` and last
    ``bn`` blocks (DBCache's F``fn``B``bn``); ``trajectory_macs`` counts it like a schedule."""

    nfe: int
    depth: int
    kinds: tuple[str, ...]
    cached_steps: tuple[int, ...]
    fn: int = 8
    bn: int = 0

    @property
    def calls(self) -> list[BlockSkips]:
        """One entry per model call."""
        middle = tuple(range(self.fn, self.depth - self.bn))
        return [BlockSkips(self.kinds, middle if i in self.cached_steps else ()) for i in range(self.nfe)]


def matched_mask(nfe: int, depth: int, block_macs: int, removed_macs: int, fn: int = 8, bn: int = 0) -> list[int]:
    """cache-dit's ``steps_computation_mask`` (1 compute, 0 cached) whose cached steps remove about
    ``removed_macs`` (per image and trajectory): each cached step skips ``depth − fn − bn`` blocks of
    ``block_macs``. The first fifth of the steps and the last one compute (as cache-dit's own masks
    do); the cached steps are spread evenly over the rest."""
    lead = max(1, round(0.2 * nfe))
    candidates = list(range(lead, nfe - 1))
    per_step = max(1, (depth - fn - bn) * block_macs)
    k = max(1, min(len(candidates), round(removed_macs / per_step)))
    cached = {candidates[int((i + 0.5) * len(candidates) / k)] for i in range(k)}
    return [0 if i in cached else 1 for i in range(nfe)]


# ── the bench: one pipeline and everything its rows need ──────────────────────────────────────
@dataclass
class Bench:
    """The pipeline, its l2c twins, cache-dit's copy, the schedule and the MAC figures."""

    args: argparse.Namespace
    pipe: Any
    kinds: tuple[str, ...]
    depth: int
    schedule: Any
    macs: Any  # MacCount of one forward for one image
    l2c: dict[str, Any] = field(default_factory=dict)
    build_s: dict[str, float] = field(default_factory=dict)
    compiled: dict[str, Any] = field(default_factory=dict)
    cd_pipe: Any = None
    cd_mask: list[int] | None = None
    prompt: dict[str, Any] | None = None
    sampler: str = ""

    def call_kwargs(self, batch: int) -> dict[str, Any]:
        """``pipe(...)`` arguments for ``batch`` images: same noise seed for every row."""
        kw = {"num_inference_steps": self.args.steps, "output_type": "np",
              "generator": torch.Generator().manual_seed(self.args.seed)}
        if self.prompt is None:
            return {"class_labels": list(range(batch)), "guidance_scale": 4.0, **kw}
        prompt = {k: (v[:batch] if isinstance(v, torch.Tensor) else v) for k, v in self.prompt.items()}
        return {**prompt, "guidance_scale": 4.5, **kw}

    def ideal(self, cached_steps: list[int] | tuple[int, ...] | None = None) -> float:
        """Ideal MACs ratio of the l2c schedule, or of cache-dit caching ``cached_steps``."""
        from l2c_compile.metrics.macs import trajectory_macs

        sched = self.schedule if cached_steps is None else CacheDiTTrajectory(
            self.args.steps, self.depth, self.kinds, tuple(cached_steps))
        full, cached = trajectory_macs((self.macs, self.depth), sched)
        return full / cached


def build_bench(args: argparse.Namespace) -> Bench:
    """The pipeline on the device, the l2c schedule, the MAC counts and the l2c samplers (warmed)."""
    from latency import RELEASED, RELEASED_FRACTION, find_routers_dir
    from latency_diffusers import (
        TEXT_DIM,
        TEXT_LEN,
        build_pipeline,
        build_pixart_pipeline,
        pixart_prompt,
    )

    from l2c_compile.diffusers import DiffusersDiT, compile_pipeline, pipeline_plan
    from l2c_compile.diffusers.pixart import DiffusersPixArt, pack_condition
    from l2c_compile.metrics.macs import module_macs, trajectory_macs
    from l2c_compile.schedule import heuristic, import_router

    dtype = getattr(torch, args.dtype)
    pixart = args.pipeline == "pixart"
    latent = 8 if args.tiny else (64 if pixart else 32)
    text_dim = 32 if args.tiny else TEXT_DIM
    if pixart:
        depth = 12 if args.tiny else 28
        heads, head_dim = (2, 32) if args.tiny else (16, 72)
        pipe = build_pixart_pipeline(depth, latent, args.seed, heads, head_dim, text_dim)
        kinds = ("attn", "cross", "mlp")
    else:
        pipe = build_pipeline("T" if args.tiny else "XL", latent, args.seed)
        kinds = ("attn", "mlp")
    pipe = pipe.to(args.device, dtype)
    depth = len(pipe.transformer.transformer_blocks)
    plan = pipeline_plan(pipe.scheduler, args.steps)
    released = RELEASED.get(("DiT-XL/2", "ddim", 20))
    routers = find_routers_dir(args.routers_dir)
    router = None if routers is None or released is None else routers / released[0]
    if not pixart and not args.tiny and args.steps == 20 and router is not None and router.is_file():
        sched = import_router(router, plan, model="DiT-XL/2", depth=depth, threshold=args.threshold)
    else:  # same share of cache-step sublayers as the released DDIM20 router
        sched = heuristic("random", plan, model="peers", depth=depth, fraction=RELEASED_FRACTION[("ddim", 20)],
                          seed=args.seed, kinds=kinds)
    one = torch.zeros(1, 4, latent, latent, device=args.device, dtype=dtype)
    t = torch.zeros(1, device=args.device)
    prompt = None
    with torch.no_grad():
        if pixart:
            prompt = {k: (v.to(args.device, dtype if v.is_floating_point() else v.dtype)
                          if isinstance(v, torch.Tensor) else v)
                      for k, v in pixart_prompt(max(args.batch_list), args.seed, text_dim).items()}
            adapter = DiffusersPixArt(pipe.transformer, text_len=TEXT_LEN, height=latent * 8, width=latent * 8,
                                      vae_scale_factor=pipe.vae_scale_factor)
            cond = pack_condition(prompt["prompt_embeds"][:1], prompt["prompt_attention_mask"][:1])
            macs = module_macs(adapter, one, t, cond)
        else:
            macs = module_macs(DiffusersDiT(pipe.transformer), one, t, torch.zeros(1, dtype=torch.long,
                                                                                   device=args.device))
    bench = Bench(args, pipe, kinds, depth, sched, macs, prompt=prompt, sampler=plan.sampler)
    wanted = {name for name, _ in plan_rows(args)}
    for label, s in (("uncached", None), ("l2c", sched)):
        if not any(n.startswith("l2c") and n.endswith(label) for n in wanted):
            continue  # export capture and passes cost seconds: only for rows that run
        t0 = time.perf_counter()
        cp = compile_pipeline(pipe, s)
        if pixart:
            cp.pixart_sampler(args.steps, True, TEXT_LEN, latent * 8)
        else:
            cp.sampler(args.steps, True)
        bench.build_s[label] = time.perf_counter() - t0
        bench.l2c[label] = cp
    full, cached = trajectory_macs((macs, depth), sched)
    full_block = sum(macs.of(k) for k in kinds)
    bench.cd_mask = matched_mask(args.steps, depth, full_block, full - cached)
    return bench


# ── executors: each a context that yields the call to time ────────────────────────────────────
@dataclass
class Run:
    """What a row times (``fn``) and what it reports after timing (``facts``)."""

    fn: Callable[[], Any]
    facts: Callable[[], dict[str, Any]] = dict
    build_s: float | None = None


@contextlib.contextmanager
def l2c_run(bench: Bench, label: str, graph: bool, batch: int) -> Iterator[Run]:
    """``compile_pipeline`` rows: toggling the sampler's ``cuda_graph`` is what
    ``compile_pipeline(pipe, schedule, cuda_graph=True)`` sets at construction."""
    cp = bench.l2c[label]
    samplers = list(cp.samplers.values())
    for s in samplers:
        s.cuda_graph = graph
    try:
        yield Run(lambda: cp(**bench.call_kwargs(batch)), build_s=bench.build_s[label])
    finally:
        for s in samplers:
            if graph:
                s.reset_cuda_graph()
            s.cuda_graph = False


@contextlib.contextmanager
def inductor_settings_kept() -> Iterator[None]:
    """Restore inductor's and dynamo's global settings on exit (cache-dit's recipe changes them)."""
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    saved = inductor_config.save_config(), dynamo_config.save_config()
    try:
        yield
    finally:
        inductor_config.load_config(saved[0])
        dynamo_config.load_config(saved[1])


@contextlib.contextmanager
def cache_dit_run(bench: Bench, name: str, batch: int) -> Iterator[Run]:
    """cache-dit's DBCache on its own copy of the pipeline (static matched mask or its default)."""
    import cache_dit
    from cache_dit import DBCacheConfig

    if bench.cd_pipe is None:
        bench.cd_pipe = copy.deepcopy(bench.pipe)
    pipe = bench.cd_pipe
    static = name.startswith("cache-dit-static")
    config = (DBCacheConfig(steps_computation_mask=list(bench.cd_mask), steps_computation_policy="static")
              if static else DBCacheConfig())
    cache_dit.enable_cache(pipe, cache_config=config)
    original = pipe.transformer
    settings = inductor_settings_kept() if name.endswith("+compile") else contextlib.nullcontext()
    try:
        with settings:
            if name.endswith("+compile"):
                cache_dit.set_compile_configs()
                pipe.transformer = torch.compile(original)

            def facts() -> dict[str, Any]:
                stats = cache_dit.summary(original, logging=False)[0]
                steps = sorted(int(s) for s in stats.cached_steps)
                return {"cached_steps": steps, "cache_dit_config": config.strify(),
                        "ideal_speedup": bench.ideal(steps)}

            yield Run(lambda: pipe(**bench.call_kwargs(batch)), facts)
    finally:
        pipe.transformer = original
        cache_dit.disable_cache(pipe)


@contextlib.contextmanager
def torch_compile_run(bench: Bench, mode: str, batch: int) -> Iterator[Run]:
    """``torch.compile`` of the uncached transformer inside ``pipe(...)`` (one wrapper per mode,
    kept across batches: a second batch size is a recompile, counted in its first call)."""
    pipe = bench.pipe
    original = pipe.transformer
    if mode not in bench.compiled:
        bench.compiled[mode] = torch.compile(original, mode=None if mode == "default" else mode, dynamic=False)
    pipe.transformer = bench.compiled[mode]
    try:
        yield Run(lambda: pipe(**bench.call_kwargs(batch)))
    finally:
        pipe.transformer = original


def executor(bench: Bench, name: str, batch: int) -> contextlib.AbstractContextManager[Run]:
    """The context of row ``name``."""
    if name == "pipeline-eager":
        return contextlib.nullcontext(Run(lambda: bench.pipe(**bench.call_kwargs(batch))))
    if name.startswith("l2c"):
        return l2c_run(bench, name.rsplit("-", 1)[1], "+graph" in name, batch)
    if name.startswith("cache-dit"):
        return cache_dit_run(bench, name, batch)
    return torch_compile_run(bench, name.removeprefix("torch-compile-"), batch)


# ── limits ───────────────────────────────────────────────────────────────────────────────────
class RowTimeout(BaseException):
    """A row ran past its limit (a BaseException, so torch's compile machinery cannot swallow it)."""


@contextlib.contextmanager
def hard_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`RowTimeout` in this (main) thread after ``seconds``."""

    def fire(signum: int, frame: object) -> None:
        raise RowTimeout

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(0.01, seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def needed_s(name: str, args: argparse.Namespace) -> float:
    """What a row is expected to need before it is started."""
    if name == "torch-compile-max-autotune-no-cudagraphs":
        return args.autotune_estimate
    return args.compile_estimate if name in COMPILED else 0.0


# ── reporting ────────────────────────────────────────────────────────────────────────────────
def peer_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``rows`` with, per (pipeline, batch): the speedup over every other timed row
    (``speedup_vs``), over the fastest torch.compile mode, over the faster cache-dit row of each
    kind, and the share of the ideal MACs ratio reached over the row's uncached twin."""
    out = [dict(r) for r in rows]
    groups: dict[tuple[Any, Any], dict[str, dict[str, Any]]] = {}
    for r in out:
        if "median_s" in r:
            groups.setdefault((r.get("pipeline"), r.get("batch")), {})[r["executor"]] = r
    for by in groups.values():
        def best(prefix: str, by: dict[str, dict[str, Any]] = by) -> float | None:
            return min((r["median_s"] for n, r in by.items() if n.startswith(prefix)), default=None)

        peers = {"torch_compile": best("torch-compile-"), "cache_dit_static": best("cache-dit-static"),
                 "cache_dit_dynamic": best("cache-dit-dynamic"), "pipeline": best("pipeline-eager")}
        for name, r in by.items():
            r["speedup_vs"] = {n: o["median_s"] / r["median_s"] for n, o in by.items() if n != name}
            for key, value in peers.items():
                if value is not None:
                    r[f"speedup_vs_{key}"] = value / r["median_s"]
            twin = by.get(TWIN.get(name, ""))
            if twin is not None and r.get("ideal_speedup"):
                r["share_of_ideal"] = twin["median_s"] / r["median_s"] / r["ideal_speedup"]
    return out


COLUMNS = [("executor", "executor"), ("median_s", "median s"), ("min_s", "min s"), ("max_s", "max s"),
           ("first_s", "first call s"), ("compile_s", "compile s"), ("peak_mib", "peak MiB above start"),
           ("speedup_vs_pipeline", "× pipe(...)"), ("speedup_vs_torch_compile", "× fastest torch.compile"),
           ("speedup_vs_cache_dit_static", "× cache-dit static"),
           ("speedup_vs_cache_dit_dynamic", "× cache-dit dynamic"), ("ideal_speedup", "ideal × (MACs)"),
           ("share_of_ideal", "share of ideal"), ("note", "note")]


def render(rows: list[dict[str, Any]]) -> str:
    """Markdown: one table per (pipeline, batch), titled with the machine and both schedules."""
    parts = []
    for key in dict.fromkeys((r["pipeline"], r["batch"]) for r in rows):
        cell = [r for r in peer_ratios(rows) if (r["pipeline"], r["batch"]) == key]
        r0 = cell[0]
        title = (f"### {r0['pipeline']} · {r0['model']} · {r0['sampler']} {r0['steps']} steps · batch "
                 f"{r0['batch']} + CFG · {r0['dtype']} · {r0['device_name']} · torch {r0['torch']} · "
                 f"git {r0['git']} — l2c schedule {r0['schedule']['source']} skipping "
                 f"{r0['schedule']['skipped_fraction']:.1%} of cache-step sublayers, ideal "
                 f"{r0['ideal_l2c']:.3f}×; cache-dit static mask {''.join(map(str, r0['cache_dit_mask']))} "
                 f"(F8B0), ideal {r0['ideal_cache_dit_static']:.3f}×; cache-dit {r0['cache_dit']}")
        for r in cell:
            if r.get("peak_extra_bytes") is not None:
                r["peak_mib"] = r["peak_extra_bytes"] / 2**20
            r["note"] = r.get("skipped") or r.get("error") or (
                f"cached steps {r['cached_steps']}" if "cached_steps" in r else None)
        parts.append(f"{title}\n\n{markdown_table(cell, COLUMNS)}\n")
    return "\n".join(parts)


# ── driver ───────────────────────────────────────────────────────────────────────────────────
def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Measure the rows in order; write each as it is measured; return them all."""
    args = parse_args(argv)
    rows_planned = plan_rows(args)
    cd_version = cache_dit_version()
    if args.list:
        for name, batch in rows_planned:
            cd = " (cache-dit not importable: written as skipped)" if name.startswith("cache-dit") and not cd_version else ""
            print(f"{args.pipeline} n={batch} {name}{cd}")
        return []
    started = time.perf_counter()
    deadline = None if args.deadline is None else started + args.deadline
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    torch._dynamo.config.recompile_limit = max(1024, torch._dynamo.config.recompile_limit)
    from latency_exec import measure

    bench = build_bench(args)
    print(f"built in {time.perf_counter() - started:.1f} s: l2c compile {bench.build_s}; cache-dit mask "
          f"{bench.cd_mask}; ideal l2c {bench.ideal():.3f}×", flush=True)
    env = environment(args.device)
    out = Path(args.out)
    stats = bench.schedule.stats()
    common = {"benchmark": "peers", **env, "pipeline": type(bench.pipe).__name__,
              "model": f"{type(bench.pipe.transformer).__name__} depth {bench.depth}",
              "sampler": bench.sampler,
              "steps": args.steps, "dtype": args.dtype, "cfg": True, "tiny": args.tiny,
              "schedule": {"source": bench.schedule.source.get("file") or bench.schedule.source.get("kind"),
                           "skipped_fraction": stats["skipped_fraction"]},
              "ideal_l2c": bench.ideal(), "cache_dit_mask": bench.cd_mask,
              "ideal_cache_dit_static": bench.ideal([i for i, m in enumerate(bench.cd_mask) if m == 0]),
              "cache_dit": cd_version or "not importable"}
    rows: list[dict[str, Any]] = []
    for name, batch in rows_planned:
        row: dict[str, Any] = {**common, "executor": name, "batch": batch}
        left = None if deadline is None else deadline - time.perf_counter()
        if name.startswith("cache-dit") and cd_version is None:
            row["skipped"] = "cache-dit not importable"
        elif left is not None and left < max(needed_s(name, args), 1.0):
            row["skipped"] = f"time limit: needs ~{needed_s(name, args):.0f} s, {max(0.0, left):.0f} s left"
        else:
            limit = args.row_limit if left is None else min(args.row_limit, left)
            t0 = time.perf_counter()
            try:
                with hard_limit(limit), executor(bench, name, batch) as run:
                    row.update(measure(run.fn, args.device, args.repeats, args.executor_budget))
                    row.update(run.facts())
                if name in L2C_CACHED:
                    row["ideal_speedup"] = common["ideal_l2c"]
                if name.startswith("l2c") or name in COMPILED:  # passes + what the first call adds
                    row["compile_s"] = (run.build_s or 0.0) + max(0.0, row["first_s"] - row["median_s"])
            except RowTimeout:
                row["error"] = f"row limit: stopped after {time.perf_counter() - t0:.0f} s"
            # Broad on purpose: a failing peer (OOM, compile error, an API cache-dit changed) is a
            # result to record, and the other rows still deserve their measurement.
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        done = (f"median {row['median_s']:.4f} s, first call {row['first_s']:.2f} s" if "median_s" in row
                else row.get("skipped") or row["error"])
        print(f"  {args.pipeline} n={batch} {name}: {done}", flush=True)
        rows.append(row)
        write_jsonl(out, [row])
        write_text_atomic(out.with_suffix(".md"), render(rows))
    print(render(rows))
    return rows


if __name__ == "__main__":
    main()
