"""U-ViT reuse epilogue: residual add of a cached sublayer output, then the next affine LayerNorm.

    x_new = x + cached
    h     = LayerNorm(x_new; weight, bias, eps)

U-ViT blocks have no gates; when L2C reuses a sublayer, this add and the next sublayer's norm
(norm2 of the same block, or norm1 of the next) are one kernel: x and cached read once, x_new and
h written once. Arithmetic is fp32 throughout; each output is cast once on store.
"""

from __future__ import annotations

import torch

from l2c_compile.kernels._common import (
    HAS_TRITON,
    check_eps,
    check_launchable,
    check_rows,
    check_vectors,
    pick_config,
    tl,
    triton,
)

OP = "reuse_residual_layernorm"

if HAS_TRITON:

    @triton.jit
    def _reuse_residual_layernorm_kernel(
        x_ptr,  # (M, D) contiguous, M = B*T: residual stream before the reused sublayer
        cached_ptr,  # (M, D) contiguous: cached sublayer output
        weight_ptr,  # (D,) unit stride: LayerNorm weight
        bias_ptr,  # (D,) unit stride: LayerNorm bias
        x_new_ptr,  # (M, D) contiguous out: updated residual stream
        h_ptr,  # (M, D) contiguous out: LayerNorm of x_new
        M,
        D,
        eps,
        BLOCK_M: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,)
        cols = tl.arange(0, BLOCK_D)  # (BD,)
        col_mask = cols < D  # (BD,)
        mask = (rows[:, None] < M) & col_mask[None, :]  # (BM, BD)
        rows = rows.to(tl.int64)  # M * D can pass 2**31 at large batch
        offs = rows[:, None] * D + cols[None, :]  # (BM, BD)

        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        cached = tl.load(cached_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x_new = x + cached  # (BM, BD)
        tl.store(x_new_ptr + offs, x_new.to(x_new_ptr.dtype.element_ty), mask=mask)

        mean = tl.sum(x_new, axis=1) / D  # (BM,)
        # Padded columns must not count towards the variance.
        centered = tl.where(mask, x_new - mean[:, None], 0.0)  # (BM, BD)
        var = tl.sum(centered * centered, axis=1) / D  # (BM,)
        rstd = 1.0 / tl.sqrt(var + eps)  # (BM,)
        weight = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)  # (BD,)
        bias = tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)  # (BD,)
        h = centered * rstd[:, None] * weight[None, :] + bias[None, :]  # (BM, BD)
        tl.store(h_ptr + offs, h.to(h_ptr.dtype.element_ty), mask=mask)


def check_inputs(
    x: torch.Tensor,
    cached: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-5,
) -> tuple[int, int, int]:
    """Validate the op's arguments (raises ``KernelInputError``, a ValueError); return B, T, D."""
    b, t, d = check_rows(OP, x=x, cached=cached)
    check_vectors(OP, x, (d,), weight=weight, bias=bias)
    check_eps(OP, eps)
    return b, t, d


def reuse_residual_layernorm_reference(
    x: torch.Tensor,
    cached: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference with the kernel's numerics (fp32 math, one cast per output)."""
    check_inputs(x, cached, weight, bias, eps)
    x_new = x.float() + cached.float()  # (B, T, D)
    h = torch.nn.functional.layer_norm(
        x_new, x_new.shape[-1:], weight.float(), bias.float(), eps=eps
    )  # (B, T, D)
    return x_new.to(x.dtype), h.to(x.dtype)


def reuse_residual_layernorm_triton(
    x: torch.Tensor,
    cached: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the Triton kernel (CUDA, or CPU under ``TRITON_INTERPRET=1``)."""
    b, t, d = check_inputs(x, cached, weight, bias, eps)
    check_launchable(OP, x, d)
    x_new = torch.empty_like(x)  # (B, T, D)
    h = torch.empty_like(x)  # (B, T, D)
    m = b * t
    if m == 0:
        return x_new, h
    cfg = pick_config(d, interpreter=x.device.type == "cpu", rows=m)
    grid = (triton.cdiv(m, cfg.block_m),)
    _reuse_residual_layernorm_kernel[grid](
        x,
        cached,
        weight,
        bias,
        x_new,
        h,
        m,
        d,
        float(eps),
        BLOCK_M=cfg.block_m,
        BLOCK_D=cfg.block_d,
        num_warps=cfg.num_warps,
    )
    return x_new, h
