"""Fused reuse epilogues for L2C: what is left of a transformer block when a sublayer is cached.

Each entry point calls its ``torch.ops.l2c`` custom op (see :mod:`l2c_compile.kernels.ops` for
schemas), so a traced graph holds one node per epilogue. CUDA tensors run the Triton kernel; CPU
tensors run the torch reference, or the Triton kernel through the interpreter when
``TRITON_INTERPRET=1`` was set before import. Triton is optional: without it everything runs the
torch reference. Bad inputs raise :class:`KernelInputError` (a ``ValueError`` and an ``L2CError``).
"""

from __future__ import annotations

import torch

from l2c_compile.kernels import ops as _ops  # noqa: F401  (registers torch.ops.l2c.*)
from l2c_compile.kernels._common import (
    HAS_TRITON,
    INTERPRET,
    MAX_HIDDEN,
    SUPPORTED_DTYPES,
    KernelInputError,
)
from l2c_compile.kernels.reuse2_residual_ln_modulate import reuse2_residual_ln_modulate_reference
from l2c_compile.kernels.reuse_residual_layernorm import reuse_residual_layernorm_reference
from l2c_compile.kernels.reuse_residual_ln_modulate import reuse_residual_ln_modulate_reference

__all__ = [
    "HAS_TRITON",
    "INTERPRET",
    "MAX_HIDDEN",
    "SUPPORTED_DTYPES",
    "KernelInputError",
    "reuse2_residual_ln_modulate",
    "reuse2_residual_ln_modulate_reference",
    "reuse_residual_layernorm",
    "reuse_residual_layernorm_reference",
    "reuse_residual_ln_modulate",
    "reuse_residual_ln_modulate_reference",
]


def reuse_residual_ln_modulate(
    x: torch.Tensor,
    gate: torch.Tensor,
    cached: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DiT: ``x_new = x + gate·cached``; ``h = LN(x_new)·(1 + scale) + shift``; returns both."""
    return torch.ops.l2c.reuse_residual_ln_modulate(x, gate, cached, shift, scale, eps)


def reuse2_residual_ln_modulate(
    x: torch.Tensor,
    gate1: torch.Tensor,
    cached1: torch.Tensor,
    gate2: torch.Tensor,
    cached2: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DiT, whole block reused: ``x_new = x + g1·a + g2·m``; ``h`` = next block's modulated LN."""
    return torch.ops.l2c.reuse2_residual_ln_modulate(
        x, gate1, cached1, gate2, cached2, shift, scale, eps
    )


def reuse_residual_layernorm(
    x: torch.Tensor,
    cached: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """U-ViT: ``x_new = x + cached``; ``h = LayerNorm(x_new; weight, bias, eps)``; returns both."""
    return torch.ops.l2c.reuse_residual_layernorm(x, cached, weight, bias, eps)
