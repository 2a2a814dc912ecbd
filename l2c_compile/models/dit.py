"""DiT: Diffusion Transformers with adaLN-Zero (Peebles & Xie, facebookresearch/DiT ``models.py``).

State-dict keys, shapes, initialisation and numerics follow the official code, so the released
``DiT-XL-2-256x256.pt`` / ``DiT-XL-2-512x512.pt`` load with ``strict=True`` (spec §7.1). Two
deliberate departures keep the model traceable by ``torch.fx.symbolic_trace``:

- spatial sizes come from config constants, never from ``int(x.shape[...])``;
- ``forward`` never drops labels; training calls :meth:`DiT.drop_labels` explicitly.

The model knows nothing about caching.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: ``x * (1 + scale) + shift`` with per-sample shift/scale."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos | sin]`` of (possibly fractional) timesteps: (N,) -> (N, dim)."""
    half = dim // 2
    # Built on t's device each call (not a buffer) so a dtype cast of the model cannot round the
    # frequencies; the float32 arithmetic order matches the official code bit for bit.
    idx = torch.arange(0, half, dtype=torch.float32, device=t.device)  # (half,)
    freqs = torch.exp(-math.log(max_period) * idx / half)  # (half,)
    args = t[:, None].float() * freqs[None]  # (N, half)
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, 2*half)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


#################################################################################
#                 Embedding layers for timesteps, labels and patches            #
#################################################################################


class TimestepEmbedder(nn.Module):
    """Embeds scalar timesteps into vectors: sinusoidal features, then Linear–SiLU–Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (N,) float timesteps -> (N, D)."""
        t_freq = timestep_embedding(t, self.frequency_embedding_size)  # (N, F) float32
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))  # (N, D)


class LabelEmbedder(nn.Module):
    """Embeds class labels; row ``num_classes`` is the CFG null class when dropout is enabled."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        use_cfg_embedding = int(dropout_prob > 0)
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(
        self,
        labels: torch.Tensor,
        drop_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Replace labels by the null class where ``drop_mask`` (default: Bernoulli(p)) is set."""
        if drop_mask is None:
            u = torch.rand(labels.shape[0], generator=generator, device=labels.device)
            drop_mask = u < self.dropout_prob
        return torch.where(drop_mask.bool(), torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """labels: (N,) int64 -> (N, D); never drops (training drops explicitly)."""
        return self.embedding_table(labels)


class PatchEmbed(nn.Module):
    """Image to patch tokens with a strided Conv2d (timm layout: key ``proj``)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> (N, T, D)."""
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, T, D)


#################################################################################
#                                 Core DiT model                                #
#################################################################################


class Attention(nn.Module):
    """Multi-head self-attention with a fused, biased qkv projection (timm layout)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, T, D) -> (N, T, D)."""
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim))  # (N, T, 3, H, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (N, H, T, d)
        x = F.scaled_dot_product_attention(q, k, v)  # (N, H, T, d)
        x = x.transpose(1, 2).flatten(2)  # (N, T, D)
        return self.proj(x)  # (N, T, D)


class Mlp(nn.Module):
    """Transformer feed-forward network: fc1, activation, fc2 (timm layout)."""

    def __init__(self, in_features: int, hidden_features: int, approximate: str = "none") -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate=approximate)  # DiT: "tanh"; U-ViT: exact
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, T, D) -> (N, T, D)."""
        return self.fc2(self.act(self.fc1(x)))  # (N, T, D)


class DiTBlock(nn.Module):
    """A DiT block with adaptive layer norm zero (adaLN-Zero) conditioning."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), approximate="tanh")
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: (N, T, D) tokens, c: (N, D) conditioning -> (N, T, D)."""
        # fmt: off
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (N, T, D)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (N, T, D)
        # fmt: on
        return x


class FinalLayer(nn.Module):
    """The final adaLN-modulated linear projection to patch pixels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: (N, T, D), c: (N, D) -> (N, T, p*p*C_out)."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 × (N, D)
        x = modulate(self.norm_final(x), shift, scale)  # (N, T, D)
        return self.linear(x)  # (N, T, p*p*C_out)


