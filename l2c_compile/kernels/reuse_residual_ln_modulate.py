"""DiT reuse epilogue: gated residual add of a cached sublayer output, then the next modulated LN.

    x_new = x + gate[:, None, :] * cached
    h     = LayerNorm(x_new; no affine, eps) * (1 + scale[:, None, :]) + shift[:, None, :]

When L2C reuses a DiT sublayer, this is all that is left between the two GEMMs around it; one
kernel reads x, cached and three (B, D) vectors once and writes x_new and h once. Arithmetic is
fp32 throughout; ``h`` is normalized from the fp32 ``x_new`` (not its rounded copy) and each
output is cast once on store.
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

OP = "reuse_residual_ln_modulate"

if HAS_TRITON:

    @triton.jit
    def _reuse_residual_ln_modulate_kernel(
        x_ptr,  # (B*T, D) contiguous: residual stream before the reused sublayer
        cached_ptr,  # (B*T, D) contiguous: ungated cached sublayer output
        gate_ptr,  # (B, D), row stride gate_stride: adaLN gate of the reused sublayer
        shift_ptr,  # (B, D), row stride shift_stride: next sublayer's adaLN shift
        scale_ptr,  # (B, D), row stride scale_stride: next sublayer's adaLN scale
        x_new_ptr,  # (B*T, D) contiguous out: updated residual stream
        h_ptr,  # (B*T, D) contiguous out: modulated LayerNorm of x_new
        T,
        D,
        gate_stride,
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
        cached = tl.load(cached_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gate = tl.load(gate_ptr + batch * gate_stride + cols, mask=col_mask, other=0.0)
        gate = gate.to(tl.float32)[None, :]  # (1, BD)
        x_new = x + gate * cached  # (BM, BD)
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
    gate: torch.Tensor,
    cached: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
) -> tuple[int, int, int]:
    """Validate the op's arguments (raises ``KernelInputError``, a ValueError); return B, T, D."""
    b, t, d = check_rows(OP, x=x, cached=cached)
    check_vectors(OP, x, (b, d), gate=gate, shift=shift, scale=scale)
    check_eps(OP, eps)
    return b, t, d


def reuse_residual_ln_modulate_reference(
    x: torch.Tensor,
    gate: torch.Tensor,
    cached: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference with the kernel's numerics (fp32 math, one cast per output)."""
    check_inputs(x, gate, cached, shift, scale, eps)
    x_new = x.float() + gate.float()[:, None, :] * cached.float()  # (B, T, D)
    normed = torch.nn.functional.layer_norm(x_new, x_new.shape[-1:], eps=eps)  # (B, T, D)
    h = normed * (1.0 + scale.float()[:, None, :]) + shift.float()[:, None, :]  # (B, T, D)
    return x_new.to(x.dtype), h.to(x.dtype)


def reuse_residual_ln_modulate_triton(
    x: torch.Tensor,
    gate: torch.Tensor,
    cached: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the Triton kernel (CUDA, or CPU under ``TRITON_INTERPRET=1``)."""
    b, t, d = check_inputs(x, gate, cached, shift, scale, eps)
    check_launchable(OP, x, d)
    x_new = torch.empty_like(x)  # (B, T, D)
    h = torch.empty_like(x)  # (B, T, D)
    if b * t == 0:
        return x_new, h
    check_grid_batch(OP, b)
    cfg = pick_config(d, interpreter=x.device.type == "cpu", rows=t)
    grid = (triton.cdiv(t, cfg.block_m), b)
    _reuse_residual_ln_modulate_kernel[grid](
        x,
        cached,
        gate,
        shift,
        scale,
        x_new,
        h,
        t,
        d,
        vector_row_stride(gate),
        vector_row_stride(shift),
        vector_row_stride(scale),
        float(eps),
        BLOCK_M=cfg.block_m,
        BLOCK_D=cfg.block_d,
        num_warps=cfg.num_warps,
    )
    return x_new, h
