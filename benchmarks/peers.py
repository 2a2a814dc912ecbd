"""l2c-compile beside its peers on diffusers pipelines, measured side by side in one process.

    python benchmarks/peers.py --device cuda --dtype bfloat16 --pipeline dit --batches 8,1
    python benchmarks/peers.py --device cuda --dtype bfloat16 --pipeline pixart --batches 1
    python benchmarks/peers.py --device cuda --dtype bfloat16 --pipeline sd3 --batches 1
    python benchmarks/peers.py --pipeline dit --list              # the rows it would measure
    python benchmarks/peers.py --tiny --device cpu --executors pipeline-eager,l2c-l2c,cache-dit-static

Pipelines: one entry each in ``peer_pipelines.ENTRIES`` (how to build it, its inputs, its plan,
the sampler a twin warms, the block lists cache-dit walks), random weights (latency does not depend
on them): ``dit`` diffusers' ``DiTPipeline`` with DiT-XL/2 256 and DDIM 20; ``pixart``
``PixArtAlphaPipeline`` at 512 (DPM-Solver++ 20, ``prompt_embeds``); ``sd3``
``StableDiffusion3Pipeline`` with SD3.5-medium's transformer at 1024² (28 flow-matching Euler
steps, shift 3, CFG 7, 333 prompt tokens); ``flux`` ``FluxPipeline`` with FLUX.1-dev's transformer
at 1024² (28 steps, embedded guidance 3.5), refused in one line until ``compile_pipeline`` has a
``FluxPipeline`` drop-in. Each uses a one-level random VAE and ``output_type="np"``, so every row
times the denoising loop plus a few small decoder kernels and the images' copy to the host, the
same in every row. ``--tiny``: the same structure at width 64 on an 8×8 latent (CPU tests).

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
shape, or a missing router file, a random schedule over the family's layout (every sublayer the
model has: SD3.5's ``attn2`` only in its dual-attention blocks, no text MLP in its last block;
FLUX's double- and single-stream blocks) reusing the entry's share of cache-step sublayers
(DiT/PixArt: the released router's 44.3 %; SD3/FLUX: 40 %; ``--fraction``). cache-dit's matched
mask counts what its cached steps skip block by block (``block_macs``: each block's own sublayers),
so blocks that differ are counted as they are.

Memory (one set of weights on the device, whatever the rows): the pipeline is built on the device
in the benchmark's dtype (SD3.5/FLUX: ``torch.device`` context, never float32 on the CPU); the
``compile_pipeline`` twins are made with ``share_weights=True`` (their module trees are copies,
their parameters the pipeline's own tensors); cache-dit runs on a copy of the pipeline whose
modules are copied and whose tensors are shared (``shared_copy``), so its hooks never touch the
other rows' modules; ``torch.compile`` wraps the pipeline's own transformer. Before, each twin and
cache-dit held a full copy: FLUX.1-dev (11.9 B parameters, 23.8 GB in bf16) would have needed
4 × 23.8 GB on an 80 GB H100; now 23.8 GB + one row's activations, cache and graph pools. A row's
CUDA graph pool is released after the row (``reset_cuda_graph``); ``reduce-overhead``'s stays
with its compiled wrapper, which is kept across batches. The live l2c cache of a row is at most
one tensor per cached sublayer: at 1024² in bf16, (2, 4096, 1536) = 25 MB each for SD3.5 with CFG,
(1, 4608, 3072) = 28 MB for FLUX.

Each row is written as it is measured (JSON lines, and the markdown table rewritten), so a killed
run keeps its rows; a compile row that would not fit the ``--deadline`` is written as skipped, and
``--row-limit`` stops any row that runs too long. Columns: median and spread of whole ``pipe(...)``
calls, first call (compile included), compile time, peak memory above what was allocated before
the row, the speedup over each peer, the schedule's ideal MACs ratio and the share of it reached
over the row's uncached twin; each row also records ``max_rel_diff_vs_pipeline``, its images' max
|difference| from the ``pipeline-eager`` row's over their max |value| (same seed; l2c-uncached is
exact up to float reassociation, the cached rows approximate by design).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cache_dit_match import (
    CacheDiTTrajectory,
    cache_dit_version,
    matched_mask,
    shared_copy,
    skipped_blocks,
)
from common import RESULTS, environment, markdown_table, pipeline_images, write_jsonl
from peer_pipelines import ENTRIES, PeerPipeline, Setup

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
    p.add_argument("--pipeline", choices=tuple(ENTRIES), default="dit",
                   help="; ".join(f"{e.name}: {e.description}" for e in ENTRIES.values()))
    p.add_argument("--batches", default="8,1", help="images per call, comma-separated (CFG doubles the rows)")
    p.add_argument("--steps", type=int, default=None, help="num_inference_steps (default: the pipeline's, "
                   + ", ".join(f"{e.name} {e.steps}" for e in ENTRIES.values()) + ")")
    p.add_argument("--fraction", type=float, default=None, help="share of cache-step sublayers the random l2c "
                   "schedule reuses (default: the pipeline's, " + ", ".join(
                       f"{e.name} {e.fraction:.3g}" for e in ENTRIES.values()) + ")")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="bfloat16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="width 64, 8×8 latent, ≥ 10 blocks per list (CPU tests)")
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
    args.entry = ENTRIES[args.pipeline]
    if args.steps is None:
        args.steps = args.entry.steps
    if args.fraction is None:
        args.fraction = args.entry.fraction
    if args.steps < 2:
        p.error("--steps must be at least 2")
    if not 0.0 <= args.fraction <= 1.0:
        p.error(f"--fraction must be in [0, 1], got {args.fraction}")
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


# ── the bench: one pipeline and everything its rows need ──────────────────────────────────────
@dataclass
class Bench:
    """The pipeline (:class:`~peer_pipelines.Setup`), its l2c twins, cache-dit's copy, the schedule,
    the layout and the MAC figures, and each batch's ``pipeline-eager`` images to compare with."""

    args: argparse.Namespace
    setup: Setup
    layout: Any  # l2c_compile.families.vocabulary.Layout
    schedule: Any
    macs: Any  # MacCount of one forward for one image
    l2c: dict[str, Any] = field(default_factory=dict)
    build_s: dict[str, float] = field(default_factory=dict)
    compiled: dict[str, Any] = field(default_factory=dict)
    cd_pipe: Any = None
    cd_mask: list[int] | None = None
    reference: dict[int, Any] = field(default_factory=dict)

    @property
    def pipe(self) -> Any:
        """The diffusers pipeline."""
        return self.setup.pipe

    @property
    def depth(self) -> int:
        """Blocks of the transformer (all block lists together)."""
        return self.layout.depth

    @property
    def sampler(self) -> str:
        """The plan's sampler name."""
        return self.setup.plan.sampler

    def call_kwargs(self, batch: int) -> dict[str, Any]:
        """``pipe(...)`` arguments for ``batch`` images: same noise seed for every row."""
        return {**self.setup.inputs(batch), "num_inference_steps": self.args.steps, "output_type": "np",
                "generator": torch.Generator().manual_seed(self.args.seed)}

    def step_macs(self) -> int:
        """MACs per image one cached cache-dit step removes: its skipped blocks' own sublayers."""
        from l2c_compile.metrics.macs import block_macs

        per_block = block_macs(self.macs, self.layout)
        return sum(per_block[b] for b in skipped_blocks(self.setup.cache_dit_blocks))

    def ideal(self, cached_steps: list[int] | tuple[int, ...] | None = None) -> float:
        """Ideal MACs ratio of the l2c schedule, or of cache-dit caching ``cached_steps``."""
        from l2c_compile.metrics.macs import trajectory_macs

        sched = self.schedule if cached_steps is None else CacheDiTTrajectory(
            self.args.steps, self.layout, self.setup.cache_dit_blocks, tuple(cached_steps))
        full, cached = trajectory_macs((self.macs, self.depth), sched)
        return full / cached


