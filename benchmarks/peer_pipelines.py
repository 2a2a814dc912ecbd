"""The pipelines ``benchmarks/peers.py`` measures: one :class:`PeerPipeline` entry each in
:data:`ENTRIES`, so a new pipeline is one more entry and no change to the harness.

An entry says how to build its pipeline on the device at full size and at ``--tiny`` size (random
weights: latency does not depend on weight values), the ``pipe(...)`` inputs per batch, the plan of
its scheduler, the compiled sampler a ``compile_pipeline`` twin warms (so compile time is reported
apart from the calls), the share of cache-step sublayers its random l2c schedule reuses, and the
block lists cache-dit walks. Every VAE is a one-level random ``AutoencoderKL`` (vae_scale_factor 1):
the transformer sees the latent of the full-size image (128 × 128 for 1024², what SD3's and FLUX's
8× VAE makes of it), ``pipe(...)`` returns 128-pixel images, and the decoder is a few small kernels,
the same in every row.

| entry | transformer (full size) | latent | sampler | guidance | prompt |
|---|---|---|---|---|---|
| ``dit`` | DiT-XL/2 256 (28 blocks, 1152 wide) | 32² | DDIM 20 | CFG 4 | class labels |
| ``pixart`` | PixArt-α 512 (28 blocks, 16 × 72) | 64² | DPM-Solver++ 20 | CFG 4.5 | 120 T5 tokens |
| ``sd3`` | SD3.5-medium (24 joint blocks, 24 × 64, ``attn2`` in blocks 0–12) | 128² (1024²) | flow Euler 28, shift 3 | CFG 7 | 77 CLIP + 256 T5 tokens, pooled 2048 |
| ``flux`` | FLUX.1-dev (19 double + 38 single blocks, 24 × 128) | 128² (1024²) | flow Euler 28, dynamic shift | embedded 3.5, no CFG | 512 T5 tokens, pooled 768 |
| ``wan`` | Wan 2.1-1.3B (30 blocks, 12 × 128) | 16 × 5 × 60 × 104 (17 frames of 480 × 832) | flow UniPC 30, shift 3 | CFG 5 | 512 umT5 tokens |

The SD3.5-medium and FLUX.1-dev transformers are their released configs (diffusers'
``transformer/config.json`` of stabilityai/stable-diffusion-3.5-medium and
black-forest-labs/FLUX.1-dev; Wan-AI/Wan2.1-T2V-1.3B-Diffusers for Wan); SD3.5's position table is the released 384 × 384 one, not cropped
(a lookup of the 64 × 64 patches it needs: 0.45 GB of bf16 that costs memory, not time). They are
built straight on the device in the benchmark's dtype (``torch.device`` context and the default
dtype set for the constructor) and then filled with N(0, 0.02) in place, so the 2.5 B (SD3.5) or
12 B (FLUX) parameters are never materialised on the CPU nor in float32. ``--tiny``: the same
structure at width 64 (2 heads × 32) on an 8 × 8 latent with short prompts, 12 SD3 blocks
(``attn2`` in the first 6), 10 + 10 FLUX blocks or 10 Wan blocks (5 frames of 32 × 48), so that
cache-dit's F8B0 has blocks to skip. Wan's VAE is a small random ``AutoencoderKLWan`` instead (the
pipeline reads its temporal and spatial factors). ``args.config`` (a dict) overrides transformer
config entries and ``args.latent`` / ``args.size`` the sample size: ``latency_diffusers.py`` builds
the same entries at the real width with a few blocks on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from latency import RELEASED_FRACTION
from torch import nn

# ── what an entry hands the harness ──────────────────────────────────────────────────────────


@dataclass
class Setup:
    """One pipeline built on the device, with what every row needs.

    ``adapter``: l2c-compile's model adapter over ``pipe.transformer`` itself (no copy), for the
    MAC count and the family's layout. ``inputs(batch)``: ``pipe(...)`` keyword arguments for
    ``batch`` images besides steps, generator and output type (``guidance_scale`` included).
    ``plan``: the sampler plan of the pipeline's scheduler for these steps. ``warm(cp)``: the
    compiled sampler a ``compile_pipeline`` twin runs for these inputs (compiles it).
    ``cfg``: whether ``pipe(...)`` runs classifier-free guidance (two rows per image).
    ``schedule``: a schedule the entry brings (DiT-XL/2's released router), else None and the
    harness draws a random one. ``cache_dit_blocks``: the sizes of the block lists cache-dit's
    adapter walks for this pipeline, in execution order (its Fn/Bn apply to each list; FLUX.1's
    double- and single-stream blocks are one list of 57 unless CACHE_DIT_FLUX_ENABLE_DUMMY_BLOCKS=0).
    """

    pipe: Any
    adapter: nn.Module
    inputs: Callable[[int], dict[str, Any]]
    plan: Any
    warm: Callable[[Any], Any]
    cache_dit_blocks: tuple[int, ...]
    model: str
    cfg: bool = True  # CFG batched into every call (FLUX.1-dev: embedded guidance, no CFG)
    schedule: Any = None
    schedule_source: str | None = None


@dataclass(frozen=True)
class PeerPipeline:
    """One pipeline the peers benchmark can measure.

    ``pipeline_class``: the diffusers pipeline class, which ``compile_pipeline`` must have a drop-in
    for (``l2c_compile.diffusers.pipelines.PIPELINES``); ``steps``: default ``num_inference_steps``;
    ``fraction``: the share of cache-step sublayers a random l2c schedule reuses; ``build(args,
    batch)``: the :class:`Setup` for ``batch`` images at most (``args``: ``tiny``, ``device``,
    ``dtype``, ``steps``, ``seed``, ``routers_dir``, ``threshold``).
    """

    name: str
    pipeline_class: str
    steps: int
    fraction: float
    build: Callable[[argparse.Namespace, int], Setup]
    description: str

    def missing(self) -> str | None:
        """One line saying why this entry cannot run here, or None when it can."""
        from l2c_compile.diffusers.pipelines import PIPELINES

        if self.pipeline_class in PIPELINES:
            return None
        return f"--pipeline {self.name} needs a compile_pipeline drop-in for {self.pipeline_class}"


# ── building on the device ───────────────────────────────────────────────────────────────────


@contextlib.contextmanager
def built_on(device: str, dtype: torch.dtype) -> Iterator[None]:
    """Modules constructed inside are allocated on ``device`` in ``dtype`` (torch's default device
    and floating-point dtype for the constructor; both restored after)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def randomise(module: nn.Module, std: float = 0.02) -> nn.Module:
    """Every parameter filled with N(0, ``std``) in place, in eval mode. Latency does not depend on
    the values; random ones keep every branch live (diffusers zero-initialises some gates) and the
    outputs non-degenerate, so output comparisons between rows mean something (the tiny models take
    ``std`` 0.1: at width 64, 0.02 leaves every residual branch too small for a cached one to show)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module.eval()


def cast(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Every floating-point parameter and buffer of ``module`` in ``dtype`` (the buffers a
    constructor made in float32, such as SD3's position table), converted in place one by one
    (``ModelMixin.to`` would warn about modules to keep in float32: none here)."""
    with torch.no_grad():
        for m in module.modules():
            for p in m.parameters(recurse=False):
                if p.is_floating_point() and p.dtype != dtype:
                    p.data = p.data.to(dtype)
            for name, b in m.named_buffers(recurse=False):
                if b.is_floating_point() and b.dtype != dtype:
                    m._buffers[name] = b.to(dtype)
    return module


def one_level_vae(latent_channels: int, scaling_factor: float, shift_factor: float | None):
    """A random one-level ``AutoencoderKL`` (vae_scale_factor 1) with the pipeline's latent
    channels and latent scale/shift: decoding costs a few small kernels in every row alike."""
    from diffusers import AutoencoderKL

    kw = {} if shift_factor is None else {"shift_factor": shift_factor}
    return AutoencoderKL(block_out_channels=(32,), norm_num_groups=8, latent_channels=latent_channels,
                         layers_per_block=1, scaling_factor=scaling_factor, **kw).eval()


def _prompt_tensors(shapes: dict[str, tuple[int, ...]], seed: int, device: str,
                    dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Random N(0, 1) tensors of ``shapes`` (drawn on the CPU from ``seed``, then moved)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*s, generator=g).to(device, dtype) for k, s in shapes.items()}


