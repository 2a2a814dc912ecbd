"""What every pass shares: the result type, the compile error, sublayer keys and node helpers."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from l2c_compile.errors import L2CError
from l2c_compile.masks import Mask as Mask  # re-exported: the passes import these from here
from l2c_compile.masks import SublayerKey as SublayerKey
from l2c_compile.masks import key_order as key_order

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
