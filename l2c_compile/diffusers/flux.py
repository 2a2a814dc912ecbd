"""Adapter: diffusers' ``FluxTransformer2DModel`` (FLUX.1 dev / schnell, MMDiT) as the compiler
sees a model.

The transformer is held unmodified at ``self.transformer``; its cacheable sublayers are declared in
the ``flux`` family (``families/builtin.py``): per double-stream block the joint attention
``transformer_blocks.{i}.attn`` with two cached outputs (image and text stream, each with its own
adaLN-Zero gate), the image MLP ``ff`` and the text MLP ``ff_context``; per single-stream block
the attention branch and the MLP branch. A single-stream block is a parallel block,
``x + gate · proj_out(cat[attn, act(proj_mlp(h))])``; ``proj_out`` is linear, so the compiler
splits it by input columns (``KindDecl.projection``) and caches each *projected* branch: a
reused MLP branch skips ``proj_mlp`` and its slice of ``proj_out``, and the cache holds
``dim``-wide tensors. fx cannot trace the model, so it asks for the ``torch.export`` capture.

Conventions are ``FluxPipeline.__call__``'s: ``x`` is the latents ``(N, C, H, W)`` as the
pipeline draws them before packing (square), packed here into 2×2 patches ``(N, H·W/4, 4C)`` for
the transformer and unpacked after (``FluxPipeline._pack_latents`` / ``_unpack_latents``; the
flow-matching Euler step is elementwise, so it commutes with packing), the timestep the
scheduler's ``σ · 1000`` (the transformer is given ``σ``, as the pipeline passes ``t / 1000``),
image position ids from ``FluxPipeline._prepare_latent_image_ids`` and zero text ids. The
condition ``y`` packs what ``FluxPipeline.encode_prompt`` returns into one tensor: the T5 prompt
embeddings ``(L, D)`` followed by one row holding the pooled CLIP embedding ``(P,)`` and, for a
guidance-distilled model (FLUX.1-dev, ``guidance_embeds``), the embedded guidance scale at column
``P``; zero-padded to ``W = max(D, P + 1)``: ``(N, L + 1, W)`` (:func:`pack_condition`). True
classifier-free guidance against a negative prompt (the pipeline's ``true_cfg_scale``) batches
``(N, 2, L + 1, W)`` conditions and combines ``u + s · (c − u)``.

The pipeline's own σ schedule (:func:`flux_plan`): ``sigmas = linspace(1, 1/N, N)`` handed to its
scheduler with the dynamic shift's ``μ = calculate_shift(image_seq_len, …)`` from the scheduler's
config (``base_image_seq_len``, ``max_image_seq_len``, ``base_shift``, ``max_shift``), which a
statically shifting scheduler (schnell) ignores. Sources: diffusers ``FluxPipeline.__call__``
(``pipelines/flux/pipeline_flux.py``: ``calculate_shift``, ``encode_prompt``), ``FluxTransformer2DModel.forward``,
``FluxSingleTransformerBlock.forward``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffusers import FluxTransformer2DModel
from torch import nn

from l2c_compile.diffusers.prompted import PromptAdapter
from l2c_compile.diffusers.records import prompt_record
from l2c_compile.errors import L2CError
from l2c_compile.samplers.base import SamplerPlan

DEFAULT_GUIDANCE = 3.5  # FluxPipeline.__call__'s guidance_scale: the scale a FLUX.1-dev condition embeds


def flux_mu(scheduler_config: Any, image_seq_len: int) -> float:
    """The μ ``FluxPipeline`` hands its scheduler for ``image_seq_len`` packed latent tokens
    (``(H/2f)·(W/2f)`` for an H×W image, f the VAE's scale factor): diffusers' ``calculate_shift``
    with the scheduler config's ``base_image_seq_len``, ``max_image_seq_len``, ``base_shift``,
    ``max_shift`` (the pipeline's defaults 256, 4096, 0.5, 1.15 where the config lacks them).
    Source: ``FluxPipeline.__call__``, step 5."""
    from l2c_compile.diffusers.quiet import quiet

    with quiet():  # importing the pipeline imports transformers, which has advice to print
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    return float(calculate_shift(image_seq_len, scheduler_config.get("base_image_seq_len", 256),
                                 scheduler_config.get("max_image_seq_len", 4096),
                                 scheduler_config.get("base_shift", 0.5), scheduler_config.get("max_shift", 1.15)))


def flux_plan(scheduler: Any, num_inference_steps: int, latent_height: int, latent_width: int, *,
              sigmas: Sequence[float] | None = None) -> SamplerPlan:
    """The plan of ``FluxPipeline``'s loop with ``scheduler`` for latents of ``latent_height`` ×
    ``latent_width`` (unpacked, as the VAE sees them): the pipeline's ``sigmas`` (default
    ``linspace(1, 1/N, N)``; none for a scheduler with ``use_flow_sigmas``) and μ
    (:func:`flux_mu` of the packed token count), timesteps σ·1000. ``num_inference_steps`` is
    ``len(sigmas)`` when they are given, as ``retrieve_timesteps`` counts. L2CError for a scheduler
    or setting :func:`~l2c_compile.diffusers.pipeline_plan` refuses."""
    from l2c_compile.diffusers.scheduler_plans import pipeline_plan

    if sigmas is None:
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps).tolist()
    else:
        num_inference_steps = len(sigmas)
    if scheduler.config.get("use_flow_sigmas", False):  # the pipeline drops its sigmas for these
        sigmas = None
    mu = flux_mu(scheduler.config, (latent_height // 2) * (latent_width // 2))
    return pipeline_plan(scheduler, num_inference_steps, mu=mu, sigmas=sigmas)


def pack_condition(embeds: torch.Tensor, pooled: torch.Tensor, guidance: float | torch.Tensor | None = None,
                   width: int | None = None) -> torch.Tensor:
    """Prompt embeddings (N, L, D), pooled embeddings (N, P) and the embedded guidance scale
    (a number or (N,); None: none, for FLUX.1-schnell) → the condition (N, L + 1, W),
    ``W = width`` or ``max(D, P + 1)``: the last row is ``[pooled, guidance, 0, …]``.

    L2CError when the shapes disagree or do not fit ``width``.
    """
    if embeds.dim() != 3 or pooled.dim() != 2 or pooled.shape[0] != embeds.shape[0]:
        raise L2CError(f"prompt embeddings must be (N, L, D) with pooled (N, P), got {tuple(embeds.shape)} "
                       f"and {tuple(pooled.shape)}")
    n, d, p = int(embeds.shape[0]), int(embeds.shape[-1]), int(pooled.shape[-1])
    w = max(d, p + 1) if width is None else width
    if w < max(d, p + 1):
        raise L2CError(f"a condition of width {w} cannot hold embeddings of width {d} and pooled of width {p} "
                       "plus the guidance scale")
    scale = torch.zeros(n) if guidance is None else torch.as_tensor(guidance, dtype=torch.float32).expand(n)
    last = torch.cat([pooled.to(embeds.dtype), scale.to(embeds.device, embeds.dtype)[:, None]], dim=1)  # (N, P + 1)
    rows = nn.functional.pad(embeds, (0, w - d))  # (N, L, W)
    return torch.cat([rows, nn.functional.pad(last, (0, w - p - 1)).unsqueeze(1)], dim=1)  # (N, L + 1, W)


class DiffusersFlux(PromptAdapter):
    """v(x, t, y) of a diffusers ``FluxTransformer2DModel``; the model is ``self.transformer``.

    ``text_len``: the T5 prompt length L the sampler is made for (the pipeline's
    ``max_sequence_length``: 512 for dev, 256 for schnell). ``height`` / ``width``: the image size
    in pixels (default: 1024), square, a multiple of ``2 · vae_scale_factor``.
    """

    l2c_capture = "export"
    # the tensors a prompt condition packs (pack_condition), as the pipeline names them: prompt, negative
    condition_keys = (("prompt_embeds", "pooled_prompt_embeds"),
                      ("negative_prompt_embeds", "negative_pooled_prompt_embeds"))
    # the guidance scale a FLUX.1-dev condition embeds when packed here (pack_condition, prompt_condition)
    guidance_scale: float = DEFAULT_GUIDANCE

    def __init__(self, transformer: FluxTransformer2DModel, text_len: int = 512, height: int = 1024,
                 width: int | None = None, vae_scale_factor: int = 8) -> None:
        super().__init__()
        from diffusers import FluxPipeline

        if not isinstance(transformer, FluxTransformer2DModel):
            raise L2CError(f"DiffusersFlux wraps a FluxTransformer2DModel, got {type(transformer).__name__}")
        width = width or height
        patch = 2 * vae_scale_factor
        if height != width or height % patch or height < patch:
            raise L2CError(f"only square images whose side is a positive multiple of {patch} are supported, got "
                           f"{height}×{width}")
        if isinstance(text_len, bool) or not isinstance(text_len, int) or text_len < 1:
            raise L2CError(f"text_len must be a positive integer, got {text_len!r}")
        config = transformer.config
        self.transformer = transformer
        self.in_channels = int(config.in_channels) // 4  # C of the unpacked latents
        self.input_size = height // vae_scale_factor  # H = W of the unpacked latents
        self.height, self.width, self.vae_scale_factor = height, width, vae_scale_factor
        self.text_len = text_len
        self.text_dim = int(config.joint_attention_dim)
        self.pooled_dim = int(config.pooled_projection_dim)
        self.guidance_embeds = bool(config.guidance_embeds)
        self.cond_width = max(self.text_dim, self.pooled_dim + 1)
        side = self.input_size // 2
        dtype = next(transformer.parameters()).dtype
        self.register_buffer("img_ids", FluxPipeline._prepare_latent_image_ids(1, side, side, "cpu", dtype),
                             persistent=False)  # (H·W/4, 3)
        self.register_buffer("txt_ids", torch.zeros(text_len, 3, dtype=dtype), persistent=False)  # (L, 3)

    @classmethod
    def from_record(cls, transformer: FluxTransformer2DModel, record: dict) -> DiffusersFlux:
        """The adapter for an artifact's model record: its ``flux`` entry gives the prompt length and
        image size; L2CError when it lacks them."""
        return cls(transformer, **prompt_record(record, "flux", "FLUX"))

    def record(self) -> dict:
        """What an artifact needs to rebuild this adapter (:meth:`from_record`)."""
        return {"text_len": self.text_len, "height": self.height, "width": self.width,
                "vae_scale_factor": self.vae_scale_factor}

    @classmethod
    def pipeline_text_len(cls, folder: str | os.PathLike[str]) -> int:
        """The T5 prompt length a ``FluxPipeline`` encodes to by default (its ``max_sequence_length``
        default, 512); the class default (512) for a model folder. ``folder`` is not read: FLUX's
        prompt length is the pipeline's argument, not part of any config."""
        del folder
        from l2c_compile.diffusers.quiet import quiet

        with quiet():  # importing the pipeline imports transformers, which has advice to print
            from diffusers import FluxPipeline
        return int(inspect.signature(FluxPipeline.__call__).parameters["max_sequence_length"].default)

    def pack_condition(self, embeds: torch.Tensor, pooled: torch.Tensor, width: int | None = None) -> torch.Tensor:
        """:func:`pack_condition` with this model's guidance: :attr:`guidance_scale` for a
        guidance-distilled model (dev), none for schnell → (N, L + 1, W)."""
        return pack_condition(embeds, pooled, self.guidance_scale if self.guidance_embeds else None,
                              width or self.cond_width)

    def prompt_condition(self, pipe: Any, prompts: list[str], *, negative_prompt: str = "", cfg: bool,
                         device: torch.device | str = "cpu") -> torch.Tensor:
        """``prompts`` encoded by ``pipe`` for this adapter's prompt length and guidance
        (:func:`prompt_condition`)."""
        return prompt_condition(pipe, prompts, negative_prompt=negative_prompt, cfg=cfg, text_len=self.text_len,
                                guidance=self.guidance_scale if self.guidance_embeds else None, device=device)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) latents; t: (N,) timesteps σ·1000; y: (N, L + 1, W) packed prompt →
        (N, C, H, W) velocity."""
        from diffusers import FluxPipeline

        n, c, h, w = x.shape
        embeds = y[:, :-1, : self.text_dim]  # (N, L, D)
        pooled = y[:, -1, : self.pooled_dim]  # (N, P)
        guidance = y[:, -1, self.pooled_dim] if self.guidance_embeds else None  # (N,)
        packed = FluxPipeline._pack_latents(x, n, c, h, w)  # (N, H·W/4, 4C)
        out = self.transformer(hidden_states=packed, timestep=t / 1000, guidance=guidance, pooled_projections=pooled,
                               encoder_hidden_states=embeds, txt_ids=self.txt_ids, img_ids=self.img_ids,
                               return_dict=False)[0]  # (N, H·W/4, 4C)
        return FluxPipeline._unpack_latents(out, self.height, self.width, self.vae_scale_factor)  # (N, C, H, W)

    def transformer_blocks(self) -> list[nn.Module]:
        """The double-stream then the single-stream blocks, in execution order."""
        return [*self.transformer.transformer_blocks, *self.transformer.single_transformer_blocks]

    def example_condition(self, n: int, cfg: bool, device: torch.device | str) -> torch.Tensor:
        """A zero prompt, (n, [2,] L + 1, W), to capture a step with."""
        dtype = next(self.transformer.parameters()).dtype
        y = torch.zeros(n, self.text_len + 1, self.cond_width, dtype=dtype, device=device)
        return torch.stack([y, y], dim=1) if cfg else y


def check_prompt_length(pipe: Any, prompts: str | list[str] | None, max_sequence_length: int,
                        what: str = "prompt") -> None:
    """L2CError when a prompt has more T5 tokens (its end token included) than
    ``max_sequence_length``: ``FluxPipeline`` would cut it off with only a logged warning
    (``_get_t5_prompt_embeds``); a compiled sampler is made for one prompt length, so the cut is
    refused here instead. Nothing is checked without ``pipe.tokenizer_2`` or prompts."""
    tokenizer = getattr(pipe, "tokenizer_2", None)
    if tokenizer is None or prompts is None:
        return
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    for i, text in enumerate(texts):
        n = len(tokenizer(text, truncation=False).input_ids)
        if n > max_sequence_length:
            label = what if len(texts) == 1 else f"{what} {i}"
            raise L2CError(f"{label} has {n} T5 tokens, more than max_sequence_length={max_sequence_length}; "
                           "shorten it or raise max_sequence_length (at most 512)")


@torch.no_grad()
def prompt_condition(pipe: Any, prompts: list[str], *, negative_prompt: str = "", cfg: bool, text_len: int,
                     guidance: float | None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Encode ``prompts`` with a ``FluxPipeline``'s own tokenizers, CLIP (pooled) and T5 encoders
    (``pipe.encode_prompt`` with ``max_sequence_length=text_len``) into the condition the compiled
    sampler takes, embedding ``guidance`` (None for schnell): (N, 2, L + 1, W) with ``cfg`` (the
    negative prompt second, once per prompt), else (N, L + 1, W). L2CError when the pipeline has
    no text encoders, no prompt is given, ``text_len`` is not 1–512, or a prompt is longer than
    ``text_len`` T5 tokens."""
    if any(getattr(pipe, k, None) is None for k in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")):
        raise L2CError(f"this {type(pipe).__name__} has no text encoders and tokenizers to encode prompts with")
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise L2CError("pass at least one non-empty prompt")
    if not 1 <= text_len <= 512:
        raise L2CError(f"a FLUX prompt has 1 to 512 T5 tokens, this model is made for {text_len}")
    check_prompt_length(pipe, list(prompts), text_len)
    device_ = pipe._execution_device
    pe, pooled, _ = pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=device_,
                                       max_sequence_length=text_len)
    y = pack_condition(pe, pooled, guidance)  # (N, L + 1, W)
    if cfg:
        check_prompt_length(pipe, negative_prompt, text_len, "negative prompt")
        ne, neg_pooled, _ = pipe.encode_prompt(prompt=[negative_prompt] * len(prompts), prompt_2=None,
                                               device=device_, max_sequence_length=text_len)
        y = torch.stack([y, pack_condition(ne, neg_pooled, guidance, width=y.shape[-1])], dim=1)  # (N, 2, L + 1, W)
    return y.to(device)
