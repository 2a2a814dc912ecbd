"""Pass 2 — find sublayers: mark every block's attention and MLP residual branch.

Found from the graph's structure alone, for any pre-norm transformer:
- a *residual add* is ``add(s, b)`` where ``b`` depends on ``s`` (``s`` is the residual stream);
- if ``b = mul(g, f)`` and only ``f`` depends on ``s``, ``g`` is the gate (DiT's adaLN-Zero)
  and ``f`` the ungated sublayer output; otherwise ``f = b`` (U-ViT);
- the branch is an attention branch iff it contains SDPA or a softmax, otherwise an MLP branch;
- in execution order the branches must alternate attention, MLP; block ids count pairs.

Post: ``node.meta["l2c_sublayer"] = ("attn"|"mlp", block)`` on each sublayer output node ``f``;
exactly ``2 * depth`` of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx

from l2c_compile.passes.base import (
    SUBLAYER_META,
    CompileError,
    PassResult,
    SublayerKey,
    is_add,
    is_attention_core,
    is_mul,
)


@dataclass(frozen=True)
class Sublayer:
    """One residual branch: ``add = stream + [gate *] value``."""

    key: SublayerKey
    add: fx.Node
    value: fx.Node
    gate: fx.Node | None


def ancestor_sets(graph: fx.Graph) -> dict[fx.Node, int]:
    """Each node's ancestors as a bitset over node positions (Python ints are fast bitsets)."""
    pos = {n: i for i, n in enumerate(graph.nodes)}
    anc: dict[fx.Node, int] = {}
    for n in graph.nodes:
        bits = 0
        for inp in n.all_input_nodes:
            bits |= anc[inp] | (1 << pos[inp])
        anc[n] = bits
    return anc


def find_sublayers(gm: fx.GraphModule, depth: int) -> list[Sublayer]:
    """Locate the 2·depth residual branches of a traced step; raise CompileError if the structure differs."""
    graph = gm.graph
    pos = {n: i for i, n in enumerate(graph.nodes)}
    anc = ancestor_sets(graph)

    def depends(a: fx.Node, b: fx.Node) -> bool:  # does b depend on a?
        return bool(anc[b] >> pos[a] & 1)

    found: list[tuple[str, fx.Node, fx.Node, fx.Node | None]] = []
    for node in graph.nodes:
        if not is_add(node) or len(node.args) < 2:
            continue
        a, b = node.args[0], node.args[1]
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
            continue
        if depends(a, b):
            stream, branch = a, b
        elif depends(b, a):
            stream, branch = b, a
        else:
            continue
        value, gate = branch, None
        if is_mul(branch) and len(branch.args) == 2 and all(isinstance(x, fx.Node) for x in branch.args):
            p, q = branch.args
            dp, dq = depends(stream, p) or p is stream, depends(stream, q) or q is stream
            if dp != dq:
                value, gate = (p, q) if dp else (q, p)
        # The branch body: descendants of the stream that the value depends on.
        body = [n for n in graph.nodes if pos[stream] < pos[n] <= pos[value]
                and depends(stream, n) and (n is value or depends(n, value))]
        kind = "attn" if any(is_attention_core(n) for n in body) else "mlp"
        found.append((kind, node, value, gate))

    if len(found) != 2 * depth:
        raise CompileError(
            f"expected {2 * depth} residual branches ({depth} blocks × attention, MLP) in the traced "
            f"graph, found {len(found)}"
        )
    subs: list[Sublayer] = []
    for i, (kind, add, value, gate) in enumerate(found):
        expected = "attn" if i % 2 == 0 else "mlp"
        if kind != expected:
            raise CompileError(f"residual branch {i} looks like {kind}, expected {expected} (block {i // 2})")
        subs.append(Sublayer((kind, i // 2), add, value, gate))
    return subs


def mark_sublayers(gm: fx.GraphModule, depth: int) -> PassResult:
    """Annotate each sublayer output node with its key (``node.meta['l2c_sublayer']``)."""
    subs = find_sublayers(gm, depth)
    for s in subs:
        s.value.meta[SUBLAYER_META] = s.key
    gated = sum(s.gate is not None for s in subs)
    return PassResult(gm, True, {"sublayers": len(subs), "gated": gated})


def sublayer_nodes(gm: fx.GraphModule) -> dict[SublayerKey, fx.Node]:
    """The marked sublayer output nodes still present in ``gm``."""
    return {n.meta[SUBLAYER_META]: n for n in gm.graph.nodes if SUBLAYER_META in n.meta}
