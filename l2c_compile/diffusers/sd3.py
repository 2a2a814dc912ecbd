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

import torch
from diffusers import SD3Transformer2DModel
from torch import nn

from l2c_compile.diffusers.records import prompt_record
from l2c_compile.errors import L2CError


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


class DiffusersSD3(nn.Module):
    """v(x, t, y) of a diffusers ``SD3Transformer2DModel``; the model is ``self.transformer``.

    ``text_len``: the joint prompt length L the sampler is made for (77 CLIP tokens + the
    pipeline's ``max_sequence_length`` T5 tokens: 77 + 256 = 333 by default). ``height`` /
    ``width``: the image size in pixels (default: the model's ``sample_size · 8``); square only.
    """

    l2c_capture = "export"

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

    @classmethod
    def from_record(cls, transformer: SD3Transformer2DModel, record: dict) -> DiffusersSD3:
        """The adapter for an artifact's model record: its ``sd3`` entry gives the prompt length and
        image size; L2CError when it lacks them."""
        return cls(transformer, **prompt_record(record, "sd3", "SD3"))

    def record(self) -> dict:
        """What an artifact needs to rebuild this adapter (:meth:`from_record`)."""
        return {"text_len": self.text_len, "height": self.height, "width": self.width}

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

    def cfg_conditions(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt, negative prompt), each (N, L + 1, W), of a CFG condition (N, 2, L + 1, W)."""
        return y[:, 0], y[:, 1]

    def example_condition(self, n: int, cfg: bool, device: torch.device | str) -> torch.Tensor:
        """A zero prompt, (n, [2,] L + 1, W), to capture a step with."""
        dtype = next(self.transformer.parameters()).dtype
        y = torch.zeros(n, self.text_len + 1, self.cond_width, dtype=dtype, device=device)
        return torch.stack([y, y], dim=1) if cfg else y

    null_condition: torch.Tensor | None = None  # (L + 1, W): the empty prompt, for training's dropout

    def set_null_condition(self, null: torch.Tensor | None) -> None:
        """The condition CFG dropout puts in during router training (the encoded empty prompt,
        (L + 1, W)); None: no dropout possible."""
        self.null_condition = None if null is None else null.detach().clone()

    def drop_labels(self, y: torch.Tensor, drop_mask: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Training-time CFG dropout: rows of ``y`` (N, L + 1, W) in ``drop_mask`` (N,) bool (None:
        drawn with probability 0.1) become the null condition. L2CError without one."""
        if self.null_condition is None:
            raise L2CError("label dropout needs the empty prompt's condition (a negative prompt), which was not given")
        if drop_mask is None:
            drop_mask = torch.rand(y.shape[0], generator=generator) < 0.1
        null = self.null_condition.to(y.device, y.dtype).expand_as(y)
        return torch.where(drop_mask.to(y.device)[:, None, None], null, y)

    def eps(self, out: torch.Tensor) -> torch.Tensor:
        """The velocity prediction: the whole output (N, C, H, W)."""
        return out

    def guide(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
        """The pipeline's CFG ``u + s · (c − u)`` → (N, C, H, W)."""
        return uncond + scale * (cond - uncond)