def pipeline_macs(setup: Setup, device: str) -> Any:
    """thop MACs of one forward for one image (``module_macs`` of the adapter: one real forward at
    the pipeline's size, with a zero latent, timestep and prompt), per sublayer and block."""
    from l2c_compile.compiler.guidance import example_condition
    from l2c_compile.families import latent_shape, model_dtype
    from l2c_compile.metrics.macs import module_macs

    adapter = setup.adapter
    x = torch.zeros(1, *latent_shape(adapter), device=device, dtype=model_dtype(adapter))  # (1, C, H, W)
    t = torch.zeros(1, device=device)  # (1,)
    with torch.no_grad():
        return module_macs(adapter, x, t, example_condition(adapter, 1, False, device))


def build_bench(args: argparse.Namespace) -> Bench:
    """The pipeline on the device (its entry's ``build``), the l2c schedule, the MAC counts and
    cache-dit's matched mask; the l2c twins are made by their first row (:func:`l2c_twin`), so the
    ``pipeline-eager`` row is written before their captures (tens of seconds at full size)."""
    from l2c_compile.families import family_of
    from l2c_compile.metrics.macs import trajectory_macs
    from l2c_compile.schedule import heuristic

    entry: PeerPipeline = args.entry
    setup = entry.build(args, max(args.batch_list))
    layout = family_of(setup.adapter).layout(setup.adapter)
    sched = setup.schedule
    if sched is None:  # every sublayer the model has, as the family lays it out
        sched = heuristic("random", setup.plan, model="peers", depth=layout.depth, fraction=args.fraction,
                          seed=args.seed, kinds=layout)
    bench = Bench(args, setup, layout, sched, pipeline_macs(setup, args.device))
    full, cached = trajectory_macs((bench.macs, layout.depth), sched)
    bench.cd_mask = matched_mask(args.steps, bench.step_macs(), full - cached)
    return bench


