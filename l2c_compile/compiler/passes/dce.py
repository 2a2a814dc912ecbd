"""Pass — dead code: remove every node whose value nobody uses any more.

After ``specialize`` a reused branch (its LayerNorm, modulation, QKV, attention, projection or
fc1/GELU/fc2) has no users left; this removes it, and a hoisted input (``hoist``) that no node
reads any more. Post: no dead nodes; the output, the standard inputs and the cache inputs are kept.

ATen tags ``scaled_dot_product_attention`` as seeded-random (its dropout), so fx keeps a dead one;
without dropout it is pure, and a reused attention's core (an export capture writes it as that op)
goes with the rest of the branch.

fx keeps every in-place write (``copy_``, ``add_``…) as a side effect. A write into a tensor the
graph allocated itself (not an input, a weight or a view of one), through views of it, is dead
when nothing reads that tensor any more: diffusers' Wan attention applies its rotary embedding as
``out = empty_like(q); out[..., 0::2] = …; out[..., 1::2] = …``, and a reused attention takes
those writes with it.
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
    """fx's purity, except that attention without dropout is pure and that a write into a local
    tensor nobody reads is dead (see the module docstring)."""
    if n.op == "call_function" and n.target in _ATTENTION:
        dropout = n.args[4] if len(n.args) > 4 else n.kwargs.get("dropout_p", 0.0)
        if isinstance(dropout, int | float) and dropout == 0.0:
            return False
    if _writes_first(n) and isinstance(n.args[0], fx.Node):
        base = n.args[0]
        while _is_view(base) and isinstance(base.args[0], fx.Node):
            base = base.args[0]
        if _allocated_here(base) and not _read(base):
            return False
    return n.is_impure()


def _schema(n: fx.Node):
    target = n.target
    return target._schema if n.op == "call_function" and isinstance(target, torch._ops.OpOverload) else None


def _writes_first(n: fx.Node) -> bool:
    """An ATen op that writes into its first argument (``copy_``, ``add_``, …)."""
    s = _schema(n)
    info = s.arguments[0].alias_info if s is not None and s.arguments else None
    return info is not None and info.is_write


def _is_view(n: fx.Node) -> bool:
    """An ATen op whose result is a view of its first argument (``slice``, ``view``, …)."""
    s = _schema(n)
    return (s is not None and bool(s.arguments) and bool(s.returns) and not _writes_first(n)
            and s.returns[0].alias_info is not None and s.arguments[0].alias_info is not None)


def _allocated_here(n: fx.Node) -> bool:
    """A tensor the graph allocates itself: an ATen op's fresh result (no alias of any input)."""
    s = _schema(n)
    return s is not None and not s.is_mutable and all(r.alias_info is None for r in s.returns)


def _read(base: fx.Node) -> bool:
    """Whether any node reads ``base`` or a view of it, other than writes into it (a write returns
    its destination, so what uses that result reads it too)."""
    todo = [base]
    while todo:
        cur = todo.pop()
        for user in cur.users:
            into = (_is_view(user) or _writes_first(user)) and user.args[0] is cur
            if not into or cur in user.args[1:] or cur in user.kwargs.values():
                return True
            todo.append(user)
    return False


def _is_linear(gm: fx.GraphModule, target: str) -> bool:
    import torch.nn as nn

    try:
        return isinstance(gm.get_submodule(target), nn.Linear)
    except AttributeError:
        return False
