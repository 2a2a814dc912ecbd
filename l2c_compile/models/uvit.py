"""U-ViT: a ViT backbone with long skip connections for diffusion (Bao et al., baofff/U-ViT).

Follows ``libs/uvit.py`` of the official repository: all inputs are tokens (``[label, time,
patches]``), a learned positional embedding, ``depth // 2`` in-blocks, a mid-block and ``depth // 2``
out-blocks, each out-block fusing the matching in-block output through ``skip_linear``. Keys and
shapes match the released ``imagenet256_uvit_huge.pth`` (spec §7.2).

As in the DiT file, ``forward`` takes spatial sizes from config constants so that
``torch.fx.symbolic_trace`` works, and the model knows nothing about caching. The network takes
the continuous time ``t * 1000`` (a float) as its timestep.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from l2c_compile.models.dit import Mlp, timestep_embedding


class Attention(nn.Module):
    """Multi-head self-attention; like upstream's flash mode, SDPA itself runs in float32."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D) -> (B, L, D)."""
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim))  # (B, L, 3, H, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).float().unbind(0)  # 3 × (B, H, L, d) float32
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, L, d)
        out = out.transpose(1, 2).flatten(2).type_as(x)  # (B, L, D)
        return self.proj(out)  # (B, L, D)


class Block(nn.Module):
    """Pre-norm transformer block; out-blocks first fuse the long skip with ``skip_linear``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        skip: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), approximate="none")
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, D), skip: (B, L, D) for out-blocks -> (B, L, D)."""
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # (B, L, D)
        x = x + self.attn(self.norm1(x))  # (B, L, D)
        x = x + self.mlp(self.norm2(x))  # (B, L, D)
        return x


class PatchEmbed(nn.Module):
    """Image to patch tokens with a strided Conv2d."""

    def __init__(self, patch_size: int, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, L, D)."""
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, L, D)


class UViT(nn.Module):
    """U-ViT: tokens ``[label, time, patches]``, long skips between shallow and deep blocks."""

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 2,
        in_chans: int = 4,
        embed_dim: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        mlp_time_embed: bool = False,
        num_classes: int = 1001,
        conv: bool = False,
        skip: bool = True,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"image size {img_size} is not divisible by patch size {patch_size}")
        self.input_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.in_channels = in_chans
        self.out_channels = in_chans
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_classes = num_classes  # includes the null class (the last label)
        self.null_class = num_classes - 1
        self.model_name = "UViT"  # set to the registry name by build_model; used in messages
        self.grid_size = img_size // patch_size
        num_patches = self.grid_size**2

        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.time_embed: nn.Module = (
            nn.Sequential(
                nn.Linear(embed_dim, 4 * embed_dim),
                nn.SiLU(),
                nn.Linear(4 * embed_dim, embed_dim),
            )
            if mlp_time_embed
            else nn.Identity()
        )
        if num_classes > 0:
            self.label_emb = nn.Embedding(num_classes, embed_dim)
            self.extras = 2
        else:
            self.extras = 1
        self.num_tokens = self.extras + num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, embed_dim))

        def make(with_skip: bool) -> Block:
            return Block(embed_dim, num_heads, mlp_ratio, qkv_bias, skip=with_skip)

        self.in_blocks = nn.ModuleList([make(False) for _ in range(depth // 2)])
        self.mid_block = make(False)
        self.out_blocks = nn.ModuleList([make(skip) for _ in range(depth // 2)])
        self.norm = nn.LayerNorm(embed_dim)
        self.patch_dim = patch_size**2 * in_chans
        self.decoder_pred = nn.Linear(embed_dim, self.patch_dim, bias=True)
        self.final_layer: nn.Module = (
            nn.Conv2d(in_chans, in_chans, 3, padding=1) if conv else nn.Identity()
        )
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The official initialisation: truncated-normal(0.02) linears and pos_embed, unit LayerNorms."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.LayerNorm):
                nn.init.constant_(m.bias, 0)
                nn.init.constant_(m.weight, 1.0)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, p*p*C) -> (B, C, H, W), patch features ordered (p1, p2, C) as upstream."""
        c, p, h = self.in_chans, self.patch_size, self.grid_size
        x = x.reshape(-1, h, h, p, p, c)  # (B, h, w, p1, p2, C)
        x = torch.einsum("nhwpqc->nchpwq", x)  # (B, C, h, p1, w, p2)
        return x.reshape(-1, c, h * p, h * p)  # (B, C, H, W)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, C, H, W), t: (B,) continuous time·1000, y: (B,) labels -> (B, C, H, W)."""
        x = self.patch_embed(x)  # (B, L, D)
        time_token = self.time_embed(timestep_embedding(t, self.embed_dim).type_as(x))  # (B, D)
        x = torch.cat((time_token.unsqueeze(dim=1), x), dim=1)  # (B, 1+L, D)
        if self.extras == 2:
            label_token = self.label_emb(y).unsqueeze(dim=1)  # (B, 1, D)
            x = torch.cat((label_token, x), dim=1)  # (B, 2+L, D)
        x = x + self.pos_embed  # (B, T, D)

        skips = []
        for blk in self.in_blocks:
            x = blk(x)  # (B, T, D)
            skips.append(x)
        x = self.mid_block(x)  # (B, T, D)
        for blk in self.out_blocks:
            x = blk(x, skips.pop())  # (B, T, D)

        x = self.norm(x)  # (B, T, D)
        x = self.decoder_pred(x)  # (B, T, p*p*C)
        x = x[:, self.extras :, :]  # (B, L, p*p*C)
        x = self.unpatchify(x)  # (B, C, H, W)
        return self.final_layer(x)  # (B, C, H, W)

    def drop_labels(
        self,
        y: torch.Tensor,
        drop_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        p: float = 0.1,
    ) -> torch.Tensor:
        """Training-time CFG label dropout (upstream does it in the dataset, p_uncond 0.1)."""
        if drop_mask is None:
            drop_mask = torch.rand(y.shape[0], generator=generator, device=y.device) < p
        return torch.where(drop_mask.bool(), torch.full_like(y, self.null_class), y)

    def transformer_blocks(self) -> list[nn.Module]:
        """The cacheable blocks in execution order: in-blocks, mid-block, out-blocks."""
        return [*self.in_blocks, self.mid_block, *self.out_blocks]

    def eps(self, out: torch.Tensor) -> torch.Tensor:
        """The ε part of an output (U-ViT predicts only ε): (B, C, H, W)."""
        return out

    def guide(
        self, cond_out: torch.Tensor, uncond_out: torch.Tensor, scale: float | torch.Tensor
    ) -> torch.Tensor:
        """U-ViT CFG convention ``cond + s (cond - uncond)`` (the paper's s = 0.4 is weight 1.4)."""
        return cond_out + scale * (cond_out - uncond_out)  # (B, C, H, W)
