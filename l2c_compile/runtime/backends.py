"""How step graphs run: ``"eager"`` (the generated code as written), ``"inductor"`` or ``"regional"``.

``"regional"`` compiles the cacheable sublayers instead of the step graphs: every attention and MLP
module (the declared sublayer paths) is ``torch.compile``'d in place with the backend below, and
the step graphs' glue (adaLN, residuals, the reuse epilogues) runs eagerly. All blocks of a model
share their sublayers' code and shapes, so dynamo compiles one graph per sublayer kind and batch
size, however many distinct step masks the schedule has (diffusers reports 8–10× shorter compiles
for regional than for whole-model compilation at similar speed; measured here:
``benchmarks/results/compile-cost.md``).

``"inductor"`` compiles every step graph with ``torch.compile(fullgraph=True, dynamic=False)``
through :func:`l2c_inductor`, a dynamo backend that rewrites the captured graph before handing it
to inductor, on CPU tensors only:

* **linear layers → oneDNN.** On x86 CPUs torch's ``F.linear`` in float32 goes through MKL, and
  inductor (with or without freezing) keeps MKL for float32. On this project's AMD EPYC (Zen 5,
  2 cores) MKL's sgemm runs at about 200 GFLOP/s where oneDNN's reaches 470 GFLOP/s on DiT-XL/2's
  shapes (512 × 1152 × 4608, ``benchmarks/results/gemm-cpu.jsonl``), and in bfloat16 the
  prepacked oneDNN path is also the faster one. Each ``linear`` on a CPU float32/bfloat16 tensor
  becomes ``torch.ops.l2c.linear_onednn`` (``torch.ops.mkldnn._linear_pointwise`` on the
  flattened rows), an opaque op for inductor that still fuses everything around it; a linear
  followed only by a GELU (DiT's tanh form, U-ViT's exact one) becomes one oneDNN call with the GELU as its
  post-op.
* **the fused reuse epilogues → their torch references.** ``torch.ops.l2c.*`` run Triton kernels on
  CUDA; on CPU they would be opaque reference calls that inductor cannot fuse, so the backend
  inlines the reference instead and inductor generates one C++ loop for the epilogue.

CUDA graphs are left to inductor unchanged. Numerics: oneDNN and MKL accumulate in a different
order, so float32 results differ from eager by float reassociation only (≈1e-6 relative on
DiT-XL/2, tests/test_backends.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from l2c_compile.runtime import features
from l2c_compile.runtime.manifest import BACKENDS

__all__ = [
    "BACKENDS",
    "compile_regions",
    "compile_step",
    "eager_regions",
    "l2c_inductor",
    "restore_regions",
    "rewrite_for_cpu",
]

_LINEAR_TARGETS = (torch._C._nn.linear, F.linear)
# dtype → the feature its oneDNN GEMM needs (a CPU without oneDNN bf16 keeps torch's own linear)
_ONEDNN_DTYPES = {torch.float32: "onednn", torch.bfloat16: "onednn_bf16"}
_GELU_TARGETS = (F.gelu, torch._C._nn.gelu)
# activation name → oneDNN post-op (attr, algorithm), as torch.ops.mkldnn._linear_pointwise takes it
_POST_OPS = {"none": ("none", ""), "gelu": ("gelu", "none"), "gelu_tanh": ("gelu", "tanh")}


@torch.library.custom_op("l2c::linear_onednn", mutates_args=())
def linear_onednn(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str = "none"
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` (then ``activation``) through oneDNN, on CPU.

    ``x``: ``(..., in)``; ``weight``: ``(out, in)``; ``bias``: ``(out,)`` or None, all one dtype
    (float32 or bfloat16). ``activation``: ``"none"``, ``"gelu"`` (exact, erf) or ``"gelu_tanh"``
    (tanh approximation), applied as oneDNN's post-op. Returns ``(..., out)``.
    """
    attr, algorithm = _POST_OPS[activation]
    rows = x.reshape(-1, x.shape[-1])
    out = torch.ops.mkldnn._linear_pointwise(rows, weight.contiguous(), bias, attr, [], algorithm)
    return out.reshape(*x.shape[:-1], weight.shape[0])


@linear_onednn.register_fake
def _linear_onednn_fake(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str = "none"
) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def _value(node: Any) -> Any:
    return node.meta.get("example_value") if isinstance(node, fx.Node) else None


def _onednn_linear(node: fx.Node) -> bool:
    """Whether a captured ``linear`` call runs on CPU tensors oneDNN takes."""
    if node.op != "call_function" or node.target not in _LINEAR_TARGETS:
        return False
    args = list(node.args) + [node.kwargs.get("bias")] * (3 - len(node.args))
    x, weight, bias = (_value(a) for a in args[:3])
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        return False
    tensors = [t for t in (x, weight, bias) if isinstance(t, torch.Tensor)]
    return (
        all(t.device.type == "cpu" and t.dtype == x.dtype for t in tensors)
        and x.dtype in _ONEDNN_DTYPES
        and features.has(_ONEDNN_DTYPES[x.dtype])
        and weight.dim() == 2
        and x.dim() >= 2
    )


def _gelu_user(node: fx.Node) -> tuple[fx.Node | None, str]:
    """``(user, activation)`` when the node's only user is a GELU, else ``(None, "none")``."""
    if len(node.users) != 1:
        return None, "none"
    user = next(iter(node.users))
    if user.op != "call_function" or user.target not in _GELU_TARGETS or user.args[0] is not node:
        return None, "none"
    approximate = user.kwargs.get("approximate", user.args[1] if len(user.args) > 1 else "none")
    if approximate not in ("none", "tanh"):
        return None, "none"
    return user, "gelu_tanh" if approximate == "tanh" else "gelu"


