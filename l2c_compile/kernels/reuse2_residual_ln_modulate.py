"""DiT reuse epilogue when both sublayers of a block are reused, fused with the next block's LN.

    x_new = x + gate1[:, None, :] * cached1 + gate2[:, None, :] * cached2
    h     = LayerNorm(x_new; no affine, eps) * (1 + scale[:, None, :]) + shift[:, None, :]

A block whose attention and MLP are both cached reduces to two gated adds; ``h`` is the next
block's modulated norm1 input. One kernel reads x, both caches and five (B, D) vectors once and
writes x_new and h once. Arithmetic is fp32 throughout (both adds before any rounding, unlike
eager torch in half precision); each output is cast once on store.
"""

from __future__ import annotations

import torch

from l2c_compile.kernels._common import (
    HAS_TRITON,
    check_eps,
    check_grid_batch,
    check_launchable,
    check_rows,
    check_vectors,
    pick_config,
    tl,
    triton,
    vector_row_stride,
)

OP = "reuse2_residual_ln_modulate"

if HAS_TRITON:

    @triton.jit
    def _reuse2_residual_ln_modulate_kernel(
        x_ptr,  # (B*T, D) contiguous: residual stream entering the block
        cached1_ptr,  # (B*T, D) contiguous: ungated cached attention output
        cached2_ptr,  # (B*T, D) contiguous: ungated cached MLP output
        gate1_ptr,  # (B, D), row stride gate1_stride: gate_msa of this block
        gate2_ptr,  # (B, D), row stride gate2_stride: gate_mlp of this block
        shift_ptr,  # (B, D), row stride shift_stride: next block's shift_msa
        scale_ptr,  # (B, D), row stride scale_stride: next block's scale_msa
        x_new_ptr,  # (B*T, D) contiguous out: residual stream leaving the block
        h_ptr,  # (B*T, D) contiguous out: modulated LayerNorm of x_new
        T,
        D,
        gate1_stride,
        gate2_stride,
        shift_stride,
        scale_stride,
        eps,
        BLOCK_M: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        # Grid (tiles of T, B): every row of a program shares one batch entry, so each (B, D)
        # vector is read once per program as a (BD,) row and broadcast over the tile.
        batch = tl.program_id(1).to(tl.int64)
        tokens = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,)
        cols = tl.arange(0, BLOCK_D)  # (BD,)
        col_mask = cols < D  # (BD,)
        mask = (tokens[:, None] < T) & col_mask[None, :]  # (BM, BD)
        rows = batch * T + tokens.to(tl.int64)  # (BM,) int64: B*T*D can pass 2**31
        offs = rows[:, None] * D + cols[None, :]  # (BM, BD)

        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        cached1 = tl.load(cached1_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        cached2 = tl.load(cached2_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gate1 = tl.load(gate1_ptr + batch * gate1_stride + cols, mask=col_mask, other=0.0)
        gate1 = gate1.to(tl.float32)[None, :]  # (1, BD)
        gate2 = tl.load(gate2_ptr + batch * gate2_stride + cols, mask=col_mask, other=0.0)
        gate2 = gate2.to(tl.float32)[None, :]  # (1, BD)
        # Same association as the block: attention's add first, then the MLP's.
        x_new = (x + gate1 * cached1) + gate2 * cached2
        tl.store(x_new_ptr + offs, x_new.to(x_new_ptr.dtype.element_ty), mask=mask)

        mean = tl.sum(x_new, axis=1) / D  # (BM,)
        # Padded columns must not count towards the variance.
        centered = tl.where(mask, x_new - mean[:, None], 0.0)  # (BM, BD)
        var = tl.sum(centered * centered, axis=1) / D  # (BM,)
        rstd = 1.0 / tl.sqrt(var + eps)  # (BM,)
        shift = tl.load(shift_ptr + batch * shift_stride + cols, mask=col_mask, other=0.0)
        shift = shift.to(tl.float32)[None, :]  # (1, BD)
        scale = tl.load(scale_ptr + batch * scale_stride + cols, mask=col_mask, other=0.0)
        scale = scale.to(tl.float32)[None, :]  # (1, BD)
        h = centered * rstd[:, None] * (1.0 + scale) + shift
        tl.store(h_ptr + offs, h.to(h_ptr.dtype.element_ty), mask=mask)


def check_inputs(
    x: torch.Tensor,
    gate1: torch.Tensor,
    cached1: torch.Tensor,
    gate2: torch.Tensor,
    cached2: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
) -> tuple[int, int, int]:
    """Validate the op's arguments (raises ``KernelInputError``, a ValueError); return B, T, D."""
    b, t, d = check_rows(OP, x=x, cached1=cached1, cached2=cached2)
    check_vectors(OP, x, (b, d), gate1=gate1, gate2=gate2, shift=shift, scale=scale)
    check_eps(OP, eps)
    return b, t, d


def reuse2_residual_ln_modulate_reference(
    x: torch.Tensor,
    gate1: torch.Tensor,
    cached1: torch.Tensor,
    gate2: torch.Tensor,
    cached2: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference with the kernel's numerics (fp32 math, one cast per output)."""
    check_inputs(x, gate1, cached1, gate2, cached2, shift, scale, eps)
    x_new = x.float() + gate1.float()[:, None, :] * cached1.float()  # (B, T, D)
    x_new = x_new + gate2.float()[:, None, :] * cached2.float()  # (B, T, D)
    normed = torch.nn.functional.layer_norm(x_new, x_new.shape[-1:], eps=eps)  # (B, T, D)
    h = normed * (1.0 + scale.float()[:, None, :]) + shift.float()[:, None, :]  # (B, T, D)
    return x_new.to(x.dtype), h.to(x.dtype)


def reuse2_residual_ln_modulate_triton(
    x: torch.Tensor,
    gate1: torch.Tensor,
    cached1: torch.Tensor,
    gate2: torch.Tensor,
    cached2: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the Triton kernel (CUDA, or CPU under ``TRITON_INTERPRET=1``)."""
    b, t, d = check_inputs(x, gate1, cached1, gate2, cached2, shift, scale, eps)
    check_launchable(OP, x, d)
    x_new = torch.empty_like(x)  # (B, T, D)
    h = torch.empty_like(x)  # (B, T, D)
    if b * t == 0:
        return x_new, h
    check_grid_batch(OP, b)
    cfg = pick_config(d, interpreter=x.device.type == "cpu", rows=t)
    grid = (triton.cdiv(t, cfg.block_m), b)
    _reuse2_residual_ln_modulate_kernel[grid](
        x,
        cached1,
        cached2,
        gate1,
        gate2,
        shift,
        scale,
        x_new,
        h,
        t,
        d,
        vector_row_stride(gate1),
        vector_row_stride(gate2),
        vector_row_stride(shift),
        vector_row_stride(scale),
        float(eps),
        BLOCK_M=cfg.block_m,
        BLOCK_D=cfg.block_d,
        num_warps=cfg.num_warps,
    )
    return x_new, h
