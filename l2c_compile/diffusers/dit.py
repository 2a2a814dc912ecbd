"""Adapter: diffusers' ``DiTTransformer2DModel`` (class-conditional DiT) as the compiler sees a DiT.

The transformer is held unmodified at ``self.transformer``; its cacheable sublayers are declared by
module path (``transformer_blocks.{i}.attn1``, ``transformer_blocks.{i}.ff``) in the
``diffusers-dit`` family (``families/builtin.py``). fx cannot trace it
(its forward branches on values), so it asks for the ``torch.export`` capture.

Guidance follows ``DiTPipeline``: ``uncond + s · (cond − uncond)`` on the first ``in_channels``
output channels (the learned-σ channels are dropped), and the null class is the label embedding's
extra row (1000 for the ImageNet models).
"""

from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel
from torch import nn

from l2c_compile.errors import L2CError


class DiffusersDiT(nn.Module):
    """ε(x, t, y) of a diffusers ``DiTTransformer2DModel``; the model itself is ``self.transformer``."""

    l2c_capture = "export"

    def __init__(self, transformer: DiTTransformer2DModel) -> None:
        super().__init__()
        if not isinstance(transformer, DiTTransformer2DModel):
            raise L2CError(f"DiffusersDiT wraps a DiTTransformer2DModel, got {type(transformer).__name__}")
        config = transformer.config
        if config.norm_type != "ada_norm_zero" or not config.num_embeds_ada_norm:
            raise L2CError(f"DiTTransformer2DModel with norm_type {config.norm_type!r} is not class-conditional "
                           "adaLN-Zero; only that form is supported")
        self.transformer = transformer
        self.in_channels = int(config.in_channels)
        self.out_channels = int(config.out_channels or config.in_channels)
        self.input_size = int(config.sample_size)
        self.num_classes = int(config.num_embeds_ada_norm)
        self.null_class = self.num_classes  # the label embedding's extra (CFG) row

    @classmethod
    def from_record(cls, transformer: DiTTransformer2DModel, record: dict) -> DiffusersDiT:
        """The adapter around ``transformer`` for an artifact's model record (nothing more to read)."""
        return cls(transformer)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) latents; t: (N,) timesteps; y: (N,) labels → (N, C_out, H, W)."""
        return self.transformer(x, timestep=t, class_labels=y, return_dict=False)[0]

    def transformer_blocks(self) -> list[nn.Module]:
        """The transformer blocks in execution order."""
        return list(self.transformer.transformer_blocks)

    def eps(self, out: torch.Tensor) -> torch.Tensor:
        """ε from a raw output (N, C_out, H, W): its first ``in_channels`` channels."""
        return out[:, : self.in_channels]

    def guide(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
        """DiTPipeline's CFG on the ε channels: ``u + s · (c − u)`` → (N, C, H, W)."""
        c = self.in_channels
        u = uncond[:, :c]
        return u + scale * (cond[:, :c] - u)

    def drop_labels(self, y: torch.Tensor, drop_mask: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Training-time CFG label dropout (router training): dropped labels become the null class.

        ``drop_mask`` (N,) bool; None draws it with the label embedder's dropout probability.
        """
        if drop_mask is None:
            prob = self.transformer.transformer_blocks[0].norm1.emb.class_embedder.dropout_prob
            drop_mask = torch.rand(y.shape[0], generator=generator, device=y.device) < prob
        return torch.where(drop_mask.to(y.device), torch.full_like(y, self.null_class), y)