def _config(args: argparse.Namespace, full: dict[str, Any], tiny: dict[str, Any]) -> dict[str, Any]:
    """The transformer config an entry builds: the released one (``tiny``: the tiny one) with
    ``args.config``'s entries over it (``latency_diffusers.py``: fewer blocks at the real width)."""
    return {**(tiny if args.tiny else full), **(getattr(args, "config", None) or {})}


def _sliced(tensors: dict[str, Any], **extra: Any) -> Callable[[int], dict[str, Any]]:
    """``inputs(batch)``: every tensor's first ``batch`` rows, plus ``extra``."""
    return lambda batch: {**{k: v[:batch] for k, v in tensors.items()}, **extra}


# ── DiT and PixArt (small: built on the CPU in float32, then moved) ──────────────────────────


def build_dit(args: argparse.Namespace, batch: int) -> Setup:
    """diffusers' ``DiTPipeline``: DiT-XL/2 256 (``--tiny``: 12 blocks of width 64, 8 × 8 latent),
    DDIM; the l2c schedule is the released DDIM20 router at θ (``--routers-dir``) when it applies."""
    from latency import RELEASED, find_routers_dir
    from latency_diffusers import build_pipeline

    from l2c_compile.diffusers import DiffusersDiT, pipeline_plan
    from l2c_compile.schedule import import_router

    latent = 8 if args.tiny else 32
    pipe = build_pipeline("T" if args.tiny else "XL", latent, args.seed).to(args.device, getattr(torch, args.dtype))
    depth = len(pipe.transformer.transformer_blocks)
    plan = pipeline_plan(pipe.scheduler, args.steps)
    released = RELEASED.get(("DiT-XL/2", "ddim", 20))
    routers = find_routers_dir(args.routers_dir)
    router = None if routers is None or released is None else routers / released[0]
    sched = source = None
    if not args.tiny and args.steps == 20 and router is not None and router.is_file():
        sched = import_router(router, plan, model="DiT-XL/2", depth=depth, threshold=args.threshold)
        source = router.name
    return Setup(pipe, DiffusersDiT(pipe.transformer), lambda n: {"class_labels": list(range(n)),
                                                                  "guidance_scale": 4.0},
                 plan, lambda cp: cp.sampler(args.steps, True), (depth,),
                 f"DiTTransformer2DModel depth {depth}", schedule=sched, schedule_source=source)


