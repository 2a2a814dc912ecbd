"""Pass 2 — find sublayers by module scope: each declared sublayer's output, gate and residual add.

Each model family *declares* its cacheable sublayers by module path (:mod:`l2c_compile.families`:
``blocks.{i}.attn``, ``blocks.{i}.mlp`` for DiT; U-ViT's in-, mid- and out-blocks; PixArt's
``transformer_blocks.{i}.attn1`` / ``attn2`` / ``ff``, three kinds per block). The pass finds
them in a traced graph from the nodes' module scope (``node.meta["nn_module_stack"]``, which both
``torch.fx`` symbolic tracing and ``torch.export`` record), never from the shape of the code:

- the sublayer's *output* is the one tensor-valued node inside its module scope that is used
  outside it (an exported graph's shape arithmetic, e.g. PixArt's cross-attention batch · heads,
  may be shared with later modules and is not an output);
- following that output's users (through dtype casts: Wan's ``ff_output.float() * c_gate_msa``,
  a no-op in float32, an upcast in bfloat16): an optional ``mul`` by a value that does not depend
  on it is the *gate* (DiT's adaLN-Zero), and the first ``add`` with an operand that does not
  depend on it is the *residual add* (that operand is the stream).

Any other add in the model (guidance, positional embeddings, skip connections, extra norms) is
ignored, so models are traced as they are written.

Post: ``node.meta["l2c_sublayer"] = (kind, block)`` on each sublayer output node and
``node.meta["l2c_residual"] = (kind, block)`` on its residual add; exactly one of each per
declared sublayer, or, for a sublayer with several cached outputs (a joint attention's image
and text streams), one per output, keyed by its cache slot ``(kind_output, block)``. Errors: :class:`CompileError` naming the module path that is missing or has no
single output or residual add.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import fx, nn

from l2c_compile.compiler.passes.base import (
    RESIDUAL_META,
    SUBLAYER_META,
    CompileError,
    PassResult,
    SublayerKey,
    is_add,
    is_mul,
    key_order,
    node_scope,
)
from l2c_compile.families import FamilyError, family_of
from l2c_compile.families.vocabulary import TRUNK, register_slot


def sublayer_paths(model: nn.Module) -> dict[SublayerKey, str]:
    """``{(kind, block): module path}`` of ``model``, from its family's declaration
    (:mod:`l2c_compile.families`); CompileError when none declares it or a path is missing."""
    try:
        return family_of(model).paths(model)
    except FamilyError as exc:
        raise CompileError(str(exc)) from None


def cache_slots(outputs: Mapping[SublayerKey, tuple[str, ...]]) -> dict[SublayerKey, tuple[SublayerKey, ...]]:
    """Each sublayer's cache slots: the key itself for one output, ``(kind_output, block)`` per
    output for several (the slot kinds join the vocabulary, right after their kind)."""
    out: dict[SublayerKey, tuple[SublayerKey, ...]] = {}
    for (kind, block), names in outputs.items():
        out[(kind, block)] = ((kind, block),) if len(names) == 1 else tuple(
            (register_slot(kind, name, j), block) for j, name in enumerate(names))
    return out


PATHS_META = "l2c_sublayer_paths"  # GraphModule.meta key: the traced model's declared sublayer paths
OUTPUTS_META = "l2c_sublayer_outputs"  # GraphModule.meta key: each declared sublayer's output names


@dataclass(frozen=True)
class Sublayer:
    """One residual branch: ``add = stream + [gate *] value``, found under module ``path``."""

    key: SublayerKey
    path: str
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


def _is_value(node: fx.Node) -> bool:
    """Whether ``node`` computes a tensor (an exported node records its value in ``meta["val"]``;
    an fx node records nothing and counts as a tensor)."""
    val = node.meta.get("val")
    return val is None or isinstance(val, torch.Tensor)


def inside(scope: str | None, path: str) -> bool:
    """Whether module path ``scope`` is ``path`` or runs inside it."""
    return scope is not None and (scope == path or scope.startswith(path + "."))


def find_sublayers(
    gm: fx.GraphModule,
    paths: Mapping[SublayerKey, str] | None = None,
    *,
    root: str = "model",
    outputs: Mapping[SublayerKey, tuple[str, ...]] | None = None,
) -> list[Sublayer]:
    """Locate every declared sublayer of a traced (fx or ``torch.export``) graph, in key order.

    ``paths``: ``{(kind, block): module path}``; None takes the declaration that ``trace_step``
    recorded for the traced model (``gm.meta["l2c_sublayer_paths"]``). ``root``: where the model
    sits in the traced module (``"model"`` under the guidance wrapper; ``""`` for a model traced on
    its own). ``outputs``: each sublayer's cached output names (default: one each, or what
    ``trace_step`` recorded); a sublayer with several outputs gives one :class:`Sublayer` per
    output, keyed by its cache slot (:func:`cache_slots`): the declared outputs in the order the
    block adds them to its streams.
    Raises CompileError naming a declared path that is not in the graph, has another number of
    outputs than declared, or feeds no residual add.
    """
    if paths is None:
        paths = gm.meta.get(PATHS_META)
        if paths is None:
            raise CompileError("the traced graph records no sublayer declaration: pass paths")
        if outputs is None:
            outputs = gm.meta.get(OUTPUTS_META)
    slots = cache_slots({k: (outputs or {}).get(k, ("out",)) for k in paths})
    graph = gm.graph
    pos = {n: i for i, n in enumerate(graph.nodes)}
    anc = ancestor_sets(graph)
    prefix = f"{root}." if root else ""
    scopes = {n: node_scope(n, prefix) for n in graph.nodes}

    def depends(a: fx.Node, b: fx.Node) -> bool:  # does b depend on a?
        return bool(anc[b] >> pos[a] & 1)

    subs: list[Sublayer] = []
    for key in sorted(paths, key=key_order):
        path = paths[key]
        where = f"sublayer {path} ({key[0]} of block {key[1]})"
        members = [n for n in graph.nodes if inside(scopes[n], path)]
        if not members:
            raise CompileError(f"{where} is not in the traced graph (no node runs in that module)")
        # Shape arithmetic (an exported graph's symbolic sizes, e.g. batch · heads) may be shared
        # with later modules; only tensor values are the sublayer's output.
        found = [n for n in members if _is_value(n) and any(not inside(scopes[u], path) for u in n.users)]
        # A module that returns a tuple: fx records getitem nodes outside it, which are the values.
        found = [u for n in found for u in ([n] if _is_value_node(n) else _getitems(n))]
        want = len(slots[key])
        if len(found) != want:
            expected = "one output" if want == 1 else f"{want} outputs"
            raise CompileError(f"{where} has {len(found)} values used outside it; expected {expected}")
        # Several outputs are told apart by the streams they join, in the order the block adds
        # them (the image stream's first: SD3, FLUX and the toy FLUX add it before the text
        # stream's), not by the order an exported graph happens to compute them in.
        branches = sorted((_residual(slot, path, value, where, depends) for slot, value in zip(slots[key], found, strict=True)),
                          key=lambda b: pos[b.add])
        subs += [Sublayer(slot, b.path, b.add, b.value, b.gate) for slot, b in zip(slots[key], branches, strict=True)]
    return subs


def _is_value_node(n: fx.Node) -> bool:
    return not any(u.target is operator.getitem for u in n.users)


def _getitems(n: fx.Node) -> list[fx.Node]:
    return sorted((u for u in n.users if u.target is operator.getitem), key=lambda u: u.args[1])


_CASTS = (torch.ops.aten.to.dtype, torch.ops.aten._to_copy.default)


def _is_cast(node: fx.Node, of: fx.Node) -> bool:
    """Whether ``node`` only changes the dtype of ``of``: ``x.float()``, ``x.to(dtype)`` (fx), or
    export's ``aten.to.dtype`` / ``aten._to_copy``; no other tensor goes in."""
    if not node.args or node.args[0] is not of or any(isinstance(a, fx.Node) for a in node.args[1:]):
        return False
    if node.op == "call_function":
        return node.target in _CASTS
    return node.op == "call_method" and node.target in ("float", "to")


