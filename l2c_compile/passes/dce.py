"""Pass — dead code: remove every node whose value nobody uses any more.

After ``specialize`` a reused branch (its LayerNorm, modulation, QKV, attention, projection or
fc1/GELU/fc2) has no users left; this removes it, and a hoisted input (``hoist``) that no node
reads any more. Post: no dead nodes; the output, the standard inputs and the cache inputs are kept.
"""

from __future__ import annotations

from torch import fx

from l2c_compile.passes.base import PassResult
from l2c_compile.passes.hoist import HOIST_META


def dead_code(gm: fx.GraphModule) -> PassResult:
    """Eliminate dead nodes and report how many went, by kind."""
    before = {n.name: n for n in gm.graph.nodes}
    changed = gm.graph.eliminate_dead_code()
    for n in [n for n in gm.graph.nodes if n.op == "placeholder" and HOIST_META in n.meta and not n.users]:
        gm.graph.erase_node(n)  # the prologue still computes it for the steps that read it
        changed = True
    after = {n.name for n in gm.graph.nodes}
    removed = [n for name, n in before.items() if name not in after]
    linears = sum(1 for n in removed if n.op == "call_module" and _is_linear(gm, n.target))
    if changed:
        gm.recompile()
    return PassResult(gm, changed, {"nodes_removed": len(removed), "linear_calls_removed": linears})


def _is_linear(gm: fx.GraphModule, target: str) -> bool:
    import torch.nn as nn

    try:
        return isinstance(gm.get_submodule(target), nn.Linear)
    except AttributeError:
        return False