class DiT(nn.Module):
    """Diffusion model with a Transformer backbone (class-conditional, adaLN-Zero)."""

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        cfg_channels: int | None = 3,
    ) -> None:
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input size {input_size} is not divisible by patch size {patch_size}")
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.learn_sigma = learn_sigma
        self.num_classes = num_classes
        self.null_class = num_classes  # the extra embedding row (needs class_dropout_prob > 0)
        self.cfg_channels = cfg_channels  # ε channels guided by CFG; None = all of them
        self.model_name = "DiT"  # set to the registry name by build_model; used in messages

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.grid_size = input_size // patch_size
        self.num_patches = self.x_embedder.num_patches
        # Fixed sin-cos table, stored in the official state dict but never trained.
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.num_patches, hidden_size), requires_grad=False
        )
        self.blocks = nn.ModuleList(
            [DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The official initialisation: xavier linears, sin-cos pos_embed, zeroed adaLN and output."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        pos = sincos_pos_embed_2d(self.pos_embed.shape[-1], self.grid_size)
        self.pos_embed.data.copy_(torch.from_numpy(pos).float().unsqueeze(0))
        # Patch embedding is initialised like a Linear (its kernel viewed as a matrix).
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: each block starts as the identity, the output layer as zero.
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p*p*C) -> (N, C, H, W)."""
        c, p, h = self.out_channels, self.patch_size, self.grid_size
        x = x.reshape(-1, h, h, p, p, c)  # (N, h, w, p, q, C)
        x = torch.einsum("nhwpqc->nchpwq", x)  # (N, C, h, p, w, q)
        return x.reshape(-1, c, h * p, h * p)  # (N, C, H, W)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) latents, t: (N,) float model timesteps, y: (N,) labels -> (N, C_out, H, W)."""
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        t = self.t_embedder(t)  # (N, D)
        y = self.y_embedder(y)  # (N, D)
        c = t + y  # (N, D)
        for block in self.blocks:
            x = block(x, c)  # (N, T, D)
        x = self.final_layer(x, c)  # (N, T, p*p*C_out)
        return self.unpatchify(x)  # (N, C_out, H, W)

    def drop_labels(
        self,
        y: torch.Tensor,
        drop_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Training-time CFG label dropout: labels with the null class where dropped."""
        return self.y_embedder.token_drop(y, drop_mask, generator)

    def transformer_blocks(self) -> list[nn.Module]:
        """The cacheable blocks in execution order (each has ``.attn`` and ``.mlp``)."""
        return list(self.blocks)

    def eps(self, out: torch.Tensor) -> torch.Tensor:
        """The ε part of an output: (N, C_out, H, W) -> (N, C, H, W)."""
        return out[:, : self.in_channels]

    def guide(
        self, cond_out: torch.Tensor, uncond_out: torch.Tensor, scale: float | torch.Tensor
    ) -> torch.Tensor:
        """CFG ``uncond + s (cond - uncond)`` on the first ``cfg_channels`` ε channels, rest from cond."""
        k = (
            self.in_channels
            if self.cfg_channels is None
            else min(self.cfg_channels, self.in_channels)
        )
        cond, uncond = cond_out[:, :k], uncond_out[:, :k]  # (N, k, H, W)
        guided = uncond + scale * (cond - uncond)  # (N, k, H, W)
        if k == self.in_channels:
            return guided
        return torch.cat([guided, cond_out[:, k : self.in_channels]], dim=1)  # (N, C, H, W)

    def forward_with_cfg(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float
    ) -> torch.Tensor:
        """Official batched CFG: x holds [half, half], y holds [labels, null]; -> (N, C_out, H, W)."""
        half = x[: len(x) // 2]
        combined = torch.cat([half, half], dim=0)  # (N, C, H, W)
        model_out = self.forward(combined, t, y)  # (N, C_out, H, W)
        k = self.in_channels if self.cfg_channels is None else self.cfg_channels
        eps, rest = model_out[:, :k], model_out[:, k:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)  # (N/2, k, H, W)
        eps = torch.cat([half_eps, half_eps], dim=0)  # (N, k, H, W)
        return torch.cat([eps, rest], dim=1)  # (N, C_out, H, W)


#################################################################################
#                      Sine/cosine positional embeddings                        #
#################################################################################


def sincos_pos_embed_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """[sin | cos] of positions ``pos`` (any shape, flattened) -> (M, embed_dim), float64."""
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {embed_dim}")
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega  # (D/2,)
    out = np.einsum("m,d->md", pos.reshape(-1), omega)  # (M, D/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, D)


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> np.ndarray:
    """The official 2-D sin-cos table (grid_size², embed_dim); meshgrid built w-first as upstream."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0)  # (2, g, g)
    emb_h = sincos_pos_embed_1d(embed_dim // 2, grid[0])  # (g², D/2)
    emb_w = sincos_pos_embed_1d(embed_dim // 2, grid[1])  # (g², D/2)
    return np.concatenate([emb_h, emb_w], axis=1)  # (g², D)
