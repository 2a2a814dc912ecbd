"""Latency of diffusers' ``DiTPipeline`` / ``PixArtAlphaPipeline`` / ``StableDiffusion3Pipeline``
against ``compile_pipeline``, measured in one run.

    python benchmarks/latency_diffusers.py                      # DiT-S/2 shape, DDIM 20, batch 1, CFG 4
    python benchmarks/latency_diffusers.py --size XL --steps 50 --repeats 3
    python benchmarks/latency_diffusers.py --pipeline pixart --depth 4   # PixArt-XL/2 width, 4 blocks,
                                                                          # DPM-Solver++ 20, CFG 4.5
    python benchmarks/latency_diffusers.py --pipeline sd3 --depth 3 --steps 28  # SD3.5-medium width, 3 blocks

Executors (interleaved: each repeat runs every executor once, so drift hits all alike):
  pipeline-uncached   ``pipe(...)``, diffusers' own loop (the baseline)
  compiled-uncached   ``compile_pipeline(pipe, None)``: the same computation as compiled code
  compiled-l2c        ``compile_pipeline(pipe, schedule)`` with a random heuristic schedule that
                      reuses ``--fraction`` of the cache steps' sublayers

The transformer has a DiT size's shape (random weights: latency does not depend on them) at a
32×32 latent; the VAE is a one-level random AutoencoderKL so decoding (identical in every
executor) does not hide the loop. ``--pipeline pixart``: a ``PixArtTransformer2DModel`` of
PixArt-XL/2's width (1152, 16 heads, T5-XXL's 4096-channel captions of 120 tokens) with ``--depth``
blocks instead of 28 (a reduced-depth PixArt shape: every block costs the same, so the ratios
carry over), fed ``prompt_embeds`` (the text encoder would run identically in every executor),
with diffusers' DPM-Solver++ scheduler. ``--pipeline sd3``: an ``SD3Transformer2DModel`` of
SD3.5-medium's width (1536, 24 heads, SD3.5's second attention in the first block, 333 prompt
tokens of 4096 channels, pooled 2048) with ``--depth`` joint blocks (the last one
``context_pre_only``), SD3's flow-matching Euler scheduler (shift 3) and CFG 7 against a negative
prompt; ``--pipeline flux``: FLUX.1-dev's width with ``--depth`` double-stream and twice as many
single-stream blocks, its dynamically shifted Euler and embedded guidance 3.5 (no CFG);
``--pipeline wan``: Wan 2.1-1.3B's width with ``--depth`` blocks, ``--video`` frames and size, flow
UniPC and CFG 5. These three are the peers benchmark's entries (``peer_pipelines.py``) with fewer
blocks. The random schedule draws from every sublayer the model has (its family's layout). Every
executor decodes; ratios are whole-call ratios. The ideal figure is the schedule's MAC ratio.
Writes JSON lines and a markdown table to
``benchmarks/results/latency-diffusers-<device>.{jsonl,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, environment, markdown_table, pipeline_images, write_jsonl

# (depth, width, heads) of the DiT sizes; "T" is a tiny shape for CPU tests (12 blocks: cache-dit's
# default DBCache computes the first 8 of them on every step).
SIZES = {"T": (12, 64, 2), "S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
EXECUTORS = ("pipeline-uncached", "compiled-uncached", "compiled-l2c")
GUIDANCE = {"dit": 4.0, "pixart": 4.5, "sd3": 7.0, "flux": 3.5, "wan": 5.0}  # each pipeline's default scale


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", choices=sorted(GUIDANCE), default="dit")
    p.add_argument("--size", choices=sorted(SIZES), default="S", help="DiT size (--pipeline dit)")
    p.add_argument("--depth", type=int, default=4, help="transformer blocks of --pipeline pixart / sd3 / flux / wan "
                   "(PixArt-XL has 28, SD3.5-medium 24, FLUX.1 19 double-stream (+ twice as many single), Wan-1.3B 30)")
    p.add_argument("--tiny", action="store_true", help="--pipeline sd3/flux/wan: the peers benchmark's tiny shape "
                   "(width 64) with --depth blocks, for a quick check")
    p.add_argument("--video", default=None, help="--pipeline wan: FRAMES,HEIGHT,WIDTH (default 5,240,416)")
    p.add_argument("--latent", type=int, default=32, help="latent side (32 = 256 px)")
    p.add_argument("--steps", type=int, default=20, help="num_inference_steps")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: DiT 4.0, PixArt 4.5, SD3 7.0)")
    p.add_argument("--fraction", type=float, default=0.44, help="share of cache-step sublayers reused")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: a shared CPU thrashes with more)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON lines file (default: results/latency-diffusers-cpu.jsonl)")
    return p.parse_args(argv)


def build_pipeline(size: str, latent: int, seed: int):
    """A DiTPipeline with a random DiT-``size``/2 transformer, a small random VAE and DDIM."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    depth, hidden, heads = SIZES[size]
    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=hidden // heads,
                                        in_channels=4, out_channels=8, num_layers=depth, sample_size=latent,
                                        patch_size=2, num_embeds_ada_norm=1000)
    with torch.no_grad():
        for p in transformer.parameters():
            p.normal_(0, 0.02)
    vae = AutoencoderKL(block_out_channels=(32,), norm_num_groups=8, latent_channels=4, layers_per_block=1)
    scheduler = DDIMScheduler(beta_schedule="linear", clip_sample=False, set_alpha_to_one=False)
    pipe = DiTPipeline(transformer=transformer.eval(), vae=vae.eval(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


TEXT_LEN, TEXT_DIM = 120, 4096  # PixArt-α's max_sequence_length; T5-XXL's width


def build_pixart_pipeline(depth: int, latent: int, seed: int, heads: int = 16, head_dim: int = 72,
                          text_dim: int = TEXT_DIM):
    """A PixArtAlphaPipeline: a random transformer of PixArt-XL/2's width (``heads`` × ``head_dim``,
    ``text_dim``-channel captions; smaller for tests) with ``depth`` blocks, a small random VAE and
    diffusers' DPM-Solver++ scheduler (no text encoder: prompt_embeds are given)."""
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        PixArtAlphaPipeline,
        PixArtTransformer2DModel,
    )

    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(num_attention_heads=heads, attention_head_dim=head_dim, in_channels=4,
                                           out_channels=8, num_layers=depth, sample_size=latent, patch_size=2,
                                           cross_attention_dim=heads * head_dim, caption_channels=text_dim)
    with torch.no_grad():
        for p in transformer.parameters():
            p.normal_(0, 0.02)
    vae = AutoencoderKL(block_out_channels=(32,), norm_num_groups=8, latent_channels=4, layers_per_block=1)
    scheduler = DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    pipe = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=vae.eval(), transformer=transformer.eval(),
                               scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pixart_prompt(batch: int, seed: int, text_dim: int = TEXT_DIM) -> dict[str, Any]:
    """``pipe(...)`` keyword arguments for ``batch`` random prompts given as T5-shaped embeddings:
    a 20-token prompt padded to 120, as T5 gives PixArt, and a random negative prompt."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, TEXT_LEN, dtype=torch.long)
    mask[:, 20:] = 0
    return {"prompt_embeds": torch.randn(batch, TEXT_LEN, text_dim, generator=g), "prompt_attention_mask": mask,
            "negative_prompt_embeds": torch.randn(batch, TEXT_LEN, text_dim, generator=g),
            "negative_prompt_attention_mask": mask.clone(), "negative_prompt": None,
            "use_resolution_binning": False}


@dataclass
class Bench:
    """One pipeline under test: how to build it, call it and compile its sampler ahead of time."""

    pipe: Any
    inputs: dict[str, Any]  # pipe(...)'s inputs besides the shared settings
    shape: str  # the table title's model and sampler
    model: str  # the rows' model label
    warm: Callable[[Any], Any]  # compiled pipeline → its CompiledSampler for this run (compiles it)
    plan: Any = None  # the scheduler's plan for these steps (None: pipeline_plan of the scheduler)
    cfg: bool = True  # whether pipe(...) batches CFG (FLUX.1-dev: the guidance scale is a model input)


# --pipeline sd3 / flux / wan: the peers benchmark's entries (peer_pipelines.py) at the real width
# with --depth blocks: (transformer config entries for depth d, what the model label says)
REDUCED = {
    "sd3": lambda d: {"num_layers": d, "dual_attention_layers": (0,)},  # SD3.5's attn2 in the first block
    "flux": lambda d: {"num_layers": d, "num_single_layers": 2 * d},  # FLUX.1's 19 : 38 double : single
    "wan": lambda d: {"num_layers": d},
}


def bench(args: argparse.Namespace) -> Bench:
    """The pipeline ``args.pipeline`` names, at the size the options give."""
    cfg, steps = args.guidance > 1, args.steps
    if args.pipeline in REDUCED:
        from peer_pipelines import ENTRIES

        entry = ENTRIES[args.pipeline]
        size = tuple(int(v) for v in args.video.split(",")) if args.video else None if args.tiny else (5, 240, 416)
        ns = argparse.Namespace(tiny=args.tiny, device="cpu", dtype="float32", steps=steps, seed=args.seed,
                                config=REDUCED[args.pipeline](args.depth), latent=None if args.tiny else args.latent,
                                size=size)
        setup = entry.build(ns, args.batch)
        inputs = setup.inputs(args.batch)
        if args.guidance_given:
            inputs["guidance_scale"] = args.guidance
        return Bench(setup.pipe, inputs, f"{setup.model} · {setup.plan.sampler} {steps}", setup.model, setup.warm,
                     plan=setup.plan, cfg=setup.cfg)
    if args.pipeline == "pixart":
        pipe = build_pixart_pipeline(args.depth, args.latent, args.seed)
        side = args.latent * pipe.vae_scale_factor  # the image side pipe(...) draws by default
        return Bench(pipe, pixart_prompt(args.batch, args.seed),
                     f"PixArt-XL/2 width, {args.depth} blocks · DPM-Solver++ {steps}",
                     f"PixArtTransformer2DModel PixArt-XL/2 width, {args.depth} blocks",
                     lambda c: c.pixart_sampler(steps, cfg, TEXT_LEN, side))
    pipe = build_pipeline(args.size, args.latent, args.seed)
    return Bench(pipe, {"class_labels": list(range(args.batch))},
                 f"DiT-{args.size}/2 shape · DDIM {steps}", f"DiTTransformer2DModel DiT-{args.size}/2",
                 lambda c: c.sampler(steps, cfg))


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Measure the three executors; write and return one row each."""
    from l2c_compile.diffusers import compile_pipeline, pipeline_plan
    from l2c_compile.families import family_of
    from l2c_compile.schedule import heuristic

    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.guidance_given = args.guidance is not None
    if args.guidance is None:
        args.guidance = GUIDANCE[args.pipeline]
    b = bench(args)
    pipe = b.pipe
    t0 = time.perf_counter()
    uncached = compile_pipeline(pipe, None)
    adapter = b.warm(uncached).model  # compile now, so compile time is reported apart from the calls
    compile_uncached = time.perf_counter() - t0
    # every sublayer the model has (SD3: attn2 in its dual-attention blocks, no text MLP in the last)
    layout = family_of(adapter).layout(adapter)
    plan = b.plan or pipeline_plan(pipe.scheduler, args.steps)
    sched = heuristic("random", plan, model="bench", depth=layout.depth, fraction=args.fraction, seed=args.seed,
                      kinds=layout)
    t0 = time.perf_counter()
    cached = compile_pipeline(pipe, sched)
    compiled = b.warm(cached)
    compile_l2c = time.perf_counter() - t0
    macs = compiled.info["macs_per_image"]
    ideal = macs["uncached"] / macs["compiled"]
    run = {"pipeline-uncached": pipe, "compiled-uncached": uncached, "compiled-l2c": cached}

    def call(name: str) -> Any:
        gen = torch.Generator().manual_seed(args.seed)
        kw = {"guidance_scale": args.guidance, **b.inputs}  # an entry's inputs carry its pipeline's scale
        return pipeline_images(run[name](**kw, num_inference_steps=args.steps, generator=gen, output_type="np"))

    first, times = {}, {name: [] for name in EXECUTORS}
    outputs = {}
    for name in EXECUTORS:
        t0 = time.perf_counter()
        outputs[name] = call(name)
        first[name] = time.perf_counter() - t0
    for _ in range(args.repeats):
        for name in EXECUTORS:
            t0 = time.perf_counter()
            call(name)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["pipeline-uncached"])
    same = statistics.median(times["compiled-uncached"])
    ref = outputs["pipeline-uncached"]
    env = environment("cpu")
    rows = []
    for name in EXECUTORS:
        med = statistics.median(times[name])
        err = float(abs(outputs[name] - ref).max() / abs(ref).max())
        rows.append({"benchmark": "latency-diffusers", **env, "model": b.model, "pipeline": type(pipe).__name__,
                     "sampler": plan.sampler, "sublayer_kinds": list(layout.kinds),
                     "latent": args.latent, "steps": args.steps, "batch": args.batch, "guidance": args.guidance,
                     "dtype": "float32", "skipped_fraction": args.fraction, "executor": name,
                     "median_s": med, "min_s": min(times[name]), "max_s": max(times[name]),
                     "first_s": first[name], "repeats": args.repeats,
                     "compile_s": {"compiled-uncached": compile_uncached, "compiled-l2c": compile_l2c}.get(name),
                     "speedup_vs_pipeline": base / med, "speedup_vs_compiled_uncached": same / med,
                     "ideal_speedup": ideal if name == "compiled-l2c" else 1.0,
                     "max_rel_diff_vs_pipeline": err})
    out = Path(args.out) if args.out else RESULTS / "latency-diffusers-cpu.jsonl"
    write_jsonl(out, rows)
    columns = [("executor", "executor"), ("median_s", "median s"), ("min_s", "min s"), ("max_s", "max s"),
               ("first_s", "first call s"), ("compile_s", "compile s"), ("speedup_vs_pipeline", "× pipeline"),
               ("speedup_vs_compiled_uncached", "× compiled uncached"),
               ("ideal_speedup", "ideal ×"), ("max_rel_diff_vs_pipeline", "max rel. diff vs pipe")]
    guidance = f"+ CFG {args.guidance:g}" if b.cfg else f"· guidance {args.guidance:g} embedded, no CFG"
    title = (f"### {type(pipe).__name__} · {b.shape} · batch {args.batch} {guidance} · float32 · {env['device_name']} · torch {env['torch']} · git {env['git']} — "
             f"random schedule reusing {args.fraction:.0%} of cache-step sublayers")
    with out.with_suffix(".md").open("a", encoding="utf-8") as f:
        f.write(f"\n{title}\n\n{markdown_table(rows, columns)}\n")
    print(title)
    print(markdown_table(rows, columns))
    return rows


if __name__ == "__main__":
    main()
