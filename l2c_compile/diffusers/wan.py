"""Adapter: diffusers' ``WanTransformer3DModel`` (Wan 2.1 text-to-video) as the compiler sees a model.

The transformer is held unmodified at ``self.transformer``; its cacheable sublayers are declared by
module path in the ``wan`` family (``families/builtin.py``), three per block, as
``WanTransformerBlock.forward`` adds them to the residual stream: ``blocks.{i}.attn1`` (the
self-attention with 3-D rotary embeddings, gated by the adaLN table ``gate_msa``),
``blocks.{i}.attn2`` (the cross-attention to the umT5 prompt after the FP32 ``norm2``, added
*ungated*: ``hidden_states + attn_output``) and ``blocks.{i}.ffn`` (gated by ``c_gate_msa``).
The model keeps its own numerics: its FP32 layer norms and the float32 gate arithmetic are in the
captured graph as it computes them, and in bfloat16 what it lists in ``_keep_in_fp32_modules``
stays float32 (``families.fp32_kept``, as ``from_pretrained(torch_dtype=…)`` loads it). fx cannot
trace it, so it asks for the ``torch.export`` capture.

Conventions are ``WanPipeline.__call__``'s: ``x`` is the video latents ``(N, C, F, H, W)`` as
``prepare_latents`` draws them (``F = (num_frames − 1) / 4 + 1`` latent frames, ``H``, ``W`` the
pixel size / 8), handed to the transformer as they are (patch embedding and rotary embeddings
happen inside it, from ``x``'s shape); the timestep is the scheduler's (``UniPCMultistepScheduler``
with flow sigmas: ``int(σ · 1000)``), handed on as the pipeline does (``t.expand(N)``); the
condition ``y`` is the prompt embeddings ``(N, L, D)`` that ``WanPipeline.encode_prompt`` returns
(umT5, zero-padded to ``max_sequence_length`` L = 512; no mask). With classifier-free guidance
the rows carry the prompt and the negative prompt, ``(N, 2, L, D)``, batched into one call, and
guidance is the pipeline's ``u + s · (c − u)`` on the velocity. The compiled step is made for one
latent shape (frames, height, width): another one is refused at the sampler's call. Sources:
diffusers ``WanPipeline.__call__`` / ``prepare_latents`` / ``encode_prompt``,
``WanTransformer3DModel.forward``, ``WanTransformerBlock.forward``.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import WanTransformer3DModel
from torch import nn

from l2c_compile.diffusers.prompted import PromptAdapter
from l2c_compile.diffusers.records import prompt_record
from l2c_compile.errors import L2CError
from l2c_compile.families import model_dtype

# WanPipeline's defaults: 81 frames of 480×832 pixels, prompts of 512 umT5 tokens, and the Wan VAE's
# 4× temporal and 8× spatial compression (``vae.config.scale_factor_temporal`` / ``_spatial``)
NUM_FRAMES, HEIGHT, WIDTH, TEXT_LEN = 81, 480, 832, 512
VAE_TEMPORAL, VAE_SPATIAL = 4, 8


def wan_latent_shape(in_channels: int, num_frames: int, height: int, width: int, vae_scale_factor: int = VAE_SPATIAL,
                     vae_scale_factor_temporal: int = VAE_TEMPORAL) -> tuple[int, int, int, int]:
    """(C, F, H, W) of the latents ``WanPipeline.prepare_latents`` draws for ``num_frames`` frames of
    ``height`` × ``width`` pixels: ``F = (num_frames − 1) // temporal + 1``, ``H = height // spatial``."""
    return (in_channels, (num_frames - 1) // vae_scale_factor_temporal + 1, height // vae_scale_factor,
            width // vae_scale_factor)


TWO_EXPERTS = ("Wan 2.2's two experts (transformer_2 with boundary_ratio) are not supported: it would take a plan "
               "whose calls name their expert, a capture and step graphs per expert, schedule and router rows per "
               "expert's blocks with no cache entry carried across the boundary, and a second guidance scale "
               "(guidance_scale_2); see the README's Wan section")


def check_pipeline_config(config: Mapping[str, Any]) -> None:
    """L2CError (one line) for a ``WanPipeline`` configuration (its ``model_index.json``, or a
    loaded pipeline's ``config``) that one compiled Wan 2.1 sampler cannot run: Wan 2.2's two
    experts (a ``transformer_2`` component or ``boundary_ratio`` set) or per-token timesteps
    (``expand_timesteps``, Wan 2.2 TI2V)."""
    second = config.get("transformer_2")
    if (isinstance(second, list | tuple) and any(second)) or config.get("boundary_ratio") is not None:
        raise L2CError(TWO_EXPERTS)
    if config.get("expand_timesteps"):
        raise L2CError("WanPipeline with expand_timesteps (Wan 2.2 TI2V: one timestep per latent token) is not "
                       "supported: the compiled step takes one timestep per sample")

class DiffusersWan(PromptAdapter):
    """v(x, t, y) of a diffusers ``WanTransformer3DModel`` (text-to-video); the model is
    ``self.transformer``.

    ``text_len``: the prompt length L the sampler is made for (the pipeline's
    ``max_sequence_length``, 512). ``num_frames``, ``height``, ``width``: the video size in frames and
    pixels (default: the pipeline's 81 × 480 × 832); ``num_frames − 1`` a multiple of
    ``vae_scale_factor_temporal``, the sides multiples of ``vae_scale_factor`` times the patch
    (WanPipeline rounds other sizes down with a warning; here they are refused). L2CError for an
    image-conditioned (I2V) transformer, whose cross-attention also takes image embeddings.
    """

    l2c_capture = "export"
    # router training's prompts file (``router/prompts.py``): the embeddings alone, no mask or pooled vector
    condition_keys = (("prompt_embeds", None), ("negative_prompt_embeds", None))

    def __init__(self, transformer: WanTransformer3DModel, text_len: int = TEXT_LEN, num_frames: int = NUM_FRAMES,
                 height: int = HEIGHT, width: int = WIDTH, vae_scale_factor: int = VAE_SPATIAL,
                 vae_scale_factor_temporal: int = VAE_TEMPORAL) -> None:
        super().__init__()
        if not isinstance(transformer, WanTransformer3DModel):
            raise L2CError(f"DiffusersWan wraps a WanTransformer3DModel, got {type(transformer).__name__}")
        config = transformer.config
        if config.image_dim is not None or config.added_kv_proj_dim is not None:
            raise L2CError("this WanTransformer3DModel is image-conditioned (image_dim / added_kv_proj_dim: Wan I2V); "
                           "DiffusersWan takes the text-to-video transformer")
        for name, value in (("text_len", text_len), ("num_frames", num_frames), ("height", height), ("width", width),
                            ("vae_scale_factor", vae_scale_factor),
                            ("vae_scale_factor_temporal", vae_scale_factor_temporal)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise L2CError(f"{name} must be a positive integer, got {value!r}")
        p_t, p_h, p_w = (int(p) for p in config.patch_size)
        if (num_frames - 1) % vae_scale_factor_temporal or ((num_frames - 1) // vae_scale_factor_temporal + 1) % p_t:
            raise L2CError(f"num_frames − 1 must be a multiple of {vae_scale_factor_temporal} (as WanPipeline rounds "
                           f"it), got {num_frames}")
        side_h, side_w = vae_scale_factor * p_h, vae_scale_factor * p_w
        if height % side_h or width % side_w:
            raise L2CError(f"height and width must be multiples of {side_h} and {side_w} pixels, got {height}×{width}")
        self.transformer = transformer
        self.in_channels = int(config.in_channels)
        self.latent_shape = wan_latent_shape(self.in_channels, num_frames, height, width, vae_scale_factor,
                                             vae_scale_factor_temporal)  # (C, F, H, W)
        self.text_len = text_len
        self.text_dim = int(config.text_dim)
        self.num_frames, self.height, self.width = num_frames, height, width
        self.vae_scale_factor, self.vae_scale_factor_temporal = vae_scale_factor, vae_scale_factor_temporal

    @classmethod
    def from_record(cls, transformer: WanTransformer3DModel, record: dict) -> DiffusersWan:
        """The adapter for an artifact's model record: its ``wan`` entry gives the prompt length and
        video size; L2CError when it lacks them."""
        size = prompt_record(record, "wan", "Wan")
        rec = record["wan"]
        frames = rec.get("num_frames")
        if isinstance(frames, bool) or not isinstance(frames, int):
            raise L2CError("artifact manifest's Wan record lacks its frame count")
        return cls(transformer, **size, num_frames=frames,
                   vae_scale_factor_temporal=rec.get("vae_scale_factor_temporal", VAE_TEMPORAL))

    @classmethod
    def pipeline_text_len(cls, folder: str | os.PathLike[str]) -> int:
        """The prompt length ``WanPipeline`` encodes to by default: its ``max_sequence_length``
        (512), for a pipeline or a model folder alike (read from the installed diffusers)."""
        from l2c_compile.diffusers.quiet import quiet

        del folder  # the pipeline class fixes it; a saved folder cannot change it
        with quiet():  # importing the pipeline imports transformers, which has advice to print
            from diffusers import WanPipeline
        return int(inspect.signature(WanPipeline.__call__).parameters["max_sequence_length"].default)

    def cache_entry_shape(self, key: tuple[str, int]) -> tuple[int, int]:
        """(tokens, channels) of one CFG row of a cached output: every sublayer of a Wan block
        (and the residual stream a trunk reuse keeps) is ``(N, F/p_t · H/p_h · W/p_w, heads ·
        head_dim)`` (``WanTransformerBlock.forward``). Read by
        :func:`~l2c_compile.compiler.memory.planned_cache`."""
        del key  # attn1, attn2 and ffn all return the stream's width
        config = self.transformer.config
        _, frames, height, width = self.latent_shape
        tokens = math.prod(n // int(p) for n, p in zip((frames, height, width), config.patch_size, strict=True))
        return tokens, int(config.num_attention_heads) * int(config.attention_head_dim)

    @staticmethod
    def pack_condition(embeds: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """The condition of prompt embeddings (N, L, D): the embeddings as they are (Wan has no
        mask or pooled vector; ``extra`` must be None). L2CError for another rank."""
        if embeds.dim() != 3 or extra is not None:
            raise L2CError(f"Wan's prompt_embeds are (N, L, D) alone, got {tuple(embeds.shape)}"
                           + (" with an extra tensor" if extra is not None else ""))
        return embeds

    def prompt_condition(self, pipe: Any, prompts: list[str], *, negative_prompt: str = "", cfg: bool,
                         device: torch.device | str = "cpu") -> torch.Tensor:
        """``prompts`` encoded by ``pipe`` for this adapter's prompt length (:func:`prompt_condition`)."""
        return prompt_condition(pipe, prompts, negative_prompt=negative_prompt, cfg=cfg, text_len=self.text_len,
                                device=device)

    def record(self) -> dict:
        """What an artifact needs to rebuild this adapter (:meth:`from_record`)."""
        return {"text_len": self.text_len, "num_frames": self.num_frames, "height": self.height, "width": self.width,
                "vae_scale_factor": self.vae_scale_factor, "vae_scale_factor_temporal": self.vae_scale_factor_temporal}

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (N, C, F, H, W) latents; t: (N,) timesteps (the scheduler's, σ·1000); y: (N, L, D) prompt
        embeddings → (N, C, F, H, W) velocity."""
        return self.transformer(hidden_states=x, timestep=t, encoder_hidden_states=y, return_dict=False)[0]

    def transformer_blocks(self) -> list[nn.Module]:
        """The transformer blocks in execution order."""
        return list(self.transformer.blocks)

    def example_condition(self, n: int, cfg: bool, device: torch.device | str) -> torch.Tensor:
        """A zero prompt, (n, [2,] L, D), to capture a step with."""
        dtype = model_dtype(self.transformer)  # not its first parameter: the adaLN table stays float32
        y = torch.zeros(n, self.text_len, self.text_dim, dtype=dtype, device=device)
        return torch.stack([y, y], dim=1) if cfg else y


@torch.no_grad()
def prompt_condition(pipe: Any, prompts: list[str], *, negative_prompt: str = "", cfg: bool, text_len: int,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Encode ``prompts`` with a ``WanPipeline``'s own tokenizer and umT5 encoder
    (``pipe.encode_prompt`` with ``max_sequence_length=text_len``, cast to the transformer's dtype
    as the pipeline casts them) into the condition the compiled sampler takes: (N, 2, L, D) with
    ``cfg`` (the negative prompt second), else (N, L, D). L2CError when the pipeline has no text
    encoder and tokenizer, or no prompt is given."""
    if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
        raise L2CError(f"this {type(pipe).__name__} has no text encoder and tokenizer to encode prompts with")
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise L2CError("pass at least one non-empty prompt")
    pe, ne = pipe.encode_prompt(prompt=list(prompts), negative_prompt=negative_prompt, do_classifier_free_guidance=cfg,
                                max_sequence_length=text_len, device=pipe._execution_device)
    dtype = pipe.transformer.dtype
    y = pe.to(dtype)  # (N, L, D)
    if cfg:
        y = torch.stack([y, ne.to(dtype)], dim=1)  # (N, 2, L, D)
    return y.to(device)


@torch.no_grad()
def decode_latents(pipe: Any, latents: torch.Tensor) -> torch.Tensor:
    """Final latents (N, C, F', H', W') → the Wan VAE's video (N, 3, F, H, W) in [-1, 1], as
    ``WanPipeline.__call__`` decodes them: de-normalised per channel with ``latents_mean`` and
    ``latents_std`` (``latents / (1 / std) + mean``, the pipeline's arithmetic exactly), then
    ``vae.decode``. ``pipe``: a ``WanPipeline`` (its ``vae``)."""
    vae = pipe.vae
    latents = latents.to(vae.device, dtype=vae.dtype)
    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
    return vae.decode(latents / inv_std + mean, return_dict=False)[0]
