"""Pieces shared by the reuse-epilogue kernels: the optional Triton import, input checks, launch config.

Kept apart from the op files so each of those stays one kernel + launcher + reference.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from l2c_compile.errors import L2CError
from l2c_compile.runtime import features

try:  # Triton is optional: without it every op runs its torch reference.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised in a subprocess test without triton
    triton = None
    tl = None

HAS_TRITON: bool = triton is not None
# Read once at import, like Triton itself does: flipping the variable later changes nothing.
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Widest row a single program normalizes in registers; DiT-XL and U-ViT-H use 1152.
MAX_HIDDEN = 16384
# The batch rides on grid axis 1, which CUDA caps at 65535 programs.
MAX_GRID_BATCH = 65535


class KernelInputError(L2CError, ValueError):
    """Bad tensor passed to a kernel launcher or op: wrong shape, dtype, device or layout."""


@dataclass(frozen=True)
class LaunchConfig:
    """How a row-wise kernel is tiled: rows per program, padded row width, warps."""

    block_m: int
    block_d: int
    num_warps: int


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (n >= 1)."""
    return 1 << (max(n, 1) - 1).bit_length()


def pick_config(hidden: int, interpreter: bool, rows: int | None = None) -> LaunchConfig:
    """Choose the tile for ``rows`` rows of width ``hidden`` on a GPU or in the interpreter."""
    block_d = next_power_of_2(hidden)
    # Never tile more rows than a program can get (e.g. T = 1 token per batch entry).
    row_cap = next_power_of_2(rows) if rows else 1 << 30
    if interpreter:
        # The interpreter pays a fixed cost per tl op and program: fewer, fatter tiles win.
        block_m = max(1, min(64, 65536 // block_d, row_cap))
        return LaunchConfig(block_m=block_m, block_d=block_d, num_warps=1)
    # Narrow rows: pack several per program so each one still moves ~4K elements.
    block_m = max(1, min(16, 4096 // block_d, row_cap))
    elements = block_m * block_d
    num_warps = max(1, min(16, elements // 512))
    return LaunchConfig(block_m=block_m, block_d=block_d, num_warps=num_warps)


def check_rows(op: str, **tensors: torch.Tensor) -> tuple[int, int, int]:
    """Check (B, T, D) activations: 3-D, equal shapes, one float dtype, contiguous; return B, T, D."""
    names = list(tensors)
    first = tensors[names[0]]
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise KernelInputError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise KernelInputError(
                f"{op}: {name} must be 3-D (B, T, D), got shape {tuple(t.shape)}"
            )
        if t.shape != first.shape:
            raise KernelInputError(
                f"{op}: {name} shape {tuple(t.shape)} != {names[0]} shape {tuple(first.shape)}"
            )
        if t.dtype not in SUPPORTED_DTYPES:
            raise KernelInputError(
                f"{op}: {name} dtype {t.dtype} unsupported (float32, float16 or bfloat16)"
            )
        if t.dtype != first.dtype:
            raise KernelInputError(
                f"{op}: {name} dtype {t.dtype} != {names[0]} dtype {first.dtype}"
            )
        if t.device != first.device:
            raise KernelInputError(
                f"{op}: {name} is on {t.device} but {names[0]} is on {first.device}"
            )
        if not t.is_contiguous():
            raise KernelInputError(f"{op}: {name} must be contiguous (call .contiguous() first)")
    # No int(): under torch.compile these may be SymInts, and int() would specialize them.
    b, t_, d = first.shape
    if d == 0:
        raise KernelInputError(f"{op}: hidden size D is 0; LayerNorm needs at least one feature")
    return b, t_, d


def check_vectors(
    op: str, like: torch.Tensor, shape: tuple[int, ...], **tensors: torch.Tensor
) -> None:
    """Check per-row vectors (adaLN chunks, LN affine): exact shape, ``like``'s dtype and device.

    Only the last dimension must be dense: adaLN chunks are strided views of one (B, 6D) tensor
    and the kernels read them in place rather than copying.
    """
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise KernelInputError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise KernelInputError(f"{op}: {name} must have shape {shape}, got {tuple(t.shape)}")
        if t.dtype != like.dtype:
            raise KernelInputError(f"{op}: {name} dtype {t.dtype} != x dtype {like.dtype}")
        if t.device != like.device:
            raise KernelInputError(f"{op}: {name} is on {t.device} but x is on {like.device}")
        if t.numel() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
            raise KernelInputError(f"{op}: {name} must have unit stride in its last dimension")


def check_eps(op: str, eps: float) -> None:
    """LayerNorm epsilon must be a finite, non-negative number."""
    if not isinstance(eps, (int, float)) or not (0.0 <= float(eps) < float("inf")):
        raise KernelInputError(f"{op}: eps must be a finite number >= 0, got {eps!r}")


def check_launchable(op: str, x: torch.Tensor, hidden: int) -> None:
    """Refuse tensors the Triton kernel cannot take: :class:`KernelInputError` (one line) without
    the ``triton`` feature (not installed, or switched off, see :mod:`l2c_compile.runtime.features`), for
    CPU tensors without the interpreter, other devices, or rows wider than ``MAX_HIDDEN``."""
    features.require("triton", f"{op}: the Triton kernel", KernelInputError)
    if x.device.type == "cpu" and not INTERPRET:
        raise KernelInputError(
            f"{op}: CPU tensors need TRITON_INTERPRET=1 set before import to run the Triton kernel"
        )
    if x.device.type not in ("cpu", "cuda"):
        raise KernelInputError(f"{op}: Triton kernel needs CUDA tensors, got {x.device}")
    if hidden > MAX_HIDDEN:
        raise KernelInputError(
            f"{op}: hidden size {hidden} exceeds the fused kernel's limit of {MAX_HIDDEN}"
        )


def check_grid_batch(op: str, batch: int) -> None:
    """Refuse a batch larger than grid axis 1 can hold."""
    if batch > MAX_GRID_BATCH:
        raise KernelInputError(
            f"{op}: batch {batch} exceeds the kernel grid's limit of {MAX_GRID_BATCH}"
        )


def vector_row_stride(t: torch.Tensor) -> int:
    """Row stride of a (B, D) vector tensor, 0 when B == 1 so any stride value is harmless."""
    return int(t.stride(0)) if t.shape[0] > 1 else 0
