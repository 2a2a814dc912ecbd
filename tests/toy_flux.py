"""A toy FLUX-shaped model family, defined only for the tests: one declaration plus a tiny model.

Two block groups with different kinds: *double-stream* blocks (a joint attention over the text
and image tokens that returns two outputs, the image stream's and the text stream's, each gated
and added to its own stream; an image MLP and a text MLP) and *single-stream* blocks over the
concatenated tokens (a parallel attention branch and MLP branch, each gated and added). The
condition is a class label whose embedding also makes the text tokens (null class for CFG).
Shapes follow FLUX.1's transformer (black-forest-labs/flux ``model.py``), scaled down.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from l2c_compile.families import BlockGroup, Family, KindDecl, Sampling, register_family
from l2c_compile.families.vocabulary import KindWords


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)  # (N, T, D)


class JointAttention(nn.Module):
    """Attention over [text, image] tokens; returns (image output, text output)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.qkv_ctx = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_ctx = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, T, D) image tokens; ctx: (N, L, D) text tokens → ((N, T, D), (N, L, D))."""
        n, _, d = x.shape
        qkv = torch.cat([self.qkv_ctx(ctx), self.qkv(x)], dim=1)  # (N, L + T, 3D)
        q, k, v = qkv.reshape(n, -1, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)  # (N, H, L + T, D / H)
        out = out.transpose(1, 2).reshape(n, -1, d)  # (N, L + T, D)
        img = self.proj(out[:, ctx.shape[1]:])  # (N, T, D)
        txt = self.proj_ctx(out[:, : ctx.shape[1]])  # (N, L, D)
        return img, txt


class SelfAttention(nn.Module):
    """Plain multi-head self-attention (the single-stream blocks' attention branch)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, T, D) → (N, T, D)."""
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)  # (N, H, T, D / H)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


def _mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(approximate="tanh"), nn.Linear(2 * dim, dim))


class DoubleBlock(nn.Module):
    """Image and text streams side by side, mixed only by the joint attention."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.mod = nn.Linear(dim, 8 * dim)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm1_ctx = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = JointAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm2_ctx = nn.LayerNorm(dim)
        self.mlp = _mlp(dim)
        self.txt_mlp = _mlp(dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, T, D); ctx: (N, L, D); c: (N, D) → the two streams."""
        shift, scale, gate, shift_c, gate_c, shift2, scale2, gate2 = self.mod(nn.functional.silu(c)).chunk(8, dim=1)
        img, txt = self.attn(_modulate(self.norm1(x), shift, scale), self.norm1_ctx(ctx) + shift_c.unsqueeze(1))
        x = x + gate.unsqueeze(1) * img
        ctx = ctx + gate_c.unsqueeze(1) * txt
        x = x + gate2.unsqueeze(1) * self.mlp(_modulate(self.norm2(x), shift2, scale2))
        ctx = ctx + self.txt_mlp(self.norm2_ctx(ctx))  # the text MLP is ungated
        return x, ctx


