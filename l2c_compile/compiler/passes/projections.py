"""Capture step — split a parallel block's shared projection by its branches.

A parallel block joins its branches before one linear projection and adds the result, gated, to
its stream (FLUX's single-stream block: ``x + gate · proj_out(cat[attn, act(proj_mlp(h))], -1)``).
The projection is linear, so it splits by input columns:

    proj_out(cat[a, m]) = a · W[:, :d_a]ᵀ + b  +  m · W[:, d_a:]ᵀ

and the gate distributes over the sum. This pass rewrites the captured graph into that form,

    x + gate · proj_out(cat[a, m])   →   (x + gate · (a · W_aᵀ + b)) + gate · (m · W_mᵀ)

so each *projected* branch is a value with its own gated residual add, the shape
``find_sublayers`` reads. Reusing the MLP branch then skips ``proj_mlp`` and its slice of
``proj_out`` (dead code once its projected value comes from the cache), and a cached branch is
``dim`` wide, not ``4·dim``. The family declares which kinds are such branches
(``KindDecl.projection``); each branch's projection runs in the scope of its sublayer path,
``<block>.<projection>_<kind>`` (``Family.paths``), which is where ``find_sublayers`` looks.

Needs the shapes of a ``torch.export`` capture (the branch widths); an fx capture of a family that
declares a projection is a CompileError. Sources: diffusers ``FluxSingleTransformerBlock.forward``;
issue 21 (cache the projected branch outputs).
"""

from __future__ import annotations

import torch
from torch import fx, nn

from l2c_compile.compiler.passes.base import CompileError, is_add, is_mul, node_scope
from l2c_compile.compiler.passes.sublayers import ancestor_sets, inside
from l2c_compile.families import family_of
from l2c_compile.families.base import KindDecl, projected

LINEAR = torch.ops.aten.linear.default
CAT = torch.ops.aten.cat.default
SLICE = torch.ops.aten.slice.Tensor


def split_projections(gm: fx.GraphModule, model: nn.Module, root: str = "model") -> int:
    """Rewrite every declared projection of ``model``'s blocks in ``gm`` (see the module
    docstring); returns how many were split. CompileError naming the block when the graph does not
    have the declared shape: one linear in the projection's scope, fed by a last-dimension ``cat``
    of as many inputs as the block has branches, each coming from its branch's module, and added
    (gated or not) to a stream."""
    family = family_of(model)
    splits: dict[tuple[str, str], list[KindDecl]] = {}
    for path, kind in family.sublayers(model):
        if kind.projection is not None:
            splits.setdefault((path, kind.projection), []).append(kind)
    if not splits:
        return 0
    prefix = f"{root}." if root else ""
    linears: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is LINEAR:
            linears.setdefault(node_scope(node, prefix) or "", []).append(node)
    anc = ancestor_sets(gm.graph)
    pos = {n: i for i, n in enumerate(gm.graph.nodes)}
    checked = []
    for (block, proj), kinds in splits.items():  # every check before the first rewrite
        found = linears.get(f"{block}.{proj}", [])
        if len(found) != 1:
            raise CompileError(f"{block}.{proj}: expected one linear projection in the captured graph, found "
                               f"{len(found)} (a projection split needs the torch.export capture)")
        parts = _branches(gm.graph, found[0], block, kinds, prefix, anc, pos)
        checked.append((found[0], block, kinds, parts, _residual(found[0], f"{block}.{proj}")))
    for linear, block, kinds, parts, (add, gate) in checked:
        _split(gm.graph, linear, block, kinds, parts, add, gate, prefix)
    gm.graph.lint()
    gm.recompile()
    return len(splits)


