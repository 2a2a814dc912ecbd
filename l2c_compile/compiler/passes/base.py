"""What every pass shares: the result type, the compile error, sublayer keys and node helpers."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from l2c_compile.errors import L2CError
from l2c_compile.families.vocabulary import (
    Mask as Mask,  # re-exported: the passes import these from here
)
from l2c_compile.families.vocabulary import SublayerKey as SublayerKey
from l2c_compile.families.vocabulary import key_order as key_order

SUBLAYER_META = "l2c_sublayer"  # node.meta key on a sublayer's output node: SublayerKey
RESIDUAL_META = "l2c_residual"  # node.meta key on the residual add a sublayer feeds: SublayerKey
CACHE_INPUT_META = "l2c_cache_input"  # node.meta key on a cache placeholder: SublayerKey


class CompileError(L2CError):
    """The compiler could not do what was asked (unsupported graph, broken invariant)."""


@dataclass
class PassResult:
    """What a pass returns: the (possibly new) module, whether it changed, and what it did."""

    gm: fx.GraphModule
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)


def cache_input_name(key: SublayerKey) -> str:
    """Placeholder name of a cached sublayer output, e.g. ``cache_attn_3``."""
    return f"cache_{key[0]}_{key[1]}"


ADD_TARGETS = (operator.add, torch.add, operator.iadd, torch.ops.aten.add.Tensor)
MUL_TARGETS = (operator.mul, torch.mul, torch.ops.aten.mul.Tensor)


def is_add(node: fx.Node) -> bool:
    """``a + b`` in any of the spellings fx (and ``torch.export``, at aten level) records."""
    if node.op == "call_function":
        return node.target in ADD_TARGETS
    return node.op == "call_method" and node.target == "add"


def is_mul(node: fx.Node) -> bool:
    """``a * b`` in any of the spellings fx (and ``torch.export``, at aten level) records."""
    if node.op == "call_function":
        return node.target in MUL_TARGETS
    return node.op == "call_method" and node.target == "mul"


def node_scope(node: fx.Node, prefix: str = "") -> str | None:
    """The innermost module path a node runs in, without ``prefix``; None outside every module.

    Read from ``node.meta["nn_module_stack"]`` (fx symbolic tracing and ``torch.export`` both
    record it; values are ``(path, type)``); a ``call_module`` node runs in its target.
    """
    if node.op == "call_module":
        path = str(node.target)
    else:
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return None
        last = list(stack.values())[-1]
        path = str(last[0] if isinstance(last, tuple) else last)
    if prefix:
        if path == prefix[:-1]:
            return ""
        if not path.startswith(prefix):
            return None
        path = path[len(prefix):]
    return path


def copy_scope(src: fx.Node, *dst: fx.Node) -> None:
    """Give nodes a pass creates the module scope of the node they replace (for naming and emit)."""
    stack = src.meta.get("nn_module_stack")
    if src.op == "call_module":  # a leaf's own scope is its target; its parent holds the new nodes
        stack = dict(list((stack or {}).items())[:-1])
    for n in dst:
        if stack is not None and "nn_module_stack" not in n.meta:
            n.meta["nn_module_stack"] = dict(stack)


def copy_name(src: fx.Node, dst: fx.Node) -> None:
    """Hand a replaced node's source-derived name and shape on to its replacement (same value)."""
    for key in ("l2c_name", "tensor_meta"):
        if key in src.meta:
            dst.meta[key] = src.meta[key]


def copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A new GraphModule with a copied graph (node meta copied) sharing gm's parameters."""
    graph = fx.Graph()
    value_map: dict[fx.Node, fx.Node] = {}
    out = graph.graph_copy(gm.graph, value_map)
    graph.output(out)
    new = fx.GraphModule(gm, graph, class_name=type(gm).__name__)
    return new


# ── ops in either capture: torch.fx (modules, methods) or torch.export (ATen, get_attr weights) ──
LINEAR_TARGETS = (torch.nn.functional.linear, torch.ops.aten.linear.default)
LAYER_NORM_TARGETS = (torch.nn.functional.layer_norm, torch.ops.aten.layer_norm.default)


