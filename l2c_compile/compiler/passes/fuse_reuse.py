"""Pass — fuse reuse epilogues: lower "residual + gate × cached, then the next LayerNorm" to one op.

When a sublayer is reused, what is left of it is memory-bound glue. This pass finds, in a
specialized step graph, every LayerNorm whose input is a residual add of a *cache input* and
rewrites the chain into a fused custom op from :mod:`l2c_compile.kernels` (Triton on CUDA, the
torch reference elsewhere):

- DiT:   ``x_new = x + gate·cached``; ``h = LN(x_new)·(1 + scale) + shift``
         → ``l2c::reuse_residual_ln_modulate``;
- DiT, two reused sublayers in a row: ``x + g1·c1 + g2·c2`` then the modulated LN
         → ``l2c::reuse2_residual_ln_modulate``;
- U-ViT: ``x_new = x + cached``; ``h = LN(x_new; weight, bias)`` → ``l2c::reuse_residual_layernorm``.

Pre: the graph is specialized and dead code is removed. Post: each rewritten chain is one op node
whose two outputs replace the residual stream and the LayerNorm (or modulation) output, and which
says in ``meta["l2c_comment"]`` whose cached outputs it adds (the emitted code prints it: a reader
cannot tell ``cache_attn_3`` from ``cache_mlp_3`` among eight positional arguments); every other
node is untouched. Counts rewrites per op.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from l2c_compile.compiler.passes.base import (
    CACHE_INPUT_META,
    SUBLAYER_META,
    PassResult,
    copy_scope,
    is_add,
    is_mul,
    layer_norm_call,
    unsqueezed,
)
from l2c_compile.compiler.passes.naming import COMMENT_META, STANDS_FOR_META


def _is_cache(node) -> bool:
    return isinstance(node, fx.Node) and node.op == "placeholder" and CACHE_INPUT_META in node.meta


def _reuse_term(add: fx.Node) -> tuple[fx.Node, fx.Node | None, fx.Node] | None:
    """``(stream, gate or None, cached)`` when ``add`` is ``stream + [gate.unsqueeze(1) *] cached``."""
    if not (isinstance(add, fx.Node) and is_add(add)) or len(add.args) != 2 or add.kwargs:
        return None
    for stream, term in (add.args, add.args[::-1]):
        if not isinstance(stream, fx.Node):
            continue
        if _is_cache(term):
            return stream, None, term
        if isinstance(term, fx.Node) and is_mul(term) and len(term.args) == 2:
            for g, c in (term.args, term.args[::-1]):
                gate = unsqueezed(g)
                if gate is not None and _is_cache(c) and len(term.users) == 1:
                    return stream, gate, c
    return None


def _modulation(ln: fx.Node) -> tuple[fx.Node, fx.Node, fx.Node] | None:
    """``(out, shift, scale)`` when ``ln``'s only use is ``ln * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)``."""
    if len(ln.users) != 1:
        return None
    mul = next(iter(ln.users))
    if not is_mul(mul) or len(mul.users) != 1:
        return None
    other = mul.args[1] if mul.args[0] is ln else mul.args[0]
    if not (isinstance(other, fx.Node) and is_add(other) and 1 in other.args):
        return None
    scale = unsqueezed(other.args[1] if other.args[0] == 1 else other.args[0])
    out = next(iter(mul.users))
    if scale is None or not is_add(out):
        return None
    shift = unsqueezed(out.args[1] if out.args[0] is mul else out.args[0])
    return (out, shift, scale) if shift is not None else None


def _adds(*cached: fx.Node) -> str:
    """``+ cached attn output of block 0, + cached mlp output of block 0`` for the cache inputs."""
    return ", ".join(f"+ cached {kind} output of block {block}"
                     for kind, block in (c.meta[CACHE_INPUT_META] for c in cached))


def _nodes_after(graph: fx.Graph, node: fx.Node) -> set[fx.Node]:
    out, seen = set(), False
    for n in graph.nodes:
        if seen:
            out.add(n)
        seen = seen or n is node
    return out