def _branches(graph: fx.Graph, linear: fx.Node, block: str, kinds: list[KindDecl], prefix: str,
              anc: dict[fx.Node, int], pos: dict[fx.Node, int]) -> list[fx.Node]:
    """The cat inputs of ``linear``, one per branch of ``kinds`` in order, each checked to come
    from its branch's module; CompileError otherwise."""
    where = f"{block}.{kinds[0].projection}"
    cat = linear.args[0]
    val = cat.meta.get("val") if isinstance(cat, fx.Node) else None
    if not (isinstance(cat, fx.Node) and cat.target is CAT and isinstance(val, torch.Tensor)):
        raise CompileError(f"{where}: its input is not a concatenation of the branches ({cat})")
    dim = cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)
    parts = list(cat.args[0])
    if dim not in (-1, val.dim() - 1) or len(parts) != len(kinds):
        raise CompileError(f"{where}: expected a last-dimension cat of {len(kinds)} branches "
                           f"({', '.join(k.kind for k in kinds)}), got {len(parts)} inputs on dim {dim}")
    for part, kind in zip(parts, kinds, strict=True):
        scope = f"{block}.{kind.path}"
        if not any(inside(node_scope(n, prefix), scope) for n in graph.nodes if n is part or anc[part] >> pos[n] & 1):
            raise CompileError(f"{where}: cat input {part.name} does not come from {scope} (the {kind.kind} branch); "
                               "the declared branch order must be the cat's")
    return parts


def _split(graph: fx.Graph, linear: fx.Node, block: str, kinds: list[KindDecl], parts: list[fx.Node],
           add: fx.Node, gate: fx.Node | None, prefix: str) -> None:
    cat = linear.args[0]
    weight, bias = linear.args[1], linear.args[2] if len(linear.args) > 2 else None
    acc = add.args[0] if add.args[1] is (gate or linear) else add.args[1]  # the stream
    lo = 0
    for part, kind in zip(parts, kinds, strict=True):
        width = int(part.meta["val"].shape[-1])
        scope = f"{prefix}{block}.{projected(kind)}"
        with graph.inserting_before(add):
            w = graph.call_function(SLICE, (weight, 1, lo, lo + width))
            p = graph.call_function(LINEAR, (part, w, bias if lo == 0 else None))
            branch = p if gate is None else graph.call_function(gate.target, _swap(gate.args, linear, p))
            acc = graph.call_function(add.target, _swap(add.args, gate or linear, branch, acc))
        w.meta.update(_meta(linear, scope))
        w.meta.pop("val", None)
        p.meta.update(_meta(linear, scope))  # the full projection's shape: (N, T, D)
        if gate is not None:
            branch.meta.update(_meta(gate))
        acc.meta.update(_meta(add))
        lo += width
    add.replace_all_uses_with(acc)
    for n in (add, gate, linear):
        if n is not None:
            graph.erase_node(n)
    if not cat.users:
        graph.erase_node(cat)


def _residual(linear: fx.Node, where: str) -> tuple[fx.Node, fx.Node | None]:
    """The add that takes the projection (gated or not) into the stream, and the gate's mul."""
    gate = None
    node = linear
    if len(node.users) == 1 and is_mul(next(iter(node.users))):
        gate = node = next(iter(node.users))
    users = list(node.users)
    if len(users) != 1 or not is_add(users[0]) or len(users[0].args) != 2:
        raise CompileError(f"{where}: the projection is not added to a stream (gated or not), so its branches "
                           "cannot each be cached")
    return users[0], gate


def _swap(args: tuple, old: fx.Node, new: fx.Node, other: fx.Node | None = None) -> tuple:
    """``args`` with ``old`` replaced by ``new`` and (for an add) the other operand by ``other``."""
    out = []
    for a in args:
        if a is old:
            out.append(new)
        elif other is not None and isinstance(a, fx.Node):
            out.append(other)
        else:
            out.append(a)
    return tuple(out)


def _meta(like: fx.Node, scope: str | None = None) -> dict:
    """The module scope and source line of ``like`` (``scope``: the innermost module replaced)."""
    meta = {k: like.meta[k] for k in ("stack_trace", "val") if k in like.meta}
    stack = dict(like.meta.get("nn_module_stack") or {})
    if scope is not None and stack:
        last = list(stack)[-1]
        stack[last] = (scope, stack[last][1] if isinstance(stack[last], tuple) else nn.Linear)
    if stack:
        meta["nn_module_stack"] = stack
    return meta
