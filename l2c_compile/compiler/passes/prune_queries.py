"""Pass — prune attention queries: compute only the query rows whose outputs are still used.

Attention rows are independent: output row i depends on query row i and on every key and value,
nothing else. A joint attention whose output for some tokens feeds nothing still pays for their
query rows — SD3's last block is ``context_pre_only``: its attention's text-token outputs are
dead once ``to_add_out`` is gone, yet the text tokens' queries (``add_q_proj``, its RMS norm) and
their attention rows are computed. This pass follows an attention's output through ops that keep
its token axis (transpose, a reshape merging the head dims, dtype casts) to a slice of that axis,
and slices the *query* instead: the slice moves before the attention, and where the query is the
concatenation of the tokens' streams, the kept stream's queries are taken directly, so the other
stream's query projection becomes dead code.

Pre: dead users removed (``dce``). Post: an attention followed (through token-preserving ops) by a
slice of its tokens computes only those query rows; keys, values and every value after the slice
are unchanged (the recorded shapes of the few ops between the attention and the slice still say
the full token count). Skipped, unchanged: an attention with a mask or causal flag, a reshape that
spells the token count out, or any shape the pass cannot read.
"""

from __future__ import annotations

import torch
from torch import fx

from l2c_compile.compiler.passes.base import PassResult, copy_scope
from l2c_compile.compiler.passes.dce import dead_code

SDPA = (torch.ops.aten.scaled_dot_product_attention.default, torch.nn.functional.scaled_dot_product_attention)
SLICE = torch.ops.aten.slice.Tensor
CAT = torch.ops.aten.cat.default
TRANSPOSE = torch.ops.aten.transpose.int
RESHAPE = (torch.ops.aten.reshape.default, torch.ops.aten.view.default)
SAME_ROWS = (torch.ops.aten.to.dtype, torch.ops.aten._to_copy.default, torch.ops.aten.contiguous.default,
             torch.ops.aten.clone.default)


def _shape(node: object) -> tuple | None:
    if not isinstance(node, fx.Node):
        return None
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return tuple(val.shape)
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _static(x: object) -> int | None:
    try:
        return int(x)
    except (TypeError, ValueError):
        return None


def _token_slice(attn: fx.Node) -> tuple[fx.Node, int, int] | None:
    """``(slice node, lo, hi)`` when ``attn``'s (N, H, T, d) output reaches, through one chain of
    single-user ops that keep its token axis, a step-1 slice of that axis; else None."""
    node, axis = attn, 2
    while len(node.users) == 1:
        user = next(iter(node.users))
        if user.op != "call_function":
            return None
        if user.target is TRANSPOSE:
            a, b = (d % len(_shape(node) or ()) if _shape(node) else d for d in user.args[1:3])
            axis = b if axis == a else a if axis == b else axis
        elif user.target in RESHAPE:
            before, after = _shape(node), _shape(user)
            if before is None or after is None or len(after) <= axis:
                return None
            kept = all(_static(x) == _static(y) and _static(x) is not None for x, y in zip(before[1:axis + 1],
                                                                                             after[1:axis + 1],
                                                                                             strict=False))
            target = user.args[1] if len(user.args) > 1 else ()
            fixed = len(target) > axis and isinstance(target[axis], int) and target[axis] != -1
            if not kept or fixed:
                return None  # the reshape mixes the token axis with another, or spells its length out
        elif user.target in SAME_ROWS:
            pass
        elif user.target is SLICE:
            defaults = (0, None, None, 1)  # slice.Tensor(self, dim, start, end, step)
            dim, lo, hi, step = (*user.args[1:], *defaults[len(user.args) - 1:])[:4]
            lo = lo or 0
            rank = len(_shape(node) or ())
            size = _static((_shape(node) or (None,) * (axis + 1))[axis])
            if rank == 0 or dim % rank != axis or step != 1 or size is None:
                return None
            hi = size if hi is None else min(int(hi), size)
            return (user, int(lo), hi) if 0 <= int(lo) < hi and (int(lo), hi) != (0, size) else None
        else:
            return None
        node = user
    return None


def _query_rows(graph: fx.Graph, q: fx.Node, lo: int, hi: int, before: fx.Node) -> fx.Node:
    """Rows ``lo:hi`` of the query (N, H, T, d): a whole part of a token ``cat`` when they are
    one, else a slice."""
    if q.op == "call_function" and q.target is CAT and (q.args[1] if len(q.args) > 1 else 0) in (2, -2):
        start = 0
        for part in q.args[0]:
            size = _static((_shape(part) or (None,) * 3)[2])
            if size is None:
                break
            if (start, start + size) == (lo, hi):
                return part
            start += size
    with graph.inserting_before(before):
        rows = graph.call_function(SLICE, (q, 2, lo, hi))
    copy_scope(before, rows)
    return rows


def prune_queries(gm: fx.GraphModule) -> PassResult:
    """Slice the query rows of every attention whose output rows are sliced (see the module
    docstring); returns the number of attentions pruned and query rows removed per sample."""
    graph = gm.graph
    pruned, rows_removed = 0, 0
    for attn in list(graph.nodes):
        if attn.op != "call_function" or attn.target not in SDPA or len(attn.args) < 3:
            continue
        if any(a not in (None, False, 0.0) for a in attn.args[3:5]) or attn.kwargs.get("attn_mask") is not None \
                or attn.kwargs.get("is_causal"):
            continue
        found = _token_slice(attn)
        q_shape = _shape(attn.args[0])
        if found is None or q_shape is None or _static(q_shape[2]) is None:
            continue
        cut, lo, hi = found
        attn.args = (_query_rows(graph, attn.args[0], lo, hi, attn), *attn.args[1:])
        cut.replace_all_uses_with(cut.args[0])
        graph.erase_node(cut)
        pruned += 1
        rows_removed += _static(q_shape[2]) - (hi - lo)
    if pruned:
        dead_code(gm)  # the other stream's query path, and a hoisted input only it read
        graph.lint()
        gm.recompile()
    return PassResult(gm, bool(pruned), {"attentions_pruned": pruned, "query_rows_removed": rows_removed})