@dataclass(frozen=True)
class LinearCall:
    """A Linear evaluation: its input node and the module path of its weight (and bias)."""

    input: fx.Node
    weight: str
    bias: str | None


def linear_call(gm: fx.GraphModule, node: fx.Node) -> LinearCall | None:
    """``node`` as a Linear of whole parameters: a ``call_module`` nn.Linear, or ``F.linear`` /
    ``aten.linear`` on ``get_attr`` weights (what ``torch.export`` records); None otherwise."""
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        if not isinstance(module, torch.nn.Linear) or not isinstance(node.args[0], fx.Node):
            return None
        bias = f"{node.target}.bias" if module.bias is not None else None
        return LinearCall(node.args[0], f"{node.target}.weight", bias)
    if node.op != "call_function" or node.target not in LINEAR_TARGETS:
        return None
    args = list(node.args) + [None] * (3 - len(node.args))
    inp, weight, bias = args[0], args[1], node.kwargs.get("bias", args[2])
    if not isinstance(inp, fx.Node) or not _param(weight) or not (bias is None or _param(bias)):
        return None
    return LinearCall(inp, str(weight.target), str(bias.target) if bias is not None else None)


@dataclass(frozen=True)
class LayerNormCall:
    """A LayerNorm over the last dimension: input, width, affine parameter paths and eps."""

    input: fx.Node
    width: int
    weight: str | None
    bias: str | None
    eps: float


def layer_norm_call(gm: fx.GraphModule, node: fx.Node) -> LayerNormCall | None:
    """``node`` as a last-dimension LayerNorm (``call_module`` nn.LayerNorm, ``F.layer_norm`` or
    ``aten.layer_norm`` on ``get_attr`` parameters); None otherwise."""
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        if not isinstance(m, torch.nn.LayerNorm) or len(m.normalized_shape) != 1:
            return None
        affine = m.elementwise_affine
        return LayerNormCall(node.args[0], m.normalized_shape[0], f"{node.target}.weight" if affine else None,
                             f"{node.target}.bias" if affine and m.bias is not None else None, m.eps)
    if node.op != "call_function" or node.target not in LAYER_NORM_TARGETS:
        return None
    names = ("input", "normalized_shape", "weight", "bias", "eps")
    a = dict(zip(names, node.args, strict=False)) | {k: v for k, v in node.kwargs.items() if k in names}
    shape, w, b = a.get("normalized_shape"), a.get("weight"), a.get("bias")
    if not isinstance(a.get("input"), fx.Node) or not isinstance(shape, list | tuple) or len(shape) != 1:
        return None
    if not (w is None or _param(w)) or not (b is None or _param(b)):
        return None
    return LayerNormCall(a["input"], int(shape[0]), str(w.target) if w is not None else None,
                         str(b.target) if b is not None else None, float(a.get("eps", 1e-5)))


def chunk_call(node: fx.Node) -> tuple[fx.Node, int, int] | None:
    """``(input, chunks, dim)`` when ``node`` is ``t.chunk(n, dim)`` / ``torch.chunk`` / ``aten.chunk``."""
    is_chunk = (node.op == "call_method" and node.target == "chunk") or (
        node.op == "call_function" and node.target in (torch.chunk, torch.ops.aten.chunk.default))
    if not is_chunk or not isinstance(node.args[0], fx.Node):
        return None
    n = node.args[1] if len(node.args) > 1 else node.kwargs.get("chunks")
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    if not isinstance(n, int) or not isinstance(dim, int):
        return None
    return node.args[0], n, dim


def unsqueezed(node: Any) -> fx.Node | None:
    """``v`` when ``node`` is ``v.unsqueeze(1)`` (method, ``torch.unsqueeze`` or ``aten.unsqueeze``)."""
    if not isinstance(node, fx.Node):
        return None
    if not ((node.op == "call_method" and node.target == "unsqueeze")
            or (node.op == "call_function" and node.target in (torch.unsqueeze, torch.ops.aten.unsqueeze.default))):
        return None
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return node.args[0] if dim == 1 and isinstance(node.args[0], fx.Node) else None


def _param(a: Any) -> bool:
    return isinstance(a, fx.Node) and a.op == "get_attr"