def build_pixart(args: argparse.Namespace, batch: int) -> Setup:
    """``PixArtAlphaPipeline``: PixArt-α 512 (28 blocks, 16 × 72, 64 × 64 latent; ``--tiny``: 12
    blocks, 2 × 32, 8 × 8) fed T5-shaped ``prompt_embeds``, DPM-Solver++."""
    from latency_diffusers import TEXT_DIM, TEXT_LEN, build_pixart_pipeline, pixart_prompt

    from l2c_compile.diffusers import pipeline_plan
    from l2c_compile.diffusers.pixart import DiffusersPixArt

    latent, depth = (8, 12) if args.tiny else (64, 28)
    heads, head_dim = (2, 32) if args.tiny else (16, 72)
    text_dim = 32 if args.tiny else TEXT_DIM
    dtype = getattr(torch, args.dtype)
    pipe = build_pixart_pipeline(depth, latent, args.seed, heads, head_dim, text_dim).to(args.device, dtype)
    prompt = {k: (v.to(args.device, dtype if v.is_floating_point() else v.dtype) if isinstance(v, torch.Tensor)
                  else v) for k, v in pixart_prompt(batch, args.seed, text_dim).items()}
    side = latent * pipe.vae_scale_factor  # the image side pipe(...) draws by default
    adapter = DiffusersPixArt(pipe.transformer, text_len=TEXT_LEN, height=side, width=side,
                              vae_scale_factor=pipe.vae_scale_factor)
    tensors = {k: v for k, v in prompt.items() if isinstance(v, torch.Tensor)}
    rest = {k: v for k, v in prompt.items() if not isinstance(v, torch.Tensor)}
    return Setup(pipe, adapter, _sliced(tensors, **rest, guidance_scale=4.5), pipeline_plan(pipe.scheduler, args.steps),
                 lambda cp: cp.pixart_sampler(args.steps, True, TEXT_LEN, side), (depth,),
                 f"PixArtTransformer2DModel depth {depth}")