# ── executors: each a context that yields the call to time ────────────────────────────────────
@dataclass
class Run:
    """What a row times (``fn``) and what it reports after timing (``facts``)."""

    fn: Callable[[], Any]
    facts: Callable[[], dict[str, Any]] = dict
    build_s: float | None = None


def l2c_twin(bench: Bench, label: str) -> Any:
    """The ``compile_pipeline`` twin ``label`` (``uncached``: schedule None; ``l2c``: the schedule),
    made on first use with ``share_weights=True`` (no second copy of the weights) and its sampler
    compiled now; the seconds go to ``bench.build_s[label]`` (reported in the rows' compile time)."""
    from l2c_compile.diffusers import compile_pipeline

    if label not in bench.l2c:
        t0 = time.perf_counter()
        cp = compile_pipeline(bench.pipe, None if label == "uncached" else bench.schedule, share_weights=True)
        bench.setup.warm(cp)
        bench.build_s[label] = time.perf_counter() - t0
        bench.l2c[label] = cp
    return bench.l2c[label]


@contextlib.contextmanager
def l2c_run(bench: Bench, label: str, graph: bool, batch: int) -> Iterator[Run]:
    """``compile_pipeline`` rows: toggling the sampler's ``cuda_graph`` is what
    ``compile_pipeline(pipe, schedule, cuda_graph=True)`` sets at construction."""
    cp = l2c_twin(bench, label)
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
    """cache-dit's DBCache on its own copy of the pipeline (modules copied, weights shared:
    :func:`shared_copy`), static matched mask or its default; its hooks are released after the row."""
    import cache_dit
    from cache_dit import DBCacheConfig

    if bench.cd_pipe is None:
        bench.cd_pipe = shared_copy(bench.pipe)
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


def compare_images(bench: Bench, name: str, batch: int, output: Any) -> dict[str, Any]:
    """``max_rel_diff_vs_pipeline`` of a row's images (the last call's ``.images``, (N, H, W, 3)
    in [0, 1], or a video pipeline's ``.frames``): max |images − pipeline-eager's| / max |pipeline-eager's|, same seed and batch.
    The ``pipeline-eager`` row's images become the reference; nothing before it has one."""
    import numpy as np

    images = np.asarray(pipeline_images(output), dtype=np.float64)
    if name == "pipeline-eager":
        bench.reference[batch] = images
        return {"max_rel_diff_vs_pipeline": 0.0}
    ref = bench.reference.get(batch)
    if ref is None or ref.shape != images.shape:
        return {}
    return {"max_rel_diff_vs_pipeline": float(np.abs(images - ref).max() / max(np.abs(ref).max(), 1e-30))}


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
           ("share_of_ideal", "share of ideal"), ("max_rel_diff_vs_pipeline", "max rel. diff vs pipe(...)"),
           ("note", "note")]


def render(rows: list[dict[str, Any]]) -> str:
    """Markdown: one table per (pipeline, batch), titled with the machine and both schedules."""
    parts = []
    for key in dict.fromkeys((r["pipeline"], r["batch"]) for r in rows):
        cell = [r for r in peer_ratios(rows) if (r["pipeline"], r["batch"]) == key]
        r0 = cell[0]
        title = (f"### {r0['pipeline']} · {r0['model']} · {r0['sampler']} {r0['steps']} steps · batch "
                 f"{r0['batch']}{' + CFG' if r0.get('cfg', True) else ''} · guidance {r0.get('guidance_scale')} · "
                 f"{r0['dtype']} · {r0['device_name']} · torch {r0['torch']} · "
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
    missing = args.entry.missing()
    if missing:  # one line, as argparse's errors
        print(f"peers.py: error: {missing}", file=sys.stderr)
        raise SystemExit(2)
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
    print(f"built in {time.perf_counter() - started:.1f} s ({bench.setup.model}, {bench.macs.total / 1e9:.1f} GMACs "
          f"per image and forward): cache-dit mask {bench.cd_mask}; ideal l2c {bench.ideal():.3f}×", flush=True)
    env = environment(args.device)
    out = Path(args.out)
    stats = bench.schedule.stats()
    source = bench.setup.schedule_source or bench.schedule.source.get("file") or bench.schedule.source.get("kind")
    common = {"benchmark": "peers", **env, "pipeline": type(bench.pipe).__name__, "model": bench.setup.model,
              "sampler": bench.sampler, "steps": args.steps, "dtype": args.dtype, "tiny": args.tiny,
              "cfg": bench.setup.cfg, "guidance_scale": bench.call_kwargs(1).get("guidance_scale"),
              "sublayer_groups": bench.layout.to_json(), "cache_dit_blocks": list(bench.setup.cache_dit_blocks),
              "schedule": {"source": source, "skipped_fraction": stats["skipped_fraction"]},
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
                    last: list[Any] = [None]

                    def call(run: Run = run, last: list[Any] = last) -> None:
                        last[0] = run.fn()  # only the latest output is kept

                    row.update(measure(call, args.device, args.repeats, args.executor_budget))
                    row.update(run.facts())
                row.update(compare_images(bench, name, batch, last[0]))
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
