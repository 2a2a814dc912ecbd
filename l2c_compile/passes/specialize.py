"""Pass 3 — specialize: bake one step mask into a copy of the marked graph.

Pre: sublayer output nodes are marked (``sublayers.mark_sublayers``).
Post: for every reused sublayer, a placeholder ``cache_<kind>_<block>`` (meta
``l2c_cache_input``) replaces all uses of its output node, so the branch computing it is dead;
the output becomes ``(eps, *exported)`` where ``exported`` are the computed sublayer outputs that
later calls read (in ``key_order``). Dead nodes are *not* removed here (that is ``dce``'s job).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import fx

from l2c_compile.passes.base import (
    CACHE_INPUT_META,
    SUBLAYER_META,
    CompileError,
    Mask,
    PassResult,
    SublayerKey,
    cache_input_name,
    copy_graph_module,
    key_order,
)
from l2c_compile.passes.sublayers import sublayer_nodes


def specialize(gm: fx.GraphModule, mask: Mask, exported: Sequence[SublayerKey]) -> PassResult:
    """Return a new GraphModule (sharing weights) with ``mask`` baked in and ``exported`` as outputs."""
    new = copy_graph_module(gm)
    graph = new.graph
    nodes = sublayer_nodes(new)
    reused = sorted([("attn", i) for i in mask[0]] + [("mlp", i) for i in mask[1]], key=key_order)
    missing = [k for k in (*reused, *exported) if k not in nodes]
    if missing:
        raise CompileError(f"sublayers {missing} are not in the traced graph")
    clash = set(reused) & set(exported)
    if clash:
        raise CompileError(f"sublayers {sorted(clash)} cannot be both reused and exported")

    last_placeholder = [n for n in graph.nodes if n.op == "placeholder"][-1]
    anchor = last_placeholder
    for key in reused:
        with graph.inserting_after(anchor):
            ph = graph.placeholder(cache_input_name(key))
        ph.meta[CACHE_INPUT_META] = key
        if "tensor_meta" in nodes[key].meta:
            ph.meta["tensor_meta"] = nodes[key].meta["tensor_meta"]
        nodes[key].replace_all_uses_with(ph)
        nodes[key].meta.pop(SUBLAYER_META)  # its value now comes from the cache; the node is dead
        anchor = ph

    output = next(n for n in graph.nodes if n.op == "output")
    eps = output.args[0]
    output.args = ((eps, *[nodes[k] for k in sorted(exported, key=key_order)]),)
    graph.lint()
    new.recompile()
    return PassResult(new, True, {"reused": len(reused), "exported": len(exported)})
