"""The reuse-epilogue kernels as ``torch.library`` custom ops in the ``l2c`` namespace.

Registered as opaque ops so torch.fx, ``make_fx`` and ``torch.compile(fullgraph=True)`` see each
epilogue as one node (Dynamo and AOT use the fake implementations for shapes) instead of tracing
into Triton. Schemas::

    l2c::reuse_residual_ln_modulate(Tensor x, Tensor gate, Tensor cached, Tensor shift,
        Tensor scale, float eps=1e-06) -> (Tensor x_new, Tensor h)
    l2c::reuse2_residual_ln_modulate(Tensor x, Tensor gate1, Tensor cached1, Tensor gate2,
        Tensor cached2, Tensor shift, Tensor scale, float eps=1e-06) -> (Tensor x_new, Tensor h)
    l2c::reuse_residual_layernorm(Tensor x, Tensor cached, Tensor weight, Tensor bias,
        float eps=1e-05) -> (Tensor x_new, Tensor h)

x and every cached tensor are contiguous (B, T, D); gates, shifts and scales are (B, D) with a
unit-stride last dimension (strided adaLN chunks are fine); weight and bias are (D,). All tensors
share one dtype (float32, float16 or bfloat16) and device; both outputs are new contiguous
(B, T, D) tensors of that dtype. None of the ops mutates or aliases its inputs.

Implementations: CUDA runs the Triton kernel, or the torch reference without the ``triton``
feature (not installed, or switched off: :mod:`l2c_compile.runtime.features`), for a row wider than
``MAX_HIDDEN`` or a batch over ``MAX_GRID_BATCH``; CPU runs the torch reference, or the Triton
kernel through the interpreter when ``TRITON_INTERPRET=1`` was set before import. Inference only:
no autograd formula is registered.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Import from the submodules by full path: the package re-exports functions under the same
# names, which shadow the submodule attributes once l2c_compile.kernels has finished importing.
from l2c_compile.kernels._common import INTERPRET, MAX_GRID_BATCH, MAX_HIDDEN
from l2c_compile.kernels.reuse2_residual_ln_modulate import (
    check_inputs as _check_reuse2,
)
from l2c_compile.kernels.reuse2_residual_ln_modulate import (
    reuse2_residual_ln_modulate_reference,
    reuse2_residual_ln_modulate_triton,
)
from l2c_compile.kernels.reuse_residual_layernorm import (
    check_inputs as _check_layernorm,
)
from l2c_compile.kernels.reuse_residual_layernorm import (
    reuse_residual_layernorm_reference,
    reuse_residual_layernorm_triton,
)
from l2c_compile.kernels.reuse_residual_ln_modulate import (
    check_inputs as _check_reuse1,
)
from l2c_compile.kernels.reuse_residual_ln_modulate import (
    reuse_residual_ln_modulate_reference,
    reuse_residual_ln_modulate_triton,
)
from l2c_compile.runtime import features

NAMESPACE = "l2c"

SCHEMAS: dict[str, str] = {
    "reuse_residual_ln_modulate": (
        "(Tensor x, Tensor gate, Tensor cached, Tensor shift, Tensor scale, float eps=1e-06)"
        " -> (Tensor, Tensor)"
    ),
    "reuse2_residual_ln_modulate": (
        "(Tensor x, Tensor gate1, Tensor cached1, Tensor gate2, Tensor cached2, Tensor shift,"
        " Tensor scale, float eps=1e-06) -> (Tensor, Tensor)"
    ),
    "reuse_residual_layernorm": (
        "(Tensor x, Tensor cached, Tensor weight, Tensor bias, float eps=1e-05) -> (Tensor, Tensor)"
    ),
}

_Fn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _make_impls(
    check: Callable[..., tuple[int, int, int]], reference: _Fn, launch: _Fn
) -> tuple[_Fn, _Fn, _Fn]:
    """Build the (cpu, cuda, fake) implementations of one op from its module's pieces."""

    # The dispatcher may drop arguments equal to their schema default (eps), so every piece
    # repeats the schema's default and these wrappers forward exactly what they get.
    def cpu_impl(*args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        if INTERPRET and features.has("triton"):
            return launch(*args, **kwargs)
        return reference(*args, **kwargs)

    def cuda_impl(*args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, hidden = check(*args, **kwargs)
        # Shapes the kernel cannot tile still get a correct (slower) answer.
        if features.has("triton") and hidden <= MAX_HIDDEN and batch <= MAX_GRID_BATCH:
            return launch(*args, **kwargs)
        return reference(*args, **kwargs)

    def fake_impl(*args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        check(*args, **kwargs)  # shape errors surface at trace time, not at the first real call
        x = args[0]
        assert isinstance(x, torch.Tensor)
        return torch.empty_like(x), torch.empty_like(x)

    return cpu_impl, cuda_impl, fake_impl


_PIECES: dict[str, tuple[Callable[..., tuple[int, int, int]], _Fn, _Fn]] = {
    "reuse_residual_ln_modulate": (
        _check_reuse1,
        reuse_residual_ln_modulate_reference,
        reuse_residual_ln_modulate_triton,
    ),
    "reuse2_residual_ln_modulate": (
        _check_reuse2,
        reuse2_residual_ln_modulate_reference,
        reuse2_residual_ln_modulate_triton,
    ),
    "reuse_residual_layernorm": (
        _check_layernorm,
        reuse_residual_layernorm_reference,
        reuse_residual_layernorm_triton,
    ),
}


def _register() -> None:
    """Define every op once per process (a module reload must not redefine them)."""
    for name, schema in SCHEMAS.items():
        if hasattr(getattr(torch.ops, NAMESPACE), name):
            continue
        qualname = f"{NAMESPACE}::{name}"
        cpu_impl, cuda_impl, fake_impl = _make_impls(*_PIECES[name])
        torch.library.define(qualname, schema)
        torch.library.impl(qualname, "cpu", cpu_impl)
        torch.library.impl(qualname, "cuda", cuda_impl)
        torch.library.register_fake(qualname, fake_impl)


_register()
