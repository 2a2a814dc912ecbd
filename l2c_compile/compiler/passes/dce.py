"""Pass — dead code: remove every node whose value nobody uses any more.

After ``specialize`` a reused branch (its LayerNorm, modulation, QKV, attention, projection or
fc1/GELU/fc2) has no users left; this removes it, and a hoisted input (``hoist``) that no node
reads any more. Post: no dead nodes; the output, the standard inputs and the cache inputs are kept.

ATen tags ``scaled_dot_product_attention`` as seeded-random (its dropout), so fx keeps a dead one;
without dropout it is pure, and a reused attention's core (an export capture writes it as that op)
goes with the rest of the branch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx

from l2c_compile.compiler.passes.base import PassResult
from l2c_compile.compiler.passes.hoist import HOIST_META


def dead_code(gm: fx.GraphModule) -> PassResult:
    """Eliminate dead nodes and report how many went, by kind."""
    before = {n.name: n for n in gm.graph.nodes}
    changed = gm.graph.eliminate_dead_code(is_impure_node=_impure)
    for n in [n for n in gm.graph.nodes if n.op == "placeholder" and HOIST_META in n.meta and not n.users]:
        gm.graph.erase_node(n)  # the prologue still computes it for the steps that read it
        changed = True
    after = {n.name for n in gm.graph.nodes}
    removed = [n for name, n in before.items() if name not in after]
    linears = sum(1 for n in removed if n.op == "call_module" and _is_linear(gm, n.target))
    if changed:
        gm.recompile()
    return PassResult(gm, changed, {"nodes_removed": len(removed), "linear_calls_removed": linears})


_ATTENTION = (torch.ops.aten.scaled_dot_product_attention.default, F.scaled_dot_product_attention)


def _impure(n: fx.Node) -> bool:
    """fx's purity, except that attention without dropout is pure (see the module docstring)."""
    if n.op == "call_function" and n.target in _ATTENTION:
        dropout = n.args[4] if len(n.args) > 4 else n.kwargs.get("dropout_p", 0.0)
        if isinstance(dropout, int | float) and dropout == 0.0:
            return False
    return n.is_impure()


def _is_linear(gm: fx.GraphModule, target: str) -> bool:
    import torch.nn as nn

    try:
        return isinstance(gm.get_submodule(target), nn.Linear)
    except AttributeError:
        return False