def _epilogue_references() -> dict[Any, Callable[..., Any]]:
    """``torch.ops.l2c.<epilogue>`` (packet and overload) → its torch reference."""
    from l2c_compile import kernels

    refs = {
        "reuse_residual_ln_modulate": kernels.reuse_residual_ln_modulate_reference,
        "reuse2_residual_ln_modulate": kernels.reuse2_residual_ln_modulate_reference,
        "reuse_residual_layernorm": kernels.reuse_residual_layernorm_reference,
    }
    table: dict[Any, Callable[..., Any]] = {}
    for name, ref in refs.items():
        packet = getattr(torch.ops.l2c, name)
        table[packet] = ref
        table[packet.default] = ref
    return table


def rewrite_for_cpu(gm: fx.GraphModule) -> dict[str, int]:
    """Rewrite a dynamo-captured graph for CPU in place (module docstring); return counts.

    Returns ``{"linear_onednn": n, "linear_gelu_onednn": n, "epilogues_inlined": n}``. Nodes on
    CUDA tensors, and linears in other dtypes (float16, float64), are left as they are.
    """
    counts = {"linear_onednn": 0, "linear_gelu_onednn": 0, "epilogues_inlined": 0}
    epilogues = _epilogue_references()
    graph = gm.graph
    for node in list(graph.nodes):
        if _onednn_linear(node):
            x, weight, *rest = node.args
            bias = rest[0] if rest else node.kwargs.get("bias")
            gelu, activation = _gelu_user(node)
            with graph.inserting_before(node):
                new = graph.call_function(torch.ops.l2c.linear_onednn.default, (x, weight, bias, activation))
            new.meta.update((gelu or node).meta)
            if gelu is not None:
                gelu.replace_all_uses_with(new)
                graph.erase_node(gelu)
                counts["linear_gelu_onednn"] += 1
            else:
                counts["linear_onednn"] += 1
            node.replace_all_uses_with(new)
            graph.erase_node(node)
        elif node.op == "call_function" and node.target in epilogues:
            value = _value(node)
            first = value[0] if isinstance(value, (tuple, list)) else value
            if isinstance(first, torch.Tensor) and first.device.type == "cpu":
                node.target = epilogues[node.target]
                counts["epilogues_inlined"] += 1
    graph.lint()
    gm.recompile()
    return counts


def l2c_inductor(gm: fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable[..., Any]:
    """The dynamo backend of ``backend="inductor"``: :func:`rewrite_for_cpu`, then inductor."""
    from torch._inductor.compile_fx import compile_fx

    rewrite_for_cpu(gm)
    return compile_fx(gm, example_inputs)


def compile_step(step: Callable[..., Any], backend: str) -> Callable[..., Any]:
    """One step graph as ``backend`` runs it (``"eager"`` and ``"regional"``: unchanged)."""
    if backend != "inductor":
        return step
    return torch.compile(step, backend=l2c_inductor, fullgraph=True, dynamic=False)


def _sublayer_modules(model: nn.Module) -> list[nn.Module]:
    """The modules the declared sublayers run (``KindDecl.path`` under each block). Not
    ``sublayer_paths``: a projected branch's path there (FLUX's ``proj_out_mlp``) names the split
    projection the capture makes, which the model itself does not have."""
    from l2c_compile.families import family_of

    return [model.get_submodule(f"{path}.{k.path}") for path, k in family_of(model).sublayers(model)]


def compile_regions(model: nn.Module) -> int:
    """``backend="regional"``: compile the model's sublayer modules in place; return how many.

    Meant for the sampler's private copy of the model: ``nn.Module.compile`` wraps each module's
    call and leaves its parameters and state dict as they are. Compilation happens at the first
    call. :func:`restore_regions` undoes it.
    """
    _allow_region_recompiles()
    modules = _sublayer_modules(model)
    for module in modules:
        module.compile(backend=l2c_inductor, fullgraph=True, dynamic=False)
    return len(modules)


# Every attention (or MLP) module of every regional sampler in a process shares one code object,
# and dynamo keeps one compiled entry per input shape, dtype and model size on it. Its default
# limit of 8 entries per code object is reached by a process that serves a few batch sizes of a
# few models (a test session does in minutes), and with fullgraph=True the next call then fails
# instead of falling back to eager. Guard checks stay cheap at this size.
REGION_RECOMPILE_LIMIT = 256


def _allow_region_recompiles() -> None:
    """Raise dynamo's per-code-object recompile limits to what regional sharing needs."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, REGION_RECOMPILE_LIMIT)
    config.accumulated_recompile_limit = max(
        config.accumulated_recompile_limit, 4 * REGION_RECOMPILE_LIMIT
    )


def restore_regions(model: nn.Module) -> None:
    """Run the sublayer modules' own ``forward`` again (undo :func:`compile_regions`)."""
    for module in _sublayer_modules(model):
        module._compiled_call_impl = None


@contextlib.contextmanager
def eager_regions(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, the sublayer modules run their own ``forward`` (the reference executor
    on a regional sampler's weights); compiled ones are put back afterwards."""
    modules = _sublayer_modules(model)
    saved = [m._compiled_call_impl for m in modules]
    try:
        for m in modules:
            m._compiled_call_impl = None
        yield model
    finally:
        for m, impl in zip(modules, saved, strict=True):
            m._compiled_call_impl = impl
