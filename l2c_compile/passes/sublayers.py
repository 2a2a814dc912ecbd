"""Pass 2 — find sublayers by module scope: each declared sublayer's output, gate and residual add.

Each model family *declares* its cacheable sublayers by module path (:class:`SublayerSpec`:
``blocks.{i}.attn``, ``blocks.{i}.mlp`` for DiT; U-ViT's in-, mid- and out-blocks; PixArt's
``transformer_blocks.{i}.attn1`` / ``attn2`` / ``ff``, three kinds per block). The pass finds
them in a traced graph from the nodes' module scope (``node.meta["nn_module_stack"]``, which both
``torch.fx`` symbolic tracing and ``torch.export`` record), never from the shape of the code:

- the sublayer's *output* is the one tensor-valued node inside its module scope that is used
  outside it (an exported graph's shape arithmetic, e.g. PixArt's cross-attention batch · heads,
  may be shared with later modules and is not an output);
- following that output's users: an optional ``mul`` by a value that does not depend on it is the
  *gate* (DiT's adaLN-Zero), and the first ``add`` with an operand that does not depend on it is
  the *residual add* (that operand is the stream).

Any other add in the model (guidance, positional embeddings, skip connections, extra norms) is
ignored, so models are traced as they are written.

Post: ``node.meta["l2c_sublayer"] = (kind, block)`` on each sublayer output node and
``node.meta["l2c_residual"] = (kind, block)`` on its residual add; exactly one of each per
declared sublayer. Errors: :class:`CompileError` naming the module path that is missing or has no
single output or residual add.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import fx, nn

from l2c_compile.models.dit import DiT
from l2c_compile.models.uvit import UViT
from l2c_compile.passes.base import (
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


@dataclass(frozen=True)
class SublayerSpec:
    """One model family's cacheable sublayers, declared by module path.

    ``blocks``: module paths of the transformer blocks in execution order; a path naming a
    ``ModuleList`` stands for its children in order. Block ids count from 0 over the expansion.
    ``attn`` / ``mlp``: each block's attention and MLP sublayer, relative to the block.
    ``cross``: the cross-attention sublayer relative to the block, for blocks that have one
    (PixArt's ``attn2``); None for two-kind blocks (DiT, U-ViT).
    """

    blocks: tuple[str, ...]
    attn: str = "attn"
    mlp: str = "mlp"
    cross: str | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        """The declared kinds in block order: ``("attn", "mlp")`` or ``("attn", "cross", "mlp")``."""
        return tuple(k for k, _ in self.relative())

    def relative(self) -> tuple[tuple[str, str], ...]:
        """``(kind, path relative to the block)`` in block order (:data:`~l2c_compile.masks.KINDS`)."""
        pairs = (("attn", self.attn), ("cross", self.cross), ("mlp", self.mlp))
        return tuple((k, rel) for k, rel in pairs if rel is not None)

    def paths(self, model: nn.Module) -> dict[SublayerKey, str]:
        """``{(kind, block): module path}`` for ``model``; CompileError naming a missing path."""
        block_paths: list[str] = []
        for path in self.blocks:
            try:
                module = model.get_submodule(path)
            except AttributeError:
                raise CompileError(
                    f"{type(model).__name__} has no module {path!r} (declared as sublayer blocks)"
                ) from None
            if isinstance(module, nn.ModuleList):
                block_paths += [f"{path}.{i}" for i in range(len(module))]
            else:
                block_paths.append(path)
        return {
            (kind, i): f"{block}.{rel}"
            for i, block in enumerate(block_paths)
            for kind, rel in self.relative()
        }

    def under(self, prefix: str) -> SublayerSpec:
        """The same declaration for a module that holds this family's model at ``prefix``."""
        return SublayerSpec(tuple(f"{prefix}.{b}" for b in self.blocks), self.attn, self.mlp, self.cross)


SUBLAYER_SPECS: dict[type, SublayerSpec] = {
    DiT: SublayerSpec(blocks=("blocks",)),
    UViT: SublayerSpec(blocks=("in_blocks", "mid_block", "out_blocks")),
}


def register_sublayers(cls: type, spec: SublayerSpec) -> None:
    """Declare ``cls``'s cacheable sublayers (adapters for other model families call this)."""
    SUBLAYER_SPECS[cls] = spec


def sublayer_spec(model: nn.Module) -> SublayerSpec:
    """The declaration for ``model``'s class (or the nearest base class that has one)."""
    for cls in type(model).__mro__:
        if cls in SUBLAYER_SPECS:
            return SUBLAYER_SPECS[cls]
    raise CompileError(
        f"no cacheable sublayers are declared for {type(model).__name__} "
        "(declare them with passes.sublayers.register_sublayers)"
    )


PATHS_META = "l2c_sublayer_paths"  # GraphModule.meta key: the traced model's declared sublayer paths


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


def _inside(scope: str | None, path: str) -> bool:
    return scope is not None and (scope == path or scope.startswith(path + "."))


def find_sublayers(
    gm: fx.GraphModule, paths: Mapping[SublayerKey, str] | None = None, *, root: str = "model"
) -> list[Sublayer]:
    """Locate every declared sublayer of a traced (fx or ``torch.export``) graph, in key order.

    ``paths``: ``{(kind, block): module path}``; None takes the declaration that ``trace_step``
    recorded for the traced model (``gm.meta["l2c_sublayer_paths"]``). ``root``: where the model sits in the traced module (``"model"`` under the guidance
    wrapper; ``""`` for a model traced on its own). Raises CompileError naming a declared path
    that is not in the graph, has more than one output, or feeds no residual add.
    """
    if paths is None:
        paths = gm.meta.get(PATHS_META)
        if paths is None:
            raise CompileError("the traced graph records no sublayer declaration: pass paths")
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
        inside = [n for n in graph.nodes if _inside(scopes[n], path)]
        if not inside:
            raise CompileError(f"{where} is not in the traced graph (no node runs in that module)")
        # Shape arithmetic (an exported graph's symbolic sizes, e.g. batch · heads) may be shared
        # with later modules; only tensor values are the sublayer's output.
        outputs = [n for n in inside if _is_value(n) and any(not _inside(scopes[u], path) for u in n.users)]
        if len(outputs) != 1:
            raise CompileError(f"{where} has {len(outputs)} values used outside it; expected one output")
        value = cur = outputs[0]
        gate = None
        while True:
            if len(cur.users) != 1:
                raise CompileError(f"{where}: its output feeds {len(cur.users)} nodes, not one residual add")
            user = next(iter(cur.users))
            others = [a for a in user.args if isinstance(a, fx.Node) and a is not cur]
            if len(others) != 1 or depends(value, others[0]) or others[0] is value:
                raise CompileError(f"{where}: no residual add found after its output (at node {user.name})")
            if is_mul(user) and gate is None:
                gate, cur = others[0], user
                continue
            if not is_add(user):
                raise CompileError(f"{where}: no residual add found after its output (at node {user.name})")
            subs.append(Sublayer(key, path, user, value, gate))
            break
    return subs


@dataclass(frozen=True)
class MarkConfig:
    """The declared sublayers to mark: ``((kind, block), module path)`` pairs."""

    paths: tuple[tuple[SublayerKey, str], ...]

    @classmethod
    def of(cls, paths: Mapping[SublayerKey, str]) -> MarkConfig:
        """From a ``{key: path}`` mapping, in key order."""
        return cls(tuple(sorted(paths.items(), key=lambda kv: key_order(kv[0]))))


def mark_sublayers(gm: fx.GraphModule, config: MarkConfig | None = None) -> PassResult:
    """Annotate each sublayer output node (``l2c_sublayer``) and its residual add (``l2c_residual``).

    ``config``: the sublayers to find; None takes the traced model's declaration.
    """
    subs = find_sublayers(gm, dict(config.paths) if config is not None else None)
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
