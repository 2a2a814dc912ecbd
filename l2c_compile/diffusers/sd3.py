"""Adapter: diffusers' ``SD3Transformer2DModel`` (Stable Diffusion 3 / 3.5, MMDiT) as the compiler
sees a model.

The transformer is held unmodified at ``self.transformer``; its cacheable sublayers are declared by
module path in the ``sd3`` family (``families/builtin.py``): per block the joint attention
``transformer_blocks.{i}.attn`` with two cached outputs (the image stream's and the text
stream's, each gated by its own adaLN-Zero gate and added to its own stream), SD3.5's second
image self-attention ``attn2`` in the blocks listed in ``dual_attention_layers``, the image MLP
``ff`` and the text MLP ``ff_context``. The last block is ``context_pre_only``: it has no text MLP
and its attention's text output feeds nothing, so neither is cached and the compiled step does not
compute them. fx cannot trace the model (its forward branches on values), so it asks for the
``torch.export`` capture.

The condition ``y`` packs what ``StableDiffusion3Pipeline.encode_prompt`` returns into one tensor,
so the compiled step keeps its ``(x, t, y, cfg_scale)`` signature: the joint prompt embeddings
``(L, D)`` (CLIP-L/G and T5 tokens) followed by one row holding the pooled CLIP embedding
``(P,)``, zero-padded to ``W = max(D, P)``: ``(N, L + 1, W)``. With classifier-free guidance
the rows carry the prompt and the negative prompt, ``(N, 2, L + 1, W)`` (:func:`pack_condition`),
and guidance is the pipeline's ``u + s · (c − u)`` on the velocity. The model is a flow-matching
velocity predictor and takes the scheduler's timestep ``σ · 1000``. Sources: diffusers
``StableDiffusion3Pipeline.__call__``, ``SD3Transformer2DModel.forward``,
``JointTransformerBlock.forward``.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import SD3Transformer2DModel
from torch import nn

from l2c_compile.diffusers.prompted import PromptAdapter
from l2c_compile.diffusers.records import prompt_record
from l2c_compile.errors import L2CError
from l2c_compile.inputs import read_json

MAX_CLIP_LEN = 4096  # a tokenizer config's model_max_length above this is no CLIP length (HF writes 1e30)


def pack_condition(embeds: torch.Tensor, pooled: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """Prompt embeddings (N, L, D) and pooled embeddings (N, P) → the condition (N, L + 1, W),
    ``W = width`` or ``max(D, P)``: the pooled vector is the last row, zero-padded.

    L2CError when the shapes disagree or do not fit ``width``.
    """
    if embeds.dim() != 3 or pooled.dim() != 2 or pooled.shape[0] != embeds.shape[0]:
        raise L2CError(f"prompt embeddings must be (N, L, D) with pooled (N, P), got {tuple(embeds.shape)} "
                       f"and {tuple(pooled.shape)}")
    d, p = int(embeds.shape[-1]), int(pooled.shape[-1])
    w = max(d, p) if width is None else width
    if w < max(d, p):
        raise L2CError(f"a condition of width {w} cannot hold embeddings of width {d} and pooled of width {p}")
    rows = nn.functional.pad(embeds, (0, w - d))  # (N, L, W)
    last = nn.functional.pad(pooled.to(embeds.dtype), (0, w - p)).unsqueeze(1)  # (N, 1, W)
    return torch.cat([rows, last], dim=1)  # (N, L + 1, W)


def shift_mu(scheduler_config: Any, patch_size: int, latent_height: int, latent_width: int,
             mu: float | None = None) -> float | None:
    """The μ ``StableDiffusion3Pipeline`` hands its scheduler (``scheduler_config``: the scheduler's
    config) for latents of ``latent_height`` × ``latent_width``: None when the scheduler shifts
    statically (its ``shift``; a given ``mu`` changes nothing then), else ``mu`` or diffusers'
    ``calculate_shift`` of the latent patch count with the scheduler's ``base_image_seq_len``,
    ``max_image_seq_len``, ``base_shift``, ``max_shift`` (the pipeline's defaults where the
    config lacks them). Source: ``StableDiffusion3Pipeline.__call__``, step 5."""
    if not scheduler_config.get("use_dynamic_shifting", None):
        return None
    if mu is not None:
        return float(mu)
    from l2c_compile.diffusers.quiet import quiet

    with quiet():  # importing the pipeline imports transformers, which has advice to print
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
            calculate_shift,
        )

    seq_len = (latent_height // patch_size) * (latent_width // patch_size)
    return float(calculate_shift(seq_len, scheduler_config.get("base_image_seq_len", 256),
                                 scheduler_config.get("max_image_seq_len", 4096),
                                 scheduler_config.get("base_shift", 0.5), scheduler_config.get("max_shift", 1.16)))


class DiffusersSD3(PromptAdapter):
    """v(x, t, y) of a diffusers ``SD3Transformer2DModel``; the model is ``self.transformer``.

    ``text_len``: the joint prompt length L the sampler is made for (77 CLIP tokens + the
    pipeline's ``max_sequence_length`` T5 tokens: 77 + 256 = 333 by default). ``height`` /
    ``width``: the image size in pixels (default: the model's ``sample_size · 8``); square only.
    """

    l2c_capture = "export"
    # the tensors a prompt condition packs (pack_condition), as the pipeline names them: prompt, negative
    condition_keys = (("prompt_embeds", "pooled_prompt_embeds"),
                      ("negative_prompt_embeds", "negative_pooled_prompt_embeds"))
    pack_condition = staticmethod(pack_condition)

    def __init__(self, transformer: SD3Transformer2DModel, text_len: int = 333, height: int | None = None,
                 width: int | None = None, vae_scale_factor: int = 8) -> None:
        super().__init__()
        if not isinstance(transformer, SD3Transformer2DModel):
            raise L2CError(f"DiffusersSD3 wraps an SD3Transformer2DModel, got {type(transformer).__name__}")
        config = transformer.config
        side = int(config.sample_size) * vae_scale_factor
        height, width = height or side, width or side
        patch = int(config.patch_size) * vae_scale_factor
        if height != width or height % patch:
            raise L2CError(f"only square images whose side is a multiple of {patch} are supported, got "
                           f"{height}×{width}")
        if isinstance(text_len, bool) or not isinstance(text_len, int) or text_len < 1:
            raise L2CError(f"text_len must be a positive integer, got {text_len!r}")
        self.transformer = transformer
        self.in_channels = int(config.in_channels)
        self.input_size = height // vae_scale_factor
        self.text_len = text_len
        self.text_dim = int(config.joint_attention_dim)
        self.pooled_dim = int(config.pooled_projection_dim)
        self.cond_width = max(self.text_dim, self.pooled_dim)
        self.height, self.width = height, width
        self.vae_scale_factor = vae_scale_factor

    @classmethod
    def from_record(cls, transformer: SD3Transformer2DModel, record: dict) -> DiffusersSD3:
        """The adapter for an artifact's model record: its ``sd3`` entry gives the prompt length and
        image size; L2CError when it lacks them."""
        return cls(transformer, **prompt_record(record, "sd3", "SD3"))

    @classmethod
    def pipeline_text_len(cls, folder: str | os.PathLike[str]) -> int:
        """The joint prompt length a ``StableDiffusion3Pipeline`` saved in ``folder`` encodes to by
        default: its CLIP tokenizer's ``model_max_length`` (77 without a tokenizer, as the pipeline)
        plus the pipeline's ``max_sequence_length`` default (256 T5 tokens); the class default (333)
        for a model folder. Read from the folder's JSON files only."""
        root = Path(folder)
        if not (root / "model_index.json").is_file():
            return int(inspect.signature(cls).parameters["text_len"].default)
        from l2c_compile.diffusers.quiet import quiet

        with quiet():  # importing the pipeline imports transformers, which has advice to print
            from diffusers import StableDiffusion3Pipeline
        clip = 77  # StableDiffusion3Pipeline.tokenizer_max_length without a tokenizer
        if (root / "tokenizer" / "tokenizer_config.json").is_file():
            config = read_json(root / "tokenizer" / "tokenizer_config.json", "tokenizer config")
            length = config.get("model_max_length") if isinstance(config, dict) else None
            if isinstance(length, int) and not isinstance(length, bool) and 0 < length <= MAX_CLIP_LEN:
                clip = length
        t5 = inspect.signature(StableDiffusion3Pipeline.__call__).parameters["max_sequence_length"].default
        return clip + int(t5)

    def prompt_condition(self, pipe: Any, prompts: list[str], *, negative_prompt: str = "", cfg: bool,
                         device: torch.device | str = "cpu") -> torch.Tensor:
        """``prompts`` encoded by ``pipe`` for this adapter's prompt length (:func:`prompt_condition`)."""
        return prompt_condition(pipe, prompts, negative_prompt=negative_prompt, cfg=cfg, text_len=self.text_len,
                                device=device)

    def record(self) -> dict:
        """What an artifact needs to rebuild this adapter (:meth:`from_record`)."""
        return {"text_len": self.text_len, "height": self.height, "width": self.width,
                "vae_scale_factor": self.vae_scale_factor}

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) latents; t: (N,) timesteps σ·1000; y: (N, L + 1, W) packed prompt →
        (N, C, H, W) velocity."""
        embeds = y[:, :-1, : self.text_dim]  # (N, L, D)
        pooled = y[:, -1, : self.pooled_dim]  # (N, P)
        return self.transformer(hidden_states=x, encoder_hidden_states=embeds, pooled_projections=pooled,
                                timestep=t, return_dict=False)[0]

    def transformer_blocks(self) -> list[nn.Module]:
        """The joint transformer blocks in execution order."""
        return list(self.transformer.transformer_blocks)

    def example_condition(self, n: int, cfg: bool, device: torch.device | str) -> torch.Tensor:
        """A zero prompt, (n, [2,] L + 1, W), to capture a step with."""
        dtype = next(self.transformer.parameters()).dtype
        y = torch.zeros(n, self.text_len + 1, self.cond_width, dtype=dtype, device=device)
        return torch.stack([y, y], dim=1) if cfg else y


@torch.no_grad()
def prompt_condition(pipe: Any, prompts: list[str], *, negative_prompt: str = "", cfg: bool, text_len: int,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Encode ``prompts`` with a ``StableDiffusion3Pipeline``'s own tokenizers and CLIP-L/G + T5
    encoders (``pipe.encode_prompt``, ``max_sequence_length`` = ``text_len`` minus its CLIP tokens)
    into the condition the compiled sampler takes: (N, 2, L + 1, W) with ``cfg`` (the negative
    prompt second), else (N, L + 1, W). L2CError when the pipeline has no text encoders, no prompt
    is given, or ``text_len`` does not leave 1–512 T5 tokens."""
    if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
        raise L2CError(f"this {type(pipe).__name__} has no text encoder and tokenizer to encode prompts with")
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise L2CError("pass at least one non-empty prompt")
    t5_len = text_len - int(pipe.tokenizer_max_length)
    if not 1 <= t5_len <= 512:
        raise L2CError(f"a joint prompt of {text_len} tokens leaves {t5_len} T5 tokens after the pipeline's "
                       f"{pipe.tokenizer_max_length} CLIP tokens (1 to 512 allowed)")
    pe, ne, pooled, neg_pooled = pipe.encode_prompt(
        prompt=list(prompts), prompt_2=None, prompt_3=None, negative_prompt=negative_prompt,
        do_classifier_free_guidance=cfg, device=pipe._execution_device, max_sequence_length=t5_len)
    y = pack_condition(pe, pooled)  # (N, L + 1, W)
    if cfg:
        y = torch.stack([y, pack_condition(ne, neg_pooled, width=y.shape[-1])], dim=1)  # (N, 2, L + 1, W)
    return y.to(device)
