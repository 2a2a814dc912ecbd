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
``(N, 2, L + 1, W)`` conditions and combines ``u + s · (c − u)``. Sources: diffusers
``FluxPipeline.__call__``, ``FluxTransformer2DModel.forward``, ``FluxSingleTransformerBlock.forward``.
"""

from __future__ import annotations

import torch
from diffusers import FluxTransformer2DModel
from torch import nn

from l2c_compile.diffusers.records import prompt_record
from l2c_compile.errors import L2CError


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


class DiffusersFlux(nn.Module):
    """v(x, t, y) of a diffusers ``FluxTransformer2DModel``; the model is ``self.transformer``.

    ``text_len``: the T5 prompt length L the sampler is made for (the pipeline's
    ``max_sequence_length``: 512 for dev, 256 for schnell). ``height`` / ``width``: the image size
    in pixels (default: 1024), square, a multiple of ``2 · vae_scale_factor``.
    """

    l2c_capture = "export"

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

    def cfg_conditions(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt, negative prompt), each (N, L + 1, W), of a true-CFG condition (N, 2, L + 1, W)."""
        return y[:, 0], y[:, 1]

    def example_condition(self, n: int, cfg: bool, device: torch.device | str) -> torch.Tensor:
        """A zero prompt, (n, [2,] L + 1, W), to capture a step with."""
        dtype = next(self.transformer.parameters()).dtype
        y = torch.zeros(n, self.text_len + 1, self.cond_width, dtype=dtype, device=device)
        return torch.stack([y, y], dim=1) if cfg else y

    def eps(self, out: torch.Tensor) -> torch.Tensor:
        """The velocity prediction: the whole output (N, C, H, W)."""
        return out

    def guide(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
        """The pipeline's true CFG ``u + s · (c − u)`` → (N, C, H, W)."""
        return uncond + scale * (cond - uncond)