# ── Stable Diffusion 3.5 medium ──────────────────────────────────────────────────────────────

# stabilityai/stable-diffusion-3.5-medium transformer/config.json
SD35_MEDIUM = {"sample_size": 128, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 24,
               "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096,
               "caption_projection_dim": 1536, "pooled_projection_dim": 2048, "pos_embed_max_size": 384,
               "dual_attention_layers": tuple(range(13)), "qk_norm": "rms_norm"}
SD35_TINY = {**SD35_MEDIUM, "sample_size": 8, "num_layers": 12, "attention_head_dim": 32, "num_attention_heads": 2,
             "joint_attention_dim": 32, "caption_projection_dim": 64, "pooled_projection_dim": 24,
             "pos_embed_max_size": 4, "dual_attention_layers": tuple(range(6))}
SD3_TEXT_LEN, SD3_TINY_TEXT_LEN = 77 + 256, 16  # CLIP + T5 tokens of prompt_embeds


def build_sd3(args: argparse.Namespace, batch: int) -> Setup:
    """``StableDiffusion3Pipeline`` with SD3.5-medium's transformer (:data:`SD35_MEDIUM`; ``--tiny``:
    :data:`SD35_TINY`), flow-matching Euler with shift 3, CFG 7 against a negative prompt, joint
    ``prompt_embeds`` (N, 333, 4096) and pooled (N, 2048) given (no text encoders)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    from l2c_compile.diffusers import pipeline_plan
    from l2c_compile.diffusers.sd3 import DiffusersSD3

    config = _config(args, SD35_MEDIUM, SD35_TINY)
    if getattr(args, "latent", None):  # another latent side than the released 128 (1024²)
        config["sample_size"] = args.latent
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    with built_on(args.device, dtype):
        transformer = randomise(SD3Transformer2DModel(**config), 0.1 if args.tiny else 0.02)
        vae = one_level_vae(config["in_channels"], 1.5305, 0.0609)
    cast(transformer, dtype), cast(vae, dtype)
    parts = dict.fromkeys(("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3",
                           "tokenizer_3"))
    pipe = StableDiffusion3Pipeline(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(
        shift=3.0), **parts)
    pipe.set_progress_bar_config(disable=True)
    text_len = SD3_TINY_TEXT_LEN if args.tiny else SD3_TEXT_LEN
    text_dim, pooled = config["joint_attention_dim"], config["pooled_projection_dim"]
    tensors = _prompt_tensors({"prompt_embeds": (batch, text_len, text_dim),
                               "negative_prompt_embeds": (batch, text_len, text_dim),
                               "pooled_prompt_embeds": (batch, pooled),
                               "negative_pooled_prompt_embeds": (batch, pooled)}, args.seed, args.device, dtype)
    side = config["sample_size"] * pipe.vae_scale_factor
    adapter = DiffusersSD3(transformer, text_len=text_len, height=side, width=side,
                           vae_scale_factor=pipe.vae_scale_factor)
    depth = config["num_layers"]
    plan = pipeline_plan(pipe.scheduler, args.steps, mu=None)  # SD3.5's scheduler shifts statically (shift 3)
    return Setup(pipe, adapter, _sliced(tensors, guidance_scale=7.0), plan,
                 lambda cp: cp.sd3_sampler(args.steps, True, text_len, side, mu=None), (depth,),
                 f"SD3Transformer2DModel SD3.5-medium{' (tiny)' if args.tiny else ''} depth {depth}")


# ── FLUX.1-dev ───────────────────────────────────────────────────────────────────────────────

# black-forest-labs/FLUX.1-dev transformer/config.json
FLUX_DEV = {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
            "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
            "guidance_embeds": True, "axes_dims_rope": (16, 56, 56)}
FLUX_TINY = {**FLUX_DEV, "in_channels": 16, "num_layers": 10, "num_single_layers": 10, "attention_head_dim": 32,
             "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 24,
             "axes_dims_rope": (8, 12, 12)}
FLUX_TEXT_LEN, FLUX_TINY_TEXT_LEN = 512, 16  # T5 tokens of prompt_embeds (FLUX.1-dev's max_sequence_length)
# FLUX.1-dev scheduler/scheduler_config.json: the resolution-dependent shift
FLUX_SCHEDULER = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                  "base_image_seq_len": 256, "max_image_seq_len": 4096}


def build_flux(args: argparse.Namespace, batch: int) -> Setup:
    """``FluxPipeline`` with FLUX.1-dev's transformer (:data:`FLUX_DEV`; ``--tiny``: :data:`FLUX_TINY`)
    at a 128 × 128 latent (1024²; tiny 8 × 8), its dynamically shifted flow-matching Euler, the
    embedded guidance 3.5 and no true CFG, ``prompt_embeds`` (N, 512, 4096) and pooled (N, 768)
    given. Needs ``CompiledFluxPipeline`` (its ``flux_sampler`` and ``latent_side``) and
    ``l2c_compile.diffusers.flux.flux_plan``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from l2c_compile.diffusers.flux import DiffusersFlux, flux_plan

    config = _config(args, FLUX_DEV, FLUX_TINY)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    with built_on(args.device, dtype):
        transformer = randomise(FluxTransformer2DModel(**config), 0.1 if args.tiny else 0.02)
        vae = one_level_vae(config["in_channels"] // 4, 0.3611, 0.1159)
    cast(transformer, dtype), cast(vae, dtype)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=vae, text_encoder=None,
                        tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    text_len = FLUX_TINY_TEXT_LEN if args.tiny else FLUX_TEXT_LEN
    latent = getattr(args, "latent", None) or (8 if args.tiny else 128)
    height = latent * pipe.vae_scale_factor  # the image side; the latent is 2 · (height // 2f) = latent
    tensors = _prompt_tensors({"prompt_embeds": (batch, text_len, config["joint_attention_dim"]),
                               "pooled_prompt_embeds": (batch, config["pooled_projection_dim"])},
                              args.seed, args.device, dtype)
    adapter = DiffusersFlux(transformer, text_len=text_len, height=height, vae_scale_factor=pipe.vae_scale_factor)
    adapter.to(args.device)  # its position ids are made on the CPU
    blocks = (config["num_layers"], config["num_single_layers"])
    # cache-dit (1.5.3, adapters.py) walks FLUX's double- then single-stream blocks as one list by
    # default (CACHE_DIT_FLUX_ENABLE_DUMMY_BLOCKS=1: F8B0 over all 57); with 0, as two lists
    unified = os.environ.get("CACHE_DIT_FLUX_ENABLE_DUMMY_BLOCKS", "1").strip() not in ("0", "")
    lists = (sum(blocks),) if unified else blocks
    return Setup(pipe, adapter, _sliced(tensors, guidance_scale=3.5, height=height, width=height,
                                        max_sequence_length=text_len),
                 flux_plan(pipe.scheduler, args.steps, latent, latent),
                 lambda cp: cp.flux_sampler(args.steps, False, text_len, cp.latent_side(height)), lists,
                 f"FluxTransformer2DModel FLUX.1-dev{' (tiny)' if args.tiny else ''} "
                 f"{blocks[0]} + {blocks[1]} blocks", cfg=False)


# ── Wan 2.1 text-to-video, 1.3B ──────────────────────────────────────────────────────────────

# Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json
WAN_13B = {"patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
           "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30,
           "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024}
WAN_TINY = {**WAN_13B, "num_attention_heads": 2, "attention_head_dim": 32, "text_dim": 32, "freq_dim": 32,
            "ffn_dim": 128, "num_layers": 10, "rope_max_seq_len": 64}
WAN_TEXT_LEN, WAN_TINY_TEXT_LEN = 512, 16  # umT5 tokens of prompt_embeds (WanPipeline's max_sequence_length)
# (num_frames, height, width): 480p at 17 frames (5 latent frames) keeps a GPU call near the 1-minute mark
WAN_SIZE, WAN_TINY_SIZE = (17, 480, 832), (5, 32, 48)


def build_wan(args: argparse.Namespace, batch: int) -> Setup:
    """``WanPipeline`` (Wan 2.1 text-to-video) with the 1.3B transformer (:data:`WAN_13B`; ``--tiny``:
    :data:`WAN_TINY`) at 480 × 832 and 17 frames (``args.size``: another ``(frames, height, width)``),
    UniPC with flow prediction and ``flow_shift`` 3 (Wan's 480p setting), CFG 5 against a negative
    prompt, umT5-shaped ``prompt_embeds`` (N, 512, 4096) given (no text encoder). The VAE is a small
    random ``AutoencoderKLWan`` with Wan's 4× temporal and 8× spatial compression (its decoder runs
    in every row alike)."""
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    from l2c_compile.diffusers import pipeline_plan
    from l2c_compile.diffusers.wan import DiffusersWan

    config = _config(args, WAN_13B, WAN_TINY)
    frames, height, width = getattr(args, "size", None) or (WAN_TINY_SIZE if args.tiny else WAN_SIZE)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    with built_on(args.device, dtype):
        transformer = randomise(WanTransformer3DModel(**config), 0.1 if args.tiny else 0.02)
        vae = AutoencoderKLWan(base_dim=8, z_dim=config["in_channels"], dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True]).eval()
    cast(transformer, dtype), cast(vae, dtype)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                        num_train_timesteps=1000)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    text_len = WAN_TINY_TEXT_LEN if args.tiny else WAN_TEXT_LEN
    tensors = _prompt_tensors({"prompt_embeds": (batch, text_len, config["text_dim"]),
                               "negative_prompt_embeds": (batch, text_len, config["text_dim"])},
                              args.seed, args.device, dtype)
    adapter = DiffusersWan(transformer, text_len=text_len, num_frames=frames, height=height, width=width)
    depth = config["num_layers"]
    return Setup(pipe, adapter, _sliced(tensors, guidance_scale=5.0, num_frames=frames, height=height, width=width,
                                        max_sequence_length=text_len),
                 pipeline_plan(pipe.scheduler, args.steps),
                 lambda cp: cp.wan_sampler(args.steps, True, text_len, frames, height, width), (depth,),
                 f"WanTransformer3DModel Wan 2.1-1.3B{' (tiny)' if args.tiny else ''} depth {depth}, "
                 f"{frames} frames of {height}×{width}")