def _residual(key: SublayerKey, path: str, value: fx.Node, where: str, depends) -> Sublayer:
    """The optional gate and the residual add that ``value`` (a sublayer output) feeds, through
    any dtype casts on the way."""
    cur, gate = value, None
    while True:
        # a raw export graph checks a cast's input (``_assert_tensor_metadata``; trace_step drops it)
        users = [u for u in cur.users if u.target is not torch.ops.aten._assert_tensor_metadata.default]
        if len(users) != 1:
            raise CompileError(f"{where}: its output feeds {len(users)} nodes, not one residual add")
        user = users[0]
        if _is_cast(user, cur):
            cur = user
            continue
        others = [a for a in user.args if isinstance(a, fx.Node) and a is not cur]
        if len(others) != 1 or depends(value, others[0]) or others[0] is value:
            raise CompileError(f"{where}: no residual add found after its output (at node {user.name})")
        if is_mul(user) and gate is None:
            gate, cur = others[0], user
            continue
        if not is_add(user):
            raise CompileError(f"{where}: no residual add found after its output (at node {user.name})")
        return Sublayer(key, path, user, value, gate)


@dataclass(frozen=True)
class MarkConfig:
    """The declared sublayers to mark: ``((kind, block), module path)`` pairs."""

    paths: tuple[tuple[SublayerKey, str], ...]
    outputs: tuple[tuple[SublayerKey, tuple[str, ...]], ...] = ()  # several-output sublayers only

    @classmethod
    def of(cls, paths: Mapping[SublayerKey, str],
           outputs: Mapping[SublayerKey, tuple[str, ...]] | None = None) -> MarkConfig:
        """From a ``{key: path}`` mapping (and ``{key: output names}``), in key order."""
        multi = {k: v for k, v in (outputs or {}).items() if len(v) > 1}
        return cls(tuple(sorted(paths.items(), key=lambda kv: key_order(kv[0]))),
                   tuple(sorted(multi.items(), key=lambda kv: key_order(kv[0]))))


