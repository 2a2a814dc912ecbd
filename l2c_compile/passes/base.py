"""What every pass shares: the result type, the compile error, sublayer keys and node helpers."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from l2c_compile.errors import L2CError

SublayerKey = tuple[str, int]  # ("attn" | "mlp", block id)
Mask = tuple[frozenset[int], frozenset[int]]  # (reused attention blocks, reused MLP blocks)

SUBLAYER_META = "l2c_sublayer"  # node.meta key on a sublayer's output node: SublayerKey
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


def key_order(key: SublayerKey) -> tuple[int, int]:
    """Execution order of sublayers: block id, then attention before MLP."""
    return (key[1], 0 if key[0] == "attn" else 1)


def is_add(node: fx.Node) -> bool:
    """``a + b`` in any of the spellings fx records."""
    if node.op == "call_function":
        return node.target in (operator.add, torch.add, operator.iadd)
    return node.op == "call_method" and node.target == "add"


def is_mul(node: fx.Node) -> bool:
    """``a * b`` in any of the spellings fx records."""
    if node.op == "call_function":
        return node.target in (operator.mul, torch.mul)
    return node.op == "call_method" and node.target == "mul"


ATTENTION_TARGETS = (F.scaled_dot_product_attention, torch.softmax, F.softmax)


def is_attention_core(node: fx.Node) -> bool:
    """The node that makes a branch an attention branch (SDPA or a softmax)."""
    if node.op == "call_function" and node.target in ATTENTION_TARGETS:
        return True
    return node.op == "call_method" and node.target == "softmax"


def copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A new GraphModule with a copied graph (node meta copied) sharing gm's parameters."""
    graph = fx.Graph()
    value_map: dict[fx.Node, fx.Node] = {}
    out = graph.graph_copy(gm.graph, value_map)
    graph.output(out)
    new = fx.GraphModule(gm, graph, class_name=type(gm).__name__)
    return new