def fuse_reuse(gm: fx.GraphModule) -> PassResult:
    """Rewrite reuse epilogues into fused ``torch.ops.l2c`` ops."""
    import l2c_compile.kernels  # noqa: F401  (registers torch.ops.l2c.*)

    graph = gm.graph
    counts = {"reuse_residual_ln_modulate": 0, "reuse2_residual_ln_modulate": 0, "reuse_residual_layernorm": 0}
    for ln in list(graph.nodes):
        if ln.graph is not graph:
            continue
        norm = layer_norm_call(gm, ln)
        if norm is None:
            continue
        add = norm.input
        term = _reuse_term(add)
        if term is None:
            continue
        stream, gate, cached = term
        anchor = ln
        with graph.inserting_before(anchor):
            cached = graph.call_method("contiguous", (cached,))  # a no-op for Linear outputs
        if norm.weight is not None:
            if gate is not None or norm.bias is None:
                continue
            with graph.inserting_before(anchor):
                weight = graph.get_attr(norm.weight)
                bias = graph.get_attr(norm.bias)
                x = graph.call_method("contiguous", (stream,))
                fused = graph.call_function(torch.ops.l2c.reuse_residual_layernorm.default,
                                            (x, cached, weight, bias, norm.eps))
            h_old, op = ln, "reuse_residual_layernorm"
            fused.meta[COMMENT_META] = _adds(cached.args[0])
        else:
            mod = _modulation(ln)
            if mod is None or gate is None:
                continue
            h_old, shift, scale = mod
            anchor = h_old
            first = _reuse_term(stream) if len(stream.users) == 1 else None
            with graph.inserting_before(anchor):
                if first is not None and first[1] is not None:
                    x = graph.call_method("contiguous", (first[0],))
                    cached1 = graph.call_method("contiguous", (first[2],))
                    fused = graph.call_function(
                        torch.ops.l2c.reuse2_residual_ln_modulate.default,
                        (x, first[1], cached1, gate, cached, shift, scale, norm.eps))
                    op = "reuse2_residual_ln_modulate"
                    fused.meta[COMMENT_META] = _adds(first[2], cached.args[0])
                else:
                    x = graph.call_method("contiguous", (stream,))
                    fused = graph.call_function(torch.ops.l2c.reuse_residual_ln_modulate.default,
                                                (x, gate, cached, shift, scale, norm.eps))
                    op = "reuse_residual_ln_modulate"
                    fused.meta[COMMENT_META] = _adds(cached.args[0])
        with graph.inserting_before(anchor):
            x_new = graph.call_function(operator.getitem, (fused, 0))
            h = graph.call_function(operator.getitem, (fused, 1))
        new = [n for n in graph.nodes if n.op not in ("placeholder", "output") and set(n.meta) <= {COMMENT_META}]
        copy_scope(ln, *new)  # the block of the LayerNorm it replaces
        x_new.meta["l2c_name"] = add.meta.get("l2c_name", "x")
        if SUBLAYER_META in add.meta:  # the residual stream is the trunk output a later call reads
            x_new.meta[SUBLAYER_META] = add.meta.pop(SUBLAYER_META)
        x_new.meta[STANDS_FOR_META] = add.meta.get(STANDS_FOR_META, add.name)  # a module call may pass it
        h.meta["l2c_name"] = "h"
        for meta_key in ("tensor_meta",):
            if meta_key in add.meta:
                x_new.meta[meta_key] = add.meta[meta_key]
            if meta_key in h_old.meta:
                h.meta[meta_key] = h_old.meta[meta_key]
        h_old.replace_all_uses_with(h)
        # Users of the old residual stream that precede the fused op are the LayerNorm chain it
        # replaces (now dead); every later user reads x_new.
        later = _nodes_after(graph, h)
        add.replace_all_uses_with(x_new, delete_user_cb=lambda user, later=later: user in later)
        counts[op] += 1
    modified = any(counts.values())
    if modified:
        graph.eliminate_dead_code()
        graph.lint()
        gm.recompile()
    return PassResult(gm, modified, {"rewrites": sum(counts.values()), **counts})