def mark_sublayers(gm: fx.GraphModule, config: MarkConfig | None = None) -> PassResult:
    """Annotate each sublayer output node (``l2c_sublayer``) and its residual add (``l2c_residual``).

    ``config``: the sublayers to find; None takes the traced model's declaration.
    """
    if config is None:
        subs = find_sublayers(gm)
    else:
        subs = find_sublayers(gm, dict(config.paths), outputs=dict(config.outputs))
    for s in subs:
        s.value.meta[SUBLAYER_META] = s.key
        s.add.meta[RESIDUAL_META] = s.key
    gated = sum(s.gate is not None for s in subs)
    return PassResult(gm, True, {"sublayers": len(subs), "gated": gated})


def sublayer_nodes(gm: fx.GraphModule) -> dict[SublayerKey, fx.Node]:
    """The marked sublayer output nodes still present in ``gm``."""
    return {n.meta[SUBLAYER_META]: n for n in gm.graph.nodes if SUBLAYER_META in n.meta}


def residual_adds(gm: fx.GraphModule) -> dict[SublayerKey, fx.Node]:
    """The marked residual adds still present in ``gm``."""
    return {n.meta[RESIDUAL_META]: n for n in gm.graph.nodes if RESIDUAL_META in n.meta}


@dataclass(frozen=True)
class TrunkConfig:
    """Where the trunk ends: the module path of the model's last block."""

    last_block: str


def mark_trunk(gm: fx.GraphModule, config: TrunkConfig) -> PassResult:
    """Mark the trunk's outputs for a schedule whose calls may reuse the trunk.

    The trunk output is what the last block hands on: each tensor computed inside its module
    scope and used outside it (DiT's ``x`` after ``blocks[-1]``, U-ViT's after the last out-block),
    marked ``l2c_sublayer = (TRUNK, j)`` in graph order, so ``specialize`` can read it from the
    cache (every block and whatever fed only them goes dead) or export it like a sublayer output.
    CompileError when the last block computes nothing used after it.
    """
    prefix = "model."
    found = [n for n in gm.graph.nodes
             if inside(node_scope(n, prefix), config.last_block) and _is_value(n) and n.op != "placeholder"
             and any(u.op == "output" or not inside(node_scope(u, prefix), config.last_block) for u in n.users)]
    found = [u for n in found for u in ([n] if _is_value_node(n) else _getitems(n))]
    if not found:
        raise CompileError(f"the last block {config.last_block} hands no tensor on: the trunk has no output")
    for j, n in enumerate(found):
        n.meta[SUBLAYER_META] = (TRUNK, j)
    return PassResult(gm, True, {"trunk_outputs": len(found)})


def trunk_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The marked trunk output nodes of ``gm``, in slot order."""
    marked = [n for n in gm.graph.nodes if n.meta.get(SUBLAYER_META, ("",))[0] == TRUNK]
    return sorted(marked, key=lambda n: n.meta[SUBLAYER_META][1])