# ── the table ────────────────────────────────────────────────────────────────────────────────

DIT_FRACTION = RELEASED_FRACTION[("ddim", 20)]  # the released DDIM20 router's skipped share at θ 0.1
ENTRIES: dict[str, PeerPipeline] = {e.name: e for e in (
    PeerPipeline("dit", "DiTPipeline", 20, DIT_FRACTION, build_dit,
                 "DiT-XL/2 256, DDIM 20, CFG 4 (released DDIM20 router at θ 0.1 when found)"),
    PeerPipeline("pixart", "PixArtAlphaPipeline", 20, DIT_FRACTION, build_pixart,
                 "PixArt-α 512, DPM-Solver++ 20, CFG 4.5, prompt_embeds"),
    PeerPipeline("sd3", "StableDiffusion3Pipeline", 28, 0.40, build_sd3,
                 "SD3.5-medium 1024², flow-matching Euler 28 (shift 3), CFG 7, prompt_embeds"),
    PeerPipeline("flux", "FluxPipeline", 28, 0.40, build_flux,
                 "FLUX.1-dev 1024², flow-matching Euler 28 (dynamic shift), guidance 3.5, prompt_embeds"),
    PeerPipeline("wan", "WanPipeline", 30, 0.40, build_wan,
                 "Wan 2.1-1.3B 480×832, 17 frames, flow UniPC 30 (shift 3), CFG 5, prompt_embeds"),
)}