class SingleBlock(nn.Module):
    """One stream over [text, image] tokens; attention and MLP in parallel on one normed input."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.mod = nn.Linear(dim, 4 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.mlp = _mlp(dim)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """h: (N, L + T, D); c: (N, D) → (N, L + T, D)."""
        shift, scale, gate_a, gate_m = self.mod(nn.functional.silu(c)).chunk(4, dim=1)
        n = _modulate(self.norm(h), shift, scale)
        return h + gate_a.unsqueeze(1) * self.attn(n) + gate_m.unsqueeze(1) * self.mlp(n)


class ToyFlux(nn.Module):
    """ε(x, t, y): FLUX-shaped, class-conditional (null class ``num_classes``), tiny."""

    def __init__(self, input_size: int = 8, patch_size: int = 2, in_channels: int = 4, hidden_size: int = 32,
                 heads: int = 2, double: int = 2, single: int = 2, text_len: int = 3, num_classes: int = 5) -> None:
        super().__init__()
        self.in_channels, self.input_size, self.patch_size = in_channels, input_size, patch_size
        self.num_classes = self.null_class = num_classes
        self.text_len, self.hidden_size = text_len, hidden_size
        d = hidden_size
        self.x_embedder = nn.Linear(in_channels * patch_size**2, d)
        self.t_embedder = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.y_embedder = nn.Embedding(num_classes + 1, d)
        self.txt_embedder = nn.Embedding(num_classes + 1, text_len * d)
        self.double_blocks = nn.ModuleList(DoubleBlock(d, heads) for _ in range(double))
        self.single_blocks = nn.ModuleList(SingleBlock(d, heads) for _ in range(single))
        self.final_mod = nn.Linear(d, 2 * d)
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final = nn.Linear(d, in_channels * patch_size**2)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W); t: (N,); y: (N,) labels → (N, C, H, W)."""
        n, c, s, p, d = x.shape[0], self.in_channels, self.input_size, self.patch_size, self.hidden_size
        tokens = x.reshape(n, c, s // p, p, s // p, p).permute(0, 2, 4, 1, 3, 5).reshape(n, (s // p) ** 2, -1)
        img = self.x_embedder(tokens)  # (N, T, D)
        txt = self.txt_embedder(y).reshape(n, self.text_len, d)  # (N, L, D)
        freqs = torch.exp(-math.log(10000.0) * torch.arange(d // 2, device=x.device) / (d // 2))
        angles = t.float()[:, None] * freqs[None]  # (N, D / 2)
        t_freq = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).to(self.x_embedder.weight.dtype)
        cond = self.t_embedder(t_freq) + self.y_embedder(y)
        for block in self.double_blocks:
            img, txt = block(img, txt, cond)
        h = torch.cat([txt, img], dim=1)  # (N, L + T, D)
        for block in self.single_blocks:
            h = block(h, cond)
        shift, scale = self.final_mod(nn.functional.silu(cond)).chunk(2, dim=1)
        out = self.final(_modulate(self.final_norm(h[:, self.text_len:]), shift, scale))  # (N, T, C·p²)
        out = out.reshape(n, s // p, s // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(n, c, s, s)

    def transformer_blocks(self) -> list[nn.Module]:
        """Double-stream blocks, then single-stream blocks."""
        return [*self.double_blocks, *self.single_blocks]

    def eps(self, out: torch.Tensor) -> torch.Tensor:
        """The whole output is ε."""
        return out

    def guide(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
        """``u + s · (c − u)``."""
        return uncond + scale * (cond - uncond)

    def drop_labels(self, y: torch.Tensor, drop_mask: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Router training's CFG label dropout (10 %): dropped labels become the null class."""
        if drop_mask is None:
            drop_mask = torch.rand(y.shape[0], generator=generator, device=y.device) < 0.1
        return torch.where(drop_mask.to(y.device), torch.full_like(y, self.null_class), y)


# The whole family, declared once.
TOY_FLUX = register_family(Family(
    name="toy-flux",
    groups=(
        BlockGroup(("double_blocks",), (
            # joint attention: two cached outputs; InvarDiff reuses it only when attn and
            # context_attn both say so (ip_attn follows attn: the toy has no IP-adapter)
            KindDecl("attn", "attn", outputs=("img", "txt"), invardiff=(
                "transformer_cache_book.attn", "transformer_cache_book.context_attn", "transformer_cache_book.ip_attn")),
            KindDecl("mlp", "mlp", invardiff=("transformer_cache_book.ff",)),
            KindDecl("txt_mlp", "txt_mlp", words=KindWords("text MLP", "t"), after="mlp",
                     invardiff=("transformer_cache_book.context_ff",)),
        )),
        # InvarDiff's single-block "mlp" is the hidden before the shared proj_out, which is linear:
        # reusing it is reusing the projected MLP branch, as this toy's mlp caches it
        BlockGroup(("single_blocks",), (KindDecl("attn", "attn", invardiff=("single_transformer_cache_book.attn",)),
                                        KindDecl("mlp", "mlp", invardiff=("single_transformer_cache_book.mlp",)))),
    ),
    classes={ToyFlux: ""},
    recipe=None,
    router_family="dit",
    guidance="null-class",
    guidance_rule="u + s·(c − u)",
    sampling=Sampling("ddim", "linear", "discrete", 4.0),
    build=lambda kwargs: ToyFlux(**kwargs),
))


def tiny_toy_flux(seed: int = 0, **overrides) -> ToyFlux:
    """A random toy FLUX-shaped model (non-degenerate: every weight drawn from N(0, 0.1²))."""
    torch.manual_seed(seed)
    model = ToyFlux(**overrides)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model.eval()
