"""Pass — prune projection chunks: compute only the rows of a chunked Linear that are still used.

DiT's adaLN projection computes 6 modulation vectors per block (shift, scale, gate for attention
and MLP) as one Linear, then ``chunk(6)``. Once a sublayer is reused, its shift and scale are dead;
only its gate is needed. This pass rewrites ``linear(h).chunk(k)`` whose chunks are partly unused
into one ``F.linear`` per contiguous run of used chunks, on *views* of the weight rows (no copy, no
new parameters). Fully used chunks are left alone.

Pre: dead users removed (run ``dce`` first). Post: every chunk of a pruned projection that remains
is consumed; the module's weights are untouched.
"""

from __future__ import annotations

import operator

import torch.nn.functional as F
from torch import fx

from l2c_compile.compiler.passes.base import (
    LinearCall,
    PassResult,
    chunk_call,
    copy_name,
    copy_scope,
    linear_call,
)
from l2c_compile.compiler.passes.naming import NAME_META


def _chunk_parts(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.Node, LinearCall, int] | None:
    """``(linear_node, linear, n_chunks)`` when node is ``linear(...).chunk(n, dim=-1|1)`` (a Linear
    module, or ``F.linear`` / ``aten.linear`` on whole parameters as ``torch.export`` records it)."""
    parts = chunk_call(node)
    if parts is None:
        return None
    src, n, dim = parts
    lin = linear_call(gm, src) if dim in (1, -1) else None
    return (src, lin, n) if lin is not None else None


def prune_chunks(gm: fx.GraphModule) -> PassResult:
    """Replace partly used chunked projections by linears over the used weight rows."""
    graph = gm.graph
    pruned = 0
    rows_removed = 0
    macs_removed = 0  # per sample (the adaLN projections act on one vector per sample)
    for node in list(graph.nodes):
        parts = _chunk_parts(gm, node)
        if parts is None:
            continue
        lin_node, lin, n = parts
        out_features, in_features = gm.get_parameter(lin.weight).shape
        if len(lin_node.users) != 1 or out_features % n:
            continue
        getitems = {u.args[1]: u for u in node.users if u.op == "call_function" and u.target is operator.getitem}
        if len(getitems) != len(node.users):
            continue  # the tuple escapes somewhere: leave it alone
        used = sorted(i for i, g in getitems.items() if g.users)
        if len(used) == n:
            continue
        width = out_features // n
        runs: list[list[int]] = []
        for i in used:
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
        inp = lin.input
        with graph.inserting_before(node):
            weight = graph.get_attr(lin.weight)
            bias = graph.get_attr(lin.bias) if lin.bias is not None else None
            for run in runs:
                rows = slice(run[0] * width, (run[-1] + 1) * width)
                w = graph.call_function(operator.getitem, (weight, rows))
                b = graph.call_function(operator.getitem, (bias, rows)) if bias is not None else None
                if b is not None:
                    copy_scope(node, bias, b)
                out = graph.call_function(F.linear, (inp, w, b))
                out.meta["l2c_linear_macs_per_sample"] = in_features * len(run) * width
                copy_scope(node, weight, w, out)
                if len(run) == 1:
                    copy_name(getitems[run[0]], out)
                    getitems[run[0]].replace_all_uses_with(out)
                else:
                    out.meta[NAME_META] = "modulation"
                    pieces = graph.call_method("chunk", (out, len(run)), {"dim": -1})
                    copy_scope(node, pieces)
                    for j, i in enumerate(run):
                        piece = graph.call_function(operator.getitem, (pieces, j))
                        copy_scope(node, piece)
                        copy_name(getitems[i], piece)
                        getitems[i].replace_all_uses_with(piece)
        pruned += 1
        dead_rows = (n - len(used)) * width
        rows_removed += dead_rows
        macs_removed += dead_rows * in_features
    if pruned:
        graph.eliminate_dead_code()
        graph.lint()
        gm.recompile()
    return PassResult(gm, bool(pruned), {"projections_pruned": pruned, "rows_removed": rows_removed,
                                         "macs_removed_per_sample": macs_removed})
