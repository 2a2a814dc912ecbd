"""Shape propagation (on fake tensors: no compute, no memory) and MAC counts of step graphs.

MACs follow the paper's convention (thop): Linear and Conv only, attention matmuls excluded, per
image (per network row, so CFG's doubled batch is not counted twice).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.shape_prop import ShapeProp

from l2c_compile.compiler.passes.base import LINEAR_TARGETS, linear_call


def propagate_shapes(gm: fx.GraphModule, example_inputs: list[torch.Tensor]) -> None:
    """Fill ``node.meta['tensor_meta']`` for every node, running on fake tensors."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake_inputs = [mode.from_tensor(t) for t in example_inputs]
    ShapeProp(gm, fake_mode=mode).propagate(*fake_inputs)


def tensor_bytes(n: fx.Node) -> int:
    """Bytes of node ``n``'s output tensor (needs shape metadata: :func:`propagate_shapes`)."""
    meta = n.meta["tensor_meta"]
    return math.prod(meta.shape) * torch.empty((), dtype=meta.dtype).element_size()


def _rows(meta) -> int:
    shape = meta.shape
    return math.prod(shape[:-1]) if len(shape) > 1 else 1


def graph_macs(gm: fx.GraphModule, rows_per_image: int) -> int:
    """Linear/Conv MACs of one call of ``gm`` per image (needs shape metadata from the base trace)."""
    return sum(node_macs(gm, n, rows_per_image) for n in gm.graph.nodes) // rows_per_image


def node_macs(gm: fx.GraphModule, n: fx.Node, rows_per_image: int = 1) -> int:
    """Linear/Conv MACs of one evaluation of node ``n`` over all of its rows (0 for other ops)."""
    if n.op == "call_module":
        mod = gm.get_submodule(n.target)
        meta = n.meta.get("tensor_meta")
        if isinstance(mod, nn.Linear) and meta is not None:
            return _rows(meta) * mod.in_features * mod.out_features
        if isinstance(mod, nn.Conv2d) and meta is not None:
            k = mod.in_channels // mod.groups * math.prod(mod.kernel_size)
            return math.prod(meta.shape) * k
        return 0
    if n.op == "call_function" and n.target is F.linear and "l2c_linear_macs_per_sample" in n.meta:
        inp_meta = n.args[0].meta.get("tensor_meta") if isinstance(n.args[0], fx.Node) else None
        rows = _rows(inp_meta) if inp_meta is not None else rows_per_image
        return rows * n.meta["l2c_linear_macs_per_sample"]
    if n.op == "call_function":  # torch.export: aten.linear / aten.conv2d on get_attr weights
        return _aten_macs(gm, n)
    return 0


def _aten_macs(gm: fx.GraphModule, n: fx.Node) -> int:
    meta = n.meta.get("tensor_meta")
    if meta is None:
        return 0
    lin = linear_call(gm, n)
    if lin is not None and n.target is torch.ops.aten.linear.default:
        out_f, in_f = gm.get_parameter(lin.weight).shape
        return _rows(meta) * in_f * out_f
    weight = n.args[1] if n.target is torch.ops.aten.conv2d.default and len(n.args) > 1 else None
    if isinstance(weight, fx.Node) and weight.op == "get_attr":
        w = gm.get_parameter(str(weight.target))
        return math.prod(meta.shape) * math.prod(w.shape[1:])
    return 0


def count_linear_calls(gm: fx.GraphModule) -> int:
    """Number of Linear evaluations in a step graph (call_module Linear and F.linear)."""
    count = 0
    for n in gm.graph.nodes:
        if (n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.Linear)) or (
                n.op == "call_function" and n.target in LINEAR_TARGETS):
            count += 1
    return count
